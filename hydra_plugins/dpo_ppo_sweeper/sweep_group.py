"""The ``sweep`` config group read from ``sweeps/*.yaml``, and the dpo_ppo sweeper's own options
(``hydra/sweeper=dpo_ppo``): what this plugin stores in Hydra's ConfigStore.  (Not the job's
config, which is the ``dpo_ppo.config`` package.)

Hydra imports every module under ``hydra_plugins`` before it composes a config, so what this
module stores in the ConfigStore is visible to ``dpo-ppo -m sweep=<name>`` (and to ``compose``).
The sweep files live in the repository's ``sweeps/`` folder (found next to the ``dpo_ppo``
package, or inside it when installed from a wheel) and in any folder listed in the environment variable ``DPO_PPO_SWEEPS``
(``os.pathsep``-separated). Each file is stored as ``sweep/<stem>`` in package ``_global_``.
"""


import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore

SWEEPS_ENV = "DPO_PPO_SWEEPS"


@dataclass
class DpoPpoSweeperConf:
    _target_: str = "hydra_plugins.dpo_ppo_sweeper.sweeper.DpoPpoSweeper"
    # Per-algorithm grids: {arm name: {override key: value or list of values}}. A list is an axis
    # swept within that arm only; a single value is fixed for the arm (e.g. algorithm: dpo).
    # No arms: one grid over `params`.
    arms: Dict[str, Any] = field(default_factory=dict)
    # Shared axes, crossed with every arm: {override key: value or list of values}. A string is
    # read with Hydra's override grammar, so "0,1,2" and "range(0,3)" work as well as [0, 1, 2].
    params: Dict[str, Any] = field(default_factory=dict)
    # Jobs per launcher call; progress is reported after each. null: the launcher's parallelism
    # (joblib n_jobs, 1 for the basic launcher), and on SLURM all at once: one array that SLURM
    # throttles to hydra.launcher.array_parallelism running jobs; <= 0: all at once.
    max_batch_size: Optional[int] = None
    # Prepare step: before the jobs, launch one job per distinct set of shared artifacts
    # (corpus, base model, classifier, reference evaluation, DPO preferences) with prepare=true,
    # so they are built once instead of inside whichever GPU job gets there first while the
    # others wait. null: on with the submitit launchers (SLURM, local), off otherwise.
    prepare: Optional[bool] = None
    # Compose each finished job's config and compare it with the one its results were made
    # with: a job whose config drifted (an edited sweep file or default) is reported failed,
    # naming the keys, instead of being skipped with stale results (force=true re-runs it).
    check_drift: bool = True
    # Do not launch a job whose folder already holds `results_file` with status "finished"
    # (unless the job's config has force=true). The job would skip itself anyway; this saves
    # the scheduler round trip, so re-running a finished sweep takes seconds.
    skip_finished: bool = True
    results_file: str = "results.json"
    # Raise (exit non-zero) at the end of the sweep when any job failed.
    fail_on_error: bool = True


def sweep_dirs() -> List[Path]:
    """Folders whose ``*.yaml`` files are sweep definitions, in priority order."""
    dirs: List[Path] = []
    for entry in os.environ.get(SWEEPS_ENV, "").split(os.pathsep):
        if entry:
            dirs.append(Path(entry).expanduser())
    spec = importlib.util.find_spec("dpo_ppo")  # locates the package without importing it
    if spec is not None and spec.origin:
        package = Path(spec.origin).resolve().parent
        dirs.append(package / "sweeps")  # a wheel install (setup.py ships sweeps/ there)
        dirs.append(package.parent / "sweeps")  # a checkout
    dirs.append(Path(__file__).resolve().parents[2] / "sweeps")  # this checkout's sweeps/
    unique: List[Path] = []
    for d in dirs:
        if d.is_dir() and d.resolve() not in [u.resolve() for u in unique]:
            unique.append(d)
    return unique


# sweep files found, and those that could not be read: {name: path}, {name: one line why}
SWEEP_FILES: Dict[str, Path] = {}
UNREADABLE: Dict[str, str] = {}


def _yaml_error(err: Exception) -> str:
    """A YAML parse error as one line: the problem and where (line, column)."""
    problem = getattr(err, "problem", None)
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    if problem:
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return f"{problem}{where}"
    return " ".join(str(err).split())


def register_sweeps(cs: Optional[ConfigStore] = None) -> Dict[str, Path]:
    """Store every sweep file as ``sweep/<stem>`` (package ``_global_``); first folder wins.

    A file that does not parse is not stored (a broken file must not break every Hydra app) and
    says nothing until it is asked for: ``sweep=<stem>`` then fails with ``sweep_error_line``."""
    from omegaconf import OmegaConf

    cs = cs or ConfigStore.instance()
    found: Dict[str, Path] = {}
    for folder in sweep_dirs():
        for path in sorted(folder.glob("*.yaml")):
            if path.stem in found or path.stem in UNREADABLE:
                continue
            try:
                node = OmegaConf.load(path)
            except Exception as err:
                UNREADABLE[path.stem] = f"{path} is not valid YAML: {_yaml_error(err)}"
                continue
            cs.store(group="sweep", name=path.stem, node=node, package="_global_",
                     provider="dpo_ppo_sweeper")
            found[path.stem] = path
    SWEEP_FILES.update(found)
    return found


def sweep_error_line(exc: BaseException) -> Optional[str]:
    """One line for a sweep file that cannot be used, else None: ``sweep=NAME`` of a file that
    does not parse (Hydra only knows it has no such option), or a file that sets
    ``hydra.sweeper.arms``/``params`` without selecting this sweeper (Hydra's basic sweeper has
    no such keys)."""
    import re

    from hydra.errors import MissingConfigException

    if isinstance(exc, MissingConfigException):
        group, _, option = (exc.missing_cfg_file or "").rpartition("/")
        if group == "sweep" and option in UNREADABLE:
            return f"sweep={option}: {UNREADABLE[option]}"
        missing = [e for e in os.environ.get(SWEEPS_ENV, "").split(os.pathsep)
                   if e and not Path(e).expanduser().is_dir()]
        if group == "sweep" and missing:  # Hydra alone says "no such option", not where it looked
            return (f"sweep={option}: no such sweep file; {SWEEPS_ENV} names {', '.join(missing)}, which is not a "
                    f"folder (it holds NAME.yaml sweep files); the sweeps found: "
                    f"{', '.join(sorted(exc.options or [])) or 'none'}")
        return None
    text = str(exc)
    named = re.search(r"In 'sweep/([^']+)'", text)
    key = re.search(r"full_key: (hydra\.sweeper\.(arms|params)\S*)", text)
    if named and key:
        name = named.group(1)
        where = SWEEP_FILES.get(name, f"sweep file {name}.yaml")
        return (f"sweep={name}: {where} sets {key.group(1)}, which only the dpo_ppo sweeper reads, but does "
                f"not select it: add '- override /hydra/sweeper: dpo_ppo' to its defaults")
    return None


ConfigStore.instance().store(group="hydra/sweeper", name="dpo_ppo", node=DpoPpoSweeperConf,
                             provider="dpo_ppo_sweeper")
register_sweeps()
