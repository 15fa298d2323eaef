"""RLOO and GRPO through TRL's ``RLOOTrainer`` / ``GRPOTrainer``: the on-policy arms beside our PPO.

Both get what PPO gets: the same policy (a copy of the reference), the same frozen reference, the
same training prefixes (as token ids) and the same reward, the classifier's score of
``prefix + completion`` decoded as text (``reward_kind``: logit, as PPO's default, or prob).  Each
optimizer step samples ``num_completions`` completions for each of ``batch_size`` prefixes from the
current policy (one generation per step, reused ``num_iterations`` times).

- RLOO: reward - beta * KL (k1 = log pi - log pi_ref summed over the completion), advantage =
  that minus the leave-one-out mean of the prefix's other completions: the objective PPO optimises
  with a fixed ``kl_coef = beta`` (pi* = pi_ref exp(r / beta) / Z).
- GRPO: advantage = reward centred (and scaled, ``scale_rewards``) within the prefix's group; the
  KL is beta * k3 per token *in the loss* (a different objective: docs/kl_control.md).

The prefixes reach TRL's generation as our token ids, not re-tokenised text
(``TokenPromptsMixin``): a decode/encode round trip can move a prefix that ends mid-word.  The
reference the trainer builds from the policy's folder is checked to be the job's own.

Snapshots every ``snapshot_every`` examples into ``<job>/snapshots/ex_<examples>/`` (as DPO's), the
Trainer's checkpoints under ``<job>/rl_trainer/`` (newest only) for resume after a kill.  Logged,
one row per optimizer step at ``train/examples`` = the prefixes the policy had seen *before* the
step (its samples were drawn from that policy, as PPO's rollout rows): the samples' statistics under
PPO's rollout names (``train/rollout/kl``: nats per sequence, TRL's per-token KL times the mean
completion length, k1 for RLOO as PPO's, k3 for GRPO; ``train/rollout/p_positive_mean``,
``train/rollout/score_mean`` / ``score_std``: the reward before the KL term,
``train/rollout/completion_len``) and TRL's other metrics under ``trl/`` (``results.TRL``).  The
shared probe (``train.probe``: ``train/kl``, ``train/p_positive_mean`` on fixed training prefixes,
at 0, every ``probe_every`` examples and at the end) is what compares with DPO's and PPO's curves.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import torch
from datasets import Dataset
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

from dpo_ppo.data.snapshots import save_model_dir, snapshot_dir
from dpo_ppo.runtime.progress import plain as plain_progress
from dpo_ppo import results as R
from dpo_ppo.train.dpo import END_OF_RUN_KEYS, last_complete_checkpoint, micro_batches
from dpo_ppo.train.probe import ProbeCallback

log = logging.getLogger(__name__)


def score_from_p(p: torch.Tensor, reward_kind: str) -> torch.Tensor:
    """PPO's score of p_positive (``ppo.rollout``): logit = log p - log(1 - p), clamped, or p."""
    p = p.float()
    if reward_kind == "prob":
        return p
    p = p.clamp(1e-6, 1 - 1e-6)
    return torch.log(p) - torch.log1p(-p)


def make_reward_fn(tokenizer, p_positive, reward_kind: str, counter: dict | None = None):
    """The scorer as a TRL reward function: decodes ``prefix_ids + completion_ids`` (the dataset's
    ``prefix_ids`` column reaches it as a keyword) as PPO does, returns the score of each, and logs
    the mean p_positive as ``p_positive_mean``.  ``counter["generated_tokens"]`` adds up the completions'
    tokens."""

    def score(prompts, completions, completion_ids, prefix_ids, log_metric=None, **_):
        texts = tokenizer.batch_decode([list(p) + list(c) for p, c in zip(prefix_ids, completion_ids)],
                                       skip_special_tokens=True)
        p = torch.as_tensor(p_positive(texts), dtype=torch.float32).flatten().cpu()
        if log_metric is not None:
            log_metric(R.P_POSITIVE_MEAN, float(p.mean()))
        if counter is not None:
            counter["generated_tokens"] = counter.get("generated_tokens", 0) + sum(map(len, completion_ids))
        return score_from_p(p, reward_kind).tolist()

    return score


class TokenPromptsMixin:
    """Generation from the dataset's ``prefix_ids`` instead of TRL's tokenisation of ``prompt``."""

    def _generate_and_score_completions(self, inputs):
        self._prefix_ids = [list(x["prefix_ids"]) for x in inputs]
        return super()._generate_and_score_completions(inputs)

    def _tokenize_prompts(self, prompts):
        if len(prompts) != len(self._prefix_ids):  # never: one prompt per input row
            raise RuntimeError(f"{len(prompts)} prompts for {len(self._prefix_ids)} prefixes")
        return [list(p) for p in self._prefix_ids], None, {}


