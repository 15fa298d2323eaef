"""Submitit launchers that run several jobs in one allocation (one array task): ``packed_slurm``
and ``packed_local`` (``hydra/launcher=...``; conf/hydra/launcher/slurm_gpu.yaml builds on the first).

A small job (Pythia-70m) uses a few percent of a GPU, so an allocation of one GPU can run several
at once. With ``jobs_per_gpu=N`` (default: the job config's ``hardware.jobs_per_gpu``) the
launcher puts N x ``gpus_per_node`` (at least 1) consecutive jobs of a batch into each array task.
The task runs alone what it was given alone (N = 1: exactly the stock launcher's task); with
several jobs it starts each as its own process, running the very job an array task of the stock
launcher would (same composition, folder, results, W&B run), waits for all and returns one
outcome per job. In each of those processes:

- ``device=auto`` takes a free slot on the least-loaded of the allocation's GPUs (dpo_ppo.runtime.gpus);
- torch gets ``cores // jobs`` threads (``OMP_NUM_THREADS``), the cores being the task's CPUs
  (its affinity, or ``OMP_NUM_THREADS`` when set), so the jobs share ``cpus_per_task``;
- SIGUSR2 (SLURM's preemption / time-limit notice) is ignored: the task's own process gets it,
  stops the jobs (SIGTERM, then SIGKILL after ``stop_grace_s``), and submitit requeues the task,
  whose jobs resume from their checkpoints (finished ones are skipped); the task process stays
  until its last job ends, so a requeue never depends on which job is still running;
- a job that fails, or whose process dies, is that job's outcome alone: the others' results come
  back, and the sweeper reads a lost job's folder (dpo_ppo.sweep.triage.outcome).

Each array task's own log is submitit's (``.submitit/<id>/<id>_0_log.*``); each job's process
writes ``<id>_job<k>_log.out`` beside it, as well as its usual log in its own folder.
"""

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, LocalQueueConf, SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
from omegaconf import OmegaConf

from dpo_ppo.results import write_atomic
from dpo_ppo.runtime.gpus import positive_int as _positive_int, task_cores  # noqa: F401  (task_cores: for callers)

log = logging.getLogger(__name__)

# the processes of the jobs this array task runs now (module state: the launcher is pickled
# again by submitit's checkpoint, and a Popen cannot be)
_CHILDREN: List[subprocess.Popen] = []

# how a job's process starts: python -c CHILD <payload> <result>
CHILD = "from hydra_plugins.dpo_ppo_sweeper.launchers import _child_main; _child_main()"

Group = List[Tuple[List[str], int]]  # (overrides, job number) of each job of one array task


def _say(message: str) -> None:
    """A line in the array task's own log (no logging is configured in that process)."""
    print(f"dpo_ppo packed ({time.strftime('%Y-%m-%d %H:%M:%S')}) - {message}", file=sys.stderr, flush=True)


