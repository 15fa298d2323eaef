"""The KL coefficient's controllers: what moves ``kl_coef`` (the weight of -KL in PPO's reward)
between updates.  ``make_kl_controller`` picks one from the config (``config.schedule.kl_controller_name``)."""

from __future__ import annotations

import math
from typing import Optional

from dpo_ppo.config.schedule import kl_controller_name


class ZieglerKLController:
    """Ziegler et al. (2019), as in old TRL (``kl_controller=ziegler``, the paper presets):
    e = clip(KL / target - 1, -0.2, 0.2), coef *= 1 + e * n / horizon.

    The coefficient moves by at most 20% x samples/horizon per update, so a run much shorter than
    the horizon cannot reach its target: with targets under the KL the run drifts to, the error sits
    at the +0.2 clip and different targets give the same run.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]


class LogKLController:
    """A PI controller on log(coef) (``kl_controller=log``, the default), gain tied to run length.

    error    e = clip(log(KL / target), -0.5, 1)   (log space: 2x over is +0.69, 2x under -0.69)
    integral I <- I + k_i * e                       (unless KL already moves toward the target)
    coef       = exp(I + k_p * e)

    ``k_i = min(1, ln(range) / (settle * updates))``: the coefficient can cross a factor ``range``
    (100) within the first ``settle`` (25%) of the run's updates, whatever its length, so a short
    run reaches its target and a long one moves smoothly; ``k_p = k_i`` damps the overshoot of a
    pure integrator.  ``gain`` overrides k_i.  Three guards, each from a run on the embedded
    default: the first rollout is skipped (the policy still is the reference, so its KL is 0 and
    says nothing); the integral holds while KL is already moving toward the target (anti-windup:
    KL rises within one update but falls over several, and an integrator that kept pushing while
    it fell wound the coefficient from 0.2 to 1600); and the error is clipped at -0.5 below, 1
    above, so the coefficient falls at half the speed it rises (below a high target KL is noisy,
    each dip integrated the coefficient down, and from 0.007 it took several updates to climb back
    once KL crossed 16: the run overshot to 22.6).
    """

    RANGE, SETTLE = 100.0, 0.25

    def __init__(self, init_kl_coef: float, target: float, updates: int, gain: Optional[float] = None):
        self.target = float(target)
        self.k_i = float(gain) if gain else min(1.0, math.log(self.RANGE) / (self.SETTLE * max(1, updates)))
        self.k_p = self.k_i
        self.integral = math.log(init_kl_coef)
        self.value = float(init_kl_coef)
        self.last_kl: Optional[float] = None

    def update(self, current_kl: float, n_steps: int) -> None:
        previous, self.last_kl = self.last_kl, current_kl
        if previous is None:  # the first rollout: the policy is the reference
            return
        error = min(max(math.log(max(current_kl, 1e-6) / self.target), -0.5), 1.0)
        toward = (error > 0 and current_kl < previous) or (error < 0 and current_kl > previous)
        if not toward:
            self.integral += self.k_i * error
        self.value = math.exp(self.integral + self.k_p * error)

    def state_dict(self) -> dict:
        return {"value": self.value, "integral": self.integral, "last_kl": self.last_kl}

    def load_state_dict(self, state: dict) -> None:
        self.value, self.integral, self.last_kl = state["value"], state["integral"], state["last_kl"]


class FixedKLController:
    """A constant KL coefficient (``kl_coef=X``): the direct analogue of DPO's beta."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]


def make_kl_controller(cfg, updates: int):
    name = kl_controller_name(cfg)
    if name == "fixed":
        return FixedKLController(cfg.kl_coef)
    if name == "ziegler":
        return ZieglerKLController(cfg.init_kl_coef, cfg.kl_target, cfg.kl_horizon)
    if name == "log":
        return LogKLController(cfg.init_kl_coef, cfg.kl_target, updates, getattr(cfg, "kl_gain", None))
    raise ValueError(f"kl_controller must be log or ziegler, got {name!r}")
