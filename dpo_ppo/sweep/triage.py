"""What the sweeper does with each job before it launches it, and what became of it after.

Before (``triage``): a job whose folder is locked by a live process is running elsewhere and is
not launched twice (dpo_ppo.runtime.joblock); a job whose folder holds finished results of the
same overrides (``finished_before``: the folder key, dpo_ppo.results.folder_key) is skipped,
unless its full config drifted since (dpo_ppo.results.config_drift: then it is failed with the
keys that differ, and ``force=true`` re-runs it); the others run. ``prepare_cover`` picks the
jobs whose ``prepare=true`` run builds every shared artifact of the jobs about to run.

After (``outcome``): the launcher's JobReturn (its public ``status`` and ``return_value``), or,
when the launcher lost the job, whatever its folder's results.json says.

The job's status is one of dpo_ppo.results' constants (R.PENDING, R.FINISHED, R.SKIPPED,
R.FAILED). Torch-free: the sweeper imports this in the process that submits the sweep.
"""

import contextlib
import io
from pathlib import Path
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple

from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from dpo_ppo import results as R
from dpo_ppo.results import JobOutcome, JobRecord
from dpo_ppo.sweep.grid import SweepJob

FINISHED_BEFORE = "finished before"  # job.note of a job skipped for its finished results
RUNNING_ELSEWHERE = "running elsewhere"  # job.note's start for a job whose folder is locked
CONFIG_DRIFT = R.CONFIG_DRIFT  # job.error's start for a job not launched for config drift (R.ConfigDrift)


def last_line(text: Any, limit: int = 300) -> str:
    """The last line of ``text`` (an error, a traceback), at most ``limit`` characters."""
    text = str(text).strip()
    line = text.splitlines()[-1] if text else ""
    return line[:limit]


# --------------------------------------------------------------------------- before launching


def forced(overrides: Iterable[str], force: bool = False) -> bool:
    """``force`` (the sweep's ``force=true``) or the job's own ``force=true``: re-run, never skip."""
    return force or any(o.lstrip("+").lower() in ("force=true", "force=1") for o in overrides)


def finished_before(job: SweepJob, record: Optional[JobRecord], exclude: Iterable[str]) -> bool:
    """``record`` (the job folder's results.json) holds finished results of exactly the job's
    overrides: the same folder key (the overrides minus the config's exclude_keys). Results
    that recorded no overrides are trusted: nothing to check the folder against."""
    if record is None or record.status != R.FINISHED:
        return False
    recorded = record.overrides if record.has("overrides") else None
    if recorded is None:
        return True
    exclude = list(exclude)
    return R.folder_key(recorded, exclude) == R.folder_key(job.overrides, exclude)


def running_elsewhere(job: SweepJob) -> Optional[str]:
    """Where the job runs now, when its folder is locked by a live process (dpo_ppo.runtime.joblock)."""
    if not job.dir:
        return None
    from dpo_ppo.runtime.joblock import JobLock

    lock = JobLock(job.dir)
    holder = lock.read()
    if holder is None or lock.stale_reason(holder) is not None:
        return None
    lock.holder = holder
    return f"{RUNNING_ELSEWHERE} ({lock.describe()})"


def drift(job: SweepJob, record: JobRecord, config: Callable[[], dict]) -> Optional[str]:
    """The drift message when the job's finished ``record`` was made with another config than
    ``config()`` (``as_dict`` of the job's config now: called only when the record holds a config,
    since composing one costs a fraction of a second)."""
    if not record.config:
        return None
    found = R.config_drift(job.dir, record, config())
    return None if found is None else str(found)


def triage(job: SweepJob, *, results_file: str = R.RESULTS_FILE, exclude: Iterable[str] = (),
           skip_finished: bool = True, force: bool = False,
           config: Optional[Callable[[], dict]] = None) -> bool:
    """Decide, before launching, whether ``job`` runs (True) or not (its status, note and error
    say why): running elsewhere -> R.SKIPPED; finished before -> R.SKIPPED, or R.FAILED for config
    drift when ``config`` (the job's config now, see ``drift``) is given; otherwise it runs."""
    elsewhere = running_elsewhere(job)
    if elsewhere:  # a relaunch while the sweep still runs: never start a job twice
        job.status, job.note = R.SKIPPED, elsewhere
        return False
    if not (skip_finished and job.dir) or forced(job.overrides, force):
        return True
    record = R.read_record(Path(job.dir) / results_file)
    if not finished_before(job, record, exclude):
        return True
    message = drift(job, record, config) if config is not None else None
    if message:
        job.status, job.error = R.FAILED, message
    else:
        job.status, job.note = R.SKIPPED, FINISHED_BEFORE
    return False


