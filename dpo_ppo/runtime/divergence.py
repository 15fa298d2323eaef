"""Divergence as a status: a non-finite loss, KL, reward or weight ends the job as ``diverged``
(``results.DIVERGED``) with one line naming the examples seen, the quantity and the likely knob.

Any trainer calls ``check_finite(values, step, knob=...)`` on what it logs (``Job.train_log``
does it for every trainer that logs through it); evaluation calls it on its metrics.  Torch-free:
``check_weights`` takes an iterable of tensors and asks them themselves."""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional


class Diverged(RuntimeError):
    """Training or evaluation met a non-finite value: the job ends with status ``diverged``."""

    def __init__(self, quantity: str, value: Any, step: Any, where: str = "training", knob: Optional[str] = None):
        self.quantity, self.value, self.step, self.where, self.knob = quantity, value, step, where, knob
        hint = f"; the likely cause is the learning rate ({knob}): lower it" if knob else ""
        at = f"after {step} examples" if isinstance(step, int) and not isinstance(step, bool) else f"at {step}"
        super().__init__(f"diverged: {quantity} = {value} in {where} {at}{hint}")


def non_finite(values: dict) -> Optional[tuple]:
    """The first ``(key, value)`` of ``values`` that is a number and not finite; None if none."""
    for key, value in (values or {}).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not math.isfinite(float(value)):
            return key, value
    return None


def check_finite(values: dict, step: Any, *, where: str = "training", knob: Optional[str] = None) -> None:
    """Raise ``Diverged`` when a logged number in ``values`` (losses, KL, rewards, ...) is NaN or
    infinite.  ``step``: where in the run (the examples seen, as every trainer logs); ``knob``: the
    setting to name, e.g. ``"algorithm.lr=1e6"``."""
    bad = non_finite(values)
    if bad is not None:
        raise Diverged(bad[0], bad[1], step, where, knob)


def check_weights(tensors: Iterable, step: Any, *, what: str = "policy weights", knob: Optional[str] = None) -> None:
    """Raise ``Diverged`` when any of ``tensors`` (a model's parameters) holds a NaN or infinity:
    one read-back for all of them."""
    import torch

    flags = [torch.isfinite(t).all() for t in tensors]
    if flags and not bool(torch.stack(flags).all()):
        raise Diverged(what, "non-finite", step, "training", knob)


def lr_knob(algo) -> Optional[str]:
    """``algorithm.lr=<value>`` of an algorithm config (None without one)."""
    lr = getattr(algo, "lr", None)
    return None if lr is None else f"algorithm.lr={lr:g}"
