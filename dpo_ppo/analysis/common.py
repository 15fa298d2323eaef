"""Helpers the analyses share: model shape, text selection and tokenisation, TransformerLens bridges.

Every analysis reads layer and head counts from ``model.config`` (GPT-NeoX: ``num_hidden_layers``,
``num_attention_heads``), so the same code runs on the embedded tiny model and on Pythia-70m.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import random
from typing import Sequence

import torch

from dpo_ppo.train.sampling import model_device  # noqa: F401  (re-exported for the analyses)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- model shape


def n_layers(model) -> int:
    return int(model.config.num_hidden_layers)


def n_heads(model) -> int:
    return int(model.config.num_attention_heads)


def head_dim(model) -> int:
    return int(model.config.hidden_size) // n_heads(model)


def blocks(model):
    """The transformer blocks of a GPT-NeoX causal LM (``model.gpt_neox.layers``)."""
    base = getattr(model, "gpt_neox", None) or model.base_model
    return base.layers


@contextlib.contextmanager
def evaluating(*models):
    """Eval mode (no dropout) for the duration; each model's training flag is restored after."""
    flags = [m.training for m in models]
    try:
        for m in models:
            m.eval()
        yield
    finally:
        for m, f in zip(models, flags):
            m.train(f)


def clean_copy(model):
    """A deep copy whose modules run their own class's ``forward``.

    Trainers patch ``model.forward`` on the instance (accelerate's fp32-output wrapper, which TRL's
    DPOTrainer applies to the policy and the reference): a closure around the *original* model's
    bound forward.  A deep copy keeps that closure, so calling the copy would silently run the
    original, and hooks or bridge components on the copy would never fire.  The patch is dropped
    here (it only casts outputs for mixed-precision training)."""
    dup = copy.deepcopy(model)
    for module in dup.modules():
        module.__dict__.pop("forward", None)
    return dup


def on_device(model, device: torch.device):
    """``model`` itself when it already lives on ``device``, else a copy there (never moves the caller's)."""
    here, there = model_device(model), torch.device(device)
    if here == there or (here.type == there.type and there.index is None):
        return model
    return clean_copy(model).to(there)


# --------------------------------------------------------------------------- texts and tokens


def bos_id(tokenizer) -> int:
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def shuffled_indices(n: int, seed: int) -> list[int]:
    idx = list(range(n))
    random.Random(seed).shuffle(idx)
    return idx


def select_balanced(labels: Sequence[int], n: int, seed: int) -> list[int]:
    """Up to ``n`` indices, half positive and half negative where the data allow, in shuffled order.

    Shuffling matters: IMDb's test split is sorted by label, so "the first n" would be one-sided.
    """
    order = shuffled_indices(len(labels), seed)
    pos = [i for i in order if labels[i] == 1]
    neg = [i for i in order if labels[i] != 1]
    n_pos = min(len(pos), n // 2)
    n_neg = min(len(neg), n - n_pos)
    n_pos = min(len(pos), n - n_neg)
    chosen = set(pos[:n_pos] + neg[:n_neg])
    return [i for i in order if i in chosen]


def encode(tokenizer, texts: Sequence[str], max_tokens: int, *, prepend_bos: bool = False,
           min_tokens: int = 2) -> tuple[list[list[int]], list[int]]:
    """Token ids of each text cut to ``max_tokens`` (BOS included); drops texts shorter than ``min_tokens``.

    Returns (sequences, indices of the kept texts).
    """
    seqs, kept = [], []
    budget = max_tokens - (1 if prepend_bos else 0)
    enc = tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=budget)["input_ids"]
    for i, ids in enumerate(enc):
        ids = ([bos_id(tokenizer)] if prepend_bos else []) + list(ids)[:budget]
        if len(ids) >= min_tokens:
            seqs.append(ids)
            kept.append(i)
    return seqs, kept


def batches(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


# --------------------------------------------------------------------------- TransformerLens


def boot_bridge(model, tokenizer, device=None):
    """A ``TransformerBridge`` around a *copy* of ``model``, offline.

    ``TransformerBridge.boot_transformers(name, hf_model=..., tokenizer=...)`` reuses the in-memory
    model's config and never loads weights or configs by name, so any name works offline; we pass a
    neutral one so that no hub-specific preset applies.  Two things need care:

    * booting replaces the model's submodules by bridge components and switches it to eager
      attention, in place, so the bridge gets a deep copy and the caller's model is untouched
      (a ``clean_copy``: a trainer's patched ``forward`` would otherwise bypass the bridge);
    * TransformerLens normalises the tokenizer with ``get_tokenizer_with_bos``, which reads
      ``init_kwargs["name_or_path"]`` and, unless ``add_bos_token`` is set, reloads the tokenizer
      from that path.  A tokenizer built in memory has no such path, so the bridge gets a copy
      with both keys filled in.  We tokenise ourselves and pass token tensors (BOS where wanted),
      so this changes nothing the analyses see.
    """
    from transformer_lens.model_bridge import TransformerBridge

    device = device if device is not None else model_device(model)
    hf = clean_copy(model).to(device).eval()
    tok = copy.deepcopy(tokenizer)
    tok.init_kwargs = dict(tok.init_kwargs)
    tok.init_kwargs.setdefault("name_or_path", getattr(tok, "name_or_path", "") or "")
    tok.init_kwargs["add_bos_token"] = True
    name = f"dpo-ppo-local/{type(model).__name__}"
    quiet = logging.getLogger("transformer_lens")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            bridge = TransformerBridge.boot_transformers(name, hf_model=hf, tokenizer=tok, device=str(device))
    finally:
        quiet.setLevel(level)
    bridge.eval()
    if bridge.cfg.n_layers != n_layers(model) or bridge.cfg.n_heads != n_heads(model):
        raise RuntimeError(f"bridge shape {bridge.cfg.n_layers}x{bridge.cfg.n_heads} does not match the "
                           f"model's {n_layers(model)}x{n_heads(model)}")
    return bridge
