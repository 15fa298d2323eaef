"""Time PPO updates (rollout + optimisation) on randomly initialised GPT-NeoX models.

    python benchmarks/bench_ppo.py                 # embedded default shape, CPU
    python benchmarks/bench_ppo.py --pythia        # Pythia-70m shape, on cuda if available

Hyperparameters are conf/algorithm/ppo.yaml's unless overridden here.  The reward is a cheap
text-based stand-in (share of one word), so the figures are PPO's own cost without a classifier.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from bench_common import build

from dpo_ppo.config import PPOAlgorithmConfig
from dpo_ppo.ppo import train_ppo

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
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    shape = "pythia70m" if args.pythia else "embedded"
    device = torch.device(args.device or ("cuda" if args.pythia and torch.cuda.is_available() else "cpu"))
    cfg = ppo_config(rollout_prefixes=args.rollout_prefixes, num_completions=args.num_completions,
                     completion_len=args.completion_len, prefix_len=args.prefix_len,
                     batch_size=args.batch_size, value_model=args.value_model)
    cfg.examples = (args.updates + 1) * cfg.rollout_prefixes
    cfg.snapshot_every = 10 ** 9

    policy, tok = build(shape, device)
    ref = copy.deepcopy(policy).eval()
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, len(tok) - 2, (cfg.examples, cfg.prefix_len), generator=g).tolist()

    def reward_fn(texts):
        return torch.tensor([0.1 + 0.8 * t.split().count("t7") / max(1, len(t.split())) for t in texts])

    log = []
    with tempfile.TemporaryDirectory() as out_dir:
        start = time.time()
        train_ppo(cfg, policy, ref, tok, prompts, reward_fn, out_dir, log_fn=lambda m, s: log.append(m))
        wall = time.time() - start
    timed = log[1:]  # the first update pays for warm-up
    per_update = [m["train/rollout_s"] + m["train/optimize_s"] for m in timed]
    params = sum(p.numel() for p in policy.parameters()) / 1e6
    samples = cfg.rollout_prefixes * cfg.num_completions
    print(f"shape={shape} ({params:.1f}M params) device={device} threads={torch.get_num_threads()} "
          f"value_model={cfg.value_model}")
    print(f"rollout {cfg.rollout_prefixes} prefixes x {cfg.num_completions} = {samples} samples, "
          f"prefix {cfg.prefix_len}, completion <= {cfg.completion_len}, "
          f"{cfg.ppo_epochs} epochs x {cfg.num_minibatches} minibatches, batch_size {cfg.batch_size}")
    print(f"time per update   {statistics.mean(per_update):.3f} s  (median {statistics.median(per_update):.3f})")
    print(f"  rollout         {statistics.mean(m['train/rollout_s'] for m in timed):.3f} s"
          f"  (sampling, reward, policy/ref/value forward, GAE)")
    print(f"  optimisation    {statistics.mean(m['train/optimize_s'] for m in timed):.3f} s")
    print(f"tokens/s          {statistics.mean(m['train/tokens_per_s'] for m in timed):.0f} "
          f"(completion tokens per second of update, {statistics.mean(m['train/completion_len'] for m in timed):.1f} per sample)")
    print(f"wall incl. warm-up and final snapshot: {wall:.1f} s for {len(log)} updates")


if __name__ == "__main__":
    main()
