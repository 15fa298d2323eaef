"""DPO through TRL's ``DPOTrainer``, with policy snapshots and resume.

Pairs arrive as token ids (``prompt_ids``, ``chosen_ids``, ``rejected_ids``, exactly what the
reference sampled; see ``dpo_ppo.data.prefs``) and ``TokenDPOTrainer`` hands them to TRL's collator as
they are, instead of TRL's text path (re-tokenise, append EOS).

Snapshots: every ``snapshot_every`` examples the policy is saved to
``<job>/snapshots/ex_<examples>/`` (weights only, for divergence over training).  Resume: the
Trainer's own checkpoint (model, optimiser, scheduler, RNG) is kept at the same cadence under
``<job>/dpo_trainer/`` (only the newest), and a relaunched job continues from it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
from pathlib import Path

from transformers import TrainerCallback
from trl import DPOConfig, DPOTrainer

from dpo_ppo import results as R
from dpo_ppo.data.snapshots import save_model_dir, snapshot_dir
from dpo_ppo.runtime.progress import plain as plain_progress
from dpo_ppo.train.probe import ProbeCallback

log = logging.getLogger(__name__)


class SnapshotCallback(TrainerCallback):
    """Saves the policy every ``every`` examples and at the end of training (``offset``: examples
    seen before this Trainer started, by online DPO's earlier rounds)."""

    def __init__(self, job_dir: Path, every: int, examples_per_step: int, tokenizer, offset: int = 0):
        self.job_dir, self.every, self.per_step = Path(job_dir), every, examples_per_step
        self.tokenizer, self.offset = tokenizer, offset

    def _save(self, model, examples: int) -> None:
        if not snapshot_dir(self.job_dir, examples).exists():
            save_model_dir(model, self.tokenizer, snapshot_dir(self.job_dir, examples))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        examples = self.offset + state.global_step * self.per_step
        if examples // self.every > (examples - self.per_step) // self.every:
            self._save(model, examples)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._save(model, self.offset + state.global_step * self.per_step)


# the Trainer's end-of-run log (one row of run totals): kept in train_dpo's summary, not as curves
END_OF_RUN_KEYS = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos", "train_loss")


class LogCallback(TrainerCallback):
    """Forwards the Trainer's logs (loss, rewards/*, logps/*, grad_norm, ...) under TRL's own names
    as ``trl/...`` (``results.TRL``) to ``log_fn``.  A log averages the steps since the previous one,
    each computed on the policy before its update: it is logged at ``train/examples`` = the
    examples the policy had seen when that window began (the first loss, at 0, is the reference's:
    log 2 for the sigmoid loss), with ``train/optimizer_step``, its optimizer steps then.  The
    end-of-run totals (``END_OF_RUN_KEYS``) go to ``self.totals``.
    ``offset``: (optimizer steps, examples) taken before this Trainer started (online DPO's rounds)."""

    def __init__(self, log_fn, examples_per_step: int, offset: tuple[int, int] = (0, 0)):
        self.log_fn, self.per_step, self.offset = log_fn, examples_per_step, offset
        self.window_start, self.totals = 0, {}

    def on_train_begin(self, args, state, control, **kwargs):
        self.window_start = state.global_step  # a resumed run's first window starts at its checkpoint

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return
        values = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if any(k in values for k in END_OF_RUN_KEYS):
            self.totals.update(values)
            return
        start, self.window_start = self.window_start, state.global_step
        if self.log_fn is None or not values:
            return
        metrics = {R.TRL + k: v for k, v in values.items()}
        metrics[R.EXAMPLES] = self.offset[1] + start * self.per_step
        metrics[R.OPTIMIZER_STEP] = self.offset[0] + start
        self.log_fn(metrics, metrics[R.EXAMPLES])


class TokenDPOTrainer(DPOTrainer):
    """TRL's DPOTrainer on pre-tokenised pairs: a dataset that already holds ``prompt_ids``,
    ``chosen_ids`` and ``rejected_ids`` skips TRL's text preparation (which re-tokenises and adds
    EOS); any other dataset goes through it unchanged."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if {"prompt_ids", "chosen_ids", "rejected_ids"} <= set(dataset.column_names):
            keep = ["prompt_ids", "chosen_ids", "rejected_ids"]
            return dataset.remove_columns([c for c in dataset.column_names if c not in keep])
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)


def last_complete_checkpoint(trainer_dir: Path) -> str | None:
    """The newest Trainer checkpoint that was written to the end; half-written ones are removed.

    The Trainer writes ``trainer_state.json`` after the weights, optimiser, scheduler and RNG
    state, so a checkpoint whose state file parses is complete.  A job killed while saving leaves
    a newer, partial folder (and the previous, complete one: rotation happens after the save).
    """
    folders = sorted(Path(trainer_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    for folder in folders:
        try:
            json.loads((folder / "trainer_state.json").read_text())
            return str(folder)
        except (OSError, ValueError):
            log.warning("dpo: removing incomplete checkpoint %s", folder)
            shutil.rmtree(folder, ignore_errors=True)
    return None


# activation (gradient) checkpointing in DPO: off, see train_dpo (a module constant, so that a test
# can turn it on to compare)
_GRADIENT_CHECKPOINTING = False
# transformers 5.2x renamed TrainingArguments' gradient_checkpointing (now a deprecated alias) to
# activation_checkpointing; older releases only have the first
_CHECKPOINTING_ARG = next(name for name in ("activation_checkpointing", "gradient_checkpointing")
                          if name in {f.name for f in dataclasses.fields(DPOConfig)})


def micro_batches(batch: int, micro: int | None) -> tuple[int, int]:
    """(per-device batch, gradient-accumulation steps) for an optimizer batch of ``batch`` pairs
    with at most ``micro`` pairs per forward/backward: the largest divisor of ``batch`` that fits,
    so every optimizer step still averages exactly ``batch`` pairs."""
    if not micro or micro >= batch:
        return batch, 1
    per = max(d for d in range(1, micro + 1) if batch % d == 0)
    return per, batch // per


def train_dpo(algo, policy, ref_model, tokenizer, prefs, job_dir: Path, *, seed: int = 0,
              log_fn=None, hw=None, probe=None, probe_every: int | None = None,
              trainer_dir: Path | None = None, offset: tuple[int, int] = (0, 0)) -> dict:
    """Train ``policy`` in place on the preference pairs ``prefs`` (prompt / chosen / rejected as
    token ids: ``prompt_ids``, ``chosen_ids``, ``rejected_ids``).

    ``probe(policy) -> {train/kl, train/p_positive_mean, ...}`` (``train.probe.TrainingProbe``) is
    logged through ``log_fn`` before training, every ``probe_every`` examples (default
    ``algo.snapshot_every``) and after the last step (``train.probe.ProbeCallback``).

    ``hw`` (``dpo_ppo.runtime.hardware.Runtime``): bf16 mixed precision (the Trainer's autocast,
    float32 master weights) when its precision is bf16, and micro-batches of at most
    ``train_micro_batch`` pairs accumulated into each optimizer step of ``algo.batch_size`` pairs.

    Online DPO's rounds (``train.online_dpo``) call it once per round: ``trainer_dir`` (default
    ``<job>/dpo_trainer``) holds that round's checkpoints, ``offset`` = (optimizer steps, examples)
    of the earlier rounds, added to the logged steps and the snapshots' examples."""
    job_dir = Path(job_dir)
    per_device, accumulate = micro_batches(algo.batch_size, hw.train_micro_batch if hw else None)
    steps_per_epoch = math.ceil(len(prefs) / algo.batch_size)
    save_steps = max(1, algo.snapshot_every // algo.batch_size)
    # a divisor of save_steps: the logged loss averages the steps since the last log, and a resumed
    # run counts from its checkpoint, so logs must fall on checkpoints for its curve to be the same
    logging_steps = math.gcd(save_steps, max(1, min(10, steps_per_epoch // 10)))
    use_cpu = next(policy.parameters()).device.type == "cpu"
    args = DPOConfig(
        output_dir=str(trainer_dir or job_dir / "dpo_trainer"),
        beta=algo.beta, loss_type=[algo.loss_type], label_smoothing=algo.label_smoothing,
        learning_rate=algo.lr, lr_scheduler_type="constant", optim="adamw_torch",
        weight_decay=algo.weight_decay, adam_epsilon=algo.adam_eps, max_grad_norm=algo.max_grad_norm,
        per_device_train_batch_size=per_device, gradient_accumulation_steps=accumulate,
        num_train_epochs=algo.epochs,
        max_length=(algo.prefix_len_max or algo.prefix_len) + algo.completion_len + 8,
        save_strategy="steps", save_steps=save_steps, save_total_limit=1,
        logging_steps=logging_steps, report_to=[], seed=seed,
        use_cpu=use_cpu, dataloader_num_workers=0,
        bf16=bool(hw is not None and hw.bf16), fp16=False, disable_tqdm=plain_progress(),
        # the frozen reference's log-probs once, in large no-grad batches, instead of a reference
        # forward in every training step (TRL's own option; the same numbers)
        precompute_ref_log_probs=True,
        precompute_ref_batch_size=hw.forward_batch_size if hw is not None else 64,
        # TRL's configs turn gradient checkpointing on by default (a memory saving for large models);
        # at these sizes it only re-runs every forward inside the backward pass (the same gradients)
        **{_CHECKPOINTING_ARG: _GRADIENT_CHECKPOINTING},
    )
    examples_per_step = algo.batch_size
    logs = LogCallback(log_fn, examples_per_step, offset)
    callbacks = [SnapshotCallback(job_dir, algo.snapshot_every, examples_per_step, tokenizer, offset[1]), logs]
    if probe is not None and log_fn is not None:
        callbacks.append(ProbeCallback(probe, policy, log_fn, probe_every or algo.snapshot_every, examples_per_step,
                                       offset))
    trainer = TokenDPOTrainer(
        model=policy, ref_model=ref_model, args=args, train_dataset=prefs, processing_class=tokenizer,
        callbacks=callbacks,
    )
    last = last_complete_checkpoint(Path(args.output_dir))
    if last:
        log.info("dpo: resuming from %s", last)
        # The Trainer's resume reads model.safetensors by raw key names, and GPT-NeoX's head is saved
        # under its legacy name (embed_out, the module is lm_head): the head would silently stay at the
        # reference's weights. Load the checkpoint through from_pretrained's key mapping first.
        policy.load_state_dict(type(policy).from_pretrained(last, dtype=policy.dtype).state_dict())
    result = trainer.train(resume_from_checkpoint=last)
    steps = int(result.global_step)
    # pairs seen and the tokens of prompt+chosen and prompt+rejected forwarded with gradients: each
    # epoch is ceil(pairs / batch) steps whose last batch is partial; a fractional last epoch
    # trains the first steps of a fresh shuffle, whose pairs get the mean pair's tokens
    pair_tokens = [2 * len(p) + len(c) + len(r) for p, c, r in
                   zip(prefs["prompt_ids"], prefs["chosen_ids"], prefs["rejected_ids"])]
    full, rest_steps = divmod(steps, math.ceil(len(prefs) / algo.batch_size))
    part = min(rest_steps * algo.batch_size, len(prefs))
    seen = full * len(prefs) + part
    cost = {"optimizer_steps": steps, "examples_seen": seen,
               "trained_tokens": round(full * sum(pair_tokens) + part * sum(pair_tokens) / len(prefs))}
    return {"train_loss": float(result.training_loss), "steps": steps, "resumed_from": last,
            "compute": cost, "trainer": logs.totals}  # the measured cost, results.json's compute
