"""The Hydra sweeper of dpo-ppo (``hydra/sweeper=dpo_ppo``): Hydra's plugin surface over
dpo_ppo.sweep, which holds the logic.

    hydra.sweeper.arms:   {dpo: {algorithm: dpo, algorithm.beta: [0.1, 1]},
                           ppo: {algorithm: ppo, algorithm.kl_target: [3, 12]}}
    hydra.sweeper.params: {seed: [0, 1]}
      -> 2 x 2 DPO jobs + 2 x 2 PPO jobs; no PPO job ever carries a beta.

How arms, shared axes and command-line overrides make the jobs, and which grid points are one
job: dpo_ppo.sweep.grid. ``sweep()`` goes through these steps:

1. plan: expand the grid; grid points that set the same values are launched once (confirmed by
   composing both configs where their overrides are spelled differently).
2. triage (dpo_ppo.sweep.triage): work out each job's folder (``_predict_dirs``) and leave out
   the jobs whose folder already holds finished results of the same overrides (re-running a
   finished sweep takes seconds, also on SLURM) unless their full config drifted since
   (``check_drift``: such a job is reported failed with the keys that differ), and the jobs
   whose folder is locked by a live process (running elsewhere: a relaunch never starts a job
   twice, see dpo_ppo.runtime.joblock).
3. check: compose a covering subset of the rest (every override of every arm at least once) so
   that a typo fails before anything runs.
4. prepare: with ``prepare`` (default: the submitit launchers) launch one ``prepare=true`` job
   per distinct set of shared artifacts and wait for them, so the GPU jobs find the classifier,
   preference data and reference evaluation built.
5. launch: the jobs go to ``self.launcher.launch`` in batches (on SLURM by default one batch: a
   single array throttled by ``array_parallelism``), so every Hydra launcher works (basic,
   joblib, submitit_local, submitit_slurm, and this package's packed_local / packed_slurm, which
   run ``hardware.jobs_per_gpu`` jobs per array task: launchers.py). After each batch the
   sweeper reads each job's outcome, logs progress and writes ``<sweep dir>/sweep.json`` (every
   planned job: overrides, folder, status, error; dpo_ppo.sweep.state).
6. finish: a job that fails is recorded and the sweep goes on; at the end the sweeper raises
   ``SweepFailed`` (exit code 1) listing the failed jobs. A job counts as failed when it raised,
   when it returned a dict with ``status: failed``, or when its launcher lost it and its folder
   holds no finished results.

Never imports torch (tests/test_sweeper.py checks it in a fresh interpreter).
"""


import copy
import logging
import signal
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, configure_log
from hydra.errors import CompactHydraException, HydraException
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from dpo_ppo import results as R
from dpo_ppo.results import RESULTS_FILE
from dpo_ppo.sweep import state, triage
from dpo_ppo.sweep.grid import Merged, SweepJob, check_arms, expand, merge_duplicates, merged_summary, \
    override_dirname

log = logging.getLogger(__name__)


