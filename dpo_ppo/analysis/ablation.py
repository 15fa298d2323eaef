"""Analysis 3: ablate every attention head, one at a time (seed 2.3, 3.3).

What an ablation does.  In a GPT-NeoX block the heads' outputs ``z`` (``[..., n_heads * d_head]``,
head ``h`` in columns ``h*d_head:(h+1)*d_head``) enter the output projection ``attention.dense``
together; ablating head ``h`` of layer ``L`` replaces its slice there by

* ``zero``: zeros (the head writes nothing but the projection's bias), or
* ``mean``: its mean over every real token of the held-out LM texts (one vector per head, the
  same at every position), which removes what the head says about *this* input while keeping
  its average contribution, so that downstream layers see an in-distribution stream.

What is measured, per head and kind, as a change against the unablated model:

* **LM loss**: the token-weighted mean next-token cross-entropy on held-out texts;
* **sentiment objective** (the seed's two losses): completions are sampled from the ablated model
  for a few prompts and scored by the classifier: gradient loss ``mean(1 - p_positive)`` and binary
  loss ``fraction with p_positive < 0.5``.  Sampling noise would swamp the effect of one head with
  a handful of prompts, so every variant samples with *common random numbers*: at step ``t`` of
  prompt ``i`` all variants draw the same Gumbel noise ``g[i, t, :]`` and take
  ``argmax(logits / T + g)``, an exact sample from ``softmax(logits / T)`` (the Gumbel-max trick).
  The unablated model and an ablated one therefore write the same completion wherever the ablation
  does not change the choice, and a delta is the ablation's effect, not a fresh draw.  Scoring
  prompt + completion (the default) is the objective the policy was trained on.

How it is batched.  The naive way runs one full evaluation per (head, kind): ``2 * L * H + 1`` passes
over the texts.  Here the variants are stacked along the batch dimension: a batch of ``b`` texts is
repeated for ``R`` variants (rows ``r*b .. r*b+b-1`` belong to variant ``r``) and a forward
pre-hook on every layer's ``attention.dense`` rewrites each variant's head slice in its own rows, so
one forward (or one ``generate``) evaluates many ablations.  For the LM loss the lower layers are
shared as well: all variants of layer ``L`` see the same input up to block ``L``, so the batch runs
once, unrepeated, up to there.  In a parallel-residual block (GPT-NeoX, Pythia) even block ``L``
is shared: the ablation changes its output by exactly ``(z'_h - z_h) W_O[:, h]^T`` and nothing
else, so the block's clean output is expanded to ``R * b`` rows with that correction added (a
forward hook); other blocks are expanded on entry to block ``L`` and ablated there.
``benchmarks/bench_ablation.py`` measures each step against the naive loop on the same inputs.

Why HF forward hooks and not the TransformerBridge here: the hook needs the per-head outputs right
before the projection (TransformerLens's ``blocks.L.attn.hook_z``), and ``attention.dense``'s input is
exactly that tensor in GPT-NeoX; hooking the HF module lets ``model.generate`` (with its KV cache)
run ablated models unchanged and avoids the bridge's deep copy and per-hook overhead for the
``2 * L * H`` variants.  Hooks are removed on exit; the model is never modified.
"""

from __future__ import annotations

import contextlib
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from dpo_ppo.progress import tqdm  # plain lines when stderr is not a terminal

from dpo_ppo.analysis.common import (batches, blocks, head_dim, model_device, n_heads, n_layers,
                                     right_pad)

Variant = Optional[tuple]  # (layer, head, kind) or None for the unablated model


def variants_for(model, kinds: Sequence[str]) -> list[Variant]:
    """The baseline (None) followed by every (layer, head, kind)."""
    return [None] + [(L, h, k) for k in kinds for L in range(n_layers(model)) for h in range(n_heads(model))]