class TokenRLOOTrainer(TokenPromptsMixin, RLOOTrainer):
    pass


class TokenGRPOTrainer(TokenPromptsMixin, GRPOTrainer):
    pass


TRAINERS = {"rloo": (RLOOConfig, TokenRLOOTrainer), "grpo": (GRPOConfig, TokenGRPOTrainer)}


def examples_at(step: int, algo) -> int:
    """Training prefixes seen after ``step`` optimizer steps (each generation is reused
    ``num_iterations`` times)."""
    return min(algo.examples, step * algo.batch_size // algo.num_iterations)


class RLSnapshotCallback(TrainerCallback):
    """The policy every ``snapshot_every`` examples and at the end (``ex_<examples>``, as DPO's)."""

    def __init__(self, job_dir: Path, algo, tokenizer):
        self.job_dir, self.algo, self.tokenizer = Path(job_dir), algo, tokenizer

    def _save(self, model, examples: int) -> None:
        if not snapshot_dir(self.job_dir, examples).exists():
            save_model_dir(model, self.tokenizer, snapshot_dir(self.job_dir, examples))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        now, before = examples_at(state.global_step, self.algo), examples_at(state.global_step - 1, self.algo)
        if now // self.algo.snapshot_every > before // self.algo.snapshot_every:
            self._save(model, now)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._save(model, examples_at(state.global_step, self.algo))


# TRL's metric names -> PPO's rollout names (``train/rollout/...``) where they mean the same
ROLLOUT_NAMES = {"reward": R.SCORE_MEAN, "reward_std": "score_std", "completions/mean_length": "completion_len",
                 "kl": "kl_per_token", R.P_POSITIVE_MEAN: R.P_POSITIVE_MEAN}


class RLLogCallback(TrainerCallback):
    """TRL's logs: the samples' statistics as ``train/rollout/...`` (``ROLLOUT_NAMES``, plus
    ``train/rollout/kl`` in nats per sequence), everything else as ``trl/...``, at the examples the
    sampling policy had seen (the step's samples come from the policy before its update), with
    ``train/optimizer_step``, that policy's optimizer steps."""

    def __init__(self, log_fn, algo):
        self.log_fn, self.algo = log_fn, algo

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or self.log_fn is None:
            return
        values = {k: float(v) for k, v in logs.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and not k.startswith("rewards/")}
        if any(k in values for k in END_OF_RUN_KEYS):  # the Trainer's end-of-run totals: no curve
            return
        metrics = {(R.ROLLOUT + ROLLOUT_NAMES[k]) if k in ROLLOUT_NAMES else R.TRL + k: v for k, v in values.items()}
        per_token, length = metrics.get(R.ROLLOUT + "kl_per_token"), metrics.get(R.ROLLOUT + "completion_len")
        if per_token is not None and length is not None:
            metrics[R.ROLLOUT_KL] = per_token * length
        before = max(0, state.global_step - 1)
        metrics[R.EXAMPLES] = examples_at(before, self.algo)
        metrics[R.OPTIMIZER_STEP] = before
        self.log_fn(metrics, metrics[R.EXAMPLES])


def _checkpointing_arg(config_cls) -> str:
    """transformers 5.2x renamed gradient_checkpointing to activation_checkpointing (see dpo.py)."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    return next(n for n in ("activation_checkpointing", "gradient_checkpointing") if n in names)


def trl_args(algo, job_dir: Path, *, seed: int, hw=None, use_cpu: bool):
    """The RLOOConfig / GRPOConfig of ``algo`` (an RLOO- or GRPOAlgorithmConfig)."""
    config_cls, _ = TRAINERS[algo.name]
    per_step = algo.batch_size * algo.num_completions  # completions per optimizer step
    per_device, accumulate = micro_batches(per_step, hw.train_micro_batch if hw else None)
    steps = math.ceil(algo.examples / algo.batch_size) * algo.num_iterations
    save_steps = max(1, algo.snapshot_every // algo.batch_size) * algo.num_iterations
    kwargs = dict(
        output_dir=str(Path(job_dir) / "rl_trainer"),
        beta=algo.beta, num_generations=algo.num_completions, num_iterations=algo.num_iterations,
        epsilon=algo.epsilon, max_completion_length=algo.completion_len,
        temperature=algo.temperature, top_k=algo.top_k, top_p=1.0,
        learning_rate=algo.lr, lr_scheduler_type="constant", optim="adamw_torch",
        weight_decay=algo.weight_decay, adam_epsilon=algo.adam_eps, max_grad_norm=algo.max_grad_norm,
        per_device_train_batch_size=per_device, gradient_accumulation_steps=accumulate,
        steps_per_generation=accumulate, max_steps=steps,
        save_strategy="steps", save_steps=save_steps, save_total_limit=1,
        logging_steps=1, report_to=[], seed=seed, use_cpu=use_cpu, dataloader_num_workers=0,
        remove_unused_columns=False, disable_dropout=True, log_completions=False,
        bf16=bool(hw is not None and hw.bf16), fp16=False, disable_tqdm=plain_progress(),
        **{_checkpointing_arg(config_cls): False},
    )
    if algo.name == "rloo":
        kwargs["normalize_advantages"] = algo.normalize_advantages
    else:
        kwargs.update(loss_type=algo.loss_type, scale_rewards=algo.scale_rewards)
    return config_cls(**kwargs)


@torch.no_grad()
def _check_reference(trl_ref, ref_model) -> None:
    """TRL's reference (loaded from the policy's ``_name_or_path``) must be the job's reference."""
    if trl_ref is None:
        return
    ours = dict(ref_model.named_parameters())
    for name, p in trl_ref.named_parameters():
        q = ours.get(name)
        if q is None or q.shape != p.shape or not torch.equal(q.detach().to(p.device, p.dtype), p.detach()):
            raise RuntimeError(f"TRL's reference model differs from the job's at {name}; the policy must be "
                               f"loaded from the reference's folder")


