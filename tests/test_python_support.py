"""The Python versions the package claims (pyproject's requires-python, the README's install line)
are the ones its dependencies allow (issue 34: trl 1.16 requires Python >= 3.11, while the package
said 3.10-3.12)."""

from __future__ import annotations

import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]
MINORS = [f"3.{m}" for m in range(6, 20)]


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def admitted(spec: SpecifierSet) -> list[str]:
    return [v for v in MINORS if spec.contains(v + ".0") or spec.contains(v + ".99")]


def test_requires_python_is_within_every_installed_dependency():
    """Every Python minor version the package admits is admitted by each of its installed
    dependencies' own Requires-Python (what pip checks before it installs them)."""
    ours = SpecifierSet(project()["requires-python"])
    assert sys.version_info[:2] >= (3, 11) and ours.contains(f"{sys.version_info[0]}.{sys.version_info[1]}.0")
    checked = {}
    for line in project()["dependencies"]:
        name = Requirement(line).name
        try:
            theirs = md.metadata(name).get("Requires-Python")
        except md.PackageNotFoundError:
            continue
        if theirs:
            checked[name] = theirs
            too_old = [v for v in admitted(ours) if not SpecifierSet(theirs).contains(v + ".99")]
            assert not too_old, f"requires-python {ours} admits {too_old}, which {name} ({theirs}) refuses"
    assert "trl" in checked and "torch" in checked


def test_readme_states_the_python_range_of_pyproject():
    """The README's install line names the first and last minor version requires-python admits."""
    spec = SpecifierSet(project()["requires-python"])
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"Python (3\.\d+)-(3\.\d+)", readme)
    assert found, "README: no 'Python 3.X-3.Y' line"
    versions = admitted(spec)
    assert (found.group(1), found.group(2)) == (versions[0], versions[-1]), (found.groups(), str(spec))
