"""What the trust region sees, update by update, on the exact toy (issue 21): for each PPO update the
exact KL(new || old) of the whole sequence distribution per prompt (by enumeration), p(target) per
prompt, and what each candidate trust statistic read on the rollout after the update: the token
mean, the largest per-prompt token mean (what the trust region bounds now) and the largest
per-sequence token mean, for k3 alone (the trust region before 2026-12-05), the sampled token's
Bernoulli KL and their per-token max (``ppo.trust_kl``, the default now).

    python benchmarks/trust_region_diagnosis.py --beta 0.1 --seed 2 [--updates 300]
        [--trust k3|max] [--unit prompt|rollout] [--region stop|shrink] [--watch 296 300]
        [--extra key=value ...]

``--trust k3 --unit rollout --region stop`` runs the trust region as it was when beta 0.1 / seed 2
drifted (k3, token mean over the minibatch, the update ends at the crossing); ``--trust max --unit
rollout`` as it was from 2026-12-05 until the per-prompt bound.  Prints a row for every update whose exact step KL on
a prompt passes 0.05 nats and for the ``--watch`` updates (with their samples and advantages);
asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import exact_toy as T  # noqa: E402
from known_answers import parse_extra  # noqa: E402

import dpo_ppo.train.ppo as ppo  # noqa: E402
from dpo_ppo.train.ppo import loop, trust_region  # noqa: E402


def k3(logprobs, old_logprobs):
    logratio = logprobs.float() - old_logprobs.float()
    return (logratio.exp() - 1) - logratio


STATS = {"k3": k3, "bern": ppo.sampled_token_kl, "max": ppo.trust_kl}


@torch.no_grad()
def per_token(model, batch, cfg):
    logits, _ = model(batch, cfg.temperature, with_values=False)
    new = ppo.token_logprobs(logits, batch["completion_ids"])
    return {name: f(new, batch["old_logprobs"]) for name, f in STATS.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--updates", type=int, default=300)
    ap.add_argument("--trust", choices=["k3", "max"], default="max")
    ap.add_argument("--unit", choices=["prompt", "rollout"], default="prompt",
                    help="the trust statistic per prompt (largest) or over the whole minibatch")
    ap.add_argument("--region", choices=["stop", "shrink"], default="shrink")
    ap.add_argument("--watch", type=int, nargs=2, default=[0, -1], help="first and last update to print in full")
    ap.add_argument("--threshold", type=float, default=0.05)
    ap.add_argument("--extra", nargs="*", default=[])
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.trust == "k3":
        trust_region.trust_kl = k3  # what token_sums reads: the trust region before 2026-12-05
    if args.unit == "rollout":
        per_prompt = trust_region.trust_statistic

        def over_the_minibatch(sums, tokens, groups):
            return per_prompt(sums, tokens, None)

        # read by the minibatch's gradient (loop) and by rollout_trust_kl (trust_region)
        loop.trust_statistic = trust_region.trust_statistic = over_the_minibatch

    inner = loop.ppo_update
    state = {"update": 0, "rows": []}

    def watched(model, optimizer, batch, cfg, generator, **kw):
        state["update"] += 1
        u = state["update"]
        old = T.sequence_logprobs(model.policy)
        out = inner(model, optimizer, batch, cfg, generator, **kw)
        new = T.sequence_logprobs(model.policy)
        step = {k: T.kl(new[k], old[k]) for k in T.PROMPTS}
        tgt = {k: T.COMPLETIONS.index(list(T.TARGETS[k])) for k in T.PROMPTS}
        p_old = {k: float(old[k][tgt[k]].exp()) for k in T.PROMPTS}
        p_new = {k: float(new[k][tgt[k]].exp()) for k in T.PROMPTS}
        tok = per_token(model, batch, cfg)
        mask = batch["mask"]
        prompt = ["AB"[int(row[batch["prefix_width"] - 1]) - 3] for row in batch["input_ids"]]
        seq = {n: (v * mask).sum(1) / mask.sum(1) for n, v in tok.items()}
        mean = {n: float((v * mask).sum() / mask.sum()) for n, v in tok.items()}
        per_prompt = {n: max(float(seq[n][[i for i, p in enumerate(prompt) if p == k]].mean()) for k in T.PROMPTS)
                      for n in tok}
        loud = max(step.values()) > args.threshold
        in_watch = args.watch[0] <= u <= (args.watch[1] if args.watch[1] >= 0 else 10 ** 9) and args.watch[1] >= 0
        if loud or in_watch:
            print(f"update {u}: exact step KL A {step['A']:.4f} B {step['B']:.4f} | p(target) "
                  f"A {p_old['A']:.4f}->{p_new['A']:.4f} B {p_old['B']:.4f}->{p_new['B']:.4f} | steps "
                  f"{out['train/optimizer_steps']} stopped {out['train/early_stopped']} kept "
                  f"{out['train/last_step_kept']:.3f}")
            for n in tok:
                print(f"    {n:>4}: token mean {mean[n]:.4f}  max per-prompt {per_prompt[n]:.4f}  "
                      f"max per-sequence {float(seq[n].max()):.4f}")
        if in_watch:
            adv = batch["advantages"]
            comp = batch["completion_ids"].tolist()
            for i in range(len(prompt)):
                y = tuple(comp[i])
                mark = "*" if y == T.TARGETS[prompt[i]] else " "
                print(f"    {prompt[i]} {y}{mark} return {float(batch['rewards'][i].sum()):+.2f} "
                      f"adv {[round(a, 3) for a in adv[i].tolist()]} k3 {float(seq['k3'][i]):.4f} "
                      f"bern {float(seq['bern'][i]):.4f}")
        state["rows"].append((u, step, p_new, mean, per_prompt))
        return out

    loop.ppo_update = watched  # what train_ppo calls
    cfg = T.ppo_config(kl_coef=args.beta, examples=8 * args.updates, trust_region=args.region,
                       **parse_extra(args.extra))
    with tempfile.TemporaryDirectory() as d:
        policy, _, ref_logp, _ = T.train(cfg, d, seed=args.seed)
    m = T.measure(policy, ref_logp, args.beta)
    print(f"final: KL(pi || pi*) {m['kl_to_opt']:.4f} (worse prompt {m['kl_to_opt_max']:.4f}) gain {m['gain']:.4f} "
          f"p(target) {m['p_target']}")
    big = sorted(state["rows"], key=lambda r: -max(r[1].values()))[:5]
    print("largest exact step KLs: " + ", ".join(f"update {u}: {max(s.values()):.3f}" for u, s, *_ in big))


if __name__ == "__main__":
    main()
