"""Where a sweep stands: counts by status, ``<sweep dir>/sweep.json`` (every planned job:
overrides, folder, status, error), and the lines the sweeper logs (the plan, progress after each
batch, the end, the failed jobs). Torch-free; no Hydra."""

import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from dpo_ppo import results as R
from dpo_ppo.sweep.grid import SweepJob
from dpo_ppo.sweep.triage import CONFIG_DRIFT, FINISHED_BEFORE, RUNNING_ELSEWHERE

# sweep.json's "state"
SWEEP_RUNNING, SWEEP_DONE = R.RUNNING, "done"
# stopped by SIGTERM/SIGINT, or by an error of the sweeper or its launcher (sweep.json "error" says which)
SWEEP_INTERRUPTED, SWEEP_FAILED = R.INTERRUPTED, R.FAILED


def counts(jobs: Sequence[SweepJob]) -> Dict[str, int]:
    """How many jobs have each status (finished, skipped, failed, pending always present)."""
    out = {R.FINISHED: 0, R.SKIPPED: 0, R.FAILED: 0, R.PENDING: 0}
    for job in jobs:
        out[job.status] = out.get(job.status, 0) + 1
    return out


def duration(seconds: float) -> str:
    """``1h02m03s``, ``2m03s``, ``3s``."""
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def write_sweep_json(sweep_dir: Path, *, name: str, state: str, started: float, launcher: str,
                     arguments: Sequence[str], jobs: Sequence[SweepJob], merged: Sequence[str],
                     error: Optional[str] = None) -> Path:
    """``<sweep_dir>/sweep.json`` (R.SWEEP_FILE, its keys R.SWEEP_*, one R.SweepEntry per job),
    atomically; job folders inside the sweep folder are written relative to it."""
    sweep_dir_abs = os.path.abspath(sweep_dir)

    def rel(path: Optional[str]) -> Optional[str]:
        if not path:
            return None
        path = os.path.abspath(path)
        return os.path.relpath(path, sweep_dir_abs) if path.startswith(sweep_dir_abs) else path

    return R.write_json(Path(sweep_dir) / R.SWEEP_FILE, {
        R.SWEEP_NAME: name,
        R.SWEEP_STATE: state,  # SWEEP_RUNNING | SWEEP_DONE | SWEEP_INTERRUPTED | SWEEP_FAILED
        R.SWEEP_ERROR: error,  # why the sweep stopped, when interrupted or failed
        R.SWEEP_STARTED: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        R.SWEEP_ELAPSED_S: round(time.time() - started, 1),
        R.SWEEP_LAUNCHER: launcher,
        R.SWEEP_ARGUMENTS: list(arguments),
        R.SWEEP_COUNTS: counts(jobs),
        R.SWEEP_MERGED: list(merged),  # grid points launched as another job (same config key)
        R.SWEEP_JOBS: [R.SweepEntry(idx=i, arm=j.arm, overrides=j.overrides, dir=rel(j.dir), status=j.status,
                                    error=j.error, note=j.note).to_json() for i, j in enumerate(jobs)],
    })


# --------------------------------------------------------------------------- log lines


def plan_line(jobs: Sequence[SweepJob], merged: Sequence[str], sweep_dir: Path, to_run: int, checked: int,
              seconds: float, prepared: int) -> str:
    """What the sweep holds and what of it runs, once triage and the prepare step are done."""
    finished = sum(j.note == FINISHED_BEFORE for j in jobs)
    elsewhere = sum(bool(j.note and j.note.startswith(RUNNING_ELSEWHERE)) for j in jobs)
    elsewhere_text = f", {elsewhere} running elsewhere (not launched twice)" if elsewhere else ""
    drifted = sum(bool(j.error and j.error.startswith(CONFIG_DRIFT)) for j in jobs)
    drift_text = f", {drifted} not launched for config drift (force=true re-runs them)" if drifted else ""
    by_arm: Dict[str, int] = {}
    for job in jobs:
        by_arm[job.arm or "all"] = by_arm.get(job.arm or "all", 0) + 1
    arms_text = ", ".join(f"{k}: {v}" for k, v in by_arm.items())
    merged_text = f" ({len(merged)} duplicate grid points merged)" if merged else ""
    prepared_text = f"; {prepared} prepare jobs ran first" if prepared else ""
    return (f"{len(jobs)} jobs{merged_text} ({arms_text}) in {sweep_dir}; {finished} already finished, "
            f"{to_run} to run{elsewhere_text}{drift_text} (checked {checked} configs in {seconds:.1f}s"
            f"{prepared_text})")


def progress_line(jobs: Sequence[SweepJob], started: float, batches_left: int, per_batch: float) -> str:
    """Done so far, and the time to go at the pace of the batches so far."""
    c = counts(jobs)
    done = len(jobs) - c[R.PENDING]
    eta = f", about {duration(per_batch * batches_left)} to go" if batches_left and per_batch else ""
    diverged = f", {c[R.DIVERGED]} diverged" if c.get(R.DIVERGED) else ""
    return (f"{done}/{len(jobs)} done: {c[R.FINISHED]} finished, {c[R.SKIPPED]} skipped, "
            f"{c[R.FAILED]} failed{diverged}, {c[R.PENDING]} left ({duration(time.time() - started)}{eta})")


def done_line(jobs: Sequence[SweepJob], started: float, sweep_dir: Path) -> str:
    c = counts(jobs)
    diverged = f", {c[R.DIVERGED]} diverged (the learning rate, most likely)" if c.get(R.DIVERGED) else ""
    return (f"sweep done in {duration(time.time() - started)}: {c[R.FINISHED]} finished, "
            f"{c[R.SKIPPED]} skipped, {c[R.FAILED]} failed{diverged}; status in {Path(sweep_dir) / R.SWEEP_FILE}; "
            f"report: dpo-ppo-report {sweep_dir}")


def failed_message(name: str, jobs: Sequence[SweepJob], shown_at_most: int = 20) -> Optional[str]:
    """The failed jobs (index, overrides, folder, error), for SweepFailed; None when none failed."""
    failed: List[Any] = [(i, j) for i, j in enumerate(jobs) if j.status == R.FAILED]
    if not failed:
        return None
    lines = "\n".join(f"  #{i} {' '.join(j.overrides)}\n     {j.dir}\n     {j.error}"
                      for i, j in failed[:shown_at_most])
    more = (f"\n  ... and {len(failed) - shown_at_most} more (see sweep.json)"
            if len(failed) > shown_at_most else "")
    return (f"[{name}] {len(failed)} of {len(jobs)} jobs failed (the others ran):\n{lines}{more}\n"
            f"Re-run the same command to retry them; finished jobs are skipped.")
