"""Sampling completions and scoring their log-probabilities, batched, for any causal LM.

Prompts and completions travel as lists of token ids (prompts may have different lengths, as
with the seed's 25-75 token prefixes).  ``pad_batch`` is the one padding helper (left-padded
prompts for ``generate``, right-padded prompt+completion for a forward pass) and ``pad_token_id``
the one rule for what pads (the tokenizer's pad token, else its EOS).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from dpo_ppo.runtime import hardware
from dpo_ppo.runtime.progress import tqdm  # plain lines when stderr is not a terminal
from transformers import LogitsProcessor, LogitsProcessorList


def model_device(model) -> torch.device:
    return next(model.parameters()).device


# ---------------------------------------------------------------- keyed (counter-based) sampling

_MASK = {31: (1 << 33) - 1, 27: (1 << 37) - 1, 33: (1 << 31) - 1}


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 64-bit integer hash (splitmix64's finaliser shape) on int64 tensors; shifts are logical."""
    x = x ^ ((x >> 31) & _MASK[31])
    x = x * 0x7FB5D329728EA185
    x = x ^ ((x >> 27) & _MASK[27])
    x = x * 0x1DADEF4BC2DD44D
    return x ^ ((x >> 33) & _MASK[33])


def keyed_gumbel(keys: torch.Tensor, step: int, width: int) -> torch.Tensor:
    """Gumbel noise -log(-log(u)) of ``keyed_uniform``: on a GPU one fused kernel (torch.compile),
    instead of ~20 passes over a [batch, vocabulary] int64 tensor per sampled token."""
    if keys.device.type == "cuda" and "Gumbel noise" not in _COMPILE_FAILED:
        try:
            return _compiled_gumbel()(keys, torch.as_tensor(step, device=keys.device), width)
        except Exception as e:  # a compiler problem must never stop sampling
            _compile_failed("Gumbel noise", e)
    return _gumbel_eager(keys, step, width)


def _gumbel_eager(keys, step, width):
    return -torch.log(-torch.log(keyed_uniform(keys, step, width)))


@functools.cache
def _compiled_gumbel():
    return torch.compile(_gumbel_eager, dynamic=True)


_COMPILE_FAILED: set = set()  # the compiled paths that failed in this process: eager from then on


def _compile_failed(what: str, exc: BaseException) -> None:
    _COMPILE_FAILED.add(what)
    logging.getLogger(__name__).warning("sampling: the compiled %s failed (%r); decoding eagerly from now on "
                                        "(the same samples, slower)", what, exc)


def keyed_uniform(keys: torch.Tensor, step, width: int) -> torch.Tensor:
    """[len(keys), width] uniforms in (0, 1), a pure function of (key, step, column)."""
    base = _mix(keys.long() * 0x9E3779B1 + step)
    cols = torch.arange(width, device=keys.device, dtype=torch.long) * 0x632BE59BD9B4E019
    bits = (_mix(base[:, None] + cols[None, :]) >> 40) & 0xFFFFFF  # 24 bits: exact in float32
    return (bits.float() + 0.5) / float(1 << 24)


