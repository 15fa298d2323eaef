"""PPO's main loop, top to bottom as the algorithm (``train_ppo``): for each update, a rollout, its
advantages, the update's epochs over minibatches, the KL controller.  The pieces it calls live
beside it: ``losses`` (pure functions), ``controllers`` (KL coefficient), ``trust_region``,
``model`` (policy + value head, the batch), ``state`` (snapshots and resume).

``cfg.batch_size`` (when null, the hardware's ``train_micro_batch``) is the most sequences one
forward/backward pass takes: scoring passes are chunked by it and a larger minibatch accumulates
gradients over chunks of it (the loss stays the token mean over the whole minibatch).  Generation
runs the whole rollout as one batch.

Log-probs are of the temperature-scaled policy; they ignore ``top_k`` truncation and the ban on an
EOS as first token (``generate`` asks for at least one new token), as RLHF PPO usually does.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn

from dpo_ppo import results as R
from dpo_ppo.config.schedule import kl_controller_name, rollout_minibatches
from dpo_ppo.runtime import hardware
from dpo_ppo.runtime.divergence import check_weights
from dpo_ppo.runtime.hardware import CPU_SIZES
from dpo_ppo.runtime.progress import tqdm  # plain lines when stderr is not a terminal
from dpo_ppo.train.ppo import state
from dpo_ppo.train.ppo.controllers import make_kl_controller
from dpo_ppo.train.ppo.losses import (RunningMoments, entropy_from_logits, explained_variance, gae, kl_per_token,
                                      masked_mean, masked_var, policy_loss, token_logprobs, value_loss, whiten)
from dpo_ppo.train.ppo.model import PolicyWithValue, completion_hidden, make_batch, select
from dpo_ppo.train.ppo.state import Progress, save_snapshot
from dpo_ppo.train.ppo.trust_region import TrustRegion, prompt_groups, token_sums, trust_statistic
from dpo_ppo.train.probe import due
from dpo_ppo.train.sampling import generate, model_device, pad_token_id

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- the loop


def train_ppo(cfg, policy, ref_model, tokenizer, prompts: list[list[int]], reward_fn, out_dir, *,
              seed: int = 0, log_fn: Optional[Callable[[dict, int], None]] = None, hw=None,
              probe: Optional[Callable] = None, probe_every: Optional[int] = None) -> dict:
    """Train ``policy`` in place with PPO on ``prompts``; resume from ``out_dir/ppo_state`` if there.

    ``reward_fn(texts) -> p_positive`` scores decoded prefix + completion text.  Every
    ``cfg.snapshot_every`` prefixes (and at the end) the policy is saved to
    ``out_dir/snapshots/ex_{examples:07d}`` and the resume state to ``out_dir/ppo_state``.
    ``log_fn(metrics, step)`` gets the metrics of each update (``log_names``: the rollout's under
    ``train/rollout/``) at step = ``train/examples`` = the prefixes consumed *before* the update:
    the rollout's KL and reward measure the policy that had seen that many, and the update's
    losses start from it.  ``probe(policy)`` (``train.probe.TrainingProbe``), DPO's curve on the
    same prefixes, is logged before training, every ``probe_every`` prefixes (default
    ``cfg.snapshot_every``) and at the end, at the prefixes consumed after the update.  ``hw``
    (``dpo_ppo.runtime.hardware.Runtime``) gives the forward/backward chunk size when
    ``cfg.batch_size`` is null, and bf16 autocast when its precision is bf16.  Returns a summary of
    the run.
    """
    chunk = cfg.batch_size or (hw.train_micro_batch if hw is not None else CPU_SIZES["train_micro_batch"])
    autocast = hw.autocast if hw is not None else contextlib.nullcontext
    static_cache = bool(hw is not None and hw.static_cache)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    total = len(prompts)
    was_training = policy.training
    policy.eval()  # no dropout in rollouts or updates (gradients still flow)
    ref_model.eval().requires_grad_(False)

    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    model = PolicyWithValue(policy, ref_model, cfg.value_model).eval()
    optimizer = make_optimizer(model, cfg)
    kl_ctl = make_kl_controller(cfg, updates=math.ceil(total / cfg.rollout_prefixes))
    normalizer = RunningMoments() if cfg.normalize_reward else None
    score_moments = RunningMoments()  # the scores fed into rewards: the whitening floor (compute_advantages)
    generator = torch.Generator().manual_seed(seed)  # minibatch shuffling
    layout = {"examples": total, "rollout_prefixes": cfg.rollout_prefixes,
              "num_completions": cfg.num_completions, "value_model": cfg.value_model}
    parts = dict(policy=policy, model=model, optimizer=optimizer, kl_ctl=kl_ctl, normalizer=normalizer,
                 score_moments=score_moments, generator=generator)
    run = state.resume(out_dir, layout, total, **parts)
    resumed_from = run.examples if run is not None else None
    run = run or Progress()
    t_start = time.time()

    def checkpoint() -> None:
        state.checkpoint(out_dir, layout, run, run.wall_s + time.time() - t_start, **parts)

    metrics: dict = {}
    bar = tqdm(total=total, initial=run.examples, unit="ex", desc="ppo", dynamic_ncols=True)
    probe_every = probe_every or cfg.snapshot_every
    if probe is not None and log_fn is not None and run.examples == 0:  # the reference (not again on resume)
        log_fn({**probe(policy), R.EXAMPLES: 0}, 0)
    while run.examples < total:
        t0, c0 = time.time(), time.process_time()
        prefixes = prompts[run.examples: run.examples + cfg.rollout_prefixes]
        queries = [list(p) for p in prefixes for _ in range(cfg.num_completions)]
        kl_coef = kl_ctl.value
        # 1. rollout: sample a completion per query, score it; per-token log-probs, values, KL to the reference
        batch, metrics = rollout(model, ref_model, tokenizer, queries, reward_fn, cfg, normalizer, chunk=chunk,
                                 autocast=autocast, static_cache=static_cache, score_moments=score_moments)
        # 2. advantages: reward per token -kl_coef * KL, plus the score at the last token; GAE; whitening
        metrics.update(compute_advantages(batch, kl_coef, cfg, score_moments))
        t1, c1 = time.time(), time.process_time()
        # 3. the update: ppo_epochs x num_minibatches steps on the clipped losses, within the trust region
        metrics.update(ppo_update(model, optimizer, batch, cfg, generator, chunk=chunk, autocast=autocast))
        # 4. the KL controller moves kl_coef toward kl_target from the rollout's KL
        kl_ctl.update(metrics["train/kl"], len(queries))
        t2, c2 = time.time(), time.process_time()

        # what the update cost and did
        before = run.examples
        run.examples += len(prefixes)
        run.updates += 1
        run.kl_history.append(metrics["train/kl"])
        run.compute["optimizer_steps"] += metrics["train/optimizer_steps"]
        run.compute["examples_seen"] += len(prefixes)
        run.compute["trained_tokens"] += metrics["train/trained_tokens"]
        run.compute["generated_tokens"] += metrics["train/completion_tokens"]
        metrics["train/rollout_s"], metrics["train/optimize_s"] = t1 - t0, t2 - t1
        # CPU seconds of this process (all its threads): steadier than wall seconds on a shared machine
        metrics["train/rollout_cpu_s"], metrics["train/optimize_cpu_s"] = c1 - c0, c2 - c1
        metrics["train/tokens_per_s"] = metrics["train/completion_tokens"] / (t2 - t0)
        metrics["train/examples"] = before  # the policy the rollout measured had seen `before`
        metrics["train/kl_coef_next"] = kl_ctl.value
        _count_all_cut_back(run, metrics, cfg)
        if log_fn is not None:
            log_fn(log_names(metrics), before)
            if probe is not None and (due(run.examples, before, probe_every) or run.examples >= total):
                log_fn({**probe(policy), R.EXAMPLES: run.examples}, run.examples)
        # a step to non-finite weights fails in the next rollout's sampling with no word of why
        check_weights(list(policy.parameters()) + list(model.value_modules().parameters()), run.examples,
                      knob=f"algorithm.lr={cfg.lr:g}")
        bar.update(len(prefixes))
        bar.set_postfix(score=f"{metrics['train/score_mean']:.3f}", kl=f"{metrics['train/kl']:.2f}",
                        coef=f"{kl_coef:.3f}")
        if run.examples // cfg.snapshot_every > before // cfg.snapshot_every:
            save_snapshot(policy, tokenizer, out_dir, run.examples)
            run.last_snapshot = run.examples
            checkpoint()
    bar.close()
    if run.updates_all_cut_back:
        log.warning("ppo: the trust region cut back every step in %d of %d updates", run.updates_all_cut_back,
                    run.updates)
    if run.last_snapshot != run.examples:
        save_snapshot(policy, tokenizer, out_dir, run.examples)
        run.last_snapshot = run.examples
        checkpoint()
    policy.train(was_training)
    tail = run.kl_history[-max(1, len(run.kl_history) // 4):]
    return {"examples": run.examples, "updates": run.updates, "kl_coef": kl_ctl.value,
            "kl_controller": kl_controller_name(cfg), "kl_recent": sum(tail) / max(1, len(tail)),
            "compute": run.compute, "updates_all_cut_back": run.updates_all_cut_back,
            "wall_s": run.wall_s + time.time() - t_start, "resumed_from": resumed_from,
            "snapshot_dir": str(out_dir / "snapshots"), **metrics}


def _count_all_cut_back(run: Progress, metrics: dict, cfg) -> None:
    """Count (and warn of, once) an update whose trust region cut back every step it took: the policy
    barely moves then (lr too large for the bound)."""
    steps_taken = metrics["train/optimizer_steps"]
    if steps_taken and metrics["train/steps_cut_back"] >= steps_taken:
        run.updates_all_cut_back += 1
        if run.updates_all_cut_back == 1:  # once; the count goes to the log, train/updates_all_cut_back and the summary
            log.warning("ppo: the trust region (early_stop_kl=%g) cut back all %d steps of update %d; the policy "
                        "barely moves when every step is cut (likely algorithm.lr=%g is too large)",
                        cfg.early_stop_kl, steps_taken, run.updates, cfg.lr)
    metrics["train/updates_all_cut_back"] = run.updates_all_cut_back


# --------------------------------------------------------------------------- 1. rollout


@torch.no_grad()
def rollout(model: PolicyWithValue, ref_model, tokenizer, queries: list[list[int]], reward_fn, cfg,
            normalizer: Optional[RunningMoments], *, chunk: Optional[int] = None,
            autocast=contextlib.nullcontext, static_cache: bool = False,
            score_moments: Optional[RunningMoments] = None) -> tuple[dict, dict]:
    """Sample a completion for each query (``temperature``, ``top_k``, at most ``completion_len`` new
    tokens, ending at EOS), score ``prefix + completion`` as text with ``reward_fn`` (p_positive from
    a classifier with its own tokenizer: only text crosses that border), and read the rollout's
    per-token log-probs (policy and frozen reference, one no-grad forward each), values and KL to
    the reference.  Returns the batch (``make_batch``'s, plus ``old_logprobs``, ``ref_logprobs``,
    ``old_values``, ``kl`` and ``score``) and its statistics.

    ``chunk``: sequences per forward pass (default ``cfg.batch_size``); ``autocast``: the context
    factory the forward passes run in (``Runtime.autocast``: bf16 autocast or nothing).
    ``score_moments``: running moments of every score the run has fed into rewards (the whitening
    floor of ``compute_advantages``)."""
    policy = model.policy
    device = model_device(policy)
    pad_id = pad_token_id(tokenizer)
    with autocast():
        completions = generate(policy, tokenizer, queries, cfg.completion_len, temperature=cfg.temperature,
                               top_k=cfg.top_k, batch_size=len(queries), desc=None, static_cache=static_cache)
    texts = tokenizer.batch_decode([q + c for q, c in zip(queries, completions)],
                                   skip_special_tokens=True)
    p_positive = torch.as_tensor(reward_fn(texts), dtype=torch.float32).flatten().cpu()
    if cfg.reward_kind == "logit":
        p = p_positive.clamp(1e-6, 1 - 1e-6)
        score = torch.log(p) - torch.log1p(-p)
    elif cfg.reward_kind == "prob":
        score = p_positive.clone()
    else:
        raise ValueError(f"reward_kind must be logit or prob, got {cfg.reward_kind!r}")
    raw_score = score
    if normalizer is not None:
        normalizer.update(score)
        score = normalizer.normalize(score)
    if score_moments is not None:
        score_moments.update(score)

    batch = make_batch(queries, completions, pad_id, device)
    mask = batch["mask"]
    n, chunk = len(queries), max(1, chunk or cfg.batch_size or CPU_SIZES["train_micro_batch"])
    logprobs, ref_logprobs, values, entropy = [], [], [], []
    kl_logprobs = []  # the policy's log-probs for the KL: float32 (below); logprobs: the update's precision
    for start in range(0, n, chunk):
        part = select(batch, slice(start, start + chunk))
        with autocast():
            logits, v = model(part, cfg.temperature)
            exact = hardware.is_exact_float32(device)
        lp = token_logprobs(logits, part["completion_ids"])
        logprobs.append(lp)
        entropy.append(entropy_from_logits(logits))
        values.append(v)
        # the KL penalty compares two nearby models: float32, not bf16 (hardware.exact_float32);
        # the ratio's old log-probs stay in the update's precision, so it starts at 1
        with hardware.exact_float32(device):
            kl_logprobs.append(lp if exact else token_logprobs(
                model(part, cfg.temperature, with_values=False)[0], part["completion_ids"]))
            ref_hidden = completion_hidden(ref_model, part)
            ref_logits = ref_model.get_output_embeddings()(ref_hidden).float() / cfg.temperature
        ref_logprobs.append(token_logprobs(ref_logits, part["completion_ids"]))
    logprobs, ref_logprobs = torch.cat(logprobs) * mask, torch.cat(ref_logprobs) * mask
    values, entropy = torch.cat(values) * mask, torch.cat(entropy)
    kl = kl_per_token(torch.cat(kl_logprobs) * mask, ref_logprobs, cfg.kl_estimator) * mask
    batch.update(old_logprobs=logprobs, ref_logprobs=ref_logprobs, old_values=values, kl=kl,
                 score=score.to(device))

    stats = {
        # score: the reward before the KL penalty, on reward_kind's scale (logit: the classifier's
        # log-odds in nats; prob: p_positive); p_positive_mean the classifier's mean probability,
        # as eval/*/p_positive_mean.  Logged as train/rollout/* (``log_names``)
        "train/score_mean": float(raw_score.mean()),
        "train/score_std": float(raw_score.std()) if n > 1 else 0.0,
        "train/p_positive_mean": float(p_positive.mean()),
        "train/kl": float(kl.sum(1).mean()),
        "train/entropy": float(masked_mean(entropy, mask)),
        "train/completion_len": float(mask.sum(1).mean()),
        "train/completion_tokens": int(mask.sum()),
    }
    return batch, stats


# --------------------------------------------------------------------------- 2. advantages


@torch.no_grad()
def compute_advantages(batch: dict, kl_coef: float, cfg, score_moments: Optional[RunningMoments] = None) -> dict:
    """A rollout's rewards, advantages and returns, added to ``batch``; returns their statistics.

    Reward per token = -kl_coef * kl_t, plus the score at the last token; GAE (``gamma``, ``lam``)
    on those rewards and the rollout's values; advantages whitened over the rollout: centred, and
    divided by their std or the running std of the score (``score_moments``), whichever is larger,
    so a rollout whose samples all scored alike (advantages = the value model's error) is not
    rescaled into a unit-variance signal."""
    mask, kl, values = batch["mask"], batch["kl"], batch["old_values"]
    n = mask.shape[0]
    rewards = -kl_coef * kl
    last = (mask.sum(1).long() - 1).clamp(min=0)
    rewards[torch.arange(n, device=mask.device), last] += batch["score"]
    advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
    adv_std = float(masked_var(advantages, mask).sqrt())
    adv_scale = 1.0
    if cfg.whiten_advantages:
        # the floor: the score's own scale.  Without it a rollout in which every sample scored
        # alike had as advantages the value model's error (std ~0.003 on the exact toy,
        # tests/exact_toy.py), rescaled to std 1: a push on the right answer in a random
        # direction, which threw converged policies off their optimum (issue 21)
        floor = score_moments.std if score_moments is not None and score_moments.count > 1 else 0.0
        adv_scale = max(adv_std, floor)
        advantages = whiten(advantages, mask, min_std=floor)
    batch.update(rewards=rewards, advantages=advantages, returns=returns)
    return {
        # the KL-penalised return PPO maximises (score - coef * KL, summed over tokens)
        "train/penalized_return_mean": float((rewards * mask).sum(1).mean()),
        "train/kl_coef": kl_coef,
        "train/explained_variance": explained_variance(values, returns, mask),
        "train/advantage_std": adv_std,  # before whitening
        "train/advantage_scale": adv_scale,  # what whitening divided by
    }


# --------------------------------------------------------------------------- 3. the update


def ppo_update(model: PolicyWithValue, optimizer, batch: dict, cfg, generator: torch.Generator, *,
               chunk: Optional[int] = None, autocast=contextlib.nullcontext) -> dict:
    """``ppo_epochs`` passes over the rollout in ``num_minibatches`` shuffled minibatches: clipped
    policy loss + ``vf_coef`` * clipped value loss, gradient clipping, an optimizer step, within the
    trust region (``trust_region.TrustRegion``); returns mean statistics.  ``chunk`` and
    ``autocast`` as in ``rollout`` (the backward pass runs outside autocast)."""
    mask_all = batch["mask"]
    n, device = mask_all.shape[0], mask_all.device
    chunk = max(1, chunk or cfg.batch_size or CPU_SIZES["train_micro_batch"])
    batch = {**batch, "prompt_group": prompt_groups(batch)}
    # clipped apart: the policy's gradient as DPO's is (max_grad_norm on the policy alone), so the
    # value loss, large early in a run, does not scale down the policy's steps through a joint norm
    groups = [[p for p in part.parameters() if p.requires_grad] for part in (model.policy, model.value_modules())]
    keys = ("policy_loss", "value_loss", "clipfrac", "value_clipfrac", "approx_kl", "trust_kl")  # trust_kl last
    # statistics stay on the device until the end: reading one back (int(), float()) inside the
    # loop would make the CPU wait for the GPU at every chunk, where it could queue the next kernels
    totals = torch.zeros(len(keys), device=device)  # summed over optimiser steps
    trained_tokens = torch.zeros((), dtype=torch.long, device=device)
    steps, per_epoch = 0, 1
    trust = TrustRegion(model, groups[0], batch, cfg, chunk, autocast)
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(n, generator=generator).to(device)
        minibatches = torch.tensor_split(order, rollout_minibatches(cfg, n))
        per_epoch = len(minibatches)
        for mb in minibatches:
            optimizer.zero_grad(set_to_none=True)
            step_stats = minibatch_gradient(model, batch, mb, cfg, chunk, autocast, keys)
            trained_tokens += batch["attention_mask"][mb].sum()
            # the trust region reads this minibatch's trust_kl: where the steps so far moved the policy
            verdict = trust.check(mb, step_stats[-1])
            if verdict == TrustRegion.STOP:  # the update ends here, without this step
                break
            if verdict == TrustRegion.CUT_BACK:  # the step before was cut back: the gradient where the policy is now
                optimizer.zero_grad(set_to_none=True)
                step_stats = minibatch_gradient(model, batch, mb, cfg, chunk, autocast, keys)
            if cfg.max_grad_norm and cfg.max_grad_norm > 0:
                clip_apart(groups, cfg.max_grad_norm)
            trust.remember()
            optimizer.step()
            totals += step_stats
            steps += 1
        if trust.ended:
            break
    trust.finish(steps, minibatches[0])  # the last step, no minibatch measured it yet
    optimizer.zero_grad(set_to_none=True)
    stats = {f"train/{key}": float(value) / max(steps, 1) for key, value in zip(keys, totals)}
    stats.update(trust.stats())
    stats["train/ppo_epochs_done"] = steps / per_epoch  # fractional when early stopping cut an epoch
    stats["train/optimizer_steps"] = steps
    stats["train/trained_tokens"] = int(trained_tokens)
    return stats


def minibatch_gradient(model: PolicyWithValue, batch: dict, mb: torch.Tensor, cfg, chunk: int, autocast,
                       keys: tuple) -> torch.Tensor:
    """Forward and backward of minibatch ``mb`` in chunks, gradients accumulated to its token-mean
    loss; returns its statistics (``keys``), token-weighted, the trust statistic last."""
    mb_tokens = batch["mask"][mb].sum().clamp(min=1)
    step_stats = torch.zeros(len(keys), device=mb_tokens.device)
    trust_sums = []
    for start in range(0, len(mb), chunk):
        part = select(batch, mb[start: start + chunk])
        mask = part["mask"]
        weight = mask.sum() / mb_tokens  # chunk token mean -> minibatch token mean
        with autocast():
            logits, values = model(part, cfg.temperature)
        logprobs = token_logprobs(logits, part["completion_ids"])
        pg, clipfrac, approx_kl = policy_loss(logprobs, part["old_logprobs"], part["advantages"], mask, cfg.cliprange)
        vf, vf_clipfrac = value_loss(values, part["old_values"], part["returns"], mask, cfg.cliprange_value)
        ((pg + cfg.vf_coef * vf) * weight).backward()
        trust_sums.append(token_sums(logprobs.detach(), part["old_logprobs"], mask))
        step_stats[:-1] += torch.stack([pg.detach(), vf.detach(), clipfrac, vf_clipfrac, approx_kl]) * weight
    # the trust statistic is no token mean of chunks: per prompt over the whole minibatch
    groups = batch["prompt_group"][mb] if "prompt_group" in batch else None
    step_stats[-1] = trust_statistic(torch.cat(trust_sums), batch["mask"][mb].sum(1), groups)
    return step_stats


def clip_apart(groups: list[list[torch.Tensor]], max_norm: float) -> None:
    """``torch.nn.utils.clip_grad_norm_(group, max_norm)`` for each group of parameters, the same
    numbers (a test), in one pass: one foreach norm over every gradient, then each group scaled by
    min(1, max_norm / (its norm + 1e-6))."""
    grads = [[p.grad for p in group if p.grad is not None] for group in groups]
    flat = [g for part in grads for g in part]
    if not flat:
        return
    norms = torch._foreach_norm(flat, 2.0)  # what clip_grad_norm_ itself calls, per tensor
    start = 0
    for part in grads:
        if part:
            total = torch.linalg.vector_norm(torch.stack(norms[start: start + len(part)]), 2.0)
            start += len(part)
            torch._foreach_mul_(part, torch.clamp(max_norm / (total + 1e-6), max=1.0))


def make_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    """AdamW on ``param_groups``, fused (one kernel for all parameters, as transformers' Trainer's
    default ``adamw_torch_fused``) where the device has the fused kernel (CUDA, and CPU since torch
    2.4: 7x faster than the for-loop default on 40M CPU parameters), foreach otherwise."""
    groups = param_groups(model, cfg.weight_decay)
    try:
        return torch.optim.AdamW(groups, lr=cfg.lr, eps=cfg.adam_eps, fused=True)
    except RuntimeError:  # a device without the fused kernel
        return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, eps=cfg.adam_eps, foreach=True)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups with weight decay where transformers' Trainer (DPO's optimizer) puts it: not on
    biases or LayerNorm weights.  Decaying PPO's biases and not DPO's would confound the bias
    divergence the seed compares."""
    from transformers import Trainer

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not weight_decay:  # one group, as before this rule (a checkpoint's optimizer state still loads)
        return [{"params": [p for _, p in named], "weight_decay": 0.0}]
    decay = set(Trainer.get_decay_parameter_names(None, model))  # the Trainer's rule; it reads no state
    return [{"params": [p for n, p in named if n in decay], "weight_decay": weight_decay},
            {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0}]


# --------------------------------------------------------------------------- the log


# the rollout's statistics (``rollout``, ``compute_advantages``), logged as train/rollout/<name>: PPO's
# own, on its rollout batch; train/kl and train/p_positive_mean are the probe's, DPO's and PPO's alike
# (results.py)
ROLLOUT_STATS = ("score_mean", "score_std", "p_positive_mean", "penalized_return_mean", "kl", "entropy",
                 "explained_variance", "advantage_std", "advantage_scale", "completion_len", "completion_tokens")


def log_names(metrics: dict) -> dict:
    """An update's metrics under their logged names: ``train/<rollout stat>`` as
    ``train/rollout/<stat>`` (``ROLLOUT_STATS``), the rest as they are."""
    out = {}
    for key, value in metrics.items():
        name = key[len(R.TRAIN):] if key.startswith(R.TRAIN) else None
        out[R.ROLLOUT + name if name in ROLLOUT_STATS else key] = value
    return out
