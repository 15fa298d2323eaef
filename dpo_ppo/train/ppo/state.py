"""What a PPO run saves and resumes from: snapshots of the policy, and the resume state
(``out_dir/ppo_state``: models, optimizer, KL controller, running moments, RNGs and ``Progress``),
written atomically and read back with ``weights_only=True``."""

from __future__ import annotations

import logging
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from dpo_ppo.data.snapshots import replace_dir, save_model_dir, snapshot_dir


@dataclass
class Progress:
    """Where a run stands, saved with the resume state under these names."""
    examples: int = 0  # prefixes consumed
    updates: int = 0
    wall_s: float = 0.0  # wall seconds of the processes before this one
    last_snapshot: int = -1  # the examples of the last snapshot
    updates_all_cut_back: int = 0  # updates whose trust region cut back every step it took
    # what the run cost, for comparisons at matched compute
    compute: dict = field(default_factory=lambda: {"optimizer_steps": 0, "examples_seen": 0, "trained_tokens": 0,
                                                   "generated_tokens": 0})
    kl_history: list = field(default_factory=list)  # train/kl of every update


def save_snapshot(policy, tokenizer, out_dir: Path, examples: int) -> Path:
    """The policy LM alone (no value head), loadable with from_pretrained."""
    return save_model_dir(policy, tokenizer, snapshot_dir(out_dir, examples))


def rng_state() -> dict:
    """The RNG states as tensors and plain values only, so that ``load_state`` reads them with
    ``weights_only=True`` (numpy's state holds an ndarray: kept as a tensor of its words)."""
    kind, words, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [kind, torch.from_numpy(np.asarray(words, dtype=np.int64)), int(pos), int(has_gauss),
                       float(gauss)]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, words, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, words.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(out_dir: Path, state: dict) -> None:
    """Everything needed to resume, written to a temporary folder and moved into place."""
    final = out_dir / "ppo_state"
    tmp = out_dir / "ppo_state.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    torch.save(state, tmp / "state.pt")
    replace_dir(tmp, final)


class UnsafeState(ValueError):
    """A resume state file that holds more than tensors and plain values: refused, never run."""


def load_state(out_dir: Path) -> Optional[dict]:
    """The saved state, or None; falls back to ``ppo_state.old`` if a crash hit mid-replace.
    Read with ``weights_only=True``: a job folder may be shared (a cluster's scratch, a copied
    sweep), and a pickle that names any other object (code to run) is refused, not executed."""
    import pickle

    for name in ("ppo_state", "ppo_state.old"):
        path = out_dir / name / "state.pt"
        if path.exists():
            try:
                return torch.load(path, map_location="cpu", weights_only=True)
            except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise UnsafeState(
                    f"{path} holds more than tensors and plain values (or was written by an older version); "
                    f"refused, not loaded ({first[:200]}). Delete {path.parent} or run with force=true "
                    f"to train from scratch") from None
    return None




def checkpoint(out_dir: Path, layout: dict, progress: Progress, wall_s: float, *, policy, model, optimizer, kl_ctl,
               normalizer, score_moments, generator: torch.Generator) -> None:
    """Save everything needed to resume (``save_state``); ``wall_s``: the run's wall seconds so far."""
    save_state(out_dir, {
        "layout": layout, "policy": policy.state_dict(), "value": model.value_state_dict(),
        "optimizer": optimizer.state_dict(), "kl_controller": kl_ctl.state_dict(),
        "compute": progress.compute, "kl_history": progress.kl_history,
        "normalizer": normalizer.state_dict() if normalizer is not None else None,
        "score_moments": score_moments.state_dict(),
        "generator": generator.get_state(), "rng": rng_state(), "examples": progress.examples,
        "updates": progress.updates, "updates_all_cut_back": progress.updates_all_cut_back, "wall_s": wall_s,
        "last_snapshot": progress.last_snapshot})


def resume(out_dir: Path, layout: dict, total: int, *, policy, model, optimizer, kl_ctl, normalizer, score_moments,
           generator: torch.Generator) -> Optional[Progress]:
    """Load ``out_dir/ppo_state`` into the run's objects and return its ``Progress``; None when there is
    none.  A state written with another ``layout`` is refused."""
    state = load_state(out_dir)
    if state is None:
        return None
    if state["layout"] != layout:
        raise ValueError(f"{out_dir / 'ppo_state'} was written by a run with {state['layout']}, "
                         f"not {layout}; use a fresh out_dir")
    policy.load_state_dict(state["policy"])
    model.load_value_state_dict(state["value"])
    optimizer.load_state_dict(state["optimizer"])
    kl_ctl.load_state_dict(state["kl_controller"])
    if normalizer is not None and state["normalizer"] is not None:
        normalizer.load_state_dict(state["normalizer"])
    if state.get("score_moments") is not None:
        score_moments.load_state_dict(state["score_moments"])
    generator.set_state(state["generator"])
    set_rng_state(state["rng"])
    progress = Progress(examples=state["examples"], updates=state["updates"], wall_s=state["wall_s"],
                        last_snapshot=state["last_snapshot"],
                        updates_all_cut_back=state.get("updates_all_cut_back", 0),
                        compute=state["compute"], kl_history=state["kl_history"])
    logging.getLogger(__name__).info("ppo: resuming from %s at %d of %d examples (update %d)",
                                     out_dir / "ppo_state", progress.examples, total, progress.updates)
    return progress