def prepare_cover(indices: Sequence[int], config: Callable[[int], Any]) -> List[int]:
    """The jobs (of ``indices``) whose ``prepare=true`` runs build every shared artifact of them
    all (dpo_ppo.data.cache.artifact_specs): a job is chosen when it needs an artifact no job
    chosen before needs. ``config(idx)`` is the job's typed Config; for a task config that is not
    dpo-ppo's, nothing is shared and none is chosen."""
    from dpo_ppo.config import Config
    from dpo_ppo.config.schedule import artifacts_read
    from dpo_ppo.data.cache import artifact_specs, spec_key

    covered: set = set()
    chosen: List[int] = []
    for idx in indices:
        cfg = config(idx)
        if not isinstance(cfg, Config):
            return []
        specs = artifact_specs(cfg)
        # online DPO samples its own pairs: the prepare step builds none for it
        keys = {(a.kind, spec_key(specs[a.kind])) for a in artifacts_read(cfg.algorithm)}
        if keys - covered:
            covered |= keys
            chosen.append(idx)
    return chosen


# --------------------------------------------------------------------------- after launching


def returned(ret: JobReturn) -> Tuple[bool, Any]:
    """(True, the job's return value) for a completed job; (False, the last line of its
    exception) for one that raised. Through Hydra's public ``return_value``, which re-raises a
    failed job's exception after writing "Error executing job with overrides" to stderr: that
    line is kept out, the sweeper reports the failure itself."""
    if ret.status == JobStatus.COMPLETED:
        return True, ret.return_value
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            value = ret.return_value
        except Exception as err:
            return False, last_line(repr(err))
    return False, last_line(repr(value))


def prepare_failure(ret: Optional[JobReturn], launch_error: Optional[str]) -> Optional[str]:
    """Why a prepare=true job did not build the artifacts; None when it answered R.PREPARED."""
    if ret is None:
        return launch_error
    if ret.status not in (JobStatus.COMPLETED, JobStatus.FAILED):
        return last_line(f"job status {ret.status.name}")
    ok, value = returned(ret)
    answer = JobOutcome.of(value) if ok else None
    if answer is not None and answer.status == R.PREPARED:
        return None
    return value if not ok else last_line(repr(value))


def outcome(job: SweepJob, ret: Optional[JobReturn], launch_error: Optional[str],
            results_file: str = R.RESULTS_FILE) -> None:
    """Set job.status/error from the launcher's JobReturn, falling back on results.json.

    A job failed when it raised, when it returned an outcome (``results.JobOutcome``, or a
    mapping with a status) that says failed, or when the launcher lost it (``ret`` None, or
    neither completed nor failed) and its folder holds no finished results."""
    if ret is not None and ret.hydra_cfg is not None:
        out = OmegaConf.select(ret.hydra_cfg, "hydra.runtime.output_dir")
        if out:
            job.dir = str(out)
    on_disk = R.read_record(Path(job.dir) / results_file) if job.dir else None
    disk_error = on_disk.error if on_disk is not None else None
    if ret is not None and ret.status in (JobStatus.COMPLETED, JobStatus.FAILED):
        ok, value = returned(ret)
        if not ok:
            job.status, job.error = R.FAILED, value
            return
        answer = JobOutcome.of(value)
        if answer is not None and answer.status in (R.FINISHED, R.SKIPPED, R.FAILED, R.DIVERGED):
            job.status = answer.status
            if job.status in (R.FAILED, R.DIVERGED):
                job.error = last_line(answer.error or disk_error or R.FAILED)
            return
        # no status in the return value: trust the folder, else the fact it returned
        if on_disk is not None and on_disk.status in (R.FAILED, R.DIVERGED):
            job.status, job.error = on_disk.status, last_line(disk_error or on_disk.status)
        else:
            job.status = R.FINISHED
        return
    # the launcher lost the job (or raised): whatever the folder says
    if on_disk is not None and on_disk.status in (R.FINISHED, R.DIVERGED):
        job.status = on_disk.status
        job.error = disk_error if job.status == R.DIVERGED else job.error
    else:
        job.status = R.FAILED
        job.error = last_line(disk_error or launch_error or "no result")
