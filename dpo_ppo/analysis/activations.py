"""Analysis 2: how far the tuned model's activations moved from the reference's (seed 2.2, 3.2).

Both models read the same held-out prompts.  At every layer ``L`` three activation sites are
compared, read with TransformerLens hooks on a ``TransformerBridge`` of each model:

* ``resid``: the residual stream after block L (``blocks.L.hook_resid_post``);
* ``attn``:  the attention block's output added to the stream (``blocks.L.hook_attn_out``);
* ``mlp``:   the MLP's output added to the stream (``blocks.L.hook_mlp_out``).

For each token position ``t`` with tuned activation ``a`` and reference activation ``b`` (vectors
of size d_model) two numbers are computed:

* **cosine similarity** ``cos(a, b) = a.b / (|a| |b|)``; 1 for identical activations;
* **"KL between activations"** ``KL(softmax(a) || softmax(b)) = sum_i p_i (log p_i - log q_i)``
  with ``p = softmax(a)``, ``q = softmax(b)`` taken over the d_model hidden units: each activation
  vector is read as the logits of a distribution over hidden units.  This is what the seed's
  "KL divergence between activation vectors" can mean for real-valued vectors; it is 0 for
  identical activations and grows with their difference, but it is not a divergence between
  anything the model predicts: it depends on the activations' scale (multiplying both by 2
  changes it) and on the arbitrary basis of the hidden units.  Read it as a distance, nothing more.

The meaningful companion is the **logit-lens KL**: the residual stream after block L, passed
through each model's own final LayerNorm and unembedding, is a next-token distribution; the KL
``KL(P_tuned || P_ref)`` between the two models' distributions (over the vocabulary) says how
differently the two models would predict the next token if decoding stopped at layer L.  At the
last layer it is the KL between the models' actual next-token distributions.  The direction
(tuned first) is that of the KL penalty in RLHF, ``E_policy[log pi - log pi_ref]``.

Averaging: per-token values are averaged over a prompt's tokens (padding excluded), then over
prompts (each prompt counts once); separately over positive-only, negative-only and all prompts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dpo_ppo.runtime import hardware
from dpo_ppo.analysis import plots
from dpo_ppo.analysis.common import batches, encode, select_balanced
from dpo_ppo.analysis.context import Context, Output
from dpo_ppo.runtime.progress import tqdm  # plain lines when stderr is not a terminal
from dpo_ppo.train.sampling import pad_batch

SITES = {"resid": "hook_resid_post", "attn": "hook_attn_out", "mlp": "hook_mlp_out"}
SUBSETS = ("all", "pos", "neg")


def softmax_kl(p_logits: torch.Tensor, q_logits: torch.Tensor, dtype=torch.float64) -> torch.Tensor:
    """KL(softmax(p) || softmax(q)) over the last dimension, never negative.

    For two nearby models ``sum p (log p - log q)`` is a sum of terms of both signs that nearly
    cancel: in float32 its rounding error (~1e-7 of each term) exceeds a KL of 1e-9, and the sum
    came out at -3.3e-9 on one x86 CPU and positive on another.  So the default is float64 (the
    inputs, float32 or lower, convert exactly), and what rounding is left (a KL of two
    distributions equal to ~1e-16) is clamped at 0: a KL is >= 0 by definition, so a negative
    value can only be rounding."""
    lp = F.log_softmax(p_logits.to(dtype), -1)
    lq = F.log_softmax(q_logits.to(dtype), -1)
    return (lp.exp() * (lp - lq)).sum(-1).clamp_min(0)


def _logit_lens_kl(pol_logits: torch.Tensor, ref_logits: torch.Tensor, rows: int = 4) -> torch.Tensor:
    """``softmax_kl`` of [B, T, vocab] logits in float64, a few rows at a time (float64 logits of a
    50k vocabulary are 400 kB per token: converting the whole batch at once would double memory)."""
    return torch.cat([softmax_kl(pol_logits[i:i + rows], ref_logits[i:i + rows])
                      for i in range(0, pol_logits.shape[0], rows)])


def _per_prompt_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T] -> [B]: mean over the real (unpadded) tokens."""
    m = mask.to(x.dtype)
    return (x * m).sum(-1) / m.sum(-1)


@torch.no_grad()
def activation_divergence(ref_bridge, pol_bridge, seqs: list[list[int]], labels: list[int], *,
                          pad: int, batch_size: int = 16, progress: bool = True) -> dict:
    """Cosine and softmax-KL per site and layer, and logit-lens KL per layer.

    In float32 whatever autocast surrounds the call (``hardware.exact_float32``).
    Returns ``{"sites": {site: {"cos"|"kl": {subset: [per layer]}}}, "logit_lens_kl": {subset:
    [per layer]}, "num_prompts": {subset: n}}``.
    """
    with hardware.exact_float32(ref_bridge.cfg.device):  # a divergence of two nearby models: no bf16 floor
        return _activation_divergence(ref_bridge, pol_bridge, seqs, labels, pad, batch_size, progress)