class PackedLauncherMixin:
    """Groups the jobs of a launch into array tasks of ``jobs_per_task`` jobs (module docstring)."""

    _EXECUTOR: str
    params: dict

    def __init__(self, jobs_per_gpu: Any = 1, stop_grace_s: float = 30.0, **params: Any) -> None:
        super().__init__(**params)  # type: ignore[call-arg]
        self.jobs_per_gpu = _positive_int(jobs_per_gpu, "hardware.jobs_per_gpu (hydra.launcher.jobs_per_gpu)")
        self.stop_grace_s = float(stop_grace_s)
        gpus = self.params.get("gpus_per_node") or 1
        self.jobs_per_task = self.jobs_per_gpu * _positive_int(gpus, "hydra.launcher.gpus_per_node")

    # ---- the submitting side

    def _executor(self):
        import submitit

        params = dict(self.params)
        init = {"folder": params.pop("submitit_folder")}
        if "max_num_timeout" in params:
            init[f"{self._EXECUTOR}_max_num_timeout"] = params.pop("max_num_timeout")
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init)
        shared = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in shared else f"{self._EXECUTOR}_{k}": v for k, v in params.items()})
        return executor

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[Optional[JobReturn]]:
        assert self.config is not None  # type: ignore[attr-defined]
        n = len(job_overrides)
        assert n > 0
        size = self.jobs_per_task
        groups: List[Group] = [[(list(job_overrides[i]), initial_job_idx + i) for i in range(s, min(s + size, n))]
                               for s in range(0, n, size)]
        sweep_dir = Path(str(self.config.hydra.sweep.dir))  # type: ignore[attr-defined]
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"Submitit '{self._EXECUTOR}': {n} jobs in {len(groups)} array task(s) of up to {size} "
                 f"(jobs_per_gpu={self.jobs_per_gpu}); sweep output dir: {sweep_dir}")
        for t, group in enumerate(groups):
            for overrides, num in group:
                log.info(f"\t#{num} (task {t}) : {' '.join(filter_overrides(overrides))}")
        executor = self._executor()
        state = Singleton.get_state()
        jobs = executor.map_array(self, groups, ["hydra.sweep.dir"] * len(groups), [state] * len(groups))
        out: List[Optional[JobReturn]] = []
        for group, job in zip(groups, jobs):
            try:
                rets = list(job.result())
            except Exception as err:  # the task itself died: the sweeper reads the jobs' folders
                last = str(err).strip().splitlines()[-1:] or [""]
                log.error(f"array task {job.job_id} (jobs {', '.join(f'#{num}' for _, num in group)}) "
                          f"returned nothing: {type(err).__name__}: {last[0]}")
                rets = []
            out.extend((rets + [None] * len(group))[:len(group)])
        return out

    # ---- the array task

    def __call__(self, group: Group, job_dir_key: str, singleton_state: Any) -> List[Optional[JobReturn]]:  # type: ignore[override]
        if len(group) == 1:  # what the stock launcher's task does, in this process
            overrides, num = group[0]
            return [self._run_one(overrides, job_dir_key, num, singleton_state)]
        return self._run_concurrently(group, job_dir_key, singleton_state)

    def _run_one(self, overrides: List[str], job_dir_key: str, num: int, singleton_state: Any) -> JobReturn:
        return BaseSubmititLauncher.__call__(self, overrides, job_dir_key, num, f"job_id_for_{num}",  # type: ignore[arg-type]
                                             singleton_state)

    def _run_concurrently(self, group: Group, job_dir_key: str, singleton_state: Any) -> List[Optional[JobReturn]]:
        import cloudpickle
        import submitit

        env = submitit.JobEnvironment()
        folder = Path(env.paths.folder)
        tag = str(env.job_id)
        threads = max(1, task_cores() // len(group))
        _say(f"running {len(group)} jobs at once, {threads} torch thread(s) each: "
             f"{', '.join(f'#{num}' for _, num in group)}; their output: {folder}/{tag}_job<k>_log.out")
        started: List[Tuple[int, subprocess.Popen, Path, Path]] = []
        _CHILDREN.clear()
        try:
            for k, (overrides, num) in enumerate(group):
                payload, result = folder / f"{tag}_job{k}.pkl", folder / f"{tag}_job{k}_result.pkl"
                result.unlink(missing_ok=True)  # left by an attempt before a requeue
                with open(payload, "wb") as f:
                    cloudpickle.dump((self, overrides, job_dir_key, num, singleton_state), f)
                child_env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
                with open(folder / f"{tag}_job{k}_log.out", "a") as out:
                    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(payload), str(result)],
                                            env=child_env, stdout=out, stderr=subprocess.STDOUT)
                _CHILDREN.append(proc)
                started.append((num, proc, payload, result))
            # poll, not Popen.wait(): a signal handler (checkpoint) that polls them too must not
            # find their wait lock held by the frame it interrupted
            while any(proc.poll() is None for _, proc, _, _ in started):
                time.sleep(0.2)
        finally:
            self._stop_children()
        rets: List[Optional[JobReturn]] = []
        for num, proc, payload, result in started:
            ret = None
            if result.exists():
                with open(result, "rb") as f:
                    ret = cloudpickle.load(f)
            status = ret.status.name.lower() if ret is not None else f"exited {proc.returncode} without a result"
            _say(f"job #{num}: {status}")
            rets.append(ret)
            payload.unlink(missing_ok=True)
        return rets

    def _stop_children(self) -> None:
        """SIGTERM the jobs still running (they unwind: locks released), SIGKILL them after
        ``stop_grace_s``. Polls only: it runs in submitit's signal handler too."""
        alive = [p for p in _CHILDREN if p.poll() is None]
        for p in alive:
            p.send_signal(signal.SIGTERM)
        for grace, sig in ((self.stop_grace_s, signal.SIGKILL), (10.0, None)):
            deadline = time.time() + grace
            while time.time() < deadline and any(p.poll() is None for p in alive):
                time.sleep(0.1)
            for p in alive:
                if sig is not None and p.poll() is None:
                    p.send_signal(sig)
        _CHILDREN.clear()

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Preemption / time limit (submitit calls this on SIGUSR2): stop this task's jobs, then
        requeue the task with the same jobs; each resumes from its last checkpoint."""
        if _CHILDREN:
            _say(f"stopping {len(_CHILDREN)} job(s) before the requeue")
            self._stop_children()
        return super().checkpoint(*args, **kwargs)  # type: ignore[misc]


def _child_main(argv: Optional[List[str]] = None) -> None:
    """One job of a packed array task, in its own process (started by ``_run_concurrently``)."""
    import traceback

    import cloudpickle

    payload, result = (argv or sys.argv[1:])[:2]
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)  # the task's process handles the preemption notice
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # unwind: release locks
    _exit_with_parent()
    with open(payload, "rb") as f:
        launcher, overrides, job_dir_key, num, singleton_state = cloudpickle.load(f)
    try:
        ret = launcher._run_one(overrides, job_dir_key, num, singleton_state)
    except Exception as err:  # e.g. the job's config does not compose: that job failed, the others run
        traceback.print_exc()
        ret = JobReturn(overrides=overrides, status=JobStatus.FAILED)
        ret.return_value = RuntimeError(f"{type(err).__name__}: {err}")
    try:
        data = cloudpickle.dumps(ret)
    except Exception:  # a value or exception that does not pickle: keep its text
        try:
            value = ret.return_value
        except Exception as err:  # a failed job's: return_value re-raises it
            value = err
        ret.return_value = RuntimeError(repr(value))
        data = cloudpickle.dumps(ret)
    write_atomic(Path(result), data)


def _exit_with_parent() -> None:
    """Linux: SIGTERM this process when the array task's process dies (no orphaned jobs)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        return
    if os.getppid() == 1:  # the parent died before prctl
        sys.exit(128 + signal.SIGTERM)


