"""Time PPO updates (rollout + optimisation) on randomly initialised GPT-NeoX models, or on a trained base.

    python benchmarks/bench_ppo.py                 # embedded default shape, CPU
    python benchmarks/bench_ppo.py --pythia        # Pythia-70m shape, on cuda if available
    python benchmarks/bench_ppo.py --base .cache/dpo-ppo/base/<key> --trust both --repeats 2
        # the embedded default's trained base (a saved model folder), prompts from the synthetic
        # corpus, reward sigmoid(the corpus's lexicon log-odds); the trust region on (defaults) and
        # off (early_stop_kl=null), interleaved run by run: seconds and CPU seconds per update, the
        # trust region's cut-backs, extra forwards and recomputed gradients, and the ratio

Hyperparameters are conf/algorithm/ppo.yaml's unless overridden here.  The reward is a cheap
text-based stand-in (share of one word), so the figures are PPO's own cost without a classifier;
``--reward-model`` scores with a randomly initialised sequence-classification model of the
policy's shape instead (re-tokenised text, one forward, sigmoid of its logit), as the real runs'
classifier and TRL's reward model do.

TRL's PPOTrainer geometry (benchmarks/bench_trl_ppo.py: 64 samples x 64 new tokens, 4 epochs x 4
minibatches of 16, separate value model, reward model forward, rollout forwards in one batch):

    python benchmarks/bench_ppo.py --pythia --rollout-prefixes 64 --num-completions 1 \
        --completion-len 64 --prefix-len 25 --batch-size 64 --ppo-epochs 4 --num-minibatches 4 \
        --value-model separate --reward-model
"""

from __future__ import annotations

import argparse
import json
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from bench_common import build, build_scorer

from dpo_ppo.config import PPOAlgorithmConfig
from dpo_ppo.train.ppo import train_ppo

def ppo_config(**overrides):
    yaml = OmegaConf.load(Path(__file__).parents[1] / "conf" / "algorithm" / "ppo.yaml")
    yaml.pop("defaults", None)
    cfg = OmegaConf.merge(OmegaConf.structured(PPOAlgorithmConfig), yaml)
    for key, value in overrides.items():
        if value is not None:
            cfg[key] = value
    return OmegaConf.to_object(cfg)  # the typed PPOAlgorithmConfig, as a job's train_ppo gets it


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pythia", action="store_true", help="Pythia-70m shape (vocab 50304)")
    parser.add_argument("--device", default=None, help="default: cuda if available with --pythia, else cpu")
    parser.add_argument("--updates", type=int, default=4, help="timed updates (after one warm-up)")
    parser.add_argument("--rollout-prefixes", type=int, default=None)
    parser.add_argument("--num-completions", type=int, default=None)
    parser.add_argument("--completion-len", type=int, default=None)
    parser.add_argument("--prefix-len", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None, help="sequences per forward/backward")
    parser.add_argument("--value-model", choices=["shared", "separate"], default=None)
    parser.add_argument("--ppo-epochs", type=int, default=None)
    parser.add_argument("--num-minibatches", type=int, default=None)
    parser.add_argument("--reward-model", action="store_true",
                        help="score with a random sequence-classification model (a forward per rollout)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--geometry", choices=["trl"], default=None,
                        help="trl: TRL's PPOTrainer benchmark geometry (the flags in the docstring, at once)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "both"],
                        help="fp32, bf16 (autocast, as precision=auto on a GPU), or both one after the other")
    parser.add_argument("--static-cache", action="store_true",
                        help="rollouts with the static KV cache (with --precision both: a third, bf16 run with it)")
    parser.add_argument("--json", default=None, help="write the figures to this file")
    parser.add_argument("--base", default=None,
                        help="a saved model folder (e.g. the embedded default's cached base) instead of random weights; "
                             "prompts from the synthetic corpus, reward sigmoid of its lexicon log-odds")
    parser.add_argument("--trust", choices=["on", "off", "both"], default="on",
                        help="the trust region as configured (on), off (early_stop_kl=null), or both interleaved")
    parser.add_argument("--repeats", type=int, default=1, help="with --trust both: runs of each, interleaved")
    parser.add_argument("--optimizer-step", action="store_true",
                        help="time one optimizer step with its gradient clipping alone, on the policy and a separate "
                             "value model of the shape: the for-loop AdamW with clip_grad_norm_ per group (PPO "
                             "before version 3) against fused AdamW with clip_apart, interleaved")
    args = parser.parse_args()
    if args.optimizer_step:
        return optimizer_step(args)
    if args.geometry == "trl":
        for key, value in dict(rollout_prefixes=64, num_completions=1, completion_len=64, prefix_len=25,
                               batch_size=64, ppo_epochs=4, num_minibatches=4, value_model="separate").items():
            if getattr(args, key) is None:
                setattr(args, key, value)
        args.reward_model = True
    results = {}
    if args.precision == "both":  # with --static-cache: fp32 and bf16 eager, then bf16 with the static cache
        variants = [("fp32", False), ("bf16", False)] + ([("bf16", True)] if args.static_cache else [])
    else:
        variants = [(args.precision, args.static_cache)]
    for precision, static in variants:
        name = precision + ("_static" if static else "")
        if args.trust != "both":
            results[name] = run(args, precision, static, trust=args.trust == "on")
            continue
        runs = {"on": [], "off": []}
        for _ in range(args.repeats):  # interleaved: a load change on a shared machine hits both
            for trust in ("on", "off"):
                runs[trust].append(run(args, precision, static, trust=trust == "on"))
        results[name] = {trust: summarise(r) for trust, r in runs.items()}
        on, off = results[name]["on"], results[name]["off"]
        print(f"== trust region on vs off ({args.repeats} interleaved runs each, medians of their per-update medians)")
        for key in ("s_per_update", "cpu_s_per_update", "optimize_s", "steps_cut_back", "trust_forwards",
                    "trust_recomputes"):
            print(f"  {key:18} on {on[key]}  off {off[key]}")
        ratio = off["cpu_s_per_update"] / on["cpu_s_per_update"]
        print(f"  off/on CPU seconds per update: {ratio:.3f} (1 = the trust region costs nothing)")
        results[name]["off_over_on_cpu"] = round(ratio, 3)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


