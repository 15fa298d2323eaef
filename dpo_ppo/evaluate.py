"""Evaluation on unseen test prefixes (the seed's section 5.2).

For a model and a set of prefixes: sample one completion each, score prefix + completion with the
classifier and report

- ``gradient_loss`` = mean(1 - p_positive), the seed's "gradient loss";
- ``binary_loss``   = fraction of completions classified negative (p_positive < 0.5);
- ``reward_mean``   = mean p_positive (and ``score_logit_mean``, the classifier's logit);
- ``kl_to_ref``     = sequence-level KL(policy || reference) in nats, estimated on the policy's own
  samples as the mean over completions of sum_t KL(pi(.|y<t) || pi_ref(.|y<t)), the full
  next-token distributions compared at each position (exact per step, so lower variance than
  the log-ratio and never negative); ``kl_to_ref_k1`` is the plain log-ratio estimate
  mean(sum_t log pi(y_t|.) - log pi_ref(y_t|.)).  Both assume sampling at temperature 1 (the
  default);
- ``completion_len`` (tokens), ``distinct_1`` / ``distinct_2`` (unique n-grams over all n-grams of
  the completions, a diversity measure that falls when a policy collapses to one phrase);
- with a ``gold`` scorer (``eval.gold``: a reward no training step saw, ``scorer.load_gold``):
  ``gold_reward_mean`` / ``gold_reward_std`` (its mean p_positive), ``gold_score_logit_mean`` and
  ``gold_binary_loss``, and each row's ``gold_p_positive``.  The classifier's numbers are the
  proxy: a policy that games the classifier raises ``reward_mean`` while ``gold_reward_mean``
  stays or falls (Gao et al. 2023).
"""

from __future__ import annotations

import contextlib

import torch

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
                   desc: str = "eval", runtime=None, gold=None) -> tuple[dict, list[dict]]:
    """Metrics (see module docstring) and one row per prompt (``results.EVAL_ROW_COLUMNS`` plus the
    texts; ``results.write_eval_rows`` keeps the columns).

    Sampling is keyed by (``eval_cfg.seed``, prompt index): the same model gives the same
    completions whatever ran before in the process, and two models share their sampling noise
    prompt by prompt, so their rows pair on ``prompt_id``.

    ``runtime`` (``dpo_ppo.runtime.hardware.Runtime``) gives the batch sizes (``eval_cfg.batch_size``
    wins when set) and the precision; without it: batches of 250 / 64 in float32.
    """
    gen_batch = eval_cfg.batch_size or (runtime.gen_batch_size if runtime is not None else CPU_SIZES["gen_batch_size"])
    forward_batch = runtime.forward_batch_size if runtime is not None else CPU_SIZES["forward_batch_size"]
    autocast = runtime.autocast if runtime is not None else contextlib.nullcontext
    keys = sample_keys(eval_cfg.seed, range(len(prompts)))
    static = runtime is not None and runtime.static_for(len(prompts), eval_cfg.completion_len)
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
        "reward_mean": float(p.mean()),
        "reward_std": float(p.std()) if len(p) > 1 else 0.0,
        "score_logit_mean": float(logits.mean()),
        "gradient_loss": float((1 - p).mean()),
        "binary_loss": float((p < 0.5).float().mean()),
        "completion_len": sum(map(len, completions)) / max(1, len(completions)),
        "distinct_1": distinct_n(completions, 1),
        "distinct_2": distinct_n(completions, 2),
    }
    gold_p = None
    if gold is not None:  # the same texts, scored by the reward nothing was trained on
        gold_logits = gold.logits(texts).float()
        gold_p = torch.sigmoid(gold_logits)
        metrics.update({"gold_reward_mean": float(gold_p.mean()),
                        "gold_reward_std": float(gold_p.std()) if len(gold_p) > 1 else 0.0,
                        "gold_score_logit_mean": float(gold_logits.mean()),
                        "gold_binary_loss": float((gold_p < 0.5).float().mean())})
    kl = k1 = torch.zeros(len(prompts))
    if ref_model is not None:
        with autocast():
            kl, k1 = sequence_kl(model, ref_model, prompts, completions, pad_id=tokenizer.pad_token_id,
                                 batch_size=forward_batch)
        metrics["kl_to_ref"] = float(kl.mean())
        metrics["kl_to_ref_std"] = float(kl.std()) if len(kl) > 1 else 0.0
        metrics["kl_to_ref_k1"] = float(k1.mean())
    rows = [{"prompt_id": i, "p_positive": float(p[i]), "completion_len": len(completions[i]),
             "kl": float(kl[i]), "kl_k1": float(k1[i]), "prompt": prompt_texts[i], "completion": comp_texts[i]}
            for i in range(len(prompts))]
    if gold_p is not None:
        for i, row in enumerate(rows):
            row["gold_p_positive"] = float(gold_p[i])
    return metrics, rows


