"""Which GPU a job runs on when several jobs share a machine (``device=auto``).

A job with ``device=auto`` on a machine with GPUs claims one of ``hardware.jobs_per_gpu`` slots
on each visible GPU and holds it while it runs, so that jobs started side by side (a local sweep
through ``hydra/launcher=joblib_gpu``, the N jobs of one SLURM allocation) spread over the GPUs,
each taking the least-loaded one:

- a slot is a lock file ``<gpu>.<slot>.lock`` in a per-user folder of the machine's temp
  folder (``DPO_PPO_GPU_SLOTS_DIR`` to move it), held with a non-blocking ``fcntl.flock``; the
  lock goes when the job releases it or its process ends, however it ends (no stale slots);
- ``<gpu>`` names the physical card (its UUID where torch reports it), so processes that see
  the GPUs in another order or through another ``CUDA_VISIBLE_DEVICES`` count the same slots;
- the job takes a free slot on the GPU with the fewest holders (ties: the GPU this process
  used before, then the lowest index);
- all ``jobs_per_gpu x GPUs`` slots taken: the job still runs, on the GPU with the fewest
  holders, in an extra slot that others count, and says so (batch sizes were chosen for
  ``jobs_per_gpu`` jobs per GPU: raise ``hardware.jobs_per_gpu`` if it runs out of memory);
- no GPU: the CPU, nothing claimed.

A process keeps its slot from one job to the next (a joblib worker runs many) until
``release()``; ``dpo_ppo.main`` releases it when a job ends.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

try:
    import fcntl
except ImportError:  # not a POSIX system: no placement, every job takes the first GPU
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("dpo_ppo")

SLOTS_ENV = "DPO_PPO_GPU_SLOTS_DIR"


def slot_dir() -> Path:
    """The folder of the slot lock files: per user, on this machine."""
    root = os.environ.get(SLOTS_ENV) or os.path.join(tempfile.gettempdir(), f"dpo-ppo-gpus-{os.getuid()}")
    path = Path(root)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def visible_gpu_count() -> int:
    """CUDA devices this process sees (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def gpu_ids() -> List[str]:
    """One file-name-safe name per visible CUDA device, in torch's index order: the card's UUID
    where torch reports it (the same card under any CUDA_VISIBLE_DEVICES), else this host and
    the device's entry in CUDA_VISIBLE_DEVICES (or its index)."""
    n = visible_gpu_count()
    if not n:
        return []
    import torch

    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    ids = []
    for i in range(n):
        uuid = getattr(torch.cuda.get_device_properties(i), "uuid", None)
        name = f"gpu-{uuid}" if uuid else f"{socket.gethostname()}-dev-{visible[i] if i < len(visible) else i}"
        ids.append(re.sub(r"[^A-Za-z0-9_.-]+", "_", name))
    return ids


def concurrent_jobs(jobs_per_gpu) -> int:
    """How many jobs a local sweep runs at once: ``hardware.jobs_per_gpu`` x visible GPUs (one
    "GPU" without any: the CPU). The ``dpo_ppo_gpu_jobs`` resolver of conf/hydra/launcher/joblib_gpu.yaml."""
    return check_jobs_per_gpu(jobs_per_gpu) * max(1, visible_gpu_count())


def check_jobs_per_gpu(value) -> int:
    """``hardware.jobs_per_gpu`` as a positive int, or an error naming the key."""
    return positive_int(value, "hardware.jobs_per_gpu", " (jobs sharing one GPU)")


def positive_int(value, key: str, meaning: str = "") -> int:
    """``value`` as an int >= 1 (bools and floats refused), or a ValueError naming ``key``."""
    try:
        n = None if isinstance(value, (bool, float)) else int(value)
    except (TypeError, ValueError):
        n = None
    if n is None or n < 1:
        raise ValueError(f"{key} must be an integer >= 1{meaning}, got {value!r}")
    return n


def task_cores() -> int:
    """CPU cores this process may use: OMP_NUM_THREADS when set, else its affinity."""
    try:
        n = int(os.environ.get("OMP_NUM_THREADS", ""))
        if n > 0:
            return n
    except ValueError:
        pass
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("dpo_ppo_gpu_jobs"):
        OmegaConf.register_new_resolver("dpo_ppo_gpu_jobs", concurrent_jobs)


# --------------------------------------------------------------------------- slots


@dataclass
class GpuSlot:
    """A job's place: ``gpu`` (torch index; None: the CPU) and the slot it holds there."""

    gpu: Optional[int]
    slot: Optional[int] = None
    jobs_per_gpu: int = 1
    gpus: int = 0
    extra: bool = False  # every regular slot was taken: an extra one beyond jobs_per_gpu
    path: Optional[Path] = None
    _fd: Optional[int] = field(default=None, repr=False)

    @property
    def device(self) -> str:
        return "cpu" if self.gpu is None else f"cuda:{self.gpu}"

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None

    def describe(self) -> str:
        if self.gpu is None:
            return "cpu (no GPU)"
        if self.slot is None:
            return f"{self.device} (no slot: placement unavailable)"
        total = self.jobs_per_gpu * self.gpus
        if self.extra:
            return (f"{self.device}, an extra slot: all {total} slots (hardware.jobs_per_gpu={self.jobs_per_gpu} "
                    f"x {self.gpus} GPUs) were taken")
        return f"{self.device}, slot {self.slot + 1} of {self.jobs_per_gpu} (hardware.jobs_per_gpu) on {self.gpus} GPU(s)"

    def __del__(self) -> None:  # a claim nobody holds on to frees its slot
        try:
            self.release()
        except Exception:
            pass

    def __enter__(self) -> "GpuSlot":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _try_lock(path: Path) -> Optional[int]:
    """An fd holding an exclusive lock on ``path``, or None when another holder has it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return None
        raise
    try:  # who holds it, for a person looking at the folder
        os.ftruncate(fd, 0)
        os.write(fd, f"{socket.gethostname()} pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
    except OSError:
        pass
    return fd


def _slot_path(folder: Path, gpu_id: str, slot: int) -> Path:
    return folder / f"{gpu_id}.{slot}.lock"


def holders(folder: Path, gpu_id: str) -> int:
    """How many processes hold a slot (regular or extra) on the GPU named ``gpu_id``."""
    count = 0
    for path in folder.glob(f"{gpu_id}.*.lock"):
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            count += 1  # held exclusively by a job
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
    return count


def claim(jobs_per_gpu: int = 1, prefer: Optional[int] = None, ids: Optional[List[str]] = None) -> GpuSlot:
    """Claim a slot for one job (see the module docstring); ``release()`` (or process exit)
    frees it. ``prefer``: the GPU index to take among equally loaded ones."""
    jobs_per_gpu = check_jobs_per_gpu(jobs_per_gpu)
    ids = gpu_ids() if ids is None else list(ids)
    if not ids:
        return GpuSlot(gpu=None, jobs_per_gpu=jobs_per_gpu)
    n = len(ids)
    if fcntl is None:
        return GpuSlot(gpu=0, jobs_per_gpu=jobs_per_gpu, gpus=n)
    try:
        folder = slot_dir()
    except OSError as err:
        log.warning("GPU placement unavailable (%s: %s); taking cuda:0", os.environ.get(SLOTS_ENV) or "temp folder", err)
        return GpuSlot(gpu=0, jobs_per_gpu=jobs_per_gpu, gpus=n)

    def by_load() -> List[int]:
        load = [holders(folder, gpu_id) for gpu_id in ids]
        return sorted(range(n), key=lambda g: (load[g], g != prefer, g))

    # a probe of another claimer (holders()) can make a free slot look taken for a moment:
    # look twice before settling for an extra slot
    for attempt in range(3):
        order = by_load()
        for g in order:
            for slot in range(jobs_per_gpu):
                path = _slot_path(folder, ids[g], slot)
                fd = _try_lock(path)
                if fd is not None:
                    return GpuSlot(gpu=g, slot=slot, jobs_per_gpu=jobs_per_gpu, gpus=n, path=path, _fd=fd)
        time.sleep(0.02 * (attempt + 1))
    g = by_load()[0]
    others = holders(folder, ids[g])
    slot = jobs_per_gpu
    while True:  # the first free extra slot on the least-loaded GPU, so that others count this job
        path = _slot_path(folder, ids[g], slot)
        fd = _try_lock(path)
        if fd is not None:
            break
        slot += 1
    found = GpuSlot(gpu=g, slot=slot, jobs_per_gpu=jobs_per_gpu, gpus=n, extra=True, path=path, _fd=fd)
    log.warning("all %d GPU slots are taken (hardware.jobs_per_gpu=%d x %d GPUs): this job shares %s with "
                "%d other job(s) (slots in %s); raise hardware.jobs_per_gpu if it runs out of GPU memory",
                jobs_per_gpu * n, jobs_per_gpu, n, found.device, others, folder)
    return found


# --------------------------------------------------------------------------- this process's job

_HELD: Optional[GpuSlot] = None
_MUTEX = threading.Lock()


def _set_current(gpu: int) -> None:
    import torch

    torch.cuda.set_device(gpu)


def resolve_device(name, jobs_per_gpu: int = 1, model=None):
    """The ``torch.device`` a device name (checked by ``inputs.check_device``) means
    here: ``auto`` (or None) is ``model``'s device when a model is given, else a GPU when there is
    one (a slot on the least-loaded one, ``jobs_per_gpu`` slots per GPU: ``job_device``), else
    the CPU; any other name (cpu, cuda, cuda:N, mps) is taken as it is."""
    import torch

    if name is not None and str(name) != "auto":
        return torch.device(name)
    if model is not None:
        return next(model.parameters()).device
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return job_device(jobs_per_gpu)


def job_device(jobs_per_gpu: int = 1):
    """The ``torch.device`` for this process's job with ``device=auto``: the GPU of the slot it
    holds (claimed on first use, kept until ``release()``), made torch's current device."""
    import torch

    global _HELD
    jobs_per_gpu = check_jobs_per_gpu(jobs_per_gpu)
    with _MUTEX:
        mine = _HELD
        # keep the slot from the last job, unless it was an extra one (a regular one may be free
        # now) or was claimed for another jobs_per_gpu
        if mine is None or mine.jobs_per_gpu != jobs_per_gpu or mine.extra or not mine.held:
            prefer = mine.gpu if mine is not None else None
            if mine is not None:
                mine.release()
            mine = _HELD = claim(jobs_per_gpu, prefer=prefer)
            log.info("GPU placement: %s", mine.describe())
        if mine.gpu is None:
            return torch.device("cpu")
        _set_current(mine.gpu)
        return torch.device("cuda", mine.gpu)


def current_claim() -> Optional[GpuSlot]:
    """The slot this process holds, if any."""
    return _HELD


def release() -> None:
    """Free this process's slot (the job ended); the next job of the process claims again."""
    global _HELD
    with _MUTEX:
        if _HELD is not None:
            _HELD.release()
            _HELD = None
