"""Head roles of the embedded base: build it as a job would (the synthetic corpus, the BPE tokenizer,
the tiny GPT-NeoX pretrained by ``models.build_base``), time the build, and print each head type's
best score by the analysis suite's own detector (``head_roles`` -> ``analysis.heads``, the
analysis defaults: 16 held-out texts of 64 tokens for previous-token, 16 ``BOS r r`` sequences of
2 x 20 random tokens for duplicate-token and induction).  Prints figures, asserts nothing.

    THREADS=1 python benchmarks/base_heads.py [OVERRIDE ...]     e.g. model.pretrain_steps=300
    python benchmarks/base_heads.py --base CACHE/base/KEY          score a base already built
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import torch


def head_roles(model, tokenizer, texts, *, n_texts: int = 16, max_tokens: int = 64, n_random: int = 16,
               random_len: int = 20, seed: int = 0) -> dict:
    """Every head's previous-token, duplicate-token and induction score ({type: [layers, heads]}),
    by the analysis suite's detector (``analysis.heads.detect_all``) on its default probes: the
    first ``n_texts`` of ``texts`` cut to ``max_tokens`` (BOS first) and ``n_random`` sequences
    ``BOS r r`` of ``random_len`` random tokens."""
    from dpo_ppo.analysis.common import boot_bridge, encode
    from dpo_ppo.analysis.heads import detect_all, repeated_random_tokens

    text_seqs, _ = encode(tokenizer, list(texts[:n_texts]), max_tokens, prepend_bos=True)
    random_seqs = repeated_random_tokens(tokenizer, n_random, random_len, seed=seed,
                                         vocab=min(len(tokenizer), model.config.vocab_size))
    bridge = boot_bridge(model, tokenizer, "cpu")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return detect_all(bridge, text_seqs=text_seqs, random_seqs=random_seqs, pad=pad, progress=False)


def report(model, tok, texts) -> None:
    t0 = time.perf_counter()
    scores = head_roles(model, tok, texts)
    for kind, s in scores.items():
        top = int(s.flatten().argmax())
        print(f"{kind:16s} max {float(s.max()):.3f} at L{top // s.shape[1]}H{top % s.shape[1]}")
    print(f"heads scored in {time.perf_counter() - t0:.1f} s")


def main(argv: list[str]) -> None:
    from hydra import compose, initialize_config_dir

    from dpo_ppo.config import to_typed
    from dpo_ppo.data.corpus import make_synthetic
    from dpo_ppo.data.models import build_base, load_policy
    from dpo_ppo.main import CONF_DIR  # registers the resolver and the schemas

    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    base = argv[argv.index("--base") + 1] if "--base" in argv else None
    overrides = [a for a in argv if a not in ("--base", base)]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = to_typed(compose("config", overrides=overrides))
    corpus = make_synthetic(cfg.data.num_reviews, cfg.data.test_fraction, cfg.data.seed)
    if base:
        model, tok = load_policy(base)
        return report(model, tok, corpus["test"]["text"])
    print("threads", torch.get_num_threads(), "model", {k: getattr(cfg.model, k, None) for k in (
        "num_heads", "pretrain_steps", "pretrain_batch_size", "pretrain_seq_len", "pretrain_lr")}, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        t0, c0 = time.perf_counter(), time.process_time()
        info = build_base(cfg.model, corpus, Path(tmp), seed=0)
        build_s, build_cpu = time.perf_counter() - t0, time.process_time() - c0
        model, tok = load_policy(tmp)
    print(f"build {build_s:.1f} s wall, {build_cpu:.1f} s CPU, pretrain loss {info['pretrain_loss']:.3f}")
    report(model, tok, corpus["test"]["text"])


if __name__ == "__main__":
    main(sys.argv[1:])
