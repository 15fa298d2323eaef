"""Seconds per stage of one embedded-default job, and samples/s for generation, scoring and DPO.

    python benchmarks/bench_pipeline.py                       # the embedded default, fresh cache
    python benchmarks/bench_pipeline.py algorithm=ppo analysis=full

Runs a real job (fresh artifact cache in a temp folder, so every stage is built) and then times
generation and scoring on their own. Prints figures; asserts nothing.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from dpo_ppo.main import CONF_DIR


def main(overrides: list[str]) -> None:
    from dpo_ppo.job import run_job
    from dpo_ppo.data.models import load_policy
    from dpo_ppo.data.prompts import make_prefixes
    from dpo_ppo.train.sampling import generate
    from dpo_ppo.data.scorer import Scorer

    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"cache_dir={tmp / 'cache'}", "logger=none", "analysis=none",
                                           *overrides])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {cfg.device}")
    t0 = time.time()
    run_job(cfg, tmp / "job")
    total = time.time() - t0
    res = json.loads((tmp / "job" / "results.json").read_text())
    print(f"\njob: {total:.1f} s in all")
    for stage, secs in res["stage_seconds"].items():
        print(f"  {stage:10s} {secs:8.1f} s")
    algo = cfg.algorithm
    train_s = res["stage_seconds"]["train"]
    print(f"  {algo.name} training: {algo.examples / train_s:.1f} examples/s")

    arts = res["artifacts"]
    model, tok = load_policy(arts["reference"])
    scorer = Scorer.load(arts["classifier"])
    from datasets import load_from_disk

    texts = load_from_disk(arts["corpus"])["test"]["text"]
    prompts = make_prefixes(texts, tok, 500, cfg.eval.prefix_len, seed=0)
    t0 = time.time()
    comps = generate(model, tok, prompts, cfg.eval.completion_len, batch_size=cfg.eval.batch_size or 250, desc=None)
    gen_s = time.time() - t0
    new_tokens = sum(map(len, comps))
    full = [tok.decode(p + c, skip_special_tokens=True) for p, c in zip(prompts, comps)]
    t0 = time.time()
    scorer.p_positive(full)
    score_s = time.time() - t0
    print(f"\ngeneration: {len(prompts) / gen_s:.1f} samples/s ({new_tokens / gen_s:.0f} new tokens/s, "
          f"batch {cfg.eval.batch_size or 250}, up to {cfg.eval.completion_len} tokens)")
    print(f"scoring:    {len(full) / score_s:.1f} samples/s")
    print(f"(job folder: {tmp / 'job'})")


if __name__ == "__main__":
    main(sys.argv[1:])
