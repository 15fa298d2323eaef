"""Analysis 5: attention paid to the sentiment word (seed 3.4, the L4H0 / L4H7 observation).

Each prompt marks its sentiment word in square brackets ("This movie was [excellent] because it
had a great storyline and").  The word may be several BPE tokens; its position is that of its
*last* token (the one whose span holds the word's last character, found from the fast
tokenizer's offsets), where the word is complete and a head can read it.  For every head the score
is the attention from each later position ``q > s`` to that position ``s``, averaged over the
later positions: ``mean_{q > s} A[q, s]``, then over prompts.  Patterns come from
``blocks.L.attn.hook_pattern`` on a ``TransformerBridge``.  The heads whose score changed most
from the reference (largest ``|tuned - reference|``) are the candidates for "head repurposing".
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from dpo_ppo.analysis import plots
from dpo_ppo.analysis.common import bos_id
from dpo_ppo.config.analysis import parse_marked_prompt
from dpo_ppo.analysis.context import MODELS, Context, Output

log = logging.getLogger(__name__)

PATTERN_PLOTS = 2  # prompts whose full attention patterns are drawn (the seed's pair); all are measured


def sentiment_token_position(tokenizer, text: str, start: int, end: int, *, prepend_bos: bool = True) -> tuple[list[int], int]:
    """Token ids of ``text`` (BOS first if asked) and the index of the last token of ``text[start:end]``."""
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
        # the token holding the word's last character (byte-level BPE offsets may include the
        # leading space, so match on the end, not the start)
        pos = max(i for i, (a, b) in enumerate(offsets) if a < end and b > a)
        if offsets[pos][1] < end:  # offsets that do not cover the word: use the fallback
            raise ValueError("offsets do not cover the word")
    except (NotImplementedError, ValueError, KeyError, TypeError):
        # slow tokenizer: tokenise the text up to the word's end; BPE splits at word boundaries,
        # so that is a prefix of the full tokenisation
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        pos = len(tokenizer(text[:end], add_special_tokens=False)["input_ids"]) - 1
    if prepend_bos:
        ids, pos = [bos_id(tokenizer)] + ids, pos + 1
    return ids, pos


def prepare_prompts(tokenizer, prompts: list[str], *, prepend_bos: bool = True) -> list[dict]:
    out = []
    for p in prompts:
        text, start, end = parse_marked_prompt(p)
        ids, pos = sentiment_token_position(tokenizer, text, start, end, prepend_bos=prepend_bos)
        if pos >= len(ids) - 1:
            raise ValueError(f"sentiment prompt {p!r}: the marked word is the last token; nothing attends to it later")
        out.append({"prompt": p, "text": text, "word": text[start:end], "ids": ids, "position": pos,
                    "tokens": tokenizer.convert_ids_to_tokens(ids)})
    return out


@torch.no_grad()
def attention_to_token(bridge, prepared: list[dict]) -> dict:
    """Per prompt: mean attention from later positions to the sentiment token, [n_layers, n_heads],
    and the full patterns [n_layers, n_heads, T, T] (for plots)."""
    L = bridge.cfg.n_layers
    per_prompt, patterns = [], []
    for item in prepared:
        ids = torch.tensor([item["ids"]], device=bridge.cfg.device)
        _, cache = bridge.run_with_cache(ids, names_filter=lambda n: n.endswith("attn.hook_pattern"))
        pat = torch.stack([cache[f"blocks.{l}.attn.hook_pattern"][0].float().cpu() for l in range(L)])
        s = item["position"]
        per_prompt.append(pat[:, :, s + 1:, s].mean(-1))
        patterns.append(pat)
    return {"per_prompt": torch.stack(per_prompt), "mean": torch.stack(per_prompt).mean(0), "patterns": patterns}


def top_changes(reference: torch.Tensor, tuned: torch.Tensor, k: int) -> list[dict]:
    """The ``k`` heads with the largest |tuned - reference|, largest first."""
    delta = tuned - reference
    H = delta.shape[1]
    order = delta.abs().flatten().argsort(descending=True)[:k]
    return [{"layer": int(i) // H, "head": int(i) % H, "reference": float(reference.flatten()[i]),
             "tuned": float(tuned.flatten()[i]), "change": float(delta.flatten()[i])} for i in order]


# --------------------------------------------------------------------------- the analysis


def run(ctx: Context) -> Output:
    """Scalars ``sentiment_attention/...``, tables of every head's attention and the top changes,
    per-head matrices, heat maps and the attention patterns of one layer per prompt."""
    cfg, out = ctx.cfg, Output()
    n_layers, H = ctx.n_layers, ctx.n_heads
    prepared = prepare_prompts(ctx.tokenizer, list(cfg.sentiment_prompts), prepend_bos=cfg.prepend_bos)
    att = {name: ctx.for_model(name, "sentiment_attention", lambda: attention_to_token(ctx.bridge(name), prepared))
           for name in MODELS}
    ref, pol = att["reference"]["mean"], att["policy"]["mean"]
    delta = pol - ref
    top = top_changes(ref, pol, cfg.top_heads)
    for name in MODELS:
        m = att[name]["mean"]
        out.scalar(f"sentiment_attention/{name}/max_attention", m.max())
        out.scalar(f"sentiment_attention/{name}/mean_attention", m.mean())
        best = int(m.flatten().argmax())
        out.scalar(f"sentiment_attention/{name}/top_layer", best // H)
        out.scalar(f"sentiment_attention/{name}/top_head", best % H)
    out.scalar("sentiment_attention/max_abs_change", delta.abs().max())
    out.scalar("sentiment_attention/mean_abs_change", delta.abs().mean())
    out.scalar("sentiment_attention/top_change", top[0]["change"])
    out.scalar("sentiment_attention/top_change_layer", top[0]["layer"])
    out.scalar("sentiment_attention/top_change_head", top[0]["head"])
    rows = []
    for name in MODELS:
        for i, item in enumerate(prepared):
            for L in range(n_layers):
                for h in range(H):
                    rows.append([item["prompt"], name, L, h, float(att[name]["per_prompt"][i, L, h])])
    out.table("sentiment_attention", ["prompt", "model", "layer", "head", "attention"], rows)
    out.table("sentiment_attention_top", ["rank", "layer", "head", "reference", "policy", "change"],
              [[k, t["layer"], t["head"], t["reference"], t["tuned"], t["change"]] for k, t in enumerate(top)])
    for key, grid in (("reference", ref), ("policy", pol), ("change", delta)):
        out.per_head[f"sentiment_attention/{key}"] = grid.tolist()
    out.details["sentiment_attention"] = {
        "top_changes": top,
        "prompts": [{"prompt": p["prompt"], "word": p["word"], "position": p["position"], "tokens": p["tokens"],
                     "reference": att["reference"]["per_prompt"][i].tolist(),
                     "policy": att["policy"]["per_prompt"][i].tolist()} for i, p in enumerate(prepared)]}
    out.images["sentiment_attention"] = plots.heatmaps(
        {"reference": ref.tolist(), "policy": pol.tolist()}, ctx.plot_dir / "sentiment_attention.png",
        "Attention from later tokens to the sentiment word", cbar="attention")
    out.images["sentiment_attention_change"] = plots.heatmaps(
        {"policy - reference": delta.tolist()}, ctx.plot_dir / "sentiment_attention_change.png",
        "Change in attention to the sentiment word", diverging=True, cbar="change")
    layer = cfg.attention_layer
    if layer < 0:
        layer = top[0]["layer"] if abs(top[0]["change"]) > 0 else n_layers - 1
    if layer >= n_layers:
        log.warning("analysis.attention_layer=%d but the model has %d layers; plotting the last", layer, n_layers)
        layer = n_layers - 1
    out.scalar("sentiment_attention/plotted_layer", layer)
    for i, item in enumerate(prepared[:PATTERN_PLOTS]):
        key = f"attention_L{layer}_p{i}"
        out.images[key] = plots.attention_patterns(
            {name: att[name]["patterns"][i][layer].numpy() for name in MODELS}, item["tokens"],
            ctx.plot_dir / f"{key}.png", f"Layer {layer} attention: {item['text']!r} (red: {item['word']!r})",
            mark=item["position"])
        _circuitsvis(item["tokens"], {name: att[name]["patterns"][i][layer] for name in MODELS},
                     ctx.plot_dir / f"{key}.html")
    return out


def _circuitsvis(tokens, patterns: dict, path: Path) -> None:
    """An interactive page per model, only if circuitsvis happens to be installed (not a dependency)."""
    try:
        import circuitsvis as cv
    except Exception:
        return
    try:
        labels = [t.replace("Ġ", " ") for t in tokens]
        parts = [f"<h3>{name}</h3>{cv.attention.attention_patterns(tokens=labels, attention=p)}"
                 for name, p in patterns.items()]
        path.write_text("<html><body>" + "\n".join(parts) + "</body></html>")
    except Exception as e:  # a visualisation must never fail the analysis
        log.warning("circuitsvis page %s not written: %s", path, e)
