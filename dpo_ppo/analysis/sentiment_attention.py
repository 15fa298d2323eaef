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

import torch

from dpo_ppo.analysis.common import bos_id
from dpo_ppo.analysis.config import parse_marked_prompt


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
