"""Analysis 4: previous-token, duplicate-token and induction head scores (seed 3.4).

Scores are TransformerLens's ``head_detector`` scores: for a head with attention pattern ``A``
(``[query, key]``) and the detection pattern ``D`` of a head type (1 where that type of head should
attend: the previous token; an earlier copy of the current token; the token after an earlier copy
of the current token), the score is ``sum(A * D) / sum(A)`` (``error_measure="mul"``, BOS and the
current token not excluded): the fraction of the head's attention that goes where a head of that
type would put it.  The detection patterns come from ``transformer_lens.head_detector``
(``get_*_detection_pattern``); the attention patterns from ``blocks.L.attn.hook_pattern`` on a
``TransformerBridge``.  We call the detector's pieces on a batch of token tensors rather than
``detect_head`` itself, because ``detect_head`` tokenises strings one at a time: our induction
probes are random token ids (which need not survive a decode/encode round trip) and a batch is
one forward instead of dozens.  ``tests/test_analysis_heads.py`` checks the two agree on text.

Probes (each starts with BOS, as in TransformerLens):

* previous-token: held-out texts (natural text, where a previous-token head shows its habit);
* duplicate-token and induction: ``BOS r r`` with ``r`` a random token sequence (the standard
  induction probe of Olsson et al. 2022), where every token of the second half has an earlier copy
  and a known successor.  The first half has no duplicates (up to chance), so a perfect induction
  head scores about ``len(r) / (2 len(r) + 1)``, a bit under 0.5.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from transformer_lens import head_detector as hd

from dpo_ppo.analysis import plots
from dpo_ppo.analysis.common import batches, bos_id, encode
from dpo_ppo.analysis.context import MODELS, Context, Output
from dpo_ppo.runtime.progress import tqdm  # plain lines when stderr is not a terminal
from dpo_ppo.train.sampling import pad_batch

HEAD_TYPES = ("previous_token", "duplicate_token", "induction")
_PATTERNS = {"previous_token": hd.get_previous_token_head_detection_pattern,
             "duplicate_token": hd.get_duplicate_token_head_detection_pattern,
             "induction": hd.get_induction_head_detection_pattern}


def repeated_random_tokens(tokenizer, n: int, length: int, seed: int = 0, vocab: int | None = None) -> list[list[int]]:
    """``n`` sequences ``BOS r r`` with ``r`` of ``length`` random non-special tokens."""
    vocab = vocab or len(tokenizer)
    special = set(tokenizer.all_special_ids)
    allowed = torch.tensor([i for i in range(vocab) if i not in special])
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        r = allowed[torch.randint(len(allowed), (length,), generator=g)].tolist()
        out.append([bos_id(tokenizer)] + r + r)
    return out


@torch.no_grad()
def head_scores(bridge, seqs: list[list[int]], head_type: str, *, pad: int, batch_size: int = 16,
                progress: bool = False) -> torch.Tensor:
    """Mean detector score of every head over ``seqs``: tensor [n_layers, n_heads]."""
    make = _PATTERNS[head_type]
    n_layers, n_heads = bridge.cfg.n_layers, bridge.cfg.n_heads
    total = torch.zeros(n_layers, n_heads, dtype=torch.float64)
    spans = list(batches(len(seqs), batch_size))
    for span in tqdm(spans, desc=f"heads ({head_type})", leave=False, disable=not progress):
        chunk = seqs[span]
        ids, _ = pad_batch(chunk, pad, left=False, device=bridge.cfg.device)  # pads come after [:n, :n]
        _, cache = bridge.run_with_cache(ids, names_filter=lambda n: n.endswith("attn.hook_pattern"))
        for i, s in enumerate(chunk):
            n = len(s)
            det = make(torch.tensor([s])).to(torch.float64)  # [n, n]
            for L in range(n_layers):
                A = cache[f"blocks.{L}.attn.hook_pattern"][i, :, :n, :n].double().cpu()  # [H, n, n]
                total[L] += (A * det).sum((-1, -2)) / A.sum((-1, -2))
    return (total / max(len(seqs), 1)).float()


def detect_all(bridge, *, text_seqs: list[list[int]], random_seqs: list[list[int]], pad: int,
               batch_size: int = 16, progress: bool = True) -> dict[str, torch.Tensor]:
    """All three head types: {type: [n_layers, n_heads] scores}."""
    return {
        "previous_token": head_scores(bridge, text_seqs, "previous_token", pad=pad, batch_size=batch_size,
                                      progress=progress),
        "duplicate_token": head_scores(bridge, random_seqs, "duplicate_token", pad=pad, batch_size=batch_size,
                                       progress=progress),
        "induction": head_scores(bridge, random_seqs, "induction", pad=pad, batch_size=batch_size,
                                 progress=progress),
    }


# --------------------------------------------------------------------------- the analysis


def scorer(ctx: Context, progress: bool = True) -> Callable[[Any], dict[str, torch.Tensor]]:
    """``bridge -> detect_all(bridge, ...)`` on this context's probes (built once here), the one
    computation behind the cached reference entry "heads" (analyses 4 and 6 both use it)."""
    cfg = ctx.cfg
    text_seqs, _ = encode(ctx.tokenizer, ctx.texts_at(ctx.order[: cfg.head_texts]), cfg.max_tokens,
                          prepend_bos=cfg.prepend_bos)
    vocab = min(len(ctx.tokenizer), ctx.models["policy"].config.vocab_size)
    random_seqs = repeated_random_tokens(ctx.tokenizer, cfg.head_random_seqs, cfg.head_random_len,
                                         seed=cfg.seed, vocab=vocab)
    return lambda bridge: detect_all(bridge, text_seqs=text_seqs, random_seqs=random_seqs, pad=ctx.pad,
                                     batch_size=cfg.batch_size, progress=progress)


def run(ctx: Context) -> Output:
    """Scalars ``heads/...``, table ``heads``, per-head scores of both models and their change."""
    out = Output()
    score = scorer(ctx)
    scores = {name: ctx.for_model(name, "heads", lambda: score(ctx.bridge(name))) for name in MODELS}
    rows = []
    per = {name: {t: s.tolist() for t, s in scores[name].items()} for name in MODELS}
    per["change"] = {}
    for t in HEAD_TYPES:
        delta = scores["policy"][t] - scores["reference"][t]
        per["change"][t] = delta.tolist()
        for name in MODELS:
            s = scores[name][t]
            out.scalar(f"heads/{name}/{t}_max", s.max())
            top = int(s.flatten().argmax())
            out.scalar(f"heads/{name}/{t}_top_layer", top // ctx.n_heads)
            out.scalar(f"heads/{name}/{t}_top_head", top % ctx.n_heads)
            for L in range(ctx.n_layers):
                for h in range(ctx.n_heads):
                    rows.append([name, t, L, h, float(s[L, h])])
        out.scalar(f"heads/{t}_max_abs_change", delta.abs().max())
        out.scalar(f"heads/{t}_mean_abs_change", delta.abs().mean())
        out.images[f"heads_{t}"] = plots.heatmaps(
            {name: scores[name][t].tolist() for name in MODELS}, ctx.plot_dir / f"heads_{t}.png",
            f"{t.replace('_', '-')} head score", cbar="score")
    out.images["heads_change"] = plots.heatmaps(
        per["change"], ctx.plot_dir / "heads_change.png", "Head score change (policy - reference)",
        diverging=True, cbar="change")
    out.table("heads", ["model", "type", "layer", "head", "score"], rows)
    for group, grids in per.items():
        for t, grid in grids.items():
            out.per_head[f"heads/{group}/{t}"] = grid
    return out
