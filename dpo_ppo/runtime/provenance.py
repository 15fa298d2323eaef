"""What a result was made with: code version, library versions, where it ran.

``provenance()`` is written into every job's ``results.json`` and its W&B config, so a number in a
report can be traced to a commit (and whether the tree had uncommitted edits), the versions of the
libraries that produced it, the SLURM job (and array task) that ran it, the host and the
accelerator.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

# distribution names whose versions matter for a result
PACKAGES = ("dpo-ppo", "torch", "transformers", "trl", "transformer-lens", "hydra-core", "omegaconf",
            "datasets", "tokenizers", "accelerate", "wandb", "submitit")
SLURM_VARS = {"job_id": "SLURM_JOB_ID", "array_job_id": "SLURM_ARRAY_JOB_ID",
              "array_task_id": "SLURM_ARRAY_TASK_ID", "restart_count": "SLURM_RESTART_COUNT",
              "partition": "SLURM_JOB_PARTITION", "nodelist": "SLURM_JOB_NODELIST"}


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_state(path: str | Path | None = None) -> dict:
    """Commit and dirty flag of the checkout holding ``path`` (default: this package's source);
    nulls when the code does not run from a git checkout (e.g. a wheel install)."""
    where = Path(path) if path else Path(__file__).resolve().parents[1]  # the dpo_ppo package

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    # only this project's own checkout counts (not a repo that happens to hold a venv with a wheel)
    if top is None or (path is None and Path(top).resolve() != where.parent):
        return {"commit": None, "dirty": None}
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def slurm() -> dict | None:
    if "SLURM_JOB_ID" not in os.environ:
        return None
    return {key: os.environ.get(var) for key, var in SLURM_VARS.items()}


def accelerator() -> str:
    """The GPU's name when CUDA is there, else the CPU's."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(torch.cuda.current_device())
    except Exception:  # a broken CUDA install must not stop a job from recording itself
        pass
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {name}"


def provenance() -> dict:
    return {"git": git_state(), "versions": versions(), "slurm": slurm(), "host": socket.gethostname(),
            "accelerator": accelerator(), "argv": list(sys.argv), "pid": os.getpid()}
