"""DPO's preference data, the seed's way: K samples per prefix from the reference, scored by the
classifier; the most positive is ``chosen``, the least positive ``rejected``."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from datasets import Dataset

from dpo_ppo.sampling import generate

log = logging.getLogger(__name__)


def build_prefs(algo, prompts: list[list[int]], model, tokenizer, scorer, path: Path,
                batch_size: int = 256) -> dict:
    """Sample ``algo.num_completions`` completions per prompt, keep best and worst; save to ``path``."""
    k = algo.num_completions
    repeated = [p for p in prompts for _ in range(k)]
    completions = generate(model, tokenizer, repeated, algo.completion_len, temperature=algo.temperature,
                           top_k=algo.top_k, batch_size=batch_size, desc="prefs: sampling")
    prompt_texts = tokenizer.batch_decode(prompts, skip_special_tokens=True)
    comp_texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
    full = [prompt_texts[i // k] + c for i, c in enumerate(comp_texts)]
    scores = scorer.p_positive(full).view(len(prompts), k)
    best, worst = scores.argmax(1), scores.argmin(1)
    rows = {"prompt": prompt_texts, "chosen": [], "rejected": [], "chosen_score": [], "rejected_score": [],
            "scores": scores.tolist()}
    for i in range(len(prompts)):
        rows["chosen"].append(comp_texts[i * k + int(best[i])])
        rows["rejected"].append(comp_texts[i * k + int(worst[i])])
        rows["chosen_score"].append(float(scores[i, best[i]]))
        rows["rejected_score"].append(float(scores[i, worst[i]]))
    Dataset.from_dict(rows).save_to_disk(str(path))
    margin = float(torch.tensor(rows["chosen_score"]).mean() - torch.tensor(rows["rejected_score"]).mean())
    info = {"pairs": len(prompts), "mean_score": float(scores.mean()), "chosen_minus_rejected": margin}
    log.info("prefs: %d pairs, mean p(positive) %.3f, chosen - rejected %.3f", len(prompts),
             info["mean_score"], margin)
    return info
