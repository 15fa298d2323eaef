"""A Hydra sweeper whose grid is a union of per-algorithm grids ("arms") crossed with shared axes.

    hydra.sweeper.arms:   {dpo: {algorithm: dpo, algorithm.beta: [0.1, 1]},
                           ppo: {algorithm: ppo, algorithm.kl_target: [3, 12]}}
    hydra.sweeper.params: {seed: [0, 1]}
      -> 2 x 2 DPO jobs + 2 x 2 PPO jobs; no PPO job ever carries a beta.

Command-line overrides join the grid (``dpo-ppo -m sweep=confound seed=0,1 model=pythia70m``):
  * a key an arm lists as an axis (``algorithm.beta=0.3,3``) replaces that axis in the arms that
    list it, and never reaches the other arms;
  * a key an arm fixes (``algorithm=dpo``) selects the arms whose fixed value it names; the
    others are dropped (``~hydra.sweeper.arms.ppo`` drops an arm by name);
  * any other key adds or replaces a shared axis (a single value is an axis of one).

Before launching, the sweeper works out each job's folder and leaves out the jobs whose folder
already holds finished results of the same overrides (re-running a finished sweep takes seconds,
also on SLURM) unless their full config drifted since (``check_drift``: such a job is reported
failed with the keys that differ), and the jobs whose folder is locked by a live process (running
elsewhere: a relaunch never starts a job twice, see dpo_ppo.runtime.joblock). It composes a covering
subset of the rest (every override of every arm at least once) so that a typo fails before
anything runs. With ``prepare`` (default: the submitit launchers) it first launches one
``prepare=true`` job per distinct set of shared artifacts and waits for them, so the GPU jobs
find the classifier, preference data and reference evaluation built.

The jobs go to ``self.launcher.launch`` in batches (on SLURM by default one batch: a single array
throttled by ``array_parallelism``), so every Hydra launcher works (basic, joblib,
submitit_local, submitit_slurm, and this package's packed_local / packed_slurm, which run
``hardware.jobs_per_gpu`` jobs per array task: launchers.py). After each batch the sweeper logs progress, and it writes
``<sweep dir>/sweep.json`` (every planned job: overrides, folder, status, error). A job that
fails is recorded and the sweep goes on; at the end the sweeper raises ``SweepFailed`` (exit
code 1) listing the failed jobs. A job counts as failed when it raised, when it returned a dict
with ``status: failed``, or when its launcher lost it and its folder holds no finished results.
"""


import copy
import itertools
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.core.utils import JobReturn, JobStatus, configure_log
from hydra.errors import CompactHydraException, HydraException
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict, read_write

from dpo_ppo import results as R
from dpo_ppo.results import FINISHED, RESULTS_FILE, folder_key, read_results

log = logging.getLogger(__name__)


class SweepFailed(CompactHydraException):
    """Some jobs of the sweep failed; the others ran. Hydra prints the message and exits 1."""


# --------------------------------------------------------------------------- the grid


@dataclass
class Axis:
    """One override key and the values it takes, each as a complete override string."""

    key: str  # without +/~ prefix: what command-line overrides are matched on
    overrides: List[str]
    swept: bool  # given as a list / sweep expression (vs one fixed value)

    @property
    def values(self) -> List[str]:
        return [o.split("=", 1)[1] if "=" in o else "" for o in self.overrides]


@dataclass
class Job:
    arm: str
    overrides: List[str]
    # filled in by the sweeper
    dir: Optional[str] = None
    status: str = "pending"  # pending | finished | skipped | failed
    error: Optional[str] = None
    note: Optional[str] = None  # why a job was skipped (finished before, running elsewhere)


_PLAIN = re.compile(r"[A-Za-z0-9_.\-+/:@$]+")


