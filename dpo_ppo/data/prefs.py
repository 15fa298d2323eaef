"""DPO's preference data, the seed's way: K samples per prefix from the reference, scored by the
classifier; the most positive is ``chosen``, the least positive ``rejected``.

The pairs are stored as the token ids the reference sampled (``prompt_ids``, ``chosen_ids``,
``rejected_ids``), which DPO trains on as they are: a decode/re-encode round trip would move the
prompt/completion split when a prefix ends mid-word, and TRL's text path appends an EOS to every
completion, also to those cut at ``completion_len`` that never ended.  The text columns are kept
for people.  Sampling is keyed by (seed, prefix, sample), so the pairs are a function of the
config alone, not of what used torch's RNG before (e.g. building the base model on a cold cache).
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import torch
from datasets import Dataset

from dpo_ppo.train.sampling import generate, sample_keys

log = logging.getLogger(__name__)

PREFS_SEED_OFFSET = 7_919  # keeps the prefs' sampling keys apart from evaluation's (eval.seed)


def build_prefs(algo, prompts: list[list[int]], model, tokenizer, scorer, path: Path,
                batch_size: int = 256, seed: int = 0, autocast=contextlib.nullcontext,
                static_cache: bool = False, first: int = 0) -> dict:
    """Sample ``algo.num_completions`` completions per prompt, keep best and worst; save to ``path``.
    ``static_cache`` as in ``sampling.generate`` (the same pairs, faster on a GPU at this scale).
    ``first``: the index of ``prompts[0]`` among the run's training prefixes (online DPO's rounds
    sample slices of them): the sampling keys are those of the whole list's rows, so a slice
    sampled by the same model gives the same completions as the whole list's rows there."""
    k = algo.num_completions
    repeated = [p for p in prompts for _ in range(k)]
    keys = sample_keys(seed + PREFS_SEED_OFFSET, range(first * k, first * k + len(repeated)))
    with autocast():
        completions = generate(model, tokenizer, repeated, algo.completion_len, temperature=algo.temperature,
                               top_k=algo.top_k, batch_size=batch_size, desc="prefs: sampling", keys=keys,
                               static_cache=static_cache)
    prompt_texts = tokenizer.batch_decode(prompts, skip_special_tokens=True)
    comp_texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
    full = [prompt_texts[i // k] + c for i, c in enumerate(comp_texts)]
    scores = scorer.p_positive(full).view(len(prompts), k)
    best, worst = scores.argmax(1), scores.argmin(1)
    rows = {"prompt": prompt_texts, "chosen": [], "rejected": [], "chosen_score": [], "rejected_score": [],
            "scores": scores.tolist(), "prompt_ids": [list(p) for p in prompts], "chosen_ids": [],
            "rejected_ids": []}
    for i in range(len(prompts)):
        b, w = i * k + int(best[i]), i * k + int(worst[i])
        rows["chosen"].append(comp_texts[b])
        rows["rejected"].append(comp_texts[w])
        rows["chosen_ids"].append(list(completions[b]))
        rows["rejected_ids"].append(list(completions[w]))
        rows["chosen_score"].append(float(scores[i, best[i]]))
        rows["rejected_score"].append(float(scores[i, worst[i]]))
    Dataset.from_dict(rows).save_to_disk(str(path))
    margin = float(torch.tensor(rows["chosen_score"]).mean() - torch.tensor(rows["rejected_score"]).mean())
    info = {"pairs": len(prompts), "mean_score": float(scores.mean()), "chosen_minus_rejected": margin,
            "generated_tokens": sum(map(len, completions))}
    (Path(path) / "prefs.json").write_text(json.dumps(info, indent=1))
    log.info("prefs: %d pairs, mean p(positive) %.3f, chosen - rejected %.3f", len(prompts),
             info["mean_score"], margin)
    return info
