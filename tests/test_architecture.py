"""docs/architecture.md's import rule, checked by reading every module's imports (``ast``; nothing is
imported): each package of dpo_ppo/ (and the sweeper plugin) sits in a layer, and a module imports
only its own package, lower layers, or, in the stages' layer and the command lines' layer, the
other packages of its layer.  Imports inside
functions count: a lazy import is still a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# lowest first; the same list, in words, is docs/architecture.md's "Imports" paragraph
LAYERS = (
    ("results",),                                   # the torch-free contract: file names, identity
    ("config",),                                    # the typed config and its checks
    ("runtime",),                                   # how a job runs: device, locks, attempts, W&B
    ("data", "train", "evaluate", "analysis"),      # the stages: these four may import each other
    ("inputs",),                                    # what a loaded config names on this machine
    ("job", "sweep", "report"),                     # one job; a sweep's plan; a sweep's report
    ("hydra_plugins",),                             # the Hydra sweeper and launchers over sweep/
    ("main", "cli"),                                # the command lines
)
PEERS = ({"data", "train", "evaluate", "analysis"}, {"main", "cli"})  # layers whose packages import each other
RANK = {package: rank for rank, packages in enumerate(LAYERS) for package in packages}


def package_of(module: str) -> str | None:
    """The package (``LAYERS`` name) of a dotted module of ours, None for anything else."""
    parts = module.split(".")
    if parts[0] == "hydra_plugins":
        return "hydra_plugins" if len(parts) > 1 and parts[1] == "dpo_ppo_sweeper" else None
    if parts[0] != "dpo_ppo":
        return None
    return parts[1] if len(parts) > 1 else "dpo_ppo"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path):
    """(line, dotted module) of every import in ``path``, at any depth; ``from pkg import name``
    counts as ``pkg.name`` (a submodule or a name of pkg: for the rule, the same package)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = module_name(path).split(".")
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against this module's package
                base = here if is_package else here[:-1]
                base = base[:len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                yield node.lineno, f"{module}.{alias.name}"


def allowed(source: str, target: str) -> bool:
    if source == target or target == "dpo_ppo":  # its own package; the root package holds nothing
        return True
    if source == "dpo_ppo":
        return False
    if any(source in peers and target in peers for peers in PEERS):
        return True
    return RANK[target] < RANK[source]


def violations(paths) -> list[str]:
    found = []
    for path in paths:
        source = package_of(module_name(path))
        for line, target_module in imports(path):
            target = package_of(target_module)
            if target is not None and not allowed(source, target):
                found.append(f"{path.relative_to(REPO)}:{line} imports {target_module} "
                             f"({source} may not import {target}: docs/architecture.md, Imports)")
    return found


def our_modules() -> list[Path]:
    return sorted([*(REPO / "dpo_ppo").rglob("*.py"), *(REPO / "hydra_plugins" / "dpo_ppo_sweeper").rglob("*.py")])


def test_every_package_has_a_layer():
    packages = {package_of(module_name(p)) for p in our_modules()} - {"dpo_ppo"}
    assert packages <= set(RANK), f"no layer for {sorted(packages - set(RANK))}: add it to LAYERS and the doc"


def test_imports_point_down_the_layers():
    found = violations(our_modules())
    assert not found, "imports against the layering:\n" + "\n".join(found)


def test_the_rule_names_the_offending_import(tmp_path, monkeypatch):
    """The check itself: config importing data (the loop this rule was written against), lazily
    inside a function, is named by file, line and module."""
    bad = REPO / "dpo_ppo" / "config" / "schema.py"
    text = "def f():\n    from dpo_ppo.data.sources import local_path\n"
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: text if self == bad else Path.open(self).read())
    found = violations([bad])
    assert found == ["dpo_ppo/config/schema.py:2 imports dpo_ppo.data.sources.local_path "
                     "(config may not import data: docs/architecture.md, Imports)"]
    assert not violations([REPO / "dpo_ppo" / "data" / "sources.py"])  # data -> config is down


@pytest.mark.parametrize("source, target, ok", [
    ("job", "train", True), ("train", "data", True), ("data", "train", True), ("sweep", "data", True),
    ("config", "results", True), ("results", "config", False), ("config", "runtime", False),
    ("runtime", "data", False), ("sweep", "job", False), ("report", "job", False), ("data", "inputs", False),
    ("hydra_plugins", "cli", False), ("cli", "hydra_plugins", True), ("job", "main", False), ("main", "cli", True),
])
def test_the_layers(source, target, ok):
    assert allowed(source, target) is ok


def test_the_doc_states_the_rule_the_test_checks():
    doc = (REPO / "docs" / "architecture.md").read_text()
    for n, packages in enumerate(LAYERS, 1):
        assert f"{n}. " + " / ".join(f"`{p}`" for p in packages) in doc, packages
    peers = [n for n, packages in enumerate(LAYERS, 1) if set(packages) in PEERS]
    assert f"in layers {' and '.join(map(str, peers))} only" in doc


def test_every_console_script_names_a_command_line_function():
    """pyproject.toml's [project.scripts] point at functions that exist (read, not imported: the
    module's top-level ``def``), and the command lines live in the top layer, or in report/ (whose
    cli the report package re-exports)."""
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"dpo-ppo", "dpo-ppo-analyze", "dpo-ppo-report", "dpo-ppo-sync"} <= set(scripts)
    for name, target in scripts.items():
        module, _, function = target.partition(":")
        path = REPO / Path(*module.split("."))
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        tree = ast.parse(path.read_text())
        defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        defined |= {a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
        assert function in defined, f"{name} = {target}: no {function} in {path.relative_to(REPO)}"
        assert package_of(module) in ("main", "cli", "report"), f"{name} = {target}: not beside the other command lines"