def optimizer_step(args, steps: int = 5, rounds: int = 3) -> None:
    """CPU seconds of one optimizer step + gradient clipping, before (for-loop AdamW, clip_grad_norm_
    per group) and now (``make_optimizer``: fused AdamW; ``clip_apart``), on random gradients."""
    from dpo_ppo.train.ppo import PolicyWithValue, clip_apart, make_optimizer, param_groups

    if args.threads:
        torch.set_num_threads(args.threads)
    shape = "pythia70m" if args.pythia else "embedded"
    policy, _ = build(shape, "cpu")
    model = PolicyWithValue(policy, copy.deepcopy(policy).eval(), "separate")
    cfg = ppo_config()
    groups = [[p for p in part.parameters() if p.requires_grad] for part in (model.policy, model.value_modules())]
    for group in groups:
        for p in group:
            p.grad = torch.randn_like(p) * 1e-2

    def before():
        optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, eps=cfg.adam_eps)

        def step():
            for group in groups:
                torch.nn.utils.clip_grad_norm_(group, cfg.max_grad_norm)
            optimizer.step()
        return step

    def now():
        optimizer = make_optimizer(model, cfg)

        def step():
            clip_apart(groups, cfg.max_grad_norm)
            optimizer.step()
        return step

    times = {"before": [], "now": []}
    for _ in range(rounds):  # interleaved
        for name, make in (("before", before), ("now", now)):
            step = make()
            step()  # the optimizer's state
            start = time.process_time()
            for _ in range(steps):
                step()
            times[name].append((time.process_time() - start) / steps)
    n = sum(p.numel() for group in groups for p in group) / 1e6
    b, a = statistics.median(times["before"]), statistics.median(times["now"])
    print(f"{shape}: {n:.1f}M trained parameters (policy + separate value model), threads {torch.get_num_threads()}")
    print(f"CPU seconds per optimizer step with clipping: before {b:.4f} (for-loop AdamW, clip_grad_norm_ x2), "
          f"now {a:.4f} (fused AdamW, clip_apart): {b / a:.2f}x; per update of "
          f"{cfg.ppo_epochs * cfg.num_minibatches} steps {cfg.ppo_epochs * cfg.num_minibatches * (b - a):.2f} s saved")


def summarise(runs: list[dict]) -> dict:
    out = {}
    for key in runs[0]:
        values = [r[key] for r in runs]
        out[key] = (round(statistics.median(values), 4) if all(isinstance(v, (int, float)) for v in values)
                    else values[0])
    return out


