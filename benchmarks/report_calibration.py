"""Calibration of the report's matched-KL comparison (dpo_ppo/report/estimator.py, verdicts.py) on planted sweeps.

Each simulated sweep is one facet of in-memory runs: DPO and PPO configurations on a KL grid, the
metric a shared curve of log KL + seed noise (sd 1) + an offset per configuration (sd
``--config-sd``, shared by the configuration's seeds), plus a planted PPO - DPO effect. Printed:

- null: the share of sweeps with p < 0.05, for the midpoint test (Point.p) and for the claims
  table's test along the whole common range (the sup-t p of Comparison.curve), per KL grid,
  seeds and configuration spread (at most 0.05 is calibrated);
- power: the share of sweeps whose band finds a planted effect (constant, 3 sd);
- one end: an effect only above 3 nats: the share of sweeps whose band names a difference at the
  top of the range, and the share that names one where the truth is 0 (below 2 nats);
- TOST: an effect just inside / just outside an equivalence margin: the share called equivalent.

    python benchmarks/report_calibration.py --sims 200        # the numbers in docs/analyses.md
    python benchmarks/report_calibration.py --sims 40 --quick  # a smoke run
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from dpo_ppo.report import estimator as E  # noqa: E402
from sweepfab import BIAS, planted_facet  # noqa: E402

GRIDS = {
    "equal": {"dpo": [0.5, 1.0, 2.0, 4.0, 8.0], "ppo": [0.5, 1.0, 2.0, 4.0, 8.0]},
    "unequal": {"dpo": [0.5, 0.7, 1.0, 1.5, 8.0], "ppo": [0.5, 5.0, 6.0, 7.0, 8.0]},
    "three": {"dpo": [0.5, 2.0, 8.0], "ppo": [0.7, 2.5, 7.0]},
}


def quadratic(x: float) -> float:
    return 0.3 * x * x


def run(args) -> None:
    rng = np.random.default_rng(args.seed)
    sigma = 1.0
    print(f"{args.sims} sweeps per cell; noise sd 1 per run; n_boot {args.n_boot}")
    print("\nnull (no PPO - DPO effect): share with p < 0.05")
    print("| grid | seeds | config sd | midpoint p | along-range p (claims) |")
    print("|---|---|---|---|---|")
    grids = ("equal", "three") if args.quick else tuple(GRIDS)
    for name in grids:
        for seeds in (3, 5):
            for csd in (0.0, 1.0):
                mid = band = 0
                for i in range(args.sims):
                    comp = E.compare(planted_facet(rng, quadratic, GRIDS[name], seeds, sigma, config_sd=csd), BIAS,
                                     n_boot=args.n_boot, seed=i)
                    mid += comp.points[0].p < 0.05
                    band += comp.curve.sup_p() < 0.05
                print(f"| {name} | {seeds} | {csd:g} | {mid / args.sims:.3f} | {band / args.sims:.3f} |")
    print("\npower: PPO 3 sd above DPO at every KL: share with a band that leaves 0 (p < 0.05, along the range)")
    print("| grid | seeds | config sd | found |")
    print("|---|---|---|---|")
    for name in grids:
        for seeds, csd in ((3, 0.0), (5, 0.0), (5, 1.0)):
            found = sum(E.compare(planted_facet(rng, quadratic, GRIDS[name], seeds, sigma, effect=lambda x: 3.0,
                                                config_sd=csd), BIAS, n_boot=args.n_boot, seed=i).curve.sup_p() < 0.05
                        for i in range(args.sims))
            print(f"| {name} | {seeds} | {csd:g} | {found / args.sims:.3f} |")
    print("\none end: PPO 3 sd above DPO above 3 nats only (equal grid, 5 seeds, config sd 0): band verdicts")
    top = wrong = 0
    for i in range(args.sims):
        comp = E.compare(planted_facet(rng, quadratic, GRIDS["equal"], 5, sigma,
                                       effect=lambda x: 3.0 if x > math.log(3) else 0.0), BIAS,
                         n_boot=args.n_boot, seed=i)
        sign, kl = comp.curve.sign(), comp.curve.kl
        top += sign[-1] == 1
        wrong += bool(np.any(sign[kl < 2.0] != 0))
    print(f"difference named at the top (KL 8): {top / args.sims:.3f}; a difference named below 2 nats "
          f"(true 0 there): {wrong / args.sims:.3f}")
    print("\nTOST: effect 0 +- d vs margin 1 (equal grid, 5 seeds, config sd 0, sd 0.3 per run):"
          " share equivalent (IUT p < 0.05 along the range)")
    for d in (0.0, 0.5, 1.5):
        eq = 0
        for i in range(args.sims):
            comp = E.compare(planted_facet(rng, quadratic, GRIDS["equal"], 5, 0.3, effect=lambda x: d), BIAS,
                             n_boot=args.n_boot, seed=i)
            eq += comp.curve.tost_p(np.ones(len(comp.curve.kl))) < 0.05
        print(f"effect {d:g}: {eq / args.sims:.3f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sims", type=int, default=200)
    ap.add_argument("--n-boot", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true")
    t = time.time()
    run(ap.parse_args())
    print(f"\n{time.time() - t:.0f} s")
