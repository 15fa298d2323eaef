"""The training probe: one comparable reward and KL for every trainer, on the same prefixes.

DPO samples nothing while it trains and PPO's rollout statistics describe a different batch at each
update, so neither gives a curve the other can be read against.  The probe samples the policy on a
fixed set of training prefixes (the first ``logger.probe_prompts`` of the job's training prefixes:
the same for every algorithm at one seed), keyed by (seed, prefix) so that every probe draws the
same noise and the curve moves only with the policy, and measures

- ``kl``: per completion the sum over its tokens of log pi(y_t|.) - log pi_ref(y_t|.) (k1, PPO's
  default estimator), mean over completions, in nats; ``kl_exact`` the full-distribution estimate
  (``sampling.sequence_kl``, as eval/policy/kl_to_ref);
- ``reward``: the classifier's mean p_positive of prefix + completion, in [0, 1]; ``score`` the
  mean of its log-odds log p(pos) - log p(neg), in nats.

``probe(policy, reference, scorer, prefixes, tokenizer=..., completion_len=...)`` returns these as
a plain dict; ``TrainingProbe`` holds the settings and returns them under the metric names
(``results.PROBE_KEYS``: train/kl, train/kl_exact, train/p_positive_mean, train/score_mean,
train/probe_s); ``ProbeCallback`` runs it from any ``transformers`` Trainer (TRL's included)::

    probe = TrainingProbe(ref_model, tokenizer, prefixes, scorer.p_positive, completion_len=16)
    trainer.add_callback(ProbeCallback(probe, policy, recorder.log, every=64, examples_per_step=8))

Every point is logged at ``train/examples`` = the examples the measured policy had seen, with one
before training (examples 0: the reference's reward, KL 0), every ``every`` examples and at the
end.  Torch's random state is restored afterwards: a probe never changes the training.
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Optional, Sequence, Tuple

import torch
from transformers import TrainerCallback

from dpo_ppo import results as R
from dpo_ppo.runtime.hardware import CPU_SIZES
from dpo_ppo.train.sampling import generate, sample_keys, sequence_kl


def _p_positive_fn(scorer) -> Callable:
    """``scorer.p_positive`` (``data.scorer.Scorer``) or the scorer itself (texts -> p_positive)."""
    return getattr(scorer, "p_positive", scorer)


@torch.no_grad()
def probe(policy, reference, scorer, prefixes: Sequence[Sequence[int]], *, tokenizer, completion_len: int,
          temperature: float = 1.0, top_k: int = 0, seed: int = 0, batch_size: int = 64,
          autocast: Callable = contextlib.nullcontext) -> dict:
    """{"reward", "score", "kl", "kl_exact"} of ``policy`` on ``prefixes`` (see the module
    docstring): ``scorer`` maps texts to p_positive (or has ``p_positive``)."""
    prefixes = [list(p) for p in prefixes]
    keys = sample_keys(seed, range(len(prefixes)))
    was_training = policy.training
    policy.eval()
    devices = [policy.device] if getattr(policy, "device", torch.device("cpu")).type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            with autocast():
                completions = generate(policy, tokenizer, prefixes, completion_len, temperature=temperature,
                                       top_k=top_k, batch_size=len(prefixes), desc=None, keys=keys)
            texts = tokenizer.batch_decode([p + c for p, c in zip(prefixes, completions)], skip_special_tokens=True)
            p = torch.as_tensor(_p_positive_fn(scorer)(texts), dtype=torch.float32).flatten()
            with autocast():
                exact, k1 = sequence_kl(policy, reference, prefixes, completions, pad_id=tokenizer.pad_token_id,
                                        batch_size=batch_size)
    finally:
        policy.train(was_training)
    q = p.double().clamp(1e-12, 1 - 1e-12)
    return {"reward": float(p.mean()), "score": float((q.log() - (-q).log1p()).mean()),
            "kl": float(k1.mean()), "kl_exact": float(exact.mean())}


class TrainingProbe:
    """``probe`` with its settings fixed, returning the metric names (``results.PROBE_KEYS``).

    The completions are sampled ``completion_len`` tokens at ``temperature`` / ``top_k`` (the
    algorithm's sampling settings; the KL assumes temperature 1, the default, as PPO's does).
    ``hw`` (``runtime.hardware.Runtime``) gives the forward batch and the precision."""

    def __init__(self, ref_model, tokenizer, prompts, reward_fn, *, completion_len: int, temperature: float = 1.0,
                 top_k: int = 0, seed: int = 0, hw=None):
        self.ref_model, self.tokenizer, self.prompts = ref_model, tokenizer, [list(p) for p in prompts]
        self.reward_fn, self.completion_len, self.temperature, self.top_k = reward_fn, completion_len, temperature, top_k
        self.seed = seed
        self.forward_batch = hw.forward_batch_size if hw is not None else CPU_SIZES["forward_batch_size"]
        self.autocast = hw.autocast if hw is not None else contextlib.nullcontext

    def __call__(self, model) -> dict:
        t0 = time.perf_counter()
        out = probe(model, self.ref_model, self.reward_fn, self.prompts, tokenizer=self.tokenizer,
                    completion_len=self.completion_len, temperature=self.temperature, top_k=self.top_k,
                    seed=self.seed, batch_size=self.forward_batch, autocast=self.autocast)
        return {R.TRAIN_KL: out["kl"], R.TRAIN_KL_EXACT: out["kl_exact"], R.TRAIN_P_POSITIVE: out["reward"],
                R.TRAIN_SCORE: out["score"], R.PROBE_S: time.perf_counter() - t0}


def due(examples: int, before: int, every: int) -> bool:
    """Whether going from ``before`` to ``examples`` examples crossed a multiple of ``every``."""
    return examples // every > before // every


class ProbeCallback(TrainerCallback):
    """Runs ``probe(model)`` from a ``transformers`` Trainer (TRL's DPOTrainer, RLOOTrainer, ...)
    and hands ``{**metrics, train/examples, train/optimizer_step}`` to ``log_fn(metrics, examples)``
    (``Recorder.log``): before the first step (examples 0; not again on a resumed run), every
    ``every`` examples and after the last step.  ``examples_per_step``: examples (pairs, prompts) per optimizer step, so
    ``train/examples`` = global_step * examples_per_step, the examples the probed policy has seen.
    ``offset``: (optimizer steps, examples) taken before this Trainer started (online DPO's rounds:
    a later round's start is the earlier round's last point, probed there already)."""

    def __init__(self, probe, model, log_fn, every: int, examples_per_step: int,
                 offset: Tuple[int, int] = (0, 0)):
        self.probe, self.model, self.log_fn = probe, model, log_fn
        self.every, self.per_step, self.offset = every, examples_per_step, offset

    def _log(self, state, model=None) -> None:
        examples = self.offset[1] + state.global_step * self.per_step
        self.log_fn({**self.probe(self.model if self.model is not None else model), R.EXAMPLES: examples,
                     R.OPTIMIZER_STEP: self.offset[0] + state.global_step}, examples)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == 0 and tuple(self.offset) == (0, 0):
            self._log(state, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        examples = self.offset[1] + state.global_step * self.per_step
        if due(examples, examples - self.per_step, self.every) or state.global_step == state.max_steps:
            self._log(state, model)


def make_probe(cfg, ref_model, tokenizer, scorer, train_prompts, hw=None) -> Optional[TrainingProbe]:
    """The job's probe: the first ``cfg.logger.probe_prompts`` training prefixes, sampled with the
    algorithm's settings at the job's seed; None when probe_prompts is 0."""
    n, algo = cfg.logger.probe_prompts, cfg.algorithm
    if not n:
        return None
    return TrainingProbe(ref_model, tokenizer, train_prompts[:n], _p_positive_fn(scorer),
                         completion_len=algo.completion_len, temperature=getattr(algo, "temperature", 1.0),
                         top_k=getattr(algo, "top_k", 0), seed=cfg.seed, hw=hw)
