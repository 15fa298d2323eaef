"""Prompts: the first N tokens of reviews (N fixed, or drawn per prompt from a range)."""

from __future__ import annotations

import random
from typing import Sequence


def make_prefixes(texts: Sequence[str], tokenizer, n: int, min_len: int, max_len: int | None = None,
                  seed: int = 0, batch_size: int = 1000) -> list[list[int]]:
    """``n`` prefixes of reviews, each ``min_len`` tokens or uniform in [min_len, max_len].

    Reviews are taken in a seeded random order; a review too short for its drawn length is
    skipped.  When ``n`` exceeds the usable reviews they are reused (with fresh lengths), so a
    small corpus still yields the number of examples asked for.
    """
    if n <= 0:
        return []
    rng = random.Random(seed)
    order = list(range(len(texts)))
    rng.shuffle(order)
    hi = max_len or min_len
    out: list[list[int]] = []
    usable_seen = False
    for _ in range(1 + n):  # passes over the corpus; one suffices unless n > reviews
        for start in range(0, len(order), batch_size):
            chunk = [texts[i] for i in order[start:start + batch_size]]
            for ids in tokenizer(chunk, add_special_tokens=False)["input_ids"]:
                length = rng.randint(min_len, hi)
                if len(ids) <= length:  # keep at least one token of the review unseen
                    continue
                usable_seen = True
                out.append(ids[:length])
                if len(out) == n:
                    return out
        if not usable_seen:
            raise ValueError(f"no review is longer than {min_len} tokens; lower the prefix length")
    return out