def format_value(value: Any) -> str:
    """A Python/YAML value as a value in Hydra's override grammar."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple, ListConfig)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, (dict, DictConfig)):
        return "{" + ",".join(f"{k}:{format_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    if _PLAIN.fullmatch(text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def override_dirname(overrides: Sequence[Override], exclude_keys: Sequence[str], item_sep: str,
                     kv_sep: str) -> str:
    """``hydra.job.override_dirname`` of a job: what Hydra names a job folder by, from the public
    settings of ``hydra.job.config.override_dirname`` (``kv_sep``, ``item_sep``, ``exclude_keys``).

    The overrides as typed (``input_line``), those whose key or group is excluded left out, sorted
    as strings and joined by ``item_sep``; then every ``=`` of the result becomes ``kv_sep`` (also
    one inside a value, as Hydra does).  Hydra computes it in a private function; our copy of the
    rule is checked against that function in tests/test_sweeper.py, so a change in Hydra shows.
    """
    excluded = set(exclude_keys)
    kept = sorted(o.input_line for o in overrides if o.key_or_group not in excluded)
    return item_sep.join(kept).replace("=", kv_sep)


def _parse(parser: OverridesParser, line: str) -> Override:
    (override,) = parser.parse_overrides([line])
    return override


def _axis_from_override(override: Override) -> Axis:
    key = override.get_key_element()
    if override.is_sweep_override():
        if not override.is_discrete_sweep():
            raise HydraException(f"dpo_ppo sweeper: cannot sweep an interval ({override.input_line})")
        values = list(override.sweep_string_iterator())
        return Axis(override.key_or_group, [f"{key}={v}" for v in values], swept=True)
    if override.is_delete():
        return Axis(override.key_or_group, [override.input_line], swept=False)
    return Axis(override.key_or_group, [f"{key}={override.get_value_element_as_str()}"], swept=False)


def axis_from_config(parser: OverridesParser, key: str, value: Any) -> Axis:
    """An axis from a sweep-file entry: a list sweeps its elements, a string is read with the
    override grammar ("0,1", "range(3)", "[1,2]" is one list value), anything else is fixed."""
    if isinstance(value, (list, tuple, ListConfig)):
        if len(value) == 0:
            raise HydraException(f"dpo_ppo sweeper: axis '{key}' has no values")
        axis = _axis_from_override(_parse(parser, f"{key}={format_value(value[0])}"))
        axis.overrides = [_axis_from_override(_parse(parser, f"{key}={format_value(v)}")).overrides[0]
                          for v in value]
        axis.swept = True
        return axis
    if isinstance(value, str):
        return _axis_from_override(_parse(parser, f"{key}={value}" if value else f"{key}=''"))
    return _axis_from_override(_parse(parser, f"{key}={format_value(value)}"))


def _canonical(value: Any) -> Any:
    """A parsed override value as what it sets: ``1``, ``1.0`` and ``1e0`` are one number (a
    bool stays a bool, a string a string: ``'1'`` is not ``1``)."""
    if value is None or isinstance(value, (bool, str)):
        return (type(value).__name__, value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 2 ** 53:
        return ("num", int(value))
    if isinstance(value, (int, float)):
        return ("num", value)
    if isinstance(value, (list, tuple)):
        return ("list", tuple(_canonical(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple(sorted((str(k), _canonical(v)) for k, v in value.items())))
    return (type(value).__name__, str(value))


def _setting(parser: OverridesParser, line: str) -> Tuple[str, Any]:
    """(key, canonical value) of one override; ("~", key) for a deletion."""
    try:
        override = _parse(parser, line)
    except Exception:  # reported when the job is composed; here it is just itself
        return ("raw", line)
    if override.is_delete():
        return ("~", override.key_or_group)
    return (override.key_or_group, _canonical(override.value()))


def job_signature(overrides: Sequence[str], parser: OverridesParser, exclude: Sequence[str] = (),
                  memo: Optional[Dict[str, Tuple[str, Any]]] = None) -> Tuple:
    """What a job's overrides set, for finding grid points that are one job: each key (``+``
    dropped) with its value as Hydra's grammar types it (``_canonical``), the keys in
    ``exclude`` (where and how a job runs, not what it computes) left out, sorted. ``memo``
    keeps each distinct override parsed once across the jobs of a sweep."""
    excluded = set(exclude)
    memo = {} if memo is None else memo
    out = []
    for line in overrides:
        if line not in memo:
            memo[line] = _setting(parser, line)
        setting = memo[line]
        if setting[0] not in excluded and not (setting[0] == "~" and setting[1] in excluded):
            out.append(setting)
    return tuple(sorted(out, key=repr))


@dataclass
class Merged:
    """A grid point dropped because it sets what an earlier job sets (``expand``)."""

    arm: str
    overrides: List[str]
    kept: int  # index of the job that runs for it


def expand(
    arms: Mapping[str, Mapping[str, Any]],
    params: Mapping[str, Any],
    arguments: Sequence[str],
    parser: Optional[OverridesParser] = None,
    exclude: Sequence[str] = (),
    merged: Optional[List[Merged]] = None,
) -> List[Job]:
    """The jobs of a sweep: for each arm, the product of its axes and the shared axes.

    ``arguments`` are command-line overrides (see the module docstring for how they combine).
    Within an arm the first axis varies slowest; arms keep their order. Grid points that set the
    same values (``job_signature``: ``beta=1`` and ``beta=1.0``, ``seed: [0, 0]``, or two
    values of a key in ``exclude``) are one job: the first is kept, the others are appended to
    ``merged`` (when given) for the caller to report. A key that both an arm and ``params``
    set is an error: one of the two would be dropped silently.
    """
    parser = parser or OverridesParser.create()
    shared: Dict[str, Axis] = {}
    for key, value in (params or {}).items():
        axis = axis_from_config(parser, str(key), value)
        shared[axis.key] = axis
    cli = [_axis_from_override(o) for o in parser.parse_overrides(list(arguments))]

    arm_axes: List[Tuple[str, Dict[str, Axis]]] = []
    for arm_name, arm in list((arms or {}).items()) or [("", {})]:
        if arm is None:  # an arm deleted by setting it to null
            continue
        own: Dict[str, Axis] = {}
        for key, value in arm.items():
            axis = axis_from_config(parser, str(key), value)
            own[axis.key] = axis
        both = sorted(set(own) & set(shared))
        if both:
            raise HydraException(
                f"dpo_ppo sweeper: {', '.join(both)} is set both in arm '{arm_name}' and in params "
                f"(hydra.sweeper.arms.{arm_name}.{both[0]} and hydra.sweeper.params.{both[0]}); the arm's "
                f"value would silently replace the shared axis: keep it in one of the two")
        arm_axes.append((arm_name, own))
    arm_keys = {key for _, own in arm_axes for key in own}

    jobs: List[Job] = []
    seen: Dict[Tuple, int] = {}
    memo: Dict[str, Tuple[str, Any]] = {}
    for arm_name, own in arm_axes:
        arm_shared = dict(shared)
        keep = True
        for axis in cli:
            if axis.key in own:
                mine = own[axis.key]
                if mine.swept:
                    own[axis.key] = axis  # replace this arm's axis
                elif not set(axis.values) & set(mine.values):
                    keep = False  # a fixed key names another value: not this arm
            elif axis.key not in arm_keys:  # another arm's key (beta) never reaches this arm
                arm_shared[axis.key] = axis
        if not keep:
            continue
        axes = list(own.values()) + [a for k, a in arm_shared.items() if k not in own]
        for combo in itertools.product(*[a.overrides for a in axes]):
            signature = job_signature(combo, parser, exclude, memo)
            if signature in seen:
                if merged is not None:
                    merged.append(Merged(arm=arm_name, overrides=list(combo), kept=seen[signature]))
                continue
            seen[signature] = len(jobs)
            jobs.append(Job(arm=arm_name, overrides=list(combo)))
    return jobs


# --------------------------------------------------------------------------- job status


def _last_line(text: Any, limit: int = 300) -> str:
    text = str(text).strip()
    line = text.splitlines()[-1] if text else ""
    return line[:limit]


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


# --------------------------------------------------------------------------- the sweeper


class DpoPpoSweeper(Sweeper):
    def __init__(
        self,
        arms: Optional[Dict[str, Any]] = None,
        params: Optional[Dict[str, Any]] = None,
        max_batch_size: Optional[int] = None,
        skip_finished: bool = True,
        results_file: str = RESULTS_FILE,
        fail_on_error: bool = True,
        prepare: Optional[bool] = None,
        check_drift: bool = True,
    ) -> None:
        super().__init__()
        self.arms = arms or {}
        self.params = params or {}
        self.max_batch_size = max_batch_size
        self.skip_finished = skip_finished
        self.results_file = results_file
        self.fail_on_error = fail_on_error
        self.prepare = prepare
        self.check_drift = check_drift
        self._composed: Dict[int, Any] = {}  # typed Config (or a resolved DictConfig)
        self.hydra_context: Optional[HydraContext] = None
        self.config: Optional[DictConfig] = None
        self.launcher: Optional[Launcher] = None
        self.jobs: List[Job] = []
        self.merged: List[str] = []  # grid points merged into another job (same config key)
        self._exclude: set = set()

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    # ---- helpers

    def _check_arms(self) -> None:
        """An arm left null in the sweep file launches nothing: say so instead of dropping it
        (``hydra.sweeper.arms.NAME=null`` or ``~hydra.sweeper.arms.NAME`` on the command line
        drops an arm on purpose)."""
        assert self.config is not None
        on_purpose = set()
        for line in OmegaConf.select(self.config, "hydra.overrides.hydra", default=None) or []:
            key, _, value = str(line).partition("=")
            if value.strip() == "null" or key.startswith("~"):
                on_purpose.add(key.lstrip("~+"))
        for arm_name, arm in (self.arms or {}).items():
            if arm is None and f"hydra.sweeper.arms.{arm_name}" not in on_purpose:
                raise HydraException(
                    f"dpo_ppo sweeper: arm '{arm_name}' is empty (null) in hydra.sweeper.arms, so it would "
                    f"launch no job: give it its keys (e.g. algorithm: {arm_name}) or remove it "
                    f"(~hydra.sweeper.arms.{arm_name} on the command line)")

    def batch_size(self) -> int:
        """max_batch_size, or the launcher's own parallelism when it is null."""
        if self.max_batch_size is not None:
            return self.max_batch_size if self.max_batch_size > 0 else 1 << 30
        assert self.config is not None
        launcher = self.config.hydra.launcher
        cpus = os.cpu_count() or 4
        if "n_jobs" in launcher and launcher.n_jobs is not None:  # joblib
            n = int(launcher.n_jobs)
            return n if n > 0 else max(1, cpus + 1 + n)
        if "array_parallelism" in launcher:  # submitit slurm: one array, throttled by SLURM (%N)
            return 1 << 30
        if str(launcher.get("_target_", "")).endswith("BasicLauncher"):
            return 1  # sequential anyway: report after every job
        return cpus

    def _predict_dirs(self, parser: OverridesParser) -> None:
        """Set job.dir for every job the way run_job will compute it, without composing each
        job's config (composition costs ~0.3 s a job; this, milliseconds): the master config
        with the job's override_dirname, num and id filled in. A wrong guess (a job override
        that changes the sweep folder, e.g. name=...) costs nothing: the skip check below also
        matches the overrides recorded in results.json, and the launcher reports the real dir."""
        assert self.config is not None
        hydra_config = HydraConfig.instance()
        previous = hydra_config.cfg
        base = copy.deepcopy(self.config)
        try:
            hydra_config.set_config(base)
            nodes = [base.hydra, hydra_config.cfg.hydra]  # type: ignore[union-attr]
            naming = base.hydra.job.config.override_dirname
            exclude = list(naming.exclude_keys)
            self._exclude = set(exclude)
            for idx, job in enumerate(self.jobs):
                try:
                    dirname = override_dirname(parser.parse_overrides(list(job.overrides)), exclude,
                                               naming.item_sep, naming.kv_sep)
                    for node in nodes:
                        with read_write(node), open_dict(node):
                            node.job.override_dirname = dirname
                            node.job.num = idx
                            node.job.id = f"{node.job.name}_{idx}"
                            node.overrides.task = list(job.overrides)
                    job.dir = os.path.join(str(OmegaConf.select(base, "hydra.sweep.dir")),
                                           str(OmegaConf.select(base, "hydra.sweep.subdir")))
                except Exception:  # e.g. a subdir made of the SLURM job id: unknown until it runs
                    job.dir = None
        finally:
            hydra_config.cfg = previous  # type: ignore[assignment]

    def _finished_before(self, job: Job) -> bool:
        """The job's folder holds finished results of exactly these overrides (and no force)."""
        assert self.config is not None
        if not (self.skip_finished and job.dir):
            return False
        force = bool(OmegaConf.select(self.config, "force", default=False))
        force = force or any(o.lstrip("+").lower() in ("force=true", "force=1") for o in job.overrides)
        if force:
            return False
        results = read_results(Path(job.dir) / self.results_file)
        if not results or results.get("status") != FINISHED:
            return False
        recorded = results.get("overrides")
        if recorded is None:  # nothing to check the folder against: trust it
            return True

        # what names the folder: the overrides minus the config's exclude_keys
        return folder_key(recorded, self._exclude) == folder_key(job.overrides, self._exclude)

    def _compose(self, idx: int) -> Any:
        """Job ``idx``'s task config exactly as run_job will see it (composed with its overrides,
        Hydra's node removed, converted to the typed Config as the entrypoint does, the compute
        mode applied); a task config that is not dpo-ppo's stays a resolved DictConfig; cached."""
        if idx not in self._composed:
            self._composed[idx] = self._compose_overrides(self.jobs[idx].overrides)
        return self._composed[idx]

    def _compose_overrides(self, overrides: Sequence[str]) -> Any:
        from dpo_ppo.config import Config, apply_compute, to_typed

        assert self.hydra_context is not None and self.config is not None
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        hydra_config = HydraConfig.instance()
        previous = hydra_config.cfg
        try:
            hydra_config.set_config(cfg)  # ${hydra:...} resolves as in the job
            with read_write(cfg), open_dict(cfg):
                del cfg["hydra"]
            if OmegaConf.get_type(cfg) is Config:
                cfg = to_typed(cfg)
                apply_compute(cfg)
            else:
                cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        finally:
            hydra_config.cfg = previous  # type: ignore[assignment]
        return cfg

    def _config_key(self, overrides: Sequence[str]) -> str:
        """results.json's config_key of the job these overrides make (dpo_ppo.results.config_key)."""
        from dpo_ppo.config import as_dict

        return R.config_key(as_dict(self._compose_overrides(overrides)))

    def _merge_duplicates(self, name: str, merged: List[Merged], parser: OverridesParser) -> List[str]:
        """Grid points that are one job (``expand``): confirm each by its config key where the
        overrides are not the same strings (outside the excluded keys) -- in a string field ``1``
        and ``1.0`` differ, and such a point is launched after all -- and say which were merged."""
        lines: List[str] = []
        for m in merged:
            kept = self.jobs[m.kept]
            exact = folder_key(m.overrides, self._exclude) == folder_key(kept.overrides, self._exclude)
            if not exact:  # the same values spelled differently (1, 1.0, 1e0; +key): compose both
                try:
                    exact = self._config_key(m.overrides) == self._config_key(kept.overrides)
                except Exception:  # a config that does not compose fails on the kept job anyway
                    exact = True
            if not exact:
                self.jobs.append(Job(arm=m.arm, overrides=list(m.overrides)))
                continue
            mine = [o for o in m.overrides if o not in kept.overrides]
            theirs = [o for o in kept.overrides if o not in m.overrides]
            lines.append(f"{' '.join(mine)} as job #{m.kept} ({' '.join(theirs)})" if mine or theirs
                         else f"a repeat of job #{m.kept} ({' '.join(kept.overrides)})")
        if lines:
            counts = dict.fromkeys(lines, 0)
            for line in lines:
                counts[line] += 1
            shown = [f"{line}{f' x{n}' if n > 1 else ''}" for line, n in counts.items()]
            shown = shown[:10] + ([f"... and {len(shown) - 10} more (sweep.json: merged)"] if len(shown) > 10 else [])
            log.warning(f"[{name}] {len(lines)} grid point{'s' if len(lines) > 1 else ''} merged into the "
                        f"job with the same config key (launched once): " + "; ".join(shown))
        return lines

    def _drift(self, idx: int, results: Mapping[str, Any]) -> Optional[str]:
        """The drift message when job ``idx``'s finished results were made with another config."""
        from dpo_ppo.config import as_dict

        if not (self.check_drift and results.get("config")):
            return None
        drift = R.config_drift(self.jobs[idx].dir, results, as_dict(self._compose(idx)))
        return None if drift is None else str(drift)

    @staticmethod
    def _running_elsewhere(job: Job) -> Optional[str]:
        """Where the job runs now, when its folder is locked by a live process (dpo_ppo.runtime.joblock)."""
        if not job.dir:
            return None
        from dpo_ppo.runtime.joblock import JobLock

        lock = JobLock(job.dir)
        holder = lock.read()
        if holder is None or lock.stale_reason(holder) is not None:
            return None
        lock.holder = holder
        return f"running elsewhere ({lock.describe()})"

    def prepare_enabled(self) -> bool:
        if self.prepare is not None:
            return bool(self.prepare)
        assert self.config is not None
        target = str(self.config.hydra.launcher.get("_target_", ""))
        return "submitit" in target or "dpo_ppo_sweeper.launchers" in target  # stock or packed (launchers.py)

    def _prepare(self, name: str, indices: Sequence[int]) -> int:
        """The prepare step: one prepare=true job per distinct set of shared artifacts of the
        jobs about to run, launched together and awaited before the jobs. Returns how many."""
        from dpo_ppo.data.cache import spec_key
        from dpo_ppo.config import Config
        from dpo_ppo.data.cache import artifact_specs

        assert self.launcher is not None
        covered: set = set()
        chosen: List[int] = []
        for idx in indices:
            cfg = self._compose(idx)
            if not isinstance(cfg, Config):  # not a dpo-ppo config: nothing shared
                return 0
            specs = artifact_specs(cfg)
            kinds = ["corpus", "base", "classifier", "ref_eval"] + (["prefs"] if cfg.algorithm.name == "dpo" else [])
            keys = {(kind, spec_key(specs[kind])) for kind in kinds}
            if keys - covered:
                covered |= keys
                chosen.append(idx)
        if not chosen:
            return 0
        log.info(f"[{name}] prepare step: {len(chosen)} job(s) build the shared artifacts of "
                 f"{len(indices)} jobs before they start")
        overrides = [list(self.jobs[i].overrides) + ["prepare=true", f"hydra.sweep.subdir=.prepare/{k}"]
                     for k, i in enumerate(chosen)]
        try:
            results: Sequence[Any] = self.launcher.launch(overrides, initial_job_idx=len(self.jobs))
            error = None
        except Exception as err:
            results, error = [None] * len(chosen), _last_line(repr(err))
        assert self.config is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        failed = []
        for idx, ret in zip(chosen, results):
            ok = ret is not None and ret.status == JobStatus.COMPLETED and \
                isinstance(ret._return_value, Mapping) and ret._return_value.get("status") == "prepared"
            if not ok:
                why = error if ret is None else _last_line(repr(ret._return_value))
                failed.append(f"  prepare for #{idx} {' '.join(self.jobs[idx].overrides)}: {why}")
        if failed:
            raise SweepFailed(f"[{name}] the prepare step failed, so no job was launched (each would fail "
                              f"the same way):\n" + "\n".join(failed))
        return len(chosen)

    def _validate(self, indices: Sequence[int]) -> int:
        """Compose a covering subset of the jobs to run: every (arm, override) at least once.
        Catches a wrong key or type before anything is launched, in a few compositions
        instead of one per job (the launcher composes every job again anyway)."""
        assert self.hydra_context is not None and self.config is not None
        seen = set()
        composed = 0
        for idx in indices:
            job = self.jobs[idx]
            new = {(job.arm, o) for o in job.overrides} - seen
            if not new:
                continue
            self.hydra_context.config_loader.load_sweep_config(self.config, list(job.overrides))
            seen |= new
            composed += 1
        return composed

    def _outcome(self, job: Job, ret: Optional[JobReturn], launch_error: Optional[str]) -> None:
        """Set job.status/error from the launcher's JobReturn, falling back on results.json."""
        if ret is not None and ret.hydra_cfg is not None:
            out = OmegaConf.select(ret.hydra_cfg, "hydra.runtime.output_dir")
            if out:
                job.dir = str(out)
        on_disk = read_results(Path(job.dir) / self.results_file) if job.dir else None
        if ret is not None and ret.status == JobStatus.FAILED:
            job.status, job.error = "failed", _last_line(repr(ret._return_value))
            return
        if ret is not None and ret.status == JobStatus.COMPLETED:
            value = ret._return_value
            if isinstance(value, Mapping) and value.get("status") in ("finished", "skipped", "failed"):
                job.status = str(value["status"])
                if job.status == "failed":
                    job.error = _last_line(value.get("error") or (on_disk or {}).get("error") or "failed")
                return
            # no status in the return value: trust the folder, else the fact it returned
            if on_disk and on_disk.get("status") == "failed":
                job.status, job.error = "failed", _last_line(on_disk.get("error") or "failed")
            else:
                job.status = "finished"
            return
        # the launcher lost the job (or raised): whatever the folder says
        if on_disk and on_disk.get("status") == "finished":
            job.status = "finished"
        else:
            job.status = "failed"
            job.error = _last_line((on_disk or {}).get("error") or launch_error or "no result")

    def _counts(self) -> Dict[str, int]:
        counts = {"finished": 0, "skipped": 0, "failed": 0, "pending": 0}
        for job in self.jobs:
            counts[job.status] = counts.get(job.status, 0) + 1
        return counts

    def _save(self, sweep_dir: Path, started: float, state: str) -> None:
        assert self.config is not None
        sweep_dir_abs = os.path.abspath(sweep_dir)

        def rel(path: Optional[str]) -> Optional[str]:
            if not path:
                return None
            path = os.path.abspath(path)
            return os.path.relpath(path, sweep_dir_abs) if path.startswith(sweep_dir_abs) else path

        R.write_json(sweep_dir / "sweep.json", {
            "name": OmegaConf.select(self.config, "name", default=sweep_dir.name),
            "state": state,  # running | done
            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
            "elapsed_s": round(time.time() - started, 1),
            "launcher": str(self.config.hydra.launcher.get("_target_", "")),
            "arguments": list(self._arguments),
            "counts": self._counts(),
            "merged": list(self.merged),  # grid points launched as another job (same config key)
            "jobs": [{"idx": i, "arm": j.arm, "overrides": j.overrides, "dir": rel(j.dir),
                      "status": j.status, "error": j.error, "note": j.note} for i, j in enumerate(self.jobs)],
        })

    def _progress(self, name: str, started: float, batches_left: int, per_batch: float) -> None:
        c = self._counts()
        total = len(self.jobs)
        done = total - c["pending"]
        eta = f", about {_duration(per_batch * batches_left)} to go" if batches_left and per_batch else ""
        log.info(f"[{name}] {done}/{total} done: {c['finished']} finished, {c['skipped']} skipped, "
                 f"{c['failed']} failed, {c['pending']} left ({_duration(time.time() - started)}{eta})")

    # ---- the sweep

    def sweep(self, arguments: List[str]) -> Any:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        self._arguments = list(arguments)
        started = time.time()
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        name = str(OmegaConf.select(self.config, "name", default="sweep"))
        self._check_arms()
        exclude = list(OmegaConf.select(self.config, "hydra.job.config.override_dirname.exclude_keys",
                                        default=None) or [])
        self._exclude = set(exclude)
        merged: List[Merged] = []
        self.jobs = expand(self.arms, self.params, arguments, parser, exclude=exclude, merged=merged)
        if not self.jobs:
            raise HydraException("dpo_ppo sweeper: the sweep has no jobs (every arm was dropped)")
        self.merged = self._merge_duplicates(name, merged, parser)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        self._predict_dirs(parser)
        to_run: List[int] = []
        tic = time.perf_counter()
        for idx, job in enumerate(self.jobs):
            elsewhere = self._running_elsewhere(job)
            if elsewhere:  # a relaunch while the sweep still runs: never start a job twice
                job.status, job.note = "skipped", elsewhere
            elif self._finished_before(job):
                drift = self._drift(idx, read_results(Path(str(job.dir)) / self.results_file) or {})
                if drift:
                    job.status, job.error = "failed", drift
                    log.warning(f"[{name}] job #{idx} not launched: {drift}")
                else:
                    job.status, job.note = "skipped", "finished before"
            else:
                to_run.append(idx)
        composed = self._validate(to_run)
        prepared = self._prepare(name, to_run) if to_run and self.prepare_enabled() else 0
        finished = sum(j.note == "finished before" for j in self.jobs)
        elsewhere = sum(bool(j.note and j.note.startswith("running elsewhere")) for j in self.jobs)
        elsewhere_text = f", {elsewhere} running elsewhere (not launched twice)" if elsewhere else ""
        drifted = sum(bool(j.error and j.error.startswith("config drift")) for j in self.jobs)
        drift_text = f", {drifted} not launched for config drift (force=true re-runs them)" if drifted else ""
        by_arm: Dict[str, int] = {}
        for job in self.jobs:
            by_arm[job.arm or "all"] = by_arm.get(job.arm or "all", 0) + 1
        arms_text = ", ".join(f"{k}: {v}" for k, v in by_arm.items())
        merged_text = f" ({len(self.merged)} duplicate grid points merged)" if self.merged else ""
        log.info(f"[{name}] {len(self.jobs)} jobs{merged_text} ({arms_text}) in {sweep_dir}; "
                 f"{finished} already finished, {len(to_run)} to run{elsewhere_text}{drift_text} "
                 f"(checked {composed + len(self._composed)} configs in {time.perf_counter() - tic:.1f}s"
                 f"{f'; {prepared} prepare jobs ran first' if prepared else ''})")

        size = self.batch_size()
        batches = [to_run[i:i + size] for i in range(0, len(to_run), size)]
        self._save(sweep_dir, started, "running")
        returns: List[Sequence[JobReturn]] = []
        launch_time = 0.0
        for b, batch in enumerate(batches):
            overrides = [self.jobs[i].overrides for i in batch]
            tic = time.time()
            try:
                results: Sequence[Optional[JobReturn]] = self.launcher.launch(overrides, initial_job_idx=batch[0])
                error = None
            except Exception as err:  # e.g. submitit: a job killed by the scheduler
                log.error(f"[{name}] launcher failed on batch {b + 1}/{len(batches)}: {err!r}")
                results, error = [None] * len(batch), _last_line(repr(err))
            launch_time += time.time() - tic
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
            for idx, ret in zip(batch, results):
                self._outcome(self.jobs[idx], ret, error)
                if self.jobs[idx].status == "failed":
                    log.warning(f"[{name}] job #{idx} failed ({' '.join(self.jobs[idx].overrides)}): "
                                f"{self.jobs[idx].error}")
            returns.append([r for r in results if r is not None])
            self._save(sweep_dir, started, "running")
            self._progress(name, started, len(batches) - b - 1, launch_time / (b + 1))

        self._save(sweep_dir, started, "done")
        failed = [(i, j) for i, j in enumerate(self.jobs) if j.status == "failed"]
        c = self._counts()
        log.info(f"[{name}] sweep done in {_duration(time.time() - started)}: {c['finished']} finished, "
                 f"{c['skipped']} skipped, {c['failed']} failed; status in {sweep_dir / 'sweep.json'}; "
                 f"report: dpo-ppo-report {sweep_dir}")
        if failed and self.fail_on_error:
            lines = "\n".join(f"  #{i} {' '.join(j.overrides)}\n     {j.dir}\n     {j.error}"
                              for i, j in failed[:20])
            more = f"\n  ... and {len(failed) - 20} more (see sweep.json)" if len(failed) > 20 else ""
            raise SweepFailed(
                f"[{name}] {len(failed)} of {len(self.jobs)} jobs failed (the others ran):\n{lines}{more}\n"
                f"Re-run the same command to retry them; finished jobs are skipped.")
        return returns