class KeyedGumbelSampler(LogitsProcessor):
    """Turns greedy decoding into sampling whose noise is a function of (key, step, token) only.

    argmax(logits / T + Gumbel noise) is a sample from softmax(logits / T) (the Gumbel-max trick);
    the noise comes from ``keyed_uniform``, so a prompt's completion depends on its key and the
    model, not on the batch it shares, the batch size, or what used the RNG before.  Two models
    evaluated with the same keys also share their noise (common random numbers), which pairs their
    samples prompt by prompt.  The 24-bit uniforms cap the noise at ~17 nats: a token whose
    probability is below ~4e-8 of the most likely one is never drawn.
    """

    def __init__(self, keys: torch.Tensor, prompt_width: int, temperature: float = 1.0, top_k: int = 0):
        self.keys, self.prompt_width = keys, prompt_width
        self.temperature, self.top_k = temperature, top_k

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.float() / self.temperature
        if self.top_k and self.top_k < scores.shape[-1]:
            kth = torch.topk(scores, self.top_k, dim=-1).values[:, -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        step = input_ids.shape[1] - self.prompt_width
        return scores + keyed_gumbel(self.keys.to(scores.device), step, scores.shape[-1])


def sample_keys(seed: int, ids: Sequence[int]) -> list[int]:
    """One sampling key per prompt id, for ``generate(keys=...)``: a function of (seed, id) alone."""
    return [int(seed) * 1_000_003 + int(i) for i in ids]


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, left: bool, device=None, width: int | None = None):
    """Pad token-id lists into (input_ids, attention_mask) tensors, ``width`` columns (default:
    the longest sequence)."""
    width = max([len(s) for s in seqs] + [width or 0])
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
             desc: str | None = "sampling", keys: Optional[Sequence[int]] = None, static_cache: bool = False) -> list[list[int]]:
    """Sample one completion per prompt with ``model.generate``; returns the new token ids.

    A completion ends at the first EOS (the EOS itself is kept, so that its probability is part of
    the sequence) or after ``max_new_tokens``.  Prompts are sorted by length and batched, so a
    range of prefix lengths costs little padding.  Without ``keys`` sampling draws from torch's
    global RNG; with ``keys`` (one int per prompt, see ``sample_keys``) each completion is a
    function of its key and the model alone (``KeyedGumbelSampler``).

    Decoding runs the model in its own dtype with autocast off, whatever context it is called in:
    measured on an H200 (docs/performance.md), eager decoding of the float32 model (TF32 matmuls)
    gave 106k tokens/s at batch 1024, against 28k under bf16 autocast (which recasts every weight
    at every token) and 32k from a bf16 copy.  So under ``precision=bf16`` the samples are the
    float32 model's, and they do not depend on ``static_cache``.

    ``static_cache``: transformers' static KV cache, which ``generate`` compiles on a GPU (CUDA
    graphs, ``torch.compile``); every batch then has the same shape (prompts left-padded to the
    longest of the call, the last batch topped up with copies of its first row) so that the
    compiled decoding step is reused, not recompiled.  Completions are the same either way (up to
    floating-point rounding in the compiled kernels).  Should compiling fail on a GPU, the call and
    every later one decode eagerly, with a warning.
    """
    device = model_device(model)
    was_training = model.training
    model.eval()
    static_cache = static_cache and "static cache" not in _COMPILE_FAILED
    run = functools.partial(_generate, model, tokenizer, prompts, max_new_tokens, temperature=temperature,
                            top_k=top_k, batch_size=batch_size, desc=desc, keys=keys,
                            device=device)
    try:
        with _no_autocast(device):
            try:
                return run(static_cache=static_cache)
            except torch.OutOfMemoryError:
                raise
            except Exception as e:  # a compiler problem must not cost the job: the same samples, eagerly
                if not (static_cache and device.type == "cuda"):
                    raise
                _compile_failed("static cache", e)
                return run(static_cache=False)
    finally:
        model.train(was_training)


