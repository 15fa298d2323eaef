"""Config of the dpo_ppo sweeper, and the ``sweep`` config group read from ``sweeps/*.yaml``.

Hydra imports every module under ``hydra_plugins`` before it composes a config, so what this
module stores in the ConfigStore is visible to ``dpo-ppo -m sweep=<name>`` (and to ``compose``).
The sweep files live in the repository's ``sweeps/`` folder (found next to the ``dpo_ppo``
package, or inside it when installed from a wheel) and in any folder listed in the environment variable ``DPO_PPO_SWEEPS``
(``os.pathsep``-separated). Each file is stored as ``sweep/<stem>`` in package ``_global_``.
"""


import importlib.util
import os
import warnings
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


def register_sweeps(cs: Optional[ConfigStore] = None) -> Dict[str, Path]:
    """Store every sweep file as ``sweep/<stem>`` (package ``_global_``); first folder wins."""
    from omegaconf import OmegaConf

    cs = cs or ConfigStore.instance()
    found: Dict[str, Path] = {}
    for folder in sweep_dirs():
        for path in sorted(folder.glob("*.yaml")):
            if path.stem in found:
                continue
            try:
                node = OmegaConf.load(path)
            except Exception as err:  # a broken file must not break every Hydra app
                warnings.warn(f"dpo_ppo sweeper: cannot read sweep file {path}: {err}")
                continue
            cs.store(group="sweep", name=path.stem, node=node, package="_global_",
                     provider="dpo_ppo_sweeper")
            found[path.stem] = path
    return found


ConfigStore.instance().store(group="hydra/sweeper", name="dpo_ppo", node=DpoPpoSweeperConf,
                             provider="dpo_ppo_sweeper")
register_sweeps()
