"""Prompts: the first N tokens of reviews (N fixed, or drawn per prompt from a range)."""

from __future__ import annotations

import random
from typing import Sequence


def make_prefixes(texts: Sequence[str], tokenizer, n: int, min_len: int, max_len: int | None = None,
                  seed: int = 0, batch_size: int = 1000, stats: dict | None = None,
                  key: str | None = None) -> list[list[int]]:
    """``n`` prefixes of reviews, each ``min_len`` tokens or uniform in [min_len, max_len].

    Reviews are taken in a seeded random order; a review too short for its drawn length is
    skipped.  When ``n`` exceeds the usable reviews they are reused (with fresh lengths), so a
    small corpus still yields the number of examples asked for.  ``stats`` (a dict), when given,
    receives ``distinct``: how many different reviews the prefixes come from.  ``key`` names the
    config key of the length in the error raised when no review is long enough (a ConfigError).
    """
    if n <= 0:
        if stats is not None:
            stats["distinct"] = 0
        return []
    used: set[int] = set()
    rng = random.Random(seed)
    order = list(range(len(texts)))
    rng.shuffle(order)
    hi = max_len or min_len
    out: list[list[int]] = []
    usable_seen = False
    for _ in range(1 + n):  # passes over the corpus; one suffices unless n > reviews
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            chunk = [texts[i] for i in rows]
            for row, ids in zip(rows, tokenizer(chunk, add_special_tokens=False)["input_ids"]):
                length = rng.randint(min_len, hi)
                if len(ids) <= length:  # keep at least one token of the review unseen
                    continue
                usable_seen = True
                used.add(row)
                out.append(ids[:length])
                if len(out) == n:
                    if stats is not None:
                        stats["distinct"] = len(used)
                    return out
        if not usable_seen:
            from dpo_ppo.config.fields import ConfigError

            raise ConfigError(key or "prefix_len", f"no review of the {len(texts)} is longer than {min_len} "
                                                   f"tokens; lower {key or 'the prefix length'}")
    if stats is not None:
        stats["distinct"] = len(used)
    return out


def usable_upper_bound(texts: Sequence[str], prefix_len: int) -> int:
    """How many of ``texts`` could be longer than ``prefix_len`` tokens under any tokenizer of at
    most one token per byte (byte-level BPE, SentencePiece with byte fallback), plus a prefix
    space: an upper bound on the reviews a prefix can come from, known before any tokenizer is."""
    return sum(len(t.encode("utf-8")) + 1 > prefix_len for t in texts)


def eval_shortfall(num_prompts: int, test_reviews: int, usable: int, prefix_len: int, source: str,
                   bound: bool = False):
    """The ConfigError for an evaluation that would reuse test reviews (``usable`` < ``num_prompts``),
    naming eval.num_prompts when the test split itself is too small, else eval.prefix_len."""
    from dpo_ppo.config.fields import ConfigError

    most = "at most " if bound else ""
    where = f"the test split of data.source={source}"
    if test_reviews < num_prompts:
        return ConfigError("eval.num_prompts",
                           f"{where} has {test_reviews} reviews ({most}{usable} longer than eval.prefix_len="
                           f"{prefix_len} tokens), fewer than the {num_prompts} distinct prompts asked for; "
                           f"set eval.num_prompts <= {usable}")
    return ConfigError("eval.prefix_len",
                       f"only {most}{usable} of the {test_reviews} reviews in {where} are longer than "
                       f"eval.prefix_len={prefix_len} tokens, fewer than eval.num_prompts={num_prompts} "
                       f"distinct prompts; lower eval.prefix_len or set eval.num_prompts <= {usable}")