class SweepFailed(CompactHydraException):
    """Some jobs of the sweep failed; the others ran. Hydra prints the message and exits 1."""


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
        self.jobs: List[SweepJob] = []
        self.merged: List[str] = []  # grid points merged into another job (same config key)
        self._exclude: set = set()
        self._arguments: List[str] = []
        self._name = "sweep"
        self._started = 0.0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    # ---- the sweep, step by step

    def sweep(self, arguments: List[str]) -> Any:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        self._arguments = list(arguments)
        self._started = time.time()
        self._name = str(OmegaConf.select(self.config, "name", default="sweep"))
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)

        self._plan(parser)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        self._predict_dirs(parser)
        tic = time.perf_counter()
        to_run = self._triage()
        composed = self._validate(to_run)
        prepared = self._prepare(to_run) if to_run and self.prepare_enabled() else 0
        self._log(state.plan_line(self.jobs, self.merged, sweep_dir, len(to_run), composed + len(self._composed),
                                  time.perf_counter() - tic, prepared))

        returns = self._launch_stopping_cleanly(to_run, sweep_dir)
        self._finish(sweep_dir)
        return returns

    def _launch_stopping_cleanly(self, to_run: Sequence[int], sweep_dir: Path) -> List[Sequence[JobReturn]]:
        """``_launch_batches``; a sweep stopped by SIGTERM/SIGINT leaves sweep.json ``interrupted``
        and one stopped by an error ``failed`` (with the error), not ``running``."""
        from dpo_ppo.runtime.attempts import interruption, stop_signals

        try:
            with stop_signals():
                return self._launch_batches(to_run, sweep_dir)
        except BaseException as err:
            signum = interruption(err)
            if signum is None and not isinstance(err, Exception):
                raise
            how = state.SWEEP_INTERRUPTED if signum is not None else state.SWEEP_FAILED
            why = (f"interrupted by {signal.Signals(signum).name}" if signum is not None
                   else triage.last_line(f"{type(err).__name__}: {err}"))
            self._save(sweep_dir, how, error=why)
            self._log(f"sweep {how}: {why}; sweep.json says so, relaunch the same command to go on", logging.ERROR)
            raise

    def _plan(self, parser: OverridesParser) -> None:
        """The jobs of the sweep (dpo_ppo.sweep.grid.expand), duplicates merged."""
        assert self.config is not None
        check_arms(self.arms, OmegaConf.select(self.config, "hydra.overrides.hydra", default=None) or [])
        exclude = list(OmegaConf.select(self.config, "hydra.job.config.override_dirname.exclude_keys",
                                        default=None) or [])
        self._exclude = set(exclude)
        merged: List[Merged] = []
        self.jobs = expand(self.arms, self.params, self._arguments, parser, exclude=exclude, merged=merged)
        if not self.jobs:
            raise HydraException("dpo_ppo sweeper: the sweep has no jobs (every arm was dropped)")
        self.merged = merge_duplicates(self.jobs, merged, self._exclude, self._same_config)
        summary = merged_summary(self.merged)
        if summary:
            self._log(summary, logging.WARNING)

    def _triage(self) -> List[int]:
        """The jobs to launch; the others are skipped or failed (dpo_ppo.sweep.triage.triage)."""
        assert self.config is not None
        force = bool(OmegaConf.select(self.config, "force", default=False))
        to_run: List[int] = []
        for idx, job in enumerate(self.jobs):
            config = (lambda idx=idx: self._config_dict(self._compose(idx))) if self.check_drift else None
            if triage.triage(job, results_file=self.results_file, exclude=self._exclude,
                             skip_finished=self.skip_finished, force=force, config=config):
                to_run.append(idx)
            elif job.status == R.FAILED:
                self._log(f"job #{idx} not launched: {job.error}", logging.WARNING)
        return to_run

    def _launch_batches(self, to_run: Sequence[int], sweep_dir: Path) -> List[Sequence[JobReturn]]:
        """Launch the jobs in batches of ``batch_size()``, reading each job's outcome and saving
        sweep.json after each batch."""
        assert self.config is not None and self.launcher is not None
        size = self.batch_size()
        batches = [list(to_run[i:i + size]) for i in range(0, len(to_run), size)]
        self._save(sweep_dir, state.SWEEP_RUNNING)
        returns: List[Sequence[JobReturn]] = []
        launch_time = 0.0
        for b, batch in enumerate(batches):
            tic = time.time()
            results, error = self._launch([self.jobs[i].overrides for i in batch], batch[0],
                                          f"batch {b + 1}/{len(batches)}")
            launch_time += time.time() - tic
            for idx, ret in zip(batch, results):
                job = self.jobs[idx]
                triage.outcome(job, ret, error, self.results_file)
                if job.status in (R.FAILED, R.DIVERGED):
                    self._log(f"job #{idx} {job.status} ({' '.join(job.overrides)}): {job.error}", logging.WARNING)
            returns.append([r for r in results if r is not None])
            self._save(sweep_dir, state.SWEEP_RUNNING)
            self._log(state.progress_line(self.jobs, self._started, len(batches) - b - 1, launch_time / (b + 1)))
        return returns

    def _finish(self, sweep_dir: Path) -> None:
        """sweep.json's last state, the closing line, and SweepFailed when a job failed."""
        self._save(sweep_dir, state.SWEEP_DONE)
        self._log(state.done_line(self.jobs, self._started, sweep_dir))
        message = state.failed_message(self._name, self.jobs)
        if message and self.fail_on_error:
            raise SweepFailed(message)

    # ---- launching

    def _launch(self, overrides: List[List[str]], initial_job_idx: int,
                what: Optional[str] = None) -> "tuple[Sequence[Optional[JobReturn]], Optional[str]]":
        """``self.launcher.launch``: one JobReturn (or None) per job, and the launcher's error when
        it raised (e.g. submitit: a job killed by the scheduler); Hydra's logging set up again
        after (a launcher may reconfigure it)."""
        assert self.config is not None and self.launcher is not None
        try:
            results: Sequence[Optional[JobReturn]] = self.launcher.launch(overrides, initial_job_idx=initial_job_idx)
            error = None
        except Exception as err:
            if what:
                self._log(f"launcher failed on {what}: {err!r}", logging.ERROR)
            results, error = [None] * len(overrides), triage.last_line(repr(err))
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return results, error

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

    def prepare_enabled(self) -> bool:
        if self.prepare is not None:
            return bool(self.prepare)
        assert self.config is not None
        target = str(self.config.hydra.launcher.get("_target_", ""))
        return "submitit" in target or "dpo_ppo_sweeper.launchers" in target  # stock or packed (launchers.py)

    def _prepare(self, indices: Sequence[int]) -> int:
        """The prepare step: one prepare=true job per distinct set of shared artifacts of the
        jobs about to run (dpo_ppo.sweep.triage.prepare_cover), launched together and awaited
        before the jobs. Returns how many."""
        chosen = triage.prepare_cover(indices, self._compose)
        if not chosen:
            return 0
        self._log(f"prepare step: {len(chosen)} job(s) build the shared artifacts of "
                  f"{len(indices)} jobs before they start")
        overrides = [list(self.jobs[i].overrides) + ["prepare=true", f"hydra.sweep.subdir=.prepare/{k}"]
                     for k, i in enumerate(chosen)]
        results, error = self._launch(overrides, len(self.jobs))
        failed = []
        for idx, ret in zip(chosen, results):
            why = triage.prepare_failure(ret, error)
            if why is not None:
                failed.append(f"  prepare for #{idx} {' '.join(self.jobs[idx].overrides)}: {why}")
        if failed:
            raise SweepFailed(f"[{self._name}] the prepare step failed, so no job was launched (each would fail "
                              f"the same way):\n" + "\n".join(failed))
        return len(chosen)

    # ---- composing jobs the way the launcher will

    def _predict_dirs(self, parser: OverridesParser) -> None:
        """Set job.dir for every job the way run_job will compute it, without composing each
        job's config (composition costs ~0.3 s a job; this, milliseconds): the master config
        with the job's override_dirname, num and id filled in. A wrong guess (a job override
        that changes the sweep folder, e.g. name=...) costs nothing: the skip check also
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

    def _compose(self, idx: int) -> Any:
        """Job ``idx``'s task config exactly as run_job will see it (composed with its overrides,
        Hydra's node removed, loaded as the entrypoint loads it: ``config.load``, keys, checks,
        the compute mode's schedule); a task config that is not dpo-ppo's stays a resolved DictConfig; cached."""
        if idx not in self._composed:
            self._composed[idx] = self._compose_overrides(self.jobs[idx].overrides)
        return self._composed[idx]

    def _compose_overrides(self, overrides: Sequence[str]) -> Any:
        from dpo_ppo.config import Config, load

        assert self.hydra_context is not None and self.config is not None
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        hydra_config = HydraConfig.instance()
        previous = hydra_config.cfg
        try:
            hydra_config.set_config(cfg)  # ${hydra:...} resolves as in the job
            with read_write(cfg), open_dict(cfg):
                del cfg["hydra"]
            if OmegaConf.get_type(cfg) is Config:
                cfg = load(cfg)  # checked and scheduled as the job will be (what it names on the job's machine is not)
            else:
                cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        finally:
            hydra_config.cfg = previous  # type: ignore[assignment]
        return cfg

    @staticmethod
    def _config_dict(cfg: Any) -> dict:
        """A composed config as results.json records it (dpo_ppo.config.as_dict)."""
        from dpo_ppo.config import as_dict

        return as_dict(cfg)

    def _same_config(self, mine: Sequence[str], theirs: Sequence[str]) -> bool:
        """Whether two jobs' overrides make the same job (results.same_job); a config that does
        not compose counts as the same (it fails on the kept job anyway)."""
        try:
            return R.same_job(self._config_dict(self._compose_overrides(mine)),
                              self._config_dict(self._compose_overrides(theirs)))
        except Exception:
            return True

    # ---- recording

    def _log(self, message: str, level: int = logging.INFO) -> None:
        log.log(level, f"[{self._name}] {message}")

    def _save(self, sweep_dir: Path, sweep_state: str, error: Optional[str] = None) -> None:
        assert self.config is not None
        state.write_sweep_json(sweep_dir, name=str(OmegaConf.select(self.config, "name", default=sweep_dir.name)),
                               state=sweep_state, started=self._started,
                               launcher=str(self.config.hydra.launcher.get("_target_", "")),
                               arguments=self._arguments, jobs=self.jobs, merged=self.merged, error=error)
