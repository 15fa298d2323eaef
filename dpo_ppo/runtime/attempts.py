"""A job's life across attempts, apart from what it computes: what an earlier attempt left in the
folder (``previous_results``; an unreadable results.json set aside), whether it was made under
this config (``check_drift``), a stop by SIGTERM/SIGINT recorded as ``interrupted``
(``Interrupted``, ``stop_signals``) and what every attempt cost (``attempt_costs``).
``job.run_job`` strings them together."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
from pathlib import Path
from typing import Optional, Tuple

from dpo_ppo import results as R
from dpo_ppo.results import JobOutcome, JobRecord
from dpo_ppo.config import as_dict

log = logging.getLogger("dpo_ppo")


# what a job's training left in its folder: cleared when force=true re-runs it
TRAINING_STATE = ("dpo_trainer", "ppo_state", "ppo_state.old", "ppo_state.tmp", "snapshots", "policy")
# the old attempt's curves and outputs, cleared with it (a new run would append to or mix with them)
OLD_OUTPUTS = (R.TRAIN_LOG_FILE, R.EVAL_ROWS_FILE, "samples.json", R.TRACEBACK_FILE, "analysis.json")


def start_over(job_dir: Path, previous: JobRecord, why: str) -> dict:
    """Clear what earlier attempts left (training state, snapshots, the policy, the training log and
    outputs) so the job runs from scratch; says so in one line.  The old W&B run is left as it is
    (its offline folder under wandb/, or its history in the project): the new attempt starts a new
    run, named in results.json ``replaces``.  Returns what was replaced (the new record's
    ``replaces``); ``previous`` is then no earlier attempt of the new run."""
    cleared = []
    for name in TRAINING_STATE + OLD_OUTPUTS:
        path = Path(job_dir) / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        else:
            continue
        cleared.append(name)
    old_run = (previous.wandb or {}).get("id")
    log.warning("%s: running %s from scratch (cleared: %s)%s", why, job_dir, ", ".join(cleared) or "nothing",
                f"; a new W&B run replaces run {old_run}, whose history is left as it was" if old_run else "")
    return {"status": previous.status, "attempts": previous.attempts if previous.has("attempts") else None,
            "wandb_id": old_run, "cleared": cleared, "why": why}


def check_drift(cfg, job_dir: Path, previous: Optional[JobRecord],
                raise_errors: bool) -> Tuple[Optional[JobOutcome], Optional[dict]]:
    """Config-drift guard: ``(None, None)`` when ``job_dir``'s earlier results (finished, or a
    checkpoint to resume) were made with this config, else ``(the failed outcome, None)``: the job
    stops with the keys that differ. With force=true, or when the earlier attempt failed (a fixed
    config is the usual reason to relaunch it), the job starts from scratch instead: its training
    state is cleared and ``(None, what was replaced)`` says the earlier attempt is gone (new
    attempt count, new W&B run)."""
    err = R.config_drift(job_dir, previous, as_dict(cfg))
    if err is None:
        return None, None
    if cfg.force or previous.status in (R.FAILED, R.DIVERGED):
        # a fixed config (a lower learning rate after a divergence) is the usual reason to relaunch
        why = "force=true" if cfg.force else f"the earlier attempt {previous.status}"
        log.warning("%s", err)
        return None, start_over(job_dir, previous, f"{why} after config drift")
    log.error("%s", err)
    if raise_errors:
        raise err
    return JobOutcome(R.FAILED, str(job_dir), error=str(err)), None


def previous_results(job_dir: Path) -> Optional[JobRecord]:
    """The record an earlier attempt left, None when none. One that cannot be read (cut short
    by a full disk or a kill mid-write, or not a results object) is moved aside to
    ``results.json.unreadable``, with the training state beside it: nothing tells which config
    that state was made with, so the job starts again from scratch instead of failing on every
    relaunch."""
    path = Path(job_dir) / R.RESULTS_FILE
    if not path.exists():
        return None
    previous = R.read_record(path)
    if previous is not None:
        return previous
    aside = path.with_name(R.RESULTS_FILE + ".unreadable")
    os.replace(path, aside)
    for name in TRAINING_STATE:
        if (Path(job_dir) / name).is_dir():
            shutil.rmtree(Path(job_dir) / name)
    log.warning("%s is unreadable (cut short, or not a results object); moved to %s, the job runs "
                "from scratch", path, aside.name)
    return None


class Interrupted(BaseException):
    """SIGTERM (a scheduler's stop, ``kill``) or SIGINT (Ctrl-C) while a job ran: recorded as
    status ``interrupted``, then re-raised for the entrypoint to exit 128 + signal."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


@contextlib.contextmanager
def stop_signals():
    """Within the block, SIGTERM raises ``Interrupted`` (Ctrl-C raises KeyboardInterrupt anyway).
    Only where SIGTERM has its default action, in the main thread: a launcher that handles it
    (submitit, the packed launcher's exit) keeps its handler."""
    import threading

    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def stop(signum, frame):
        raise Interrupted(signum)

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def interruption(exc: BaseException) -> int | None:
    """The signal that stopped the job, when ``exc`` is a stop rather than an error."""
    if isinstance(exc, Interrupted):
        return exc.signum
    if isinstance(exc, KeyboardInterrupt):
        return signal.SIGINT
    if isinstance(exc, SystemExit) and exc.code == 128 + signal.SIGTERM:  # the packed launcher's stop
        return signal.SIGTERM
    return None


def attempt_costs(previous: Optional[JobRecord], force: bool) -> list[dict]:
    """What the earlier attempts of this run cost (results.json ``compute_attempts``). An attempt
    that died without a record (SIGKILL, out of memory, a lost node) counts the stages it
    finished (its ``stage_seconds``): a lower bound. A forced re-run starts a new run: none."""
    if force or previous is None:
        return []
    costs = [dict(a) for a in previous.compute_attempts or [] if isinstance(a, dict)]
    attempts = previous.attempts or 0
    if attempts > len(costs):
        stages = previous.stage_seconds or {}
        costs.append({"attempt": attempts, "status": previous.status, "recorded": False,
                      "wall_s": round(sum(v for v in stages.values() if isinstance(v, (int, float))), 2),
                      "train_s": stages.get("train"), "accelerator_s": None})
    return costs