def run(args, precision: str, static: bool, trust: bool = True) -> dict:
    from dpo_ppo.runtime import hardware

    if args.threads:
        torch.set_num_threads(args.threads)
    shape = "pythia70m" if args.pythia else "embedded"
    device = torch.device(args.device or ("cuda" if args.pythia and torch.cuda.is_available() else "cpu"))
    cfg = ppo_config(rollout_prefixes=args.rollout_prefixes, num_completions=args.num_completions,
                     completion_len=args.completion_len, prefix_len=args.prefix_len,
                     batch_size=args.batch_size, value_model=args.value_model,
                     ppo_epochs=args.ppo_epochs, num_minibatches=args.num_minibatches)
    cfg.examples = (args.updates + 1) * cfg.rollout_prefixes
    cfg.snapshot_every = 10 ** 9
    if not trust:
        cfg.early_stop_kl = None

    if args.base:
        from dpo_ppo.data.corpus import make_synthetic
        from dpo_ppo.data.models import load_policy
        from dpo_ppo.data.prompts import make_prefixes

        shape = f"base {args.base}"
        policy, tok = load_policy(args.base, device)
        texts = make_synthetic(2000, 0.2, 0)["train"]["text"]
        prompts = make_prefixes(texts, tok, cfg.examples, cfg.prefix_len)
    else:
        policy, tok = build(shape, device)
        g = torch.Generator().manual_seed(0)
        prompts = torch.randint(0, len(tok) - 2, (cfg.examples, cfg.prefix_len), generator=g).tolist()
    ref = copy.deepcopy(policy).eval()

    scorer = build_scorer(shape, tok, device).eval() if args.reward_model else None

    @torch.no_grad()
    def reward_fn(texts):
        if scorer is None and args.base:  # the corpus's own sentiment: sigmoid of its lexicon log-odds
            from dpo_ppo.data.corpus import lexicon_logit

            return torch.sigmoid(torch.tensor([lexicon_logit(t) for t in texts]))
        if scorer is None:  # the text stand-in: share of one word
            return torch.tensor([0.1 + 0.8 * t.split().count("t7") / max(1, len(t.split())) for t in texts])
        enc = tok(texts, return_tensors="pt", padding=True).to(device)
        return torch.sigmoid(scorer(**enc).logits.float().squeeze(-1)).cpu()

    hardware.set_matmul_precision("fp32" if precision == "fp32" else "auto", device)
    hw = hardware.Runtime(str(device), str(device), precision, 64, 64, cfg.batch_size or 64, 16,
                          static_cache=static)
    log, cpu = [], []

    def log_fn(metrics, step):  # once per update (no probe): the CPU seconds between two calls are one update's
        log.append(metrics)
        cpu.append(time.process_time())

    with tempfile.TemporaryDirectory() as out_dir:
        start = time.time()
        train_ppo(cfg, policy, ref, tok, prompts, reward_fn, out_dir, log_fn=log_fn, hw=hw)
        wall = time.time() - start
    timed = log[1:]  # the first update pays for warm-up
    per_update = [m["train/rollout_s"] + m["train/optimize_s"] for m in timed]
    cpu_per_update = [b - a for a, b in zip(cpu, cpu[1:])]
    params = sum(p.numel() for p in policy.parameters()) / 1e6
    samples = cfg.rollout_prefixes * cfg.num_completions
    print(f"precision={precision} static_cache={static} "
          f"shape={shape} ({params:.1f}M params) device={device} threads={torch.get_num_threads()} "
          f"value_model={cfg.value_model} reward={'model forward' if args.reward_model else 'lexicon' if args.base else 'text stand-in'}")
    print(f"rollout {cfg.rollout_prefixes} prefixes x {cfg.num_completions} = {samples} samples, "
          f"prefix {cfg.prefix_len}, completion <= {cfg.completion_len}, "
          f"{cfg.ppo_epochs} epochs x {cfg.num_minibatches} minibatches, batch_size {cfg.batch_size}")
    print(f"time per update   {statistics.mean(per_update):.3f} s  (median {statistics.median(per_update):.3f})")
    print(f"  rollout         {statistics.mean(m['train/rollout_s'] for m in timed):.3f} s"
          f"  (sampling, reward, policy/ref/value forward, GAE)")
    print(f"  optimisation    {statistics.mean(m['train/optimize_s'] for m in timed):.3f} s")
    print(f"tokens/s          {statistics.mean(m['train/tokens_per_s'] for m in timed):.0f} "
          f"(completion tokens per second of update, {statistics.mean(m['train/rollout/completion_len'] for m in timed):.1f} per sample)")
    print(f"wall incl. warm-up and final snapshot: {wall:.1f} s for {len(log)} updates")
    print(f"trust region      {'on, early_stop_kl=%g' % cfg.early_stop_kl if trust else 'off'}: per update "
          f"{statistics.mean(m.get('train/steps_cut_back', 0) for m in timed):.1f} of "
          f"{statistics.mean(m['train/optimizer_steps'] for m in timed):.0f} steps cut back, "
          f"{statistics.mean(m.get('train/trust_forwards', float('nan')) for m in timed):.1f} extra no-grad "
          f"minibatch forwards, {statistics.mean(m.get('train/trust_recomputes', float('nan')) for m in timed):.1f} "
          f"minibatch gradients recomputed; CPU {statistics.median(cpu_per_update):.3f} s per update (median)")
    return {"s_per_update": round(statistics.median(per_update), 4),
            "cpu_s_per_update": round(statistics.median(cpu_per_update), 4),
            "steps_cut_back": statistics.mean(m.get("train/steps_cut_back", 0) for m in timed),
            "trust_forwards": statistics.mean(m.get("train/trust_forwards", float("nan")) for m in timed),
            "trust_recomputes": statistics.mean(m.get("train/trust_recomputes", float("nan")) for m in timed),
            "rollout_s": round(statistics.median(m["train/rollout_s"] for m in timed), 4),
            "optimize_s": round(statistics.median(m["train/optimize_s"] for m in timed), 4),
            "samples": samples, "completion_len": cfg.completion_len, "device": str(device),
            "card": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
            "mean_completion": round(statistics.mean(m["train/rollout/completion_len"] for m in timed), 1)}


if __name__ == "__main__":
    main()