class TrainingProbe:
    """``train/kl`` and ``train/reward_mean`` of a policy during training, with the meaning PPO's
    rollouts give them (``ppo.rollout``), for trainers that sample nothing themselves (DPO):

    - ``train/kl``: sum over completion tokens of log pi(y_t|.) - log pi_ref(y_t|.) (PPO's default
      k1 estimator), mean over the completions; ``train/kl_exact`` the full-distribution estimate
      (``sampling.sequence_kl``, as eval/policy/kl_to_ref);
    - ``train/reward_mean``: the classifier's mean p_positive of prefix + completion.

    The completions are sampled from the policy on a fixed set of prefixes, ``completion_len``
    tokens at ``temperature`` / ``top_k`` (the algorithm's sampling settings; the KL assumes
    temperature 1, the default, as PPO's does at 1), keyed by (``seed``, prefix), so every probe
    draws the same noise and the curve moves only with the policy.  Torch's random state is
    restored afterwards: a probe never changes the training.  ``train/probe_s`` is its cost.
    """

    def __init__(self, ref_model, tokenizer, prompts, reward_fn, *, completion_len: int, temperature: float = 1.0,
                 top_k: int = 0, seed: int = 0, runtime=None):
        self.ref_model, self.tokenizer, self.prompts = ref_model, tokenizer, [list(p) for p in prompts]
        self.reward_fn, self.completion_len, self.temperature, self.top_k = reward_fn, completion_len, temperature, top_k
        self.keys = sample_keys(seed, range(len(self.prompts)))
        self.forward_batch = runtime.forward_batch_size if runtime is not None else CPU_SIZES["forward_batch_size"]
        self.autocast = runtime.autocast if runtime is not None else contextlib.nullcontext

    @torch.no_grad()
    def __call__(self, model) -> dict:
        import time

        t0 = time.perf_counter()
        was_training = model.training
        model.eval()
        devices = [model.device] if getattr(model, "device", torch.device("cpu")).type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):
                with self.autocast():
                    completions = generate(model, self.tokenizer, self.prompts, self.completion_len,
                                           temperature=self.temperature, top_k=self.top_k,
                                           batch_size=len(self.prompts), desc=None, keys=self.keys)
                texts = self.tokenizer.batch_decode([p + c for p, c in zip(self.prompts, completions)],
                                                    skip_special_tokens=True)
                p = torch.as_tensor(self.reward_fn(texts), dtype=torch.float32).flatten()
                with self.autocast():
                    exact, k1 = sequence_kl(model, self.ref_model, self.prompts, completions,
                                            pad_id=self.tokenizer.pad_token_id, batch_size=self.forward_batch)
        finally:
            model.train(was_training)
        return {"train/kl": float(k1.mean()), "train/kl_exact": float(exact.mean()),
                "train/reward_mean": float(p.mean()), "train/probe_s": time.perf_counter() - t0}