class StackedAblation(contextlib.AbstractContextManager):
    """Pre-hooks on each layer's ``attention.dense`` that ablate one head per stacked variant.

    The batch seen by the hook must be ``R * b`` rows, replicate-major (``ids.repeat(R, 1)``), where
    ``R = len(variants)``; variant ``None`` leaves its rows untouched.
    """

    def __init__(self, model, variants: Sequence[Variant], means: dict | None = None):
        self.model, self.variants, self.handles = model, list(variants), []
        H, dh = n_heads(model), head_dim(model)
        R = len(self.variants)
        self.plan = {}
        for L in range(n_layers(model)):
            keep = torch.ones(R, H)
            fill = torch.zeros(R, H, dh)
            for r, v in enumerate(self.variants):
                if v is None or v[0] != L:
                    continue
                _, h, kind = v
                keep[r, h] = 0.0
                if kind == "mean":
                    if means is None:
                        raise ValueError("mean ablation needs the heads' mean outputs")
                    fill[r, h] = means[L][h].float().cpu()
                elif kind != "zero":
                    raise ValueError(f"unknown ablation kind {kind!r}")
            if (keep == 0).any():
                self.plan[L] = (keep, fill)

    def _hook(self, L):
        keep, fill = self.plan[L]
        cache = {}

        def hook(module, args):
            x = args[0]
            R = keep.shape[0]
            if x.shape[0] % R:
                raise RuntimeError(f"batch of {x.shape[0]} rows is not {R} stacked variants")
            key = (x.device, x.dtype)
            if key not in cache:
                cache[key] = (keep.to(x.device, x.dtype), fill.to(x.device, x.dtype))
            k, f = cache[key]
            H, dh = f.shape[1], f.shape[2]
            xv = x.reshape(R, x.shape[0] // R, *x.shape[1:-1], H, dh)
            shape = (R,) + (1,) * (xv.dim() - 3) + (H,)
            out = xv * k.view(*shape, 1) + f.view(*shape, dh)
            return (out.reshape(x.shape),) + tuple(args[1:])

        return hook

    def __enter__(self):
        layers = blocks(self.model)
        for L in self.plan:
            self.handles.append(layers[L].attention.dense.register_forward_pre_hook(self._hook(L)))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles.clear()
        return False


class _Tiler:
    """Pre-hooks that tile the per-row extras every block gets (the causal mask of eager
    attention, position ids or rotary tables with a batch dimension) once the hidden state has
    been expanded to ``times * b`` rows; size-1 extras broadcast and stay as they are.  Used
    without a padding mask (right padding: a causal model's real tokens never see the pads)."""

    def __init__(self, times: int):
        self.times, self.b = times, None

    def tile(self, x):
        if torch.is_tensor(x) and x.dim() and x.shape[0] == self.b and self.b > 1:
            return x.repeat(self.times, *([1] * (x.dim() - 1)))
        if isinstance(x, tuple):
            return tuple(self.tile(y) for y in x)
        return x

    def extras(self, kwargs):
        return {k: (v if k == "hidden_states" else self.tile(v)) for k, v in kwargs.items()}

    def later(self, module, args, kwargs):
        return args, self.extras(kwargs)


@contextlib.contextmanager
def _hooks(handles):
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _expand_at(model, layer: int, times: int):
    """Repeat the hidden state ``times`` along the batch when it enters block ``layer``.

    Blocks below ``layer`` run once on the unrepeated batch; everything from ``layer`` up sees
    ``times * b`` rows (replicate-major), ablated there by a ``StackedAblation``.
    """
    tiler = _Tiler(times)

    def first(module, args, kwargs):
        if args:
            tiler.b = args[0].shape[0]
            args = (args[0].repeat(times, *([1] * (args[0].dim() - 1))),) + tuple(args[1:])
        else:
            hidden = kwargs["hidden_states"]
            tiler.b = hidden.shape[0]
            kwargs = dict(kwargs, hidden_states=hidden.repeat(times, *([1] * (hidden.dim() - 1))))
        return args, tiler.extras(kwargs)

    layers = blocks(model)
    handles = [layers[layer].register_forward_pre_hook(first, with_kwargs=True)]
    handles += [layers[L].register_forward_pre_hook(tiler.later, with_kwargs=True) for L in range(layer + 1, len(layers))]
    return _hooks(handles)


def _expand_after(model, layer: int, ablation: "StackedAblation"):
    """Run block ``layer`` once, unrepeated, and expand its *output* to one copy per variant,
    each corrected exactly for its ablated head.

    Valid for parallel-residual blocks (GPT-NeoX / Pythia: ``h + attn(ln1(h)) + mlp(ln2(h))``):
    there the ablation changes only the attention output, by ``(z'_h - z_h) W_O[:, h]^T`` where
    ``z_h`` is the head's slice of the projection's input and ``z'_h`` its replacement (0 or the
    mean), and nothing else in the block reads it.  So even block ``layer`` is shared, and the
    variants of the last layer need no transformer block at all.
    """
    keep, fill = ablation.plan[layer]
    times = keep.shape[0]
    dense = blocks(model)[layer].attention.dense
    tiler, state = _Tiler(times), {}

    def grab(module, args):
        state["z"] = args[0]

    def expand(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        z = state.pop("z")
        b, H, dh = z.shape[0], fill.shape[1], fill.shape[2]
        tiler.b = b
        k, f = keep.to(z.device, z.dtype), fill.to(z.device, z.dtype)
        zv = z.reshape(1, b, *z.shape[1:-1], H, dh)
        shape = (times,) + (1,) * (zv.dim() - 3) + (H,)
        diff = (f.view(*shape, dh) - zv) * (1 - k).view(*shape, 1)  # nonzero only in the ablated head
        delta = diff.reshape(times, b, *z.shape[1:-1], H * dh) @ dense.weight.T
        new = (hidden.unsqueeze(0) + delta).reshape(times * b, *hidden.shape[1:])
        return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new

    layers = blocks(model)
    handles = [dense.register_forward_pre_hook(grab), layers[layer].register_forward_hook(expand)]
    handles += [layers[L].register_forward_pre_hook(tiler.later, with_kwargs=True) for L in range(layer + 1, len(layers))]
    return _hooks(handles)


# --------------------------------------------------------------------------- LM loss


@torch.no_grad()
def head_means(model, seqs: list[list[int]], *, pad: int, batch_size: int = 16) -> dict[int, torch.Tensor]:
    """Each head's mean output z over every real token of ``seqs``: {layer: [H, d_head]}."""
    H, dh = n_heads(model), head_dim(model)
    device = model_device(model)
    sums = {L: torch.zeros(H * dh, dtype=torch.float64) for L in range(n_layers(model))}
    count = 0
    current = {}

    def grab(L):
        def hook(module, args):
            x = args[0]
            m = current["mask"]
            sums[L] += (x.double() * m[..., None]).sum((0, 1)).cpu()
        return hook

    handles = [blocks(model)[L].attention.dense.register_forward_pre_hook(grab(L)) for L in sums]
    try:
        for span in batches(len(seqs), batch_size):
            ids, mask = right_pad(seqs[span], pad, device=device)
            current["mask"] = mask.double()
            _base(model)(input_ids=ids, use_cache=False)
            count += int(mask.sum())
    finally:
        for h in handles:
            h.remove()
    return {L: (s / max(count, 1)).float().view(H, dh) for L, s in sums.items()}


def _base(model):
    return getattr(model, "gpt_neox", None) or model.base_model


def _nll(model, ids: torch.Tensor, mask: torch.Tensor, chunk: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row sum of next-token NLL over real targets, and the number of targets.

    ``ids``/``mask`` may have fewer rows than the hidden state (when expanded inside the model);
    they are tiled to match, replicate-major.
    """
    hidden = _base(model)(input_ids=ids, use_cache=False).last_hidden_state
    reps = hidden.shape[0] // ids.shape[0]
    ids, mask = ids.repeat(reps, 1), mask.repeat(reps, 1)
    head = model.get_output_embeddings()
    target_mask = (mask[:, 1:] & mask[:, :-1]).float()
    sums = []
    for span in batches(hidden.shape[0], chunk):
        logits = head(hidden[span, :-1]).float()
        nll = F.cross_entropy(logits.transpose(1, 2), ids[span, 1:], reduction="none")
        sums.append((nll * target_mask[span]).sum(-1))
    return torch.cat(sums).double().cpu(), target_mask.sum(-1).double().cpu()


@torch.no_grad()
def lm_losses(model, seqs: list[list[int]], variants: Sequence[Variant], *, pad: int, means=None,
              batch_size: int = 16, rows: int = 512, naive: bool = False, share_lower: bool = True,
              progress: bool = True) -> torch.Tensor:
    """Mean next-token loss on ``seqs`` of the model under each variant: tensor [len(variants)].

    ``naive=True`` is the reference implementation: one full evaluation per variant.  Otherwise
    variants of the same layer are stacked (up to ``rows`` rows per forward) and, with
    ``share_lower``, the blocks below that layer are run once for all of them.
    """
    device = model_device(model)
    total = torch.zeros(len(variants), dtype=torch.float64)
    count = torch.zeros(len(variants), dtype=torch.float64)
    padded = [right_pad(seqs[s], pad, device=device) for s in batches(len(seqs), batch_size)]
    if naive:
        for r, v in enumerate(tqdm(variants, desc="ablation (naive)", leave=False, disable=not progress)):
            with StackedAblation(model, [v], means):
                for ids, mask in padded:
                    s, c = _nll(model, ids, mask)
                    total[r] += s.sum()
                    count[r] += c.sum()
        return total / count
    # group the variants by the layer they ablate (the baseline counts as layer n_layers: nothing shared)
    parallel = bool(getattr(model.config, "use_parallel_residual", False))
    groups: dict[int, list[int]] = {}
    for r, v in enumerate(variants):
        groups.setdefault(n_layers(model) if v is None else v[0], []).append(r)
    jobs = []
    for layer, members in sorted(groups.items()):
        for ids, mask in padded:
            per = max(1, rows // ids.shape[0])
            for span in batches(len(members), per):
                jobs.append((layer, members[span], ids, mask))
    for layer, members, ids, mask in tqdm(jobs, desc="ablation (LM loss)", leave=False, disable=not progress):
        vs = [variants[r] for r in members]
        ablation = StackedAblation(model, vs, means)
        if share_lower and layer < n_layers(model) and parallel:
            # block `layer` and those below run once; its output is expanded and corrected
            with _expand_after(model, layer, ablation):
                s, c = _nll(model, ids, mask)
        elif share_lower and 0 < layer < n_layers(model):
            # blocks below `layer` run once, then the batch is tiled and ablated at `layer`
            with ablation, _expand_at(model, layer, len(vs)):
                s, c = _nll(model, ids, mask)
        else:
            with ablation:
                s, c = _nll(model, ids.repeat(len(vs), 1), mask.repeat(len(vs), 1))
        b = ids.shape[0]
        total[members] += s.view(len(vs), b).sum(1)
        count[members] += c.view(len(vs), b).sum(1)
    return total / count


# --------------------------------------------------------------------------- sentiment


class SharedGumbelSampler:
    """Logits processor: ``logits / T + g[prompt of the row, step]`` with Gumbel noise shared by all
    rows of the same prompt; under greedy decoding this samples from softmax(logits / T)."""

    def __init__(self, prompt_of_row: torch.Tensor, width: int, n_prompts: int, temperature: float, seed: int):
        self.rows = prompt_of_row
        self.width, self.n_prompts, self.temperature, self.seed = width, n_prompts, temperature, seed
        self._noise: dict[int, torch.Tensor] = {}

    def noise(self, step: int, vocab: int) -> torch.Tensor:
        if step not in self._noise:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
            u = torch.rand(self.n_prompts, vocab, generator=g, dtype=torch.float64)
            self._noise[step] = -torch.log(-torch.log(u.clamp(1e-12, 1 - 1e-12))).float()
        return self._noise[step]

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.width
        g = self.noise(step, scores.shape[-1]).to(scores.device)
        return scores.float() / self.temperature + g[self.rows.to(scores.device)]


def _left_pad(seqs, pad, device):
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.as_tensor(s)
        mask[i, width - len(s):] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def sample_completions(model, prompts: list[list[int]], variants: Sequence[Variant], *, pad: int, eos: int,
                       max_new_tokens: int, temperature: float = 1.0, seed: int = 0, means=None,
                       rows: int = 512, naive: bool = False, progress: bool = True) -> list[list[list[int]]]:
    """Completions (token ids, cut after EOS) for every variant and prompt: [variant][prompt] -> ids.

    Common random numbers: the sample of prompt i under any variant uses the same noise.
    """
    from transformers import LogitsProcessorList

    device = model_device(model)
    P = len(prompts)
    ids, mask = _left_pad(prompts, pad, device)
    per = 1 if naive else max(1, rows // P)
    out: list[list[list[int]]] = []
    spans = list(batches(len(variants), per))
    for span in tqdm(spans, desc="ablation (sampling)", leave=False, disable=not progress):
        vs = list(variants[span])
        R = len(vs)
        sampler = SharedGumbelSampler(torch.arange(P).repeat(R), ids.shape[1], P, temperature, seed)
        with StackedAblation(model, vs, means):
            seqs = model.generate(input_ids=ids.repeat(R, 1), attention_mask=mask.repeat(R, 1),
                                  do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
                                  logits_processor=LogitsProcessorList([sampler]), pad_token_id=pad,
                                  eos_token_id=eos, temperature=None, top_k=None, top_p=None)
        new = seqs[:, ids.shape[1]:].tolist()
        for r in range(R):
            rows_r = []
            for toks in new[r * P:(r + 1) * P]:
                if eos in toks:
                    toks = toks[: toks.index(eos) + 1]
                rows_r.append(toks)
            out.append(rows_r)
    return out


def sentiment_losses(scorer, tokenizer, prompts, completions, *, score_prompt: bool = True) -> dict:
    """Gradient loss mean(1 - p) and binary loss mean(p < 0.5) per variant."""
    texts = []
    for comp in completions:
        for p, c in zip(prompts, comp):
            texts.append(tokenizer.decode((list(p) if score_prompt else []) + list(c), skip_special_tokens=True))
    p = scorer.p_positive(texts).double().view(len(completions), len(prompts))
    return {"p_positive": p.mean(1), "grad_loss": (1 - p).mean(1), "binary_loss": (p < 0.5).double().mean(1)}


# --------------------------------------------------------------------------- the analysis


def ablate_heads(model, tokenizer, *, lm_seqs: list[list[int]], prompts: list[list[int]] | None = None,
                 scorer=None, kinds: Sequence[str] = ("zero", "mean"), completion_len: int = 16,
                 temperature: float = 1.0, score_prompt: bool = True, batch_size: int = 16, rows: int = 512,
                 seed: int = 0, pad: int | None = None, naive: bool = False, share_lower: bool = True,
                 progress: bool = True) -> dict:
    """Every head ablated alone, zero and/or mean: LM loss and (with a scorer) sentiment deltas.

    Returns per kind ``[layer][head]`` matrices ``lm_loss_increase`` and, with a scorer,
    ``grad_loss_delta``/``binary_loss_delta``, plus the unablated baselines.
    """
    from dpo_ppo.analysis.common import pad_id

    pad = pad_id(tokenizer) if pad is None else pad
    L, H = n_layers(model), n_heads(model)
    variants = variants_for(model, kinds)
    means = head_means(model, lm_seqs, pad=pad, batch_size=batch_size) if "mean" in kinds else None
    losses = lm_losses(model, lm_seqs, variants, pad=pad, means=means, batch_size=batch_size, rows=rows,
                       naive=naive, share_lower=share_lower, progress=progress)
    base = float(losses[0])
    result = {"lm_loss_base": base, "num_lm_texts": len(lm_seqs), "kinds": {}}
    index = {v: r for r, v in enumerate(variants)}

    def grid(values, kind, minus):
        return [[float(values[index[(l, h, kind)]] - minus) for h in range(H)] for l in range(L)]

    for kind in kinds:
        result["kinds"][kind] = {"lm_loss_increase": grid(losses, kind, base)}
    if scorer is not None and prompts:
        eos = tokenizer.eos_token_id
        comps = sample_completions(model, prompts, variants, pad=pad, eos=eos, max_new_tokens=completion_len,
                                   temperature=temperature, seed=seed, means=means, rows=rows, naive=naive,
                                   progress=progress)
        sent = sentiment_losses(scorer, tokenizer, prompts, comps, score_prompt=score_prompt)
        result["grad_loss_base"] = float(sent["grad_loss"][0])
        result["binary_loss_base"] = float(sent["binary_loss"][0])
        result["num_prompts"] = len(prompts)
        for kind in kinds:
            result["kinds"][kind]["grad_loss_delta"] = grid(sent["grad_loss"], kind, result["grad_loss_base"])
            result["kinds"][kind]["binary_loss_delta"] = grid(sent["binary_loss"], kind, result["binary_loss_base"])
        result["completions_base"] = [tokenizer.decode(c, skip_special_tokens=True) for c in comps[0]]
    return result


def robustness(grid: list[list[float]]) -> dict:
    """Mean and max over heads of a layer x head matrix (the seed's robustness to ablation)."""
    flat = torch.tensor(grid, dtype=torch.float64).flatten()
    arg = int(flat.argmax())
    H = len(grid[0])
    return {"mean": float(flat.mean()), "max": float(flat.max()), "argmax_layer": arg // H, "argmax_head": arg % H}
