"""Forward hooks that run many head ablations in one forward pass (used by ``ablation.py``).

A variant is ``None`` (the unablated model) or ``(layer, head, kind)``: head ``head`` of block
``layer`` ablated, ``kind`` ``zero`` or ``mean`` (see ablation.py for what each means).  In a
GPT-NeoX block the heads' outputs ``z`` (``[..., n_heads * d_head]``, head ``h`` in columns
``h*d_head:(h+1)*d_head``) enter the output projection ``attention.dense`` together.

* ``StackedAblation``: ``R`` variants stacked along the batch dimension: a batch of ``b`` rows is
  repeated ``R`` times (rows ``r*b .. r*b+b-1`` belong to variant ``r``) and a forward pre-hook on
  every layer's ``attention.dense`` rewrites each variant's head slice in its own rows, so one
  forward (or one ``generate``) evaluates many ablations.
* ``expand_at``: all variants of layer ``L`` see the same input up to block ``L``, so the batch
  runs once, unrepeated, below it and is repeated on entering block ``L`` (the per-row extras of
  the later blocks, e.g. an eager causal mask, are tiled to match).
* ``expand_after``: in a parallel-residual block (GPT-NeoX, Pythia) even block ``L`` is shared:
  the ablation changes its output by exactly ``(z'_h - z_h) W_O[:, h]^T`` and nothing else, so the
  block's clean output is expanded to ``R * b`` rows with that correction added (a forward hook).

Why HF forward hooks and not the TransformerBridge: the hook needs the per-head outputs right
before the projection (TransformerLens's ``blocks.L.attn.hook_z``), and ``attention.dense``'s input
is exactly that tensor in GPT-NeoX; hooking the HF module lets ``model.generate`` (with its KV
cache) run ablated models unchanged and avoids the bridge's deep copy and per-hook overhead for
the ``2 * L * H`` variants.  Every hook is removed on exit; the model is never modified.
"""

from __future__ import annotations

import contextlib
from typing import Optional, Sequence

import torch

from dpo_ppo.analysis.common import blocks, head_dim, n_heads, n_layers

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
def removing(handles):
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def expand_at(model, layer: int, times: int):
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
    return removing(handles)


def expand_after(model, layer: int, ablation: "StackedAblation"):
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
    return removing(handles)
