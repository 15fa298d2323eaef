"""One table from the JSON files benchmarks/gpu_check.sh leaves in its output folder.

    python benchmarks/gpu_table.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def load(folder: Path, name: str) -> dict:
    path = folder / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def get(d: dict, *keys, default="-"):
    for key in keys:
        if not isinstance(d, dict) or key not in d or d[key] is None:
            return default
        d = d[key]
    return d


def ratio(a, b) -> str:
    try:
        return f"{float(a) / float(b):.2f}"
    except (TypeError, ValueError, ZeroDivisionError):
        return "-"


def fitted(fit: dict, label: str, target: int) -> tuple:
    """A row for a job fitted from two parts (bench_gpu.fit_part)."""
    return (f"{label} (fitted from parts, full analysis) s", get(fit, "extrapolated_s"),
            f"{get(fit, 's_per_example')} s/example, {get(fit, 's_per_update')} s/update, "
            f"fixed {get(fit, 'fixed_s')} s (target < {target})")


def main(folder: Path) -> None:
    s, st, a, t, t1 = (load(folder, n) for n in ("sampling", "static", "agreement", "targets", "targets1"))
    p, trl, pk = (load(folder, n) for n in ("ppo", "trl", "packing"))
    card = s.get("card") or t.get("card") or "?"
    rows = [
        ("card", card, ""),
        ("forward limit, bf16 [256 x 125] tok/s", get(s, "forward_limit_bf16", "tokens_per_s"), ""),
        ("sampling before (fp32, batch 250) tok/s", get(s, "before_fp32_b250", "tokens_per_s"), ""),
        (f"sampling after (bf16, batch {get(s, 'auto_gen_batch')}) tok/s", get(s, "after_bf16_auto", "tokens_per_s"),
         f"x{get(s, 'ratio_after_vs_before')} (target >= 3)"),
        ("sampling after, fp32, same batch tok/s", get(s, "after_fp32_auto", "tokens_per_s"), ""),
        ("sampling, static cache, same batch tok/s", get(s, "static_auto", "tokens_per_s"),
         f"x{get(s, 'ratio_static_vs_before')} (target >= 3); first call {get(s, 'static_auto_first_call_s')} s; "
         f"pays off from {get(s, 'static_break_even_tokens')} tokens"),
        ("sampling run1 shape (100 + 200 tokens) tok/s", get(s, "run1_after_bf16", "tokens_per_s"),
         f"static cache {get(s, 'run1_static', 'tokens_per_s')}"),
        ("rollout 128 static cache: compile (first call) s", get(st, "static_first_call_s"), ""),
        ("rollout 128: static vs dynamic tok/s", get(st, "static_rollout128", "tokens_per_s"),
         f"dynamic {get(st, 'dynamic_rollout128', 'tokens_per_s')}"),
        ("eval KL fp32 / bf16 - fp32 (paired se)", get(a, "fp32", "kl_to_ref"),
         f"{get(a, 'kl_to_ref_bf16_minus_fp32')} ({get(a, 'kl_to_ref_paired_se')}); se of the mean {get(a, 'kl_to_ref_se')}"),
        ("eval reward fp32 / bf16 - fp32 (paired se)", get(a, "fp32", "reward_mean"),
         f"{get(a, 'reward_mean_bf16_minus_fp32')} ({get(a, 'reward_mean_paired_se')}); se of the mean {get(a, 'reward_mean_se')}"),
        ("PPO s/update, ours fp32", get(p, "fp32", "s_per_update"), ""),
        ("PPO s/update, ours bf16, eager rollouts", get(p, "bf16", "s_per_update"), ""),
        ("PPO s/update, ours bf16, static-cache rollouts (GPU default)", get(p, "bf16_static", "s_per_update"),
         f"x{ratio(get(trl, 'default', 's_per_update'), get(p, 'bf16_static', 's_per_update'))} TRL's default"),
        ("PPO s/update, TRL 1.12 (its default: fp32)", get(trl, "default", "s_per_update"),
         f"ours bf16 is x{ratio(get(trl, 'default', 's_per_update'), get(p, 'bf16', 's_per_update'))} faster (target >= 3)"),
        ("PPO s/update, TRL 1.12 bf16 autocast", get(trl, "autocast", "s_per_update"),
         f"ours bf16 is x{ratio(get(trl, 'autocast', 's_per_update'), get(p, 'bf16', 's_per_update'))} faster"),
        ("prepare (corpus, base, scorer, ref eval) s", get(t, "prepare", "process_s"), ""),
        ("paper_run2 DPO job, full analysis s", get(t, "run2_dpo", "job_s"), f"stages {get(t, 'run2_dpo', 'stages')} (target < 60)"),
        *[fitted(get(x, name, default={}), label, target) for x, name, label, target in (
            (t, "run2_ppo", "paper_run2 PPO job", 120), (t1, "run1_dpo", "paper_run1 DPO job", 240),
            (t1, "run1_ppo", "paper_run1 PPO job", 240))],
        ("  run2 PPO part of 288, eager rollouts: train s", get(t, "run2_ppo_eager", "stages", "train"),
         f"static cache: {get(t, 'run2_ppo', 'parts', '288', 'stages', 'train')}"),
        ("packing: jobs/hour alone / N at once", get(pk, "alone_jobs_per_hour"),
         f"{get(pk, 'packed_jobs_per_hour')} with N={get(pk, 'n')}: x{get(pk, 'ratio')} (target >= 4)"),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value, note in rows:
        print(f"{name:<{width}}  {value!s:>12}  {note}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "."))
