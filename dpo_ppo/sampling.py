"""Sampling completions and scoring their log-probabilities, batched, for any causal LM.

Prompts and completions travel as lists of token ids (prompts may have different lengths, as
with the seed's 25-75 token prefixes).  ``pad_batch`` left-pads prompts for ``generate`` and
``completion_logprobs`` right-pads prompt+completion for a single forward pass.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, left: bool, device=None):
    """Pad token-id lists into (input_ids, attention_mask) tensors."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if not len(s):
            continue
        if left:
            ids[i, width - len(s):] = torch.as_tensor(s)
            mask[i, width - len(s):] = 1
        else:
            ids[i, : len(s)] = torch.as_tensor(s)
            mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[Sequence[int]], max_new_tokens: int, *,
             temperature: float = 1.0, top_k: int = 0, batch_size: int = 64,
             desc: str | None = "sampling", stop_at_eos: bool = True) -> list[list[int]]:
    """Sample one completion per prompt with ``model.generate``; returns the new token ids.

    A completion ends at the first EOS (the EOS itself is kept, so that its probability is part of
    the sequence) or after ``max_new_tokens``.  Prompts are sorted by length and batched, so a
    range of prefix lengths costs little padding.
    """
    device = model_device(model)
    was_training = model.training
    model.eval()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_id = tokenizer.eos_token_id
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    starts = range(0, len(order), batch_size)
    bar = tqdm(starts, desc=desc, unit="batch", leave=False, disable=desc is None)
    for start in bar:
        idx = order[start: start + batch_size]
        ids, mask = pad_batch([prompts[i] for i in idx], pad_id, left=True, device=device)
        kwargs = dict(do_sample=True, temperature=temperature, top_k=top_k if top_k > 0 else None,
                      top_p=None, max_new_tokens=max_new_tokens, min_new_tokens=1,
                      pad_token_id=pad_id)
        if stop_at_eos:
            kwargs["eos_token_id"] = eos_id
        else:
            kwargs["eos_token_id"] = None
        seqs = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        new = seqs[:, ids.shape[1]:].tolist()
        for i, toks in zip(idx, new):
            if stop_at_eos and eos_id in toks:
                toks = toks[: toks.index(eos_id) + 1]
            out[i] = toks
    model.train(was_training)
    return out


def completion_logprobs(model, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
                        *, pad_id: int = 0, batch_size: int = 64, per_token: bool = False,
                        grad: bool = False):
    """log p(completion | prompt) under ``model``: per sequence (summed), or per token.

    Returns a tensor of shape [N] (sum over completion tokens), or with ``per_token`` a list of
    1-D tensors, one per completion.
    """
    device = model_device(model)
    sums, tokens = [], []
    ctx = torch.enable_grad() if grad else torch.no_grad()
    with ctx:
        for start in range(0, len(prompts), batch_size):
            ps = prompts[start: start + batch_size]
            cs = completions[start: start + batch_size]
            ids, mask = pad_batch([list(p) + list(c) for p, c in zip(ps, cs)], pad_id, left=False,
                                  device=device)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            logp = torch.gather(F.log_softmax(logits, -1), 2, ids[:, 1:, None]).squeeze(-1)
            for row, (p, c) in enumerate(zip(ps, cs)):
                lp = logp[row, len(p) - 1: len(p) - 1 + len(c)]
                if per_token:
                    tokens.append(lp)
                else:
                    sums.append(lp.sum())
    if per_token:
        return tokens
    return torch.stack(sums) if sums else torch.zeros(0)


@torch.no_grad()
def sequence_kl(model, ref_model, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
                *, pad_id: int = 0, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Two estimates of KL(model || ref) per completion, from one forward pass of each model.

    ``exact``: sum over completion positions of KL(model(.|y<t) || ref(.|y<t)), the full next-token
    distributions compared; on completions sampled from ``model`` its mean estimates the
    sequence-level KL with less variance than the log-ratio, and it is never negative.
    ``k1``: sum over completion tokens of log model(y_t|.) - log ref(y_t|.), the plain log-ratio.
    """
    device = model_device(model)
    exact, k1 = [], []
    for start in range(0, len(prompts), batch_size):
        ps = prompts[start: start + batch_size]
        cs = completions[start: start + batch_size]
        ids, mask = pad_batch([list(p) + list(c) for p, c in zip(ps, cs)], pad_id, left=False, device=device)
        logp = F.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1].float(), -1)
        logq = F.log_softmax(ref_model(input_ids=ids, attention_mask=mask).logits[:, :-1].float(), -1)
        kl = (logp.exp() * (logp - logq)).sum(-1)  # [B, T-1]
        ratio = torch.gather(logp - logq, 2, ids[:, 1:, None]).squeeze(-1)
        for row, (p, c) in enumerate(zip(ps, cs)):
            span = slice(len(p) - 1, len(p) - 1 + len(c))
            exact.append(kl[row, span].sum())
            k1.append(ratio[row, span].sum())
    if not exact:
        return torch.zeros(0), torch.zeros(0)
    return torch.stack(exact), torch.stack(k1)