def _activation_divergence(ref_bridge, pol_bridge, seqs, labels, pad, batch_size, progress) -> dict:
    n_layers = ref_bridge.cfg.n_layers
    device = ref_bridge.cfg.device
    wanted = tuple(SITES.values())

    def names_filter(name):
        return name.endswith(wanted)

    per = {site: {m: [] for m in ("cos", "kl")} for site in SITES}
    lens = []
    spans = list(batches(len(seqs), batch_size))
    for span in tqdm(spans, desc="activations", unit="batch", leave=False, disable=not progress):
        # right padding needs no attention mask in a causal model: a real token never attends to
        # the pads after it, so its activations are the unpadded ones; pads are left out of means
        ids, mask = pad_batch(seqs[span], pad, left=False, device=device)
        _, ref_cache = ref_bridge.run_with_cache(ids, names_filter=names_filter)
        _, pol_cache = pol_bridge.run_with_cache(ids, names_filter=names_filter)
        for site, hook in SITES.items():
            cos_l, kl_l = [], []
            for L in range(n_layers):
                a = pol_cache[f"blocks.{L}.{hook}"].double()
                b = ref_cache[f"blocks.{L}.{hook}"].double()
                cos_l.append(_per_prompt_mean(F.cosine_similarity(a, b, dim=-1, eps=1e-12), mask))
                kl_l.append(_per_prompt_mean(softmax_kl(a, b), mask))
            per[site]["cos"].append(torch.stack(cos_l, 1).cpu())
            per[site]["kl"].append(torch.stack(kl_l, 1).cpu())
        lens_l = []
        for L in range(n_layers):
            key = f"blocks.{L}.{SITES['resid']}"
            pol_logits = pol_bridge.unembed(pol_bridge.ln_final(pol_cache[key]))
            ref_logits = ref_bridge.unembed(ref_bridge.ln_final(ref_cache[key]))
            lens_l.append(_per_prompt_mean(_logit_lens_kl(pol_logits, ref_logits), mask))
        lens.append(torch.stack(lens_l, 1).cpu())
        del ref_cache, pol_cache

    labels_t = torch.as_tensor(labels)
    masks = {"all": torch.ones_like(labels_t, dtype=torch.bool), "pos": labels_t == 1, "neg": labels_t != 1}

    def summarise(values: torch.Tensor) -> dict:  # [N, L] -> {subset: [L]}
        return {s: (values[m].mean(0).tolist() if m.any() else [float("nan")] * n_layers)
                for s, m in masks.items()}

    return {
        "sites": {site: {metric: summarise(torch.cat(v)) for metric, v in d.items()} for site, d in per.items()},
        "logit_lens_kl": summarise(torch.cat(lens)),
        "num_prompts": {s: int(m.sum()) for s, m in masks.items()},
    }


# --------------------------------------------------------------------------- the analysis


def _mean(values) -> float:
    vals = [v for v in values if v == v]
    return sum(vals) / len(vals) if vals else float("nan")


def run(ctx: Context) -> Output:
    """Scalars ``activations/...``, tables ``activations`` and ``logit_lens``, their plots."""
    cfg, out = ctx.cfg, Output()
    idx = select_balanced(ctx.labels, cfg.activation_prompts, cfg.seed)
    seqs, kept = encode(ctx.tokenizer, ctx.texts_at(idx), cfg.max_tokens)
    labels = [ctx.labels[idx[k]] for k in kept]
    r = activation_divergence(ctx.bridge("reference"), ctx.bridge("policy"), seqs, labels,
                              pad=ctx.pad, batch_size=cfg.batch_size)
    rows = []
    for site, metrics in r["sites"].items():
        for metric, subsets in metrics.items():
            for subset, per_layer in subsets.items():
                out.scalar(f"activations/{site}/{metric}_{subset}_mean", _mean(per_layer))
                for L, v in enumerate(per_layer):
                    out.scalar(f"activations/{site}/{metric}_{subset}_layer{L}", v)
                    rows.append([site, metric, subset, L, v])
    out.table("activations", ["site", "metric", "subset", "layer", "value"], rows)
    lens_rows = []
    for subset, per_layer in r["logit_lens_kl"].items():
        suffix = "" if subset == "all" else f"_{subset}"
        for L, v in enumerate(per_layer):
            out.scalar(f"activations/logit_lens_kl{suffix}_layer{L}", v)
            lens_rows.append([subset, L, v])
        out.scalar(f"activations/logit_lens_kl{suffix}_mean", _mean(per_layer))
    out.scalar("activations/output_kl", r["logit_lens_kl"]["all"][-1])
    for subset, n in r["num_prompts"].items():
        out.scalar(f"activations/num_prompts_{subset}", n)
    out.table("logit_lens", ["subset", "layer", "kl"], lens_rows)
    out.details["activations"] = r
    layers = list(range(ctx.n_layers))
    for metric in ("cos", "kl"):
        series = {f"{site} {subset}": r["sites"][site][metric][subset] for site in SITES for subset in SUBSETS}
        out.images[f"activations_{metric}"] = plots.lines(
            layers, series, ctx.plot_dir / f"activations_{metric}.png",
            "Cosine similarity to the reference" if metric == "cos" else "KL(softmax(tuned) || softmax(ref))",
            "layer", metric)
    out.images["logit_lens_kl"] = plots.lines(
        layers, r["logit_lens_kl"], ctx.plot_dir / "logit_lens_kl.png", "Logit-lens KL(tuned || reference)",
        "layer", "nats per token")
    return out
