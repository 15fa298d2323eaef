"""Per-head ablation: the batched implementation against the naive loop, on the same inputs.

    python benchmarks/bench_ablation.py                   # embedded default shape, CPU
    python benchmarks/bench_ablation.py --pythia          # Pythia-70m shape (cuda when available)
    python benchmarks/bench_ablation.py --threads 0       # torch's default thread count

One thread by default: on a shared 2-core machine two OpenMP threads spin against other
processes and timings swing by several times from run to run; one thread is steady.

The naive loop is what the seed's per-head ablation amounts to: for every (head, kind) one full
evaluation: a pass over the LM texts and one ``generate`` over the prompts, with a hook ablating
that head.  The batched implementation (dpo_ppo/analysis/ablation.py, its hooks in hooks.py)
stacks the variants along the batch dimension, runs the blocks below the ablated layer once, and
samples all variants' completions in one ``generate``.  Sizes default to conf/analysis/full.yaml's.
Both produce the same numbers (checked here; the completions use common random numbers, so they
match token for token).  Weights are random and the "classifier" is a hash of the text: the figures are the
ablation machinery's own cost, the classifier's is the same for both (the same texts are scored).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from bench_common import build
from fixtures import HashScorer  # tests/fixtures.py: bench_common put tests/ on sys.path

from dpo_ppo.runtime import hardware
from dpo_ppo.analysis.ablation import ablate_heads
from dpo_ppo.cli.analyze import analysis_config, compose


def timed(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, out


def max_diff(a: dict, b: dict) -> float:
    worst = abs(a["lm_loss_base"] - b["lm_loss_base"])
    for kind, grids in a["kinds"].items():
        for metric, grid in grids.items():
            other = torch.tensor(b["kinds"][kind][metric])
            worst = max(worst, float((torch.tensor(grid) - other).abs().max()))
    return worst


def main() -> None:
    composed = compose(["analysis=full"])  # as dpo-ppo-analyze composes it
    full = analysis_config(composed)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pythia", action="store_true", help="Pythia-70m shape (6 layers x 8 heads, hidden 512)")
    p.add_argument("--device", default=None)
    p.add_argument("--texts", type=int, default=full.ablation_lm_texts, help="LM-loss texts")
    p.add_argument("--tokens", type=int, default=full.max_tokens, help="tokens per LM text")
    p.add_argument("--prompts", type=int, default=full.ablation_prompts, help="0: LM loss only")
    p.add_argument("--prefix-len", type=int, default=full.ablation_prefix_len)
    p.add_argument("--completion-len", type=int, default=full.ablation_completion_len)
    p.add_argument("--batch-size", type=int, default=full.batch_size,
                   help="default: the preset's, or if null the device's (hardware.resolve)")
    p.add_argument("--rows", type=int, default=full.ablation_rows)
    p.add_argument("--kinds", default="zero,mean")
    p.add_argument("--repeats", type=int, default=1, help="best of N timings (each implementation)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if args.pythia and torch.cuda.is_available() else "cpu"))
    shape = "pythia70m" if args.pythia else "embedded"
    if args.batch_size is None:
        args.batch_size = hardware.resolve(composed, device).analysis_batch_size
    model, tok = build(shape, device)
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size - 2
    lm_seqs = torch.randint(0, vocab, (args.texts, args.tokens), generator=g).tolist()
    prompts = torch.randint(0, vocab, (args.prompts, args.prefix_len), generator=g).tolist() or None
    kinds = args.kinds.split(",")
    n_variants = 1 + len(kinds) * model.config.num_hidden_layers * model.config.num_attention_heads
    print(f"{shape} ({model.config.num_hidden_layers} layers x {model.config.num_attention_heads} heads, hidden "
          f"{model.config.hidden_size}) on {device} ({platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads); {n_variants} variants (baseline + {'/'.join(kinds)} per head); "
          f"{args.texts} LM texts x {args.tokens} tokens; {args.prompts} prompts x {args.completion_len} new tokens")
    common = dict(lm_seqs=lm_seqs, prompts=prompts, scorer=HashScorer() if prompts else None, kinds=kinds,
                  completion_len=args.completion_len, batch_size=args.batch_size, rows=args.rows, progress=False)
    runs = {
        "naive (one evaluation per head)": dict(naive=True),
        "stacked variants": dict(share_lower=False),
        "stacked + shared lower layers": dict(),
    }
    results, times = {}, {}
    for name, extra in runs.items():
        times[name], results[name] = timed(lambda: ablate_heads(model, tok, **common, **extra), args.repeats)
        print(f"  {name:34s} {times[name]:8.2f} s")
    naive = "naive (one evaluation per head)"
    for name in runs:
        if name != naive:
            diff = max_diff(results[naive], results[name])
            same = results[naive].get("completions_base") == results[name].get("completions_base")
            print(f"  speed-up of {name!r} over naive: {times[naive] / times[name]:.2f}x "
                  f"(max |difference| {diff:.2e}{', same completions' if prompts and same else ''})")


if __name__ == "__main__":
    main()