class PackedSlurmLauncher(PackedLauncherMixin, BaseSubmititLauncher):
    _EXECUTOR = "slurm"


class PackedLocalLauncher(PackedLauncherMixin, BaseSubmititLauncher):
    _EXECUTOR = "local"


JOBS_PER_GPU = "${oc.select:hardware.jobs_per_gpu,1}"  # the job config's, 1 in an app without one


@dataclass
class PackedSlurmConf(SlurmQueueConf):
    _target_: str = "hydra_plugins.dpo_ppo_sweeper.launchers.PackedSlurmLauncher"
    # jobs of one allocation per GPU: each array task runs jobs_per_gpu x gpus_per_node jobs at once
    jobs_per_gpu: Any = JOBS_PER_GPU
    stop_grace_s: float = 30.0  # on preemption: SIGTERM to SIGKILL of the jobs (< signal_delay_s)


@dataclass
class PackedLocalConf(LocalQueueConf):
    _target_: str = "hydra_plugins.dpo_ppo_sweeper.launchers.PackedLocalLauncher"
    jobs_per_gpu: Any = JOBS_PER_GPU
    stop_grace_s: float = 30.0


def _register_resolvers() -> None:
    """``${dpo_ppo_gpu_jobs:N}`` (conf/hydra/launcher/joblib_gpu.yaml) in any app that finds
    this repository's launcher presets, not only dpo-ppo (which registers it too)."""
    try:
        from dpo_ppo.runtime.gpus import register_resolvers
    except ImportError:
        return
    register_resolvers()


_register_resolvers()
ConfigStore.instance().store(group="hydra/launcher", name="packed_slurm", node=PackedSlurmConf,
                             provider="dpo_ppo_sweeper")
ConfigStore.instance().store(group="hydra/launcher", name="packed_local", node=PackedLocalConf,
                             provider="dpo_ppo_sweeper")
