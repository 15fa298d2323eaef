"""Fabricated sweep folders for the report's tests: job folders written through the results
contract (dpo_ppo.results), with truths planted in their metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import numpy as np

from dpo_ppo import results as R

BIAS = "analysis/weights/msd_biases"
WEIGHTS = "analysis/weights/msd_weights"
BINARY = R.policy_metric("binary_loss")


def write_job(root: Path, algorithm: str, knob: float, seed: int, metrics: Dict[str, float], *,
              status: str = R.FINISHED, params: Optional[dict] = None, overrides: Sequence[str] = (),
              wall: Optional[float] = 100.0, mem: Optional[float] = 500.0, error: Optional[str] = None,
              rows: Optional[dict] = None, train_log: Sequence[dict] = (), per_head: Optional[dict] = None,
              over_training: Optional[dict] = None, name: str = "fab",
              version: Optional[int] = -1) -> Path:
    """One job folder; ``version``: its results.json ``algorithm_version`` (-1: this code's, None:
    not recorded, as in folders made before versions were)."""
    key = "kl_target" if algorithm == "ppo" else "beta"
    extra = "".join(f",{o}" for o in overrides)
    tag = "".join(f",{k}={v}" for k, v in sorted((params or {}).items()))
    folder = Path(root) / f"algorithm.{key}={knob},algorithm={algorithm}{tag}{extra},seed={seed}"
    folder.mkdir(parents=True)
    p = {"algorithm": algorithm, "arm": algorithm, "rounds": 1 if algorithm == "dpo" else None,
         "loss_type": "sigmoid" if algorithm == "dpo" else None, "beta": knob if algorithm in ("dpo", "rloo", "grpo") else None,
         "kl_target": knob if algorithm == "ppo" else None, "kl_coef": None,
         "kl_controller": "log" if algorithm == "ppo" else None, "seed": seed, "examples": 128, "lr": 5e-4,
         "num_completions": 2, "prefix_len": 8, "prefix_len_max": None, "completion_len": 48,
         "value_model": "separate" if algorithm == "ppo" else None, "compute": "native",
         "optimizer_steps": 8, "model": "tiny", "data": "synthetic", "classifier": "tiny"}
    p.update(params or {})
    assert set(p) == set(R.PARAM_KEYS)
    R.write_results(folder, {
        "status": status, "algorithm": algorithm, "name": name,
        "overrides": [f"algorithm={algorithm}", f"algorithm.{key}={knob}", f"seed={seed}", *overrides],
        "params": p, "config": {"name": name, "logger": {"project": "dpo-ppo-test", "entity": None}},
        **({} if version is None else {R.ALGORITHM_VERSION: R.algorithm_version(algorithm) if version == -1 else version}),
        "metrics": dict(metrics) if status == R.FINISHED else {},
        "compute": {"optimizer_steps": 8, "examples_seen": 128},
        "analysis": {"per_head": per_head or {}, "images": {}, "over_training": over_training or {}},
        "artifacts": {}, "wall_time_s": wall, "peak_mem_mb": mem, "error": error, "traceback": None,
    })
    if rows is not None:
        R.write_eval_rows(folder / R.EVAL_ROWS_FILE, [dict(zip(rows, vals)) for vals in zip(*rows.values())])
    if train_log:
        (folder / R.TRAIN_LOG_FILE).write_text("".join(json.dumps(r) + "\n" for r in train_log))
    return folder


def planted_sweep(root: Path, effects: Dict[str, float], *, seeds: int = 3, knobs: int = 3,
                  noise: float = 0.05, params: Optional[Callable[[str], dict]] = None,
                  kl_shift: Dict[str, float] = None) -> Path:
    """DPO and PPO runs spread over KL 0.5-5 nats (knobs x seeds each). Every metric is
    1 + 0.3 log KL + a seed-level noise, identical for both algorithms, plus ``effects[metric]``
    for PPO: a planted PPO - DPO difference at every KL."""
    rng = np.random.default_rng(7)
    seed_noise = rng.normal(0.0, noise, size=(seeds, 8))
    kl_shift = kl_shift or {}
    for algorithm in R.ALGORITHMS:
        for k in range(knobs):
            for s in range(seeds):
                kl = 0.5 * 10 ** (k / max(1, knobs - 1)) * (1 + 0.03 * s) * (1 + kl_shift.get(algorithm, 0.0))
                base = 1 + 0.3 * math.log(kl)
                metrics = {R.KL: kl, R.REWARD: 0.5 + 0.05 * math.log(kl), R.REF_REWARD: 0.4}
                for i, metric in enumerate(sorted({BIAS, WEIGHTS, BINARY} | set(effects))):
                    metrics[metric] = base + seed_noise[s, i % 8] + (effects.get(metric, 0.0) if algorithm == "ppo" else 0.0)
                knob = [0.02, 0.1, 0.5][k % 3] * (1 + k // 3) if algorithm == "dpo" else [1, 3, 9][k % 3] * (1 + k // 3)
                write_job(root, algorithm, knob, s, metrics, params=params(algorithm) if params else None)
    return root


def planted_facet(rng: np.random.Generator, curve: Callable[[float], float], grids: Dict[str, Sequence[float]],
                  seeds: int, sigma: float, effect: Callable[[float], float] = lambda x: 0.0,
                  metric: str = BIAS, kl_jitter: float = 0.05, config_sd: float = 0.0):
    """One facet of in-memory runs (no folders): each algorithm's configurations at the KL values of
    ``grids[algorithm]`` (jittered per seed by exp(kl_jitter N(0, 1))), the metric curve(log KL) +
    N(0, sigma), plus effect(log KL) for PPO, plus an offset N(0, config_sd) per configuration
    (shared by its seeds: a configuration off its algorithm's curve). For the estimator's calibration tests: thousands of
    fits in seconds."""
    from dpo_ppo.report.facets import Facet
    from dpo_ppo.report.load import Run

    runs = {}
    for algorithm, grid in grids.items():
        knob = "beta" if algorithm == "dpo" else "kl_target"
        side = []
        for c, kl in enumerate(grid):
            offset = config_sd * rng.normal() if config_sd else 0.0
            for s in range(seeds):
                k = kl * math.exp(kl_jitter * rng.normal())
                x = math.log(k)
                y = curve(x) + (effect(x) if algorithm == "ppo" else 0.0) + offset + sigma * rng.normal()
                side.append(Run(dir=Path("/nowhere"), rel=f"{algorithm}-{c}-{s}", status=R.FINISHED,
                                algorithm=algorithm, params={"seed": s, knob: float(kl)},
                                metrics={metric: y, R.KL: k}))
        runs[algorithm] = side
    return Facet({}, {}, runs)
