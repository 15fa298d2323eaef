"""One process per job folder: a lock file with a heartbeat.

A relaunched sweep (or a second ``dpo-ppo`` with the same config) must never run a job that is
still running elsewhere, and must take over a job whose process died.  ``JobLock`` creates
``<job dir>/.job.lock`` atomically (``O_EXCL``, which also holds on NFS) with who holds it (host,
pid, SLURM job), and a daemon thread touches it every ``heartbeat_s`` seconds while the job runs.
Another process finds the lock and

- takes it over when it is stale: no heartbeat for ``stale_s`` seconds (the holder died without
  cleaning up, on whatever host), or its holder is a dead process on this host, or the holder is
  this very SLURM job (a requeue after preemption or timeout keeps the job id);
- otherwise backs off: ``acquire()`` returns False (the caller skips the job and says where it
  runs) or, with ``wait_s``, polls until the lock is free or stale.

Defaults come from the environment: ``DPO_PPO_LOCK_STALE_S`` (600) and
``DPO_PPO_LOCK_HEARTBEAT_S`` (30).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_FILE = ".job.lock"


def _slurm_id() -> str | None:
    job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if job and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host still runs.  A zombie (killed, not yet reaped: a killed
    sweep's orphaned worker waits for the init process to reap it, which in a container can take
    seconds) answers signal 0 like a live process, so on Linux its state is read from /proc."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]  # the field after "(comm)"
    except (OSError, IndexError):  # no /proc (macOS) or gone meanwhile: signal 0's answer stands
        return True
    return state not in ("Z", "X")


class JobLock:
    def __init__(self, job_dir: str | Path, stale_s: float | None = None, heartbeat_s: float | None = None):
        self.path = Path(job_dir) / LOCK_FILE
        self.stale_s = float(stale_s if stale_s is not None else os.environ.get("DPO_PPO_LOCK_STALE_S", 600))
        self.heartbeat_s = float(heartbeat_s if heartbeat_s is not None
                                 else os.environ.get("DPO_PPO_LOCK_HEARTBEAT_S", 30))
        self.token = uuid.uuid4().hex
        self.holder: dict | None = None  # who holds it, when acquire() returned False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _me(self) -> dict:
        return {"token": self.token, "host": socket.gethostname(), "pid": os.getpid(), "slurm": _slurm_id(),
                "since": time.strftime("%Y-%m-%d %H:%M:%S")}

    def read(self) -> dict | None:
        try:
            data = json.loads(self.path.read_text())
            data["age_s"] = time.time() - self.path.stat().st_mtime
            return data
        except (OSError, ValueError):
            return None

    def stale_reason(self, holder: dict) -> str | None:
        """Why the lock ``holder`` describes may be taken over, or None while it is alive."""
        if holder.get("age_s", 0) > self.stale_s:
            return f"no heartbeat for {holder['age_s']:.0f} s"
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int) \
                and not _pid_alive(holder["pid"]):
            return f"process {holder['pid']} on this host is gone"
        slurm = _slurm_id()
        if slurm and holder.get("slurm") == slurm and holder.get("host") != socket.gethostname():
            return f"held by this SLURM job ({slurm}) before it was requeued"
        return None

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(self._me(), f)
        return True

    def try_acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self._create():
            holder = self.read()
            if holder is None:  # vanished meanwhile, or half-written by a holder that just started
                if self.path.exists():
                    self.holder = {"host": "?", "pid": "?", "age_s": 0.0}
                    return False
            else:
                reason = self.stale_reason(holder)
                if reason is None:
                    self.holder = holder
                    return False
                # rename is atomic: of several processes taking over, one moves the stale lock
                try:
                    os.replace(self.path, self.path.with_name(f"{LOCK_FILE}.stale-{self.token}"))
                except FileNotFoundError:
                    pass
                else:
                    os.unlink(self.path.with_name(f"{LOCK_FILE}.stale-{self.token}"))
                    log.warning("taking over the lock of %s (host %s, pid %s): %s", self.path.parent,
                                holder.get("host"), holder.get("pid"), reason)
            if not self._create():
                self.holder = self.read() or {"host": "?", "pid": "?", "age_s": 0.0}
                return False
        self.holder = None
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="job-lock-heartbeat", daemon=True)
        self._thread.start()
        return True

    def acquire(self, wait_s: float = 0.0, poll_s: float = 1.0) -> bool:
        deadline = time.time() + wait_s
        while True:
            if self.try_acquire():
                return True
            if time.time() >= deadline:
                return False
            time.sleep(poll_s)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(self.path)
            except OSError:  # taken from us (we looked dead): nothing to heartbeat any more
                return

    def owned(self) -> bool:
        holder = self.read()
        return bool(holder) and holder.get("token") == self.token

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self.owned():
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def describe(self) -> str:
        h = self.holder or {}
        where = f"host {h.get('host')}, pid {h.get('pid')}" + (f", SLURM job {h['slurm']}" if h.get("slurm") else "")
        return f"{where}, since {h.get('since', '?')}, last heartbeat {h.get('age_s', 0):.0f} s ago"

    def __enter__(self):
        if not self.acquire():
            raise RuntimeError(f"{self.path.parent} is locked by another process ({self.describe()})")
        return self

    def __exit__(self, *exc):
        self.release()