def _no_autocast(device: torch.device):
    """Autocast off for decoding (see ``generate``), or nothing when none is on."""
    if torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def pad_token_id(tokenizer) -> int:
    """The id batches are padded with: the tokenizer's pad token, else its EOS (a model folder is
    refused when it has neither: ``inputs.check_tokenizer_pad``)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _generate(model, tokenizer, prompts, max_new_tokens, *, temperature, top_k, batch_size, desc,
              keys, static_cache, device) -> list[list[int]]:
    pad_id = pad_token_id(tokenizer)
    eos_id = tokenizer.eos_token_id
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    starts = range(0, len(order), batch_size)
    width = max((len(p) for p in prompts), default=0)
    bar = tqdm(starts, desc=desc, unit="batch", leave=False, disable=desc is None)
    for start in bar:
        idx = order[start: start + batch_size]
        rows = [prompts[i] for i in idx]
        if static_cache:  # one shape for every batch: full rows, the call's widest prompt
            rows += [rows[0]] * (min(batch_size, len(order)) - len(rows))
        ids, mask = pad_batch(rows, pad_id, left=True, device=device, width=width if static_cache else None)
        kwargs = dict(max_new_tokens=max_new_tokens, min_new_tokens=1, pad_token_id=pad_id, top_p=None)
        if static_cache:
            kwargs["cache_implementation"] = "static"
        if keys is None:
            kwargs.update(do_sample=True, temperature=temperature, top_k=top_k if top_k > 0 else None)
        else:
            row_keys = [keys[i] for i in idx]
            row_keys += [row_keys[0]] * (len(rows) - len(row_keys))
            batch_keys = torch.as_tensor(row_keys, dtype=torch.long, device=device)
            kwargs.update(do_sample=False, temperature=None, top_k=None, logits_processor=LogitsProcessorList(
                [KeyedGumbelSampler(batch_keys, ids.shape[1], temperature, top_k)]))
        kwargs["eos_token_id"] = eos_id
        seqs = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        new = seqs[:, ids.shape[1]:].tolist()
        for i, toks in zip(idx, new):
            if eos_id in toks:
                toks = toks[: toks.index(eos_id) + 1]
            out[i] = toks
    return out


@torch.no_grad()
def sequence_kl(model, ref_model, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
                *, pad_id: int = 0, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Two estimates of KL(model || ref) per completion, from one forward pass of each model.

    ``exact``: sum over completion positions of KL(model(.|y<t) || ref(.|y<t)), the full next-token
    distributions compared; on completions sampled from ``model`` its mean estimates the
    sequence-level KL with less variance than the log-ratio, and it is never negative.
    ``k1``: sum over completion tokens of log model(y_t|.) - log ref(y_t|.), the plain log-ratio.

    Both run in float32 whatever autocast surrounds the call (``hardware.exact_float32``: bf16
    rounding of two nearby models' weights would put a floor under the KL).
    """
    device = model_device(model)
    with hardware.exact_float32(device):
        return _sequence_kl(model, ref_model, prompts, completions, pad_id, batch_size, device)


def _sequence_kl(model, ref_model, prompts, completions, pad_id, batch_size, device):
    exact, k1 = torch.zeros(len(prompts)), torch.zeros(len(prompts))
    # batched by length (each row's numbers do not depend on its batch): a batch pads to its own
    # longest sequence, not to the longest of all
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(completions[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start: start + batch_size]
        ps, cs = [prompts[i] for i in idx], [completions[i] for i in idx]
        ids, mask = pad_batch([list(p) + list(c) for p, c in zip(ps, cs)], pad_id, left=False, device=device)
        logp = F.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1].float(), -1)
        logq = F.log_softmax(ref_model(input_ids=ids, attention_mask=mask).logits[:, :-1].float(), -1)
        diff = logp - logq
        kl = (logp.exp() * diff).sum(-1)  # [B, T-1]
        ratio = torch.gather(diff, 2, ids[:, 1:, None]).squeeze(-1)
        del logp, logq, diff
        # completion positions: from len(p) - 1 to len(p) + len(c) - 2
        pos = torch.arange(ids.shape[1] - 1, device=device)
        starts = torch.as_tensor([len(p) - 1 for p in ps], device=device)
        ends = starts + torch.as_tensor([len(c) for c in cs], device=device)
        span = (pos[None, :] >= starts[:, None]) & (pos[None, :] < ends[:, None])
        # a KL is >= 0; float32 rounding of two nearly equal distributions can leave a sum of
        # -1e-7 (nearby models, another CPU's BLAS): that is 0.  Clamping the sequence's sum (not each
        # position) leaves every positive sum as it was, bit for bit
        exact[idx] = torch.where(span, kl, 0.0).sum(1).clamp_min(0).cpu()
        k1[idx] = torch.where(span, ratio, 0.0).sum(1).cpu()
    return exact, k1
