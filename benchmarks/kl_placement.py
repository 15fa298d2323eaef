"""Where do the sweep's knobs put a run in KL?  Runs one job per setting and prints a table.

    python benchmarks/kl_placement.py                       # PPO kl_target 1..16, kl_coef, DPO beta x lr
    python benchmarks/kl_placement.py --only ppo --jobs 2   # one arm, two jobs at a time
    python benchmarks/kl_placement.py --extra algorithm.examples=128 --extra eval.num_prompts=200
    python benchmarks/kl_placement.py --from multirun/algorithms  # PPO's targets, read off a sweep's jobs

Each row is a real job (`dpo-ppo ... analysis=none logger=none`) on the embedded default, with a
shared artifact cache; the columns are the KL the PPO target is defined on (training rollouts,
mean of the last quarter of updates), the evaluation's KL to the reference (100-token
completions), the evaluation reward and the optimizer steps.  Prints figures, asserts nothing;
the measured table lives in docs/kl_control.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SETTINGS = {
    "ppo": [["algorithm=ppo", f"algorithm.kl_target={t}"] for t in (1, 2, 4, 8, 16)],
    "ppo_fixed": [["algorithm=ppo", f"algorithm.kl_coef={c}"] for c in (0.02, 0.2, 2.0)],
    "dpo": [["algorithm=dpo", f"algorithm.lr={lr}", f"algorithm.beta={b}"]
            for lr in ("5e-5", "2e-4") for b in (0.05, 0.5, 5.0)],
}


def run(overrides: list[str], root: Path, cache: Path) -> dict:
    name = "_".join(o.split(".")[-1] for o in overrides)
    out = root / name
    cmd = [sys.executable, "-m", "dpo_ppo.main", *overrides, "analysis=none", "logger=none", "threads=1",
           f"cache_dir={cache}", f"hydra.run.dir={out}"]
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    res = json.loads((out / "results.json").read_text())
    return {"setting": " ".join(o for o in overrides if not o.startswith("algorithm=")),
            "algorithm": res["algorithm"], "status": res["status"], "metrics": res.get("metrics", {}),
            "summary": res.get("train_summary", {}), "compute": res.get("compute", {})}


def target_table(sweep: Path) -> None:
    """How close PPO's controller lands to its target, per target over the seeds of a sweep folder:
    the KL the target is defined on (train_summary's kl_recent) and its ratio to the target."""
    from collections import defaultdict

    seen = defaultdict(list)
    from dpo_ppo.results import read_results

    for f in sorted(sweep.glob("*/results.json")):
        res = read_results(f) or {}  # None for a half-written file: skipped like an unfinished job
        algo = res.get("config", {}).get("algorithm", {})
        recent = res.get("train_summary", {}).get("kl_recent")
        if res.get("status") != "finished" or algo.get("name") != "ppo" or recent is None:
            continue
        if algo.get("kl_coef") is not None:  # a fixed coefficient has no target
            continue
        seen[float(algo["kl_target"])].append((res.get("config", {}).get("seed"), recent))
    print("| kl_target | seeds | train KL (last 25%) per seed | mean | mean / target |")
    print("|---|---|---|---|---|")
    ratios = []
    for target, runs in sorted(seen.items()):
        kls = [k for _, k in sorted(runs, key=lambda r: str(r[0]))]
        mean = sum(kls) / len(kls)
        ratios.append(mean / target)
        print(f"| {target:g} | {len(kls)} | {', '.join(f'{k:.2f}' for k in kls)} | {mean:.2f} | {mean / target:.2f}x |")
    if ratios:
        print(f"\nmean over targets of (mean / target): {sum(ratios) / len(ratios):.2f}x; "
              f"worst {max(ratios, key=lambda r: abs(r - 1)):.2f}x ({sweep})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--from", dest="sweep", type=Path, help="read PPO's placement off this sweep folder's jobs")
    ap.add_argument("--only", choices=sorted(SETTINGS), action="append")
    ap.add_argument("--jobs", type=int, default=1, help="jobs at once (each uses one thread)")
    ap.add_argument("--extra", action="append", default=[], help="override for every job")
    ap.add_argument("--cache", default=".cache/dpo-ppo")
    args = ap.parse_args()
    if args.sweep:
        return target_table(args.sweep)
    root = Path(tempfile.mkdtemp(prefix="kl-placement-"))
    todo = [s + args.extra for arm in (args.only or SETTINGS) for s in SETTINGS[arm]]
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda o: run(o, root, Path(args.cache)), todo))
    print("| algorithm | setting | train KL (last 25%) | eval KL | eval reward | optimizer steps |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        m, s = r["metrics"], r["summary"]
        train_kl = f"{s['kl_recent']:.2f}" if s.get("kl_recent") is not None else "-"
        print(f"| {r['algorithm']} | {r['setting']} | {train_kl} | {m.get('eval/policy/kl_to_ref', float('nan')):.2f} "
              f"| {m.get('eval/policy/p_positive_mean', m.get('eval/policy/reward_mean', float('nan'))):.3f} | {r['compute'].get('optimizer_steps')} |"
              + ("" if r["status"] == "finished" else f" {r['status']}"))
    print(f"\nreference reward {rows[0]['metrics'].get('eval/reference/p_positive_mean', rows[0]['metrics'].get('eval/reference/reward_mean', float('nan'))):.3f}; "
          f"job folders under {root}")


if __name__ == "__main__":
    main()
