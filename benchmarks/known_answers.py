"""The known-answer tables of docs/kl_control.md (issue 21): PPO and DPO on the enumerable toy of
tests/exact_toy.py, against the closed-form optimum pi* = pi_ref exp(r / beta) / Z.

    python benchmarks/known_answers.py [--updates 300] [--seeds 0 1 2] [--betas 1 0.3 0.1]
                                       [--targets 0.5 2] [--dpo] [--extra key=value ...]

Prints markdown rows; asserts nothing (tests/test_known_answers.py holds the bounds).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import torch  # noqa: E402

import exact_toy as T  # noqa: E402


def parse_extra(items):
    out = {}
    for item in items:
        key, value = item.split("=", 1)
        try:
            value = eval(value, {}, {})  # numbers, None, True/False
        except Exception:
            pass
        out[key] = value
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--updates", type=int, default=300)
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument("--betas", type=float, nargs="*", default=[1.0, 0.3, 0.1])
    ap.add_argument("--targets", type=float, nargs="*", default=[0.5, 2.0])
    ap.add_argument("--dpo", action="store_true", help="also the DPO rows")
    ap.add_argument("--extra", nargs="*", default=[], help="PPO config overrides, key=value")
    args = ap.parse_args()
    torch.set_num_threads(1)
    extra = parse_extra(args.extra)

    print("| PPO, kl_coef = beta | seed | KL(pi \\|\\| pi*) (worse prompt) | J / beta log Z gain | "
          "p(target) / pi*(target) | max trust KL | updates with a step cut back | s |")
    print("|---|---|---|---|---|---|---|---|")
    for beta in args.betas:
        for seed in args.seeds:
            log, t = [], time.time()
            with tempfile.TemporaryDirectory() as d:
                cfg = T.ppo_config(kl_coef=beta, examples=8 * args.updates, **extra)
                policy, _, ref_logp, _ = T.train(cfg, d, seed=seed, log=log)
            m = T.measure(policy, ref_logp, beta)
            p = min(m["p_target"].values())
            print(f"| {beta:g} | {seed} | {m['kl_to_opt']:.4f} ({m['kl_to_opt_max']:.4f}) | {m['gain']:.4f} | "
                  f"{p:.4f} / {m['p_target_opt']['A']:.4f} | {max(x['train/trust_kl'] for x in log):.3f} | "
                  f"{sum(x['train/early_stopped'] for x in log)} of {len(log)} | {time.time() - t:.0f} |", flush=True)

    if args.targets:
        print()
        print("| PPO, log controller | kl_coef at the end | beta*(T) | exact KL(pi \\|\\| pi_ref) | "
              "KL(pi \\|\\| pi*(beta*)) |")
        print("|---|---|---|---|---|")
        for target in args.targets:
            with tempfile.TemporaryDirectory() as d:
                cfg = T.ppo_config(kl_target=target, init_kl_coef=1.0, examples=8 * args.updates, **extra)
                policy, _, ref_logp, summary = T.train(cfg, d, seed=0)
            beta_star = T.beta_for_kl(ref_logp, target)
            m = T.measure(policy, ref_logp, beta_star)
            print(f"| kl_target={target:g} | {summary['kl_coef']:.3f} | {beta_star:.3f} | {m['kl_to_ref']:.3f} | "
                  f"{m['kl_to_opt']:.4f} |", flush=True)

    if args.dpo:
        print()
        print("| DPO, beta = 1 | pairs | seed | KL(pi \\|\\| pi*) | KL(pi_ref \\|\\| pi*) | gain |")
        print("|---|---|---|---|---|---|")
        for pairs in (2048,):
            for seed in args.seeds:
                with tempfile.TemporaryDirectory() as d:
                    policy, _, ref_logp, _ = T.train_dpo(1.0, pairs, d, seed=seed)
                m = T.measure(policy, ref_logp, 1.0)
                print(f"| | {pairs} | {seed} | {m['kl_to_opt']:.4f} | {m['ref_kl_to_opt']:.4f} | {m['gain']:.3f} |",
                      flush=True)


if __name__ == "__main__":
    main()
