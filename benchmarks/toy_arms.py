"""RLOO or GRPO (TRL's trainers through dpo_ppo.train.rl) on the exact toy of tests/exact_toy.py:
one run, its exact distance to the RLHF optimum pi* and its KL to the reference, as JSON; for GRPO
also its distance to GRPO's own fixed point (``exact_toy.grpo_fixed_point``, docs/kl_control.md).

    python benchmarks/toy_arms.py rloo 1.0 0 150                  # arm, beta, seed, steps
    python benchmarks/toy_arms.py grpo 0.3 0 300 scale_rewards=none   # any RLOO/GRPO field after them
"""

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import torch  # noqa: E402

import exact_toy as T  # noqa: E402


def _value(v: str):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def main(argv):
    torch.set_num_threads(1)
    name, beta, seed, steps = argv[0], float(argv[1]), int(argv[2]), int(argv[3])
    extra = {k: _value(v) for k, v in (a.split("=", 1) for a in argv[4:])}
    t0 = time.time()
    cfg = T.rl_config(name, beta=beta, examples=8 * steps, **extra)
    policy, ref, ref_logp, _ = T.train_rl(cfg, tempfile.mkdtemp(), seed=seed)
    seconds = round(time.time() - t0, 1)  # training (and the reference's set-up)
    m = T.measure(policy, ref_logp, beta)
    if name == "grpo":
        m.update(T.measure_grpo(policy, ref, cfg))
    print(json.dumps({"name": name, "beta": beta, "seed": seed, "steps": steps, **extra,
                      "s": seconds, **m}))


if __name__ == "__main__":
    main(sys.argv[1:])