def train_rl(algo, policy, ref_model, tokenizer, prompts: list[list[int]], p_positive, job_dir: Path, *,
             seed: int = 0, log_fn=None, hw=None, probe=None, probe_every: int | None = None) -> dict:
    """Train ``policy`` in place with RLOO or GRPO (``algo.name``) on the token-id ``prompts``
    (``algo.examples`` of them, each used once per pass), rewarded by ``p_positive(texts)``;
    ``probe`` (``train.probe.TrainingProbe``) logged as DPO's and PPO's (``train.probe.ProbeCallback``)."""
    job_dir = Path(job_dir)
    use_cpu = next(policy.parameters()).device.type == "cpu"
    args = trl_args(algo, job_dir, seed=seed, hw=hw, use_cpu=use_cpu)
    _, trainer_cls = TRAINERS[algo.name]
    dataset = Dataset.from_dict({"prompt": tokenizer.batch_decode(prompts, skip_special_tokens=True),
                                 "prefix_ids": [list(p) for p in prompts]})
    source = getattr(policy.config, "_name_or_path", "") or ""
    if not source or not Path(source).is_dir():  # a model built in memory: TRL loads its reference from a folder
        folder = save_model_dir(ref_model, tokenizer, Path(args.output_dir) / "reference")
        policy.config._name_or_path = str(folder)
    counter: dict = {}
    reward = make_reward_fn(tokenizer, p_positive, algo.reward_kind, counter)
    callbacks = [RLSnapshotCallback(job_dir, algo, tokenizer), RLLogCallback(log_fn, algo)]
    if probe is not None and log_fn is not None:
        # one optimizer step trains batch_size prefixes (num_iterations passes over one generation)
        callbacks.append(ProbeCallback(probe, policy, log_fn, probe_every or algo.snapshot_every,
                                       max(1, algo.batch_size // algo.num_iterations)))
    trainer = trainer_cls(model=policy, reward_funcs=reward, args=args, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=callbacks)
    # TRL loads its reference from the policy's folder (the job's base model: the same weights as
    # ref_model, which stays unpatched for evaluation); check that it did
    _check_reference(trainer.ref_model, ref_model)
    last = last_complete_checkpoint(Path(args.output_dir))
    if last:
        log.info("%s: resuming from %s", algo.name, last)
        # GPT-NeoX's head is saved under its legacy name (see dpo.train_dpo): load through from_pretrained
        policy.load_state_dict(type(policy).from_pretrained(last, dtype=policy.dtype).state_dict())
    result = trainer.train(resume_from_checkpoint=last)
    steps = int(result.global_step)
    seen = examples_at(steps, algo)
    # every generated sequence (prefix + completion) is forwarded with gradients num_iterations times
    sequence_tokens = int(trainer.state.num_input_tokens_seen)
    prefix_tokens = algo.num_completions * sum(len(p) for p in prompts[:seen]) if seen <= len(prompts) else None
    cost = {"optimizer_steps": steps, "examples_seen": seen,
               "trained_tokens": sequence_tokens * algo.num_iterations,
               # the completions' tokens; on a resumed run, from the sequences' count less the prefixes'
               "generated_tokens": (sequence_tokens - prefix_tokens) if prefix_tokens is not None
               else counter.get("generated_tokens")}
    return {"train_loss": float(result.training_loss), "steps": steps, "resumed_from": last,
            "compute": cost}  # the measured cost, results.json's compute
