"""Where policy snapshots live, and how a model folder is written without ever being half there.

Both trainers save the policy every ``snapshot_every`` examples to
``<job>/snapshots/ex_<examples:07d>/`` (the analyses read divergence over training from them), and
the job saves its final ``policy/`` the same way.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def snapshot_dir(job_dir, examples: int) -> Path:
    return Path(job_dir) / "snapshots" / f"ex_{examples:07d}"


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished folder into place: the old one is only removed once the new one is there."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def save_model_dir(model, tokenizer, final: Path) -> Path:
    """``save_pretrained`` model and tokenizer into ``final`` through a temp folder beside it."""
    final = Path(final)
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():  # left by an attempt killed while saving
        shutil.rmtree(tmp)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    replace_dir(tmp, final)
    return final
