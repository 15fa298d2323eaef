"""Analysis 6: the head analyses over the course of training (the seed's next experiment, 3.4).

The seed paper looked at attention heads of the final policies only, and closed with "assessing
the behavior of attention heads at many different points over the course of the tuning process".
This analysis does that on the snapshots a job saves (``snapshots/ex_*``: every
``algorithm.snapshot_every`` examples and at the end): at each snapshot, the head scores of
analysis 4 (previous-token, duplicate-token, induction) and the attention to the sentiment token of
analysis 5, on the same probes and prompts, compared with the reference's. The reference is the
row at 0 examples (every change 0 there).

Table ``heads_over_training``, one row per snapshot::

    examples, {type}_max, {type}_max_abs_change, {type}_mean_abs_change   for each head type
    sentiment_attention_max, sentiment_attention_max_abs_change, sentiment_attention_mean_abs_change

(``max``: the snapshot's largest head score; ``*_abs_change``: over heads, |snapshot - reference|),
and table ``heads_over_training_per_head`` (examples, measure, layer, head, value) for heat maps.
"""

from __future__ import annotations

import logging

import torch

from dpo_ppo.analysis import heads, plots, sentiment_attention
from dpo_ppo.analysis.common import boot_bridge
from dpo_ppo.analysis.context import Context, Output
from dpo_ppo.analysis.weights import snapshot_examples
from dpo_ppo.runtime.progress import tqdm  # plain lines when stderr is not a terminal

log = logging.getLogger(__name__)

MEASURES = heads.HEAD_TYPES + ("sentiment_attention",)


def load_snapshot(folder, device):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).to(device).eval()


def row(examples: int, grids: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> dict:
    """One table row from a model's [layer, head] grids of every measure and the reference's."""
    out = {"examples": int(examples)}
    for m in MEASURES:
        change = (grids[m] - reference[m]).abs()
        out[f"{m}_max"] = float(grids[m].max())
        out[f"{m}_max_abs_change"] = float(change.max())
        out[f"{m}_mean_abs_change"] = float(change.mean())
    return out


def run(ctx: Context) -> Output:
    """Scalar ``over_training/num_snapshots``, tables ``heads_over_training`` (+ ``_per_head``) and
    a plot of each measure's largest change over examples; nothing without snapshots."""
    cfg, out = ctx.cfg, Output()
    if not (cfg.snapshots and ctx.snapshots):
        return out
    # the computations of analyses 4 and 5 on their own probes (the reference's side then comes
    # from the same cache entries)
    measure = heads.scorer(ctx, progress=False)
    prepared = sentiment_attention.prepare_prompts(ctx.tokenizer, list(cfg.sentiment_prompts),
                                                   prepend_bos=cfg.prepend_bos)

    def attention(bridge) -> dict:
        return sentiment_attention.attention_to_token(bridge, prepared)

    reference = dict(ctx.for_model("reference", "heads", lambda: measure(ctx.bridge("reference"))))
    reference["sentiment_attention"] = ctx.for_model(
        "reference", "sentiment_attention", lambda: attention(ctx.bridge("reference")))["mean"]
    rows, per_head = [row(0, reference, reference)], []
    snapshots = sorted(ctx.snapshots, key=snapshot_examples)
    for folder in tqdm(snapshots, desc="heads over training", unit="snapshot", leave=False,
                       disable=len(snapshots) < 2):
        bridge = boot_bridge(load_snapshot(folder, ctx.device), ctx.tokenizer, ctx.device)
        grids = measure(bridge)
        grids["sentiment_attention"] = attention(bridge)["mean"]
        examples = snapshot_examples(folder)
        rows.append(row(examples, grids, reference))
        for m in MEASURES:
            for L in range(ctx.n_layers):
                for h in range(ctx.n_heads):
                    per_head.append([examples, m, L, h, float(grids[m][L, h])])
        del bridge
    cols = list(rows[0])
    out.table("heads_over_training", cols, [[r[c] for c in cols] for r in rows])
    out.table("heads_over_training_per_head", ["examples", "measure", "layer", "head", "value"], per_head)
    out.scalar("over_training/num_snapshots", len(rows) - 1)
    out.images["heads_over_training"] = plots.lines(
        [r["examples"] for r in rows], {m.replace("_", " "): [r[f"{m}_max_abs_change"] for r in rows] for m in MEASURES},
        ctx.plot_dir / "heads_over_training.png", "Largest change of a head from the reference, over training",
        "examples", "max |policy - reference|")
    return out
