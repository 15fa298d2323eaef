"""Head roles of the embedded base: build it as a job would (the synthetic corpus, the BPE tokenizer,
the tiny GPT-NeoX pretrained by ``models.build_base``), time the build, and print each head type's
best score by the analysis suite's own detector (``analysis.heads``, the analysis defaults: 16
held-out texts of 64 tokens for previous-token, 16 ``BOS r r`` sequences of 2 x 20 random tokens
for duplicate-token and induction).  Prints figures, asserts nothing.

    python benchmarks/base_heads.py [model.KEY=VALUE ...]   e.g. model.pretrain_steps=300
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch


def main(argv: list[str]) -> None:
    import os

    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    from hydra import compose, initialize_config_dir

    from dpo_ppo.data.models import head_roles
    from dpo_ppo.config import to_typed
    from dpo_ppo.data.corpus import make_synthetic
    from dpo_ppo.data.models import build_base, load_policy  # noqa: F811

    from dpo_ppo.main import CONF_DIR  # registers the resolver and the schemas

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = to_typed(compose("config", overrides=list(argv)))
    print("threads", torch.get_num_threads(), "model", {k: getattr(cfg.model, k, None) for k in
                                                        ("pretrain_steps", "pretrain_batch_size", "pretrain_seq_len",
                                                         "pretrain_lr", "pretrain_repeat")}, flush=True)
    corpus = make_synthetic(cfg.data.num_reviews, cfg.data.test_fraction, cfg.data.seed)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        info = build_base(cfg.model, corpus, Path(tmp), seed=0)
        build_s = time.perf_counter() - t0
        model, tok = load_policy(tmp)
    t0 = time.perf_counter()
    scores = head_roles(model, tok, corpus["test"]["text"])
    for kind, s in scores.items():
        top = int(s.flatten().argmax())
        print(f"{kind:16s} max {float(s.max()):.3f} at L{top // s.shape[1]}H{top % s.shape[1]}")
    print(f"build {build_s:.1f} s, pretrain loss {info['pretrain_loss']:.3f}, heads {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
