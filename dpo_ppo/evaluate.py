"""Evaluation on unseen test prefixes (the seed's section 5.2).

For a model and a set of prefixes: sample one completion each, score prefix + completion with the
classifier and report

- ``gradient_loss`` = mean(1 - p_positive), the seed's "gradient loss";
- ``binary_loss``   = fraction of completions classified negative (p_positive < 0.5) (both per
  completion: ``results.gradient_loss`` / ``results.binary_loss``, which the report uses too);
- ``p_positive_mean`` = mean p_positive in [0, 1] (``p_positive_std`` its spread over prompts) and
  ``score_mean`` = mean of the classifier's log-odds log p(pos) - log p(neg) in nats (the names:
  ``results.EVAL_METRICS``; before issue 34 they were reward_mean, reward_std, score_logit_mean);
- ``kl_to_ref``     = sequence-level KL(policy || reference) in nats, estimated on the policy's own
  samples as the mean over completions of sum_t KL(pi(.|y<t) || pi_ref(.|y<t)), the full
  next-token distributions compared at each position (exact per step, so lower variance than
  the log-ratio and never negative); ``kl_to_ref_k1`` is the plain log-ratio estimate
  mean(sum_t log pi(y_t|.) - log pi_ref(y_t|.)).  Both assume sampling at temperature 1 (the
  default);
- ``completion_len`` (tokens), ``distinct_1`` / ``distinct_2`` (unique n-grams over all n-grams of
  the completions, a diversity measure that falls when a policy collapses to one phrase);
- with a ``gold`` scorer (``eval.gold``: a reward no training step saw, ``scorer.load_gold``):
  ``gold_p_positive_mean`` / ``gold_p_positive_std`` (its mean p_positive), ``gold_score_mean``,
  ``gold_binary_loss`` and ``gold_gradient_loss``, and each row's ``gold_p_positive``.  The classifier's numbers are the
  proxy: a policy that games the classifier raises ``p_positive_mean`` while ``gold_p_positive_mean``
  stays or falls (Gao et al. 2023).
"""

from __future__ import annotations

import contextlib

import torch

from dpo_ppo import results as R
from dpo_ppo.runtime.hardware import CPU_SIZES
from dpo_ppo.train.sampling import generate, sample_keys, sequence_kl


def distinct_n(completions: list[list[int]], n: int) -> float:
    grams, total = set(), 0
    for toks in completions:
        for i in range(len(toks) - n + 1):
            grams.add(tuple(toks[i:i + n]))
            total += 1
    return len(grams) / total if total else 0.0


def evaluate_model(model, tokenizer, scorer, prompts: list[list[int]], eval_cfg, *, ref_model=None,
                   desc: str = "eval", hw=None, gold=None) -> tuple[dict, list[dict]]:
    """Metrics (see module docstring) and one row per prompt (``results.EVAL_ROW_COLUMNS`` plus the
    texts; ``results.write_eval_rows`` keeps the columns).

    Sampling is keyed by (``eval_cfg.seed``, prompt index): the same model gives the same
    completions whatever ran before in the process, and two models share their sampling noise
    prompt by prompt, so their rows pair on ``prompt_id``.

    ``hw`` (``dpo_ppo.runtime.hardware.Runtime``) gives the batch sizes (``eval_cfg.batch_size``
    wins when set) and the precision; without it: batches of 250 / 64 in float32.
    """
    gen_batch = eval_cfg.batch_size or (hw.gen_batch_size if hw is not None else CPU_SIZES["gen_batch_size"])
    forward_batch = hw.forward_batch_size if hw is not None else CPU_SIZES["forward_batch_size"]
    autocast = hw.autocast if hw is not None else contextlib.nullcontext
    keys = sample_keys(eval_cfg.seed, range(len(prompts)))
    static = hw is not None and hw.static_for(len(prompts), eval_cfg.completion_len)
    with autocast():
        completions = generate(model, tokenizer, prompts, eval_cfg.completion_len,
                               temperature=eval_cfg.temperature, batch_size=gen_batch,
                               desc=f"{desc}: sampling", keys=keys, static_cache=static)
    prompt_texts = tokenizer.batch_decode(prompts, skip_special_tokens=True)
    comp_texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
    texts = [p + c for p, c in zip(prompt_texts, comp_texts)]
    logits = scorer.logits(texts)
    p = torch.sigmoid(logits)
    metrics = {
        R.P_POSITIVE_MEAN: float(p.mean()),
        R.P_POSITIVE_STD: float(p.std()) if len(p) > 1 else 0.0,
        R.SCORE_MEAN: float(logits.mean()),
        R.GRADIENT_LOSS: float(R.gradient_loss(p).mean()),
        R.BINARY_LOSS: float(R.binary_loss(p).mean()),
        R.COMPLETION_LEN: sum(map(len, completions)) / max(1, len(completions)),
        R.DISTINCT_1: distinct_n(completions, 1),
        R.DISTINCT_2: distinct_n(completions, 2),
    }
    gold_p = None
    if gold is not None:  # the same texts, scored by the reward nothing was trained on
        gold_logits = gold.logits(texts).float()
        gold_p = torch.sigmoid(gold_logits)
        metrics.update({R.GOLD_P_POSITIVE_MEAN: float(gold_p.mean()),
                        R.GOLD_P_POSITIVE_STD: float(gold_p.std()) if len(gold_p) > 1 else 0.0,
                        R.GOLD_SCORE_MEAN: float(gold_logits.mean()),
                        R.GOLD_BINARY_LOSS: float(R.binary_loss(gold_p).mean()),
                        R.GOLD_GRADIENT_LOSS: float(R.gradient_loss(gold_p).mean())})
    kl = k1 = torch.zeros(len(prompts))
    if ref_model is not None:
        with autocast():
            kl, k1 = sequence_kl(model, ref_model, prompts, completions, pad_id=tokenizer.pad_token_id,
                                 batch_size=forward_batch)
        metrics[R.KL_TO_REF] = float(kl.mean())
        metrics[R.KL_TO_REF_STD] = float(kl.std()) if len(kl) > 1 else 0.0
        metrics[R.KL_TO_REF_K1] = float(k1.mean())
    rows = [{"prompt_id": i, "p_positive": float(p[i]), "completion_len": len(completions[i]),
             "kl": float(kl[i]), "kl_k1": float(k1[i]), "prompt": prompt_texts[i], "completion": comp_texts[i]}
            for i in range(len(prompts))]
    if gold_p is not None:
        for i, row in enumerate(rows):
            row["gold_p_positive"] = float(gold_p[i])
    return metrics, rows


# the training probe moved to train/probe.py (both trainers call it); kept importable from here
from dpo_ppo.train.probe import TrainingProbe  # noqa: E402,F401
