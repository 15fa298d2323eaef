"""PPO for RLHF with an adaptive KL target, in one file, readable top to bottom.

TRL no longer ships a PPO trainer, and the last one it shipped had no adaptive KL target; this is
ours, after CleanRL's ``ppo.py`` and "The N Implementation Details of RLHF with PPO" (Huang et al.,
2024).  One *update* is:

1. rollout: take ``rollout_prefixes`` prefixes, repeat each ``num_completions`` times, sample a
   completion for each (``temperature``, ``top_k``, at most ``completion_len`` new tokens, ending at
   EOS), and score ``prefix + completion`` as text with ``reward_fn`` (p_positive from a classifier
   with its own tokenizer: only text crosses that border).
2. one no-grad forward of policy (+ values) and of the frozen reference over the rollout gives
   per-token log-probs; reward per token = -kl_coef * kl_t, plus the score at the last token.
3. GAE (``gamma``, ``lam``) on those rewards and values, advantages whitened over the rollout:
   centred, and divided by their std or the running std of the score, whichever is larger.
4. ``ppo_epochs`` passes over the rollout in ``num_minibatches`` shuffled minibatches: clipped
   policy loss + ``vf_coef`` * clipped value loss, gradient clipping, AdamW; within a trust region
   (``early_stop_kl``, on by default): before each step, the minibatch's ``trust_kl`` to the
   rollout policy (k3, or the sampled token's Bernoulli KL(new || old) where that is larger) is
   read, as a token mean per prompt and the largest over the minibatch's prompts
   (``trust_statistic``); past the bound, the step before is halved until it keeps it, and the
   update goes on with this minibatch's gradient recomputed (``trust_region=shrink``, the default:
   every planned step is taken) or ends there (``stop``).
5. the KL controller moves ``kl_coef`` toward ``kl_target``: by default ``LogKLController`` (a PI
   controller on log kl_coef, gain tied to the run's updates); ``ZieglerKLController`` (Ziegler et al.
   2019, old TRL's, the paper presets); or ``kl_coef`` fixed (``FixedKLController``, no target).

Batch layout.  A rollout is one tensor ``[prefix (left-padded to P) | completion (right-padded to
C)]``, so completion token ``t`` of every row sits at column ``P + t`` and is predicted from column
``P + t - 1``; all per-token tensors are ``[N, C]`` with ``mask`` marking real completion tokens
(EOS included, padding after it excluded).  Position ids come from the attention mask, exactly as
``generate`` sets them for left-padded prompts.

``cfg.batch_size`` (when null, the hardware's ``train_micro_batch``) is the most sequences one
forward/backward pass takes: scoring passes are chunked by it and a larger minibatch accumulates
gradients over chunks of it (the loss stays the token mean over the whole minibatch).  Generation
runs the whole rollout as one batch.

Log-probs are of the temperature-scaled policy; they ignore ``top_k`` truncation and the ban on an
EOS as first token (``generate`` asks for at least one new token), as RLHF PPO usually does.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import random
import shutil
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn

from dpo_ppo import results as R
from dpo_ppo.config.schedule import kl_controller_name, rollout_minibatches
from dpo_ppo.runtime.progress import tqdm  # plain lines when stderr is not a terminal

from dpo_ppo.runtime import hardware
from dpo_ppo.runtime.divergence import check_weights
from dpo_ppo.runtime.hardware import CPU_SIZES
from dpo_ppo.train.probe import due
from dpo_ppo.train.sampling import generate, model_device, pad_batch, pad_token_id
from dpo_ppo.data.snapshots import replace_dir, save_model_dir, snapshot_dir

# --------------------------------------------------------------------------- pure functions


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance of the entries where mask is 1."""
    mean = masked_mean(x, mask)
    n = mask.sum()
    return ((x - mean) ** 2 * mask).sum() / (n - 1).clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor, min_std: float = 0.0) -> torch.Tensor:
    """(x - mean) / max(std, min_std) over the masked entries (unbiased variance); masked-out entries
    become 0.  ``min_std`` keeps a rollout whose entries nearly agree from being blown up to unit
    variance (PPO passes the running std of the score: see ``rollout``)."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    return (x - mean) * torch.rsqrt(torch.clamp(var, min=min_std ** 2) + 1e-8) * mask


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the time axis of ``[N, T]`` tensors.

    The episode ends at the last masked-in step (no bootstrap after it).  Returns (advantages,
    returns) with returns = advantages + values, both zero where mask is 0.
    """
    mask = mask.to(rewards.dtype)
    values = values * mask
    rewards = rewards * mask
    T = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        if t + 1 < T:
            next_value, next_mask = values[:, t + 1], mask[:, t + 1]
        else:
            next_value, next_mask = torch.zeros_like(last), torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * next_mask * last
        advantages[:, t] = last
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, cliprange: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clipped surrogate, token mean.  Returns (loss, clip fraction, approx KL old->new).

    approx KL is the k3 estimator mean((r - 1) - log r), r = p_new / p_old (CleanRL's ``approx_kl``).
    """
    logratio = logprobs - old_logprobs
    ratio = torch.exp(logratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).float(), mask)
        approx_kl = masked_mean((ratio - 1) - logratio, mask)
    return loss, clipfrac, approx_kl


def sampled_token_kl(logprobs: torch.Tensor, old_logprobs: torch.Tensor) -> torch.Tensor:
    """Per token, KL(new || old) between the two Bernoulli distributions "the sampled token, or any
    other": p log(p / q) + (1 - p) log((1 - p) / (1 - q)), p = p_new, q = p_old of the sampled token.

    By the data-processing inequality it is a lower bound of the whole next-token distribution's
    KL(new || old) at that position, read from the sampled token's two log-probs alone (no old
    logits kept).  The trust region bounds it beside k3 (``trust_kl``): k3 (``policy_loss``'s approx
    KL) alone misses exactly the move that threw converged policies off their optimum (issue 21): when a
    near-certain token loses mass to tokens the rollout never sampled, e.g. 0.9998 -> 0.8, k3 reads
    (r - 1) - log r = 0.023 (its balancing terms sit on the unsampled tokens) while the true
    KL(new || old) is about 1.2 nats; this reads 1.2.  For moderate probabilities the two agree
    (0.5 -> 0.55: 0.0050 here, 0.0047 for k3)."""
    logprobs, old_logprobs = logprobs.float().clamp(max=0), old_logprobs.float().clamp(max=0)
    p = logprobs.exp()

    def log1m(logx):  # log(1 - x) from log x, accurate near x = 0 and x = 1
        return torch.where(logx > -0.693, torch.log((-torch.expm1(logx)).clamp(min=1e-30)),
                           torch.log1p(-logx.exp()))

    return (p * (logprobs - old_logprobs) + (1 - p) * (log1m(logprobs) - log1m(old_logprobs))).clamp(min=0)


def trust_kl(logprobs: torch.Tensor, old_logprobs: torch.Tensor) -> torch.Tensor:
    """Per token, what the trust region bounds: the larger of k3 = (r - 1) - log r (an estimate of
    KL(old || new), CleanRL's approx KL) and ``sampled_token_kl`` (a lower bound of KL(new || old)),
    so a move is bounded in both directions: k3 is the larger where a token gains probability
    (0.3 -> 0.45: 0.095 against 0.050), the Bernoulli bound where a near-certain one loses it."""
    logratio = logprobs.float() - old_logprobs.float()
    return torch.maximum((logratio.exp() - 1) - logratio, sampled_token_kl(logprobs, old_logprobs))


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               mask: torch.Tensor, cliprange_value: float) -> tuple[torch.Tensor, torch.Tensor]:
    """0.5 * token mean of max((v - R)^2, (v_clipped - R)^2), v_clipped within +-cliprange_value of
    the rollout's value.  Returns (loss, clip fraction)."""
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    losses = (values - returns) ** 2
    losses_clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(losses, losses_clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((losses_clipped > losses).float(), mask)
    return loss, clipfrac


def kl_per_token(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || ref) at sampled tokens.

    k1: log p - log q;  k3: (r - 1) - log r with r = q / p (never negative, lower variance).
    """
    logr = ref_logprobs - logprobs
    if estimator == "k1":
        return -logr
    if estimator == "k3":
        return torch.expm1(logr) - logr
    raise ValueError(f"kl_estimator must be k1 or k3, got {estimator!r}")


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(returns - values) / Var(returns) over masked entries (nan if returns are constant)."""
    var_returns = masked_var(returns, mask)
    if var_returns <= 0:
        return float("nan")
    return float(1 - masked_var(returns - values, mask) / var_returns)


# --------------------------------------------------------------------------- KL coefficient


class ZieglerKLController:
    """Ziegler et al. (2019), as in old TRL (``kl_controller=ziegler``, the paper presets):
    e = clip(KL / target - 1, -0.2, 0.2), coef *= 1 + e * n / horizon.

    The coefficient moves by at most 20% x samples/horizon per update, so a run much shorter than
    the horizon cannot reach its target: with targets under the KL the run drifts to, the error sits
    at the +0.2 clip and different targets give the same run.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]


class LogKLController:
    """A PI controller on log(coef) (``kl_controller=log``, the default), gain tied to run length.

    error    e = clip(log(KL / target), -0.5, 1)   (log space: 2x over is +0.69, 2x under -0.69)
    integral I <- I + k_i * e                       (unless KL already moves toward the target)
    coef       = exp(I + k_p * e)

    ``k_i = min(1, ln(range) / (settle * updates))``: the coefficient can cross a factor ``range``
    (100) within the first ``settle`` (25%) of the run's updates, whatever its length, so a short
    run reaches its target and a long one moves smoothly; ``k_p = k_i`` damps the overshoot of a
    pure integrator.  ``gain`` overrides k_i.  Three guards, each from a run on the embedded
    default: the first rollout is skipped (the policy still is the reference, so its KL is 0 and
    says nothing); the integral holds while KL is already moving toward the target (anti-windup:
    KL rises within one update but falls over several, and an integrator that kept pushing while
    it fell wound the coefficient from 0.2 to 1600); and the error is clipped at -0.5 below, 1
    above, so the coefficient falls at half the speed it rises (below a high target KL is noisy,
    each dip integrated the coefficient down, and from 0.007 it took several updates to climb back
    once KL crossed 16: the run overshot to 22.6).
    """

    RANGE, SETTLE = 100.0, 0.25

    def __init__(self, init_kl_coef: float, target: float, updates: int, gain: Optional[float] = None):
        self.target = float(target)
        self.k_i = float(gain) if gain else min(1.0, math.log(self.RANGE) / (self.SETTLE * max(1, updates)))
        self.k_p = self.k_i
        self.integral = math.log(init_kl_coef)
        self.value = float(init_kl_coef)
        self.last_kl: Optional[float] = None

    def update(self, current_kl: float, n_steps: int) -> None:
        previous, self.last_kl = self.last_kl, current_kl
        if previous is None:  # the first rollout: the policy is the reference
            return
        error = min(max(math.log(max(current_kl, 1e-6) / self.target), -0.5), 1.0)
        toward = (error > 0 and current_kl < previous) or (error < 0 and current_kl > previous)
        if not toward:
            self.integral += self.k_i * error
        self.value = math.exp(self.integral + self.k_p * error)

    def state_dict(self) -> dict:
        return {"value": self.value, "integral": self.integral, "last_kl": self.last_kl}

    def load_state_dict(self, state: dict) -> None:
        self.value, self.integral, self.last_kl = state["value"], state["integral"], state["last_kl"]


class FixedKLController:
    """A constant KL coefficient (``kl_coef=X``): the direct analogue of DPO's beta."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]


def make_kl_controller(cfg, updates: int):
    name = kl_controller_name(cfg)
    if name == "fixed":
        return FixedKLController(cfg.kl_coef)
    if name == "ziegler":
        return ZieglerKLController(cfg.init_kl_coef, cfg.kl_target, cfg.kl_horizon)
    if name == "log":
        return LogKLController(cfg.init_kl_coef, cfg.kl_target, updates, getattr(cfg, "kl_gain", None))
    raise ValueError(f"kl_controller must be log or ziegler, got {name!r}")


class RunningMoments:
    """Running mean and std of every score seen so far (Chan et al. parallel update)."""

    def __init__(self):
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, x: torch.Tensor) -> None:
        x = x.double().flatten()
        n, mean = x.numel(), float(x.mean())
        m2 = float(((x - mean) ** 2).sum())
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta ** 2 * self.count * n / total
        self.count = total

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else 1.0

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / (self.std + 1e-8)

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.mean, self.m2 = state["count"], state["mean"], state["m2"]


# --------------------------------------------------------------------------- models


class PolicyWithValue(nn.Module):
    """The policy LM plus a scalar value head.

    ``shared``: the head reads the policy's final hidden state (one trunk pass gives logits and
    values).  ``separate``: the head reads its own trainable copy of the reference trunk.
    """

    def __init__(self, policy, ref_model, value_model: str = "shared"):
        super().__init__()
        self.policy = policy
        self.value_trunk = None
        if value_model == "separate":
            self.value_trunk = copy.deepcopy(ref_model.base_model).requires_grad_(True)
        elif value_model != "shared":
            raise ValueError(f"value_model must be shared or separate, got {value_model!r}")
        hidden = policy.config.get_text_config().hidden_size
        self.value_head = nn.Linear(hidden, 1).to(model_device(policy))
        nn.init.normal_(self.value_head.weight, std=1.0 / math.sqrt(hidden + 1))
        nn.init.zeros_(self.value_head.bias)

    def value_modules(self) -> nn.ModuleList:
        """What the value loss trains besides the policy: the head, and the trunk when separate."""
        return nn.ModuleList([m for m in (self.value_trunk, self.value_head) if m is not None])

    def value_state_dict(self) -> dict:
        state = {"head": self.value_head.state_dict()}
        if self.value_trunk is not None:
            state["trunk"] = self.value_trunk.state_dict()
        return state

    def load_value_state_dict(self, state: dict) -> None:
        self.value_head.load_state_dict(state["head"])
        if self.value_trunk is not None:
            self.value_trunk.load_state_dict(state["trunk"])

    def forward(self, batch: dict, temperature: float = 1.0, with_values: bool = True):
        """Logits [n, C, V] (divided by temperature) for the completion positions, and values [n, C]."""
        hidden = completion_hidden(self.policy, batch)
        logits = self.policy.get_output_embeddings()(hidden).float() / temperature
        values = None
        if with_values:
            if self.value_trunk is not None:
                hidden = completion_hidden(self.value_trunk, batch, is_trunk=True)
            with torch.autocast(device_type=hidden.device.type, enabled=False):  # a float32 head under autocast too
                values = self.value_head(hidden.float()).squeeze(-1)
        return logits, values


def completion_hidden(model, batch: dict, is_trunk: bool = False) -> torch.Tensor:
    """Final hidden states [n, C, H] at the positions that predict the completion tokens."""
    trunk = model if is_trunk else model.base_model
    out = trunk(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                position_ids=batch["position_ids"])
    P, C = batch["prefix_width"], batch["mask"].shape[1]
    return out.last_hidden_state[:, P - 1: P + C - 1]


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[tokens] without materialising the full log-softmax."""
    return logits.gather(-1, tokens[..., None]).squeeze(-1) - logits.logsumexp(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    probs = torch.softmax(logits, -1)
    return logits.logsumexp(-1) - (probs * logits).sum(-1)


def make_batch(queries: list[list[int]], completions: list[list[int]], pad_id: int, device) -> dict:
    """[left-padded prefix | right-padded completion] ids, attention mask, position ids, mask."""
    q_ids, q_mask = pad_batch(queries, pad_id, left=True)
    c_ids, c_mask = pad_batch(completions, pad_id, left=False)
    attention_mask = torch.cat([q_mask, c_mask], 1)
    position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
    return {"input_ids": torch.cat([q_ids, c_ids], 1).to(device),
            "attention_mask": attention_mask.to(device), "position_ids": position_ids.to(device),
            "completion_ids": c_ids.to(device), "mask": c_mask.float().to(device),
            "prefix_width": q_ids.shape[1]}


def select(batch: dict, idx) -> dict:
    """Rows ``idx`` of a batch (tensors indexed, other entries kept)."""
    return {k: (v[idx] if torch.is_tensor(v) else v) for k, v in batch.items()}


# --------------------------------------------------------------------------- rollout


@torch.no_grad()
def rollout(model: PolicyWithValue, ref_model, tokenizer, queries: list[list[int]], reward_fn,
            cfg, kl_coef: float, normalizer: Optional[RunningMoments], *, chunk: Optional[int] = None,
            autocast=contextlib.nullcontext, static_cache: bool = False,
            score_moments: Optional[RunningMoments] = None) -> tuple[dict, dict]:
    """Sample, score, and compute per-token rewards, advantages and returns for one update.

    ``chunk``: sequences per forward pass (default ``cfg.batch_size``); ``autocast``: the context
    factory the forward passes run in (``Runtime.autocast``: bf16 autocast or nothing).
    ``score_moments``: running moments of every score the run has fed into rewards; whitening
    divides the advantages by max(their std, its std), so a rollout whose samples all scored alike
    (advantages = the value model's error) is not rescaled into a unit-variance signal."""
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
    rewards = -kl_coef * kl
    last = (mask.sum(1).long() - 1).clamp(min=0)
    rewards[torch.arange(n, device=device), last] += score.to(device)
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
    batch.update(old_logprobs=logprobs, ref_logprobs=ref_logprobs, old_values=values, kl=kl,
                 rewards=rewards, advantages=advantages, returns=returns)

    seq_kl = kl.sum(1)
    stats = {
        # score: the reward before the KL penalty, on reward_kind's scale (logit: the classifier's
        # log-odds in nats; prob: p_positive); p_positive_mean the classifier's mean probability,
        # as eval/*/p_positive_mean; the KL-penalised return PPO maximises (score - coef * KL,
        # summed over tokens) has its own name.  Logged as train/rollout/* (``log_names``)
        "train/score_mean": float(raw_score.mean()),
        "train/score_std": float(raw_score.std()) if n > 1 else 0.0,
        "train/p_positive_mean": float(p_positive.mean()),
        "train/penalized_return_mean": float((rewards * mask).sum(1).mean()),
        "train/kl": float(seq_kl.mean()),
        "train/kl_coef": kl_coef,
        "train/entropy": float(masked_mean(entropy, mask)),
        "train/explained_variance": explained_variance(values, returns, mask),
        "train/advantage_std": adv_std,  # before whitening
        "train/advantage_scale": adv_scale,  # what whitening divided by
        "train/completion_len": float(mask.sum(1).mean()),
        "train/completion_tokens": int(mask.sum()),
    }
    return batch, stats


# --------------------------------------------------------------------------- optimisation


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


BACKTRACK_STEPS = 6  # halvings of a step that crossed early_stop_kl before it is undone (1/64 is left)


def prompt_groups(batch: dict) -> torch.Tensor:
    """Per sample, an index of its prompt: samples whose (left-padded) prefix ids are equal share it."""
    prefix = batch["input_ids"][:, :batch["prefix_width"]]
    return torch.unique(prefix, dim=0, return_inverse=True)[1]


def trust_statistic(sums: torch.Tensor, tokens: torch.Tensor, groups: Optional[torch.Tensor]) -> torch.Tensor:
    """What the trust region compares with early_stop_kl, from per-sample sums of ``trust_kl`` over
    the completion's tokens, per-sample token counts and per-sample prompt indices
    (``prompt_groups``): the largest over prompts of the token mean of one prompt's samples, TRPO's
    bound on the largest KL over states with prompts as the states (without ``groups``: the token
    mean over all samples).  A token mean over the whole minibatch dilutes a large move on one
    prompt by the samples of the others: on the exact toy (tests/exact_toy.py, beta 0.1) one update
    took a prompt's p(target) from 0.9998 to 0.9953 (KL(pi || pi*) 0.0002 -> 0.11) while the
    minibatch mean stayed at the bound, 0.02, and that prompt's own mean read 0.043 (issue 21)."""
    tokens = tokens.to(sums.dtype)
    if groups is None:
        return sums.sum() / tokens.sum().clamp(min=1)
    same = (groups[:, None] == groups[None, :]).to(sums.dtype)  # samples x samples: no read-back, no sync
    return ((same @ sums) / (same @ tokens).clamp(min=1)).max()  # each sample's prompt mean; the largest


@torch.no_grad()
def rollout_trust_kl(model: PolicyWithValue, batch: dict, cfg, chunk: int, autocast=contextlib.nullcontext) -> torch.Tensor:
    """The trust region's measure of how far the current policy moved from the rollout's on
    ``batch``: ``trust_statistic`` of ``trust_kl``."""
    mask_all = batch["mask"]
    n = mask_all.shape[0]
    sums = []
    for start in range(0, n, chunk):
        part = select(batch, slice(start, start + chunk))
        with autocast():
            logits, _ = model(part, cfg.temperature, with_values=False)
        kl = trust_kl(token_logprobs(logits, part["completion_ids"]), part["old_logprobs"])
        sums.append((kl * part["mask"]).sum(1))
    return trust_statistic(torch.cat(sums), mask_all.sum(1), batch.get("prompt_group"))


def _accumulate(model: PolicyWithValue, batch: dict, mb: torch.Tensor, mb_tokens: torch.Tensor, cfg, chunk: int,
                autocast, keys: tuple) -> torch.Tensor:
    """Forward and backward of minibatch ``mb`` in chunks, gradients accumulated to its token-mean
    loss; returns its statistics (``keys``), token-weighted."""
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
        trust_sums.append((trust_kl(logprobs.detach(), part["old_logprobs"]) * mask).sum(1))
        step_stats[:-1] += torch.stack([pg.detach(), vf.detach(), clipfrac, vf_clipfrac, approx_kl]) * weight
    # the trust statistic is no token mean of chunks: per prompt over the whole minibatch (keys end with it)
    groups = batch["prompt_group"][mb] if "prompt_group" in batch else None
    step_stats[-1] = trust_statistic(torch.cat(trust_sums), batch["mask"][mb].sum(1), groups)
    return step_stats


@torch.no_grad()
def _backtrack(model: PolicyWithValue, params: list, before: list, batch: dict, check: torch.Tensor, cfg,
               chunk: int, autocast, stop: float) -> float:
    """Backtrack along the last step (TRPO's line search), halving it until the trust statistic on
    minibatch ``check`` is within ``stop``, else undo it; returns the fraction kept.  On the exact
    toy (tests/exact_toy.py) one AdamW step at lr 3e-3 took the policy from 0.997 to 1e-5 on the
    right answer: ending the update after that step was too late, and undoing it whole froze a run
    whose every first step crossed the bound (issue 21)."""
    kept = 1.0
    deltas = [p - b for p, b in zip(params, before)]
    for _ in range(BACKTRACK_STEPS):
        kept /= 2
        for p, b, d in zip(params, before, deltas):
            p.copy_(b + kept * d)
        if float(rollout_trust_kl(model, select(batch, check), cfg, chunk, autocast)) <= stop:
            return kept
    for p, b in zip(params, before):
        p.copy_(b)
    return 0.0


def ppo_update(model: PolicyWithValue, optimizer, batch: dict, cfg, generator: torch.Generator, *,
               chunk: Optional[int] = None, autocast=contextlib.nullcontext) -> dict:
    """``ppo_epochs`` epochs of shuffled minibatches over one rollout; returns mean statistics.
    ``chunk`` and ``autocast`` as in ``rollout`` (the backward pass runs outside autocast)."""
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
    steps, per_epoch, stopped, last_kl, before, check = 0, 1, False, 0.0, None, None
    stop = cfg.early_stop_kl
    # trust_region=shrink (the default): a step that crossed the bound is cut back and the update
    # goes on, so every planned step is taken; stop: the update ends at the crossing
    shrink = stop is not None and getattr(cfg, "trust_region", "shrink") == "shrink"
    kept_fractions: list[float] = []
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(n, generator=generator).to(device)
        minibatches = torch.tensor_split(order, rollout_minibatches(cfg, n))
        per_epoch = len(minibatches)
        for mb in minibatches:
            optimizer.zero_grad(set_to_none=True)
            step_stats = _accumulate(model, batch, mb, mask_all[mb].sum().clamp(min=1), cfg, chunk, autocast, keys)
            trained_tokens += batch["attention_mask"][mb].sum()
            # the trust region: this minibatch's ``trust_kl`` (token mean) measures where
            # the steps taken so far moved the policy on samples of the rollout; past early_stop_kl
            # the last step is cut back until it keeps the bound, and the update ends here, without
            # this step (stop), or goes on with this minibatch's gradient recomputed where the
            # policy now is (shrink).  Read back, a sync, only when early stopping is on
            if stop is not None:
                last_kl = float(step_stats[keys.index("trust_kl")])
                if last_kl > stop and not shrink:
                    stopped, check = True, mb
                    break
                if last_kl > stop and before is not None:
                    kept_fractions.append(_backtrack(model, groups[0], before, batch, mb, cfg, chunk, autocast, stop))
                    stopped = True
                    optimizer.zero_grad(set_to_none=True)
                    step_stats = _accumulate(model, batch, mb, mask_all[mb].sum().clamp(min=1), cfg, chunk,
                                             autocast, keys)
            if cfg.max_grad_norm and cfg.max_grad_norm > 0:
                for group in groups:
                    torch.nn.utils.clip_grad_norm_(group, cfg.max_grad_norm)
            if stop is not None:
                before = [p.detach().clone() for p in groups[0]]
            optimizer.step()
            totals += step_stats
            steps += 1
        if stopped and not shrink:
            break
    if stop is not None and steps and (shrink or not stopped):  # the last step, no minibatch measured it yet
        check = minibatches[0]
        last_kl = float(rollout_trust_kl(model, select(batch, check), cfg, chunk, autocast))
        if last_kl > stop:
            stopped = True
            kept_fractions.append(_backtrack(model, groups[0], before, batch, check, cfg, chunk, autocast, stop))
    elif stopped and before is not None:  # stop: the step before the crossing minibatch
        kept_fractions.append(_backtrack(model, groups[0], before, batch, check, cfg, chunk, autocast, stop))
    step_kept = kept_fractions[-1] if kept_fractions else 1.0
    optimizer.zero_grad(set_to_none=True)
    stats = {f"train/{key}": float(value) / max(steps, 1) for key, value in zip(keys, totals)}
    stats["train/trust_kl_last"] = last_kl  # the last check of the trust region (0 without early stop)
    stats["train/early_stopped"] = int(stopped)
    stats["train/last_step_kept"] = step_kept  # 1, or what the trust region kept of the update's last step
    stats["train/steps_cut_back"] = len(kept_fractions)  # steps the trust region cut back (shrink: any step)
    stats["train/ppo_epochs_done"] = steps / per_epoch  # fractional when early stopping cut an epoch
    stats["train/optimizer_steps"] = steps
    stats["train/trained_tokens"] = int(trained_tokens)
    return stats


# --------------------------------------------------------------------------- checkpoints


# the rollout's statistics (``rollout``), logged as train/rollout/<name>: PPO's own, on its rollout
# batch; train/kl and train/p_positive_mean are the probe's, DPO's and PPO's alike (results.py)
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


def save_snapshot(policy, tokenizer, out_dir: Path, examples: int) -> Path:
    """The policy LM alone (no value head), loadable with from_pretrained."""
    return save_model_dir(policy, tokenizer, snapshot_dir(out_dir, examples))


def _rng_state() -> dict:
    """The RNG states as tensors and plain values only, so that ``load_state`` reads them with
    ``weights_only=True`` (numpy's state holds an ndarray: kept as a tensor of its words)."""
    kind, words, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [kind, torch.from_numpy(np.asarray(words, dtype=np.int64)), int(pos), int(has_gauss),
                       float(gauss)]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, words, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, words.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(out_dir: Path, state: dict) -> None:
    """Everything needed to resume, written to a temporary folder and moved into place."""
    final = out_dir / "ppo_state"
    tmp = out_dir / "ppo_state.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    torch.save(state, tmp / "state.pt")
    replace_dir(tmp, final)


class UnsafeState(ValueError):
    """A resume state file that holds more than tensors and plain values: refused, never run."""


def load_state(out_dir: Path) -> Optional[dict]:
    """The saved state, or None; falls back to ``ppo_state.old`` if a crash hit mid-replace.
    Read with ``weights_only=True``: a job folder may be shared (a cluster's scratch, a copied
    sweep), and a pickle that names any other object (code to run) is refused, not executed."""
    import pickle

    for name in ("ppo_state", "ppo_state.old"):
        path = out_dir / name / "state.pt"
        if path.exists():
            try:
                return torch.load(path, map_location="cpu", weights_only=True)
            except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise UnsafeState(
                    f"{path} holds more than tensors and plain values (or was written by an older version); "
                    f"refused, not loaded ({first[:200]}). Delete {path.parent} or run with force=true "
                    f"to train from scratch") from None
    return None


# --------------------------------------------------------------------------- training


def train_ppo(cfg, policy, ref_model, tokenizer, prompts: list[list[int]], reward_fn, out_dir, *,
              seed: int = 0, log_fn: Optional[Callable[[dict, int], None]] = None, runtime=None,
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
    ``cfg.snapshot_every``) and at the end, at the prefixes consumed after the update.  ``runtime`` (``dpo_ppo.runtime.hardware.Runtime``) gives the forward/backward chunk size
    when ``cfg.batch_size`` is null, and bf16 autocast when its precision is bf16.  Returns a
    summary of the run.
    """
    chunk = cfg.batch_size or (runtime.train_micro_batch if runtime is not None else CPU_SIZES["train_micro_batch"])
    autocast = runtime.autocast if runtime is not None else contextlib.nullcontext
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
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, eps=cfg.adam_eps)
    kl_ctl = make_kl_controller(cfg, updates=math.ceil(total / cfg.rollout_prefixes))
    normalizer = RunningMoments() if cfg.normalize_reward else None
    score_moments = RunningMoments()  # the scores fed into rewards: the whitening floor (rollout)
    generator = torch.Generator().manual_seed(seed)  # minibatch shuffling
    layout = {"examples": total, "rollout_prefixes": cfg.rollout_prefixes,
              "num_completions": cfg.num_completions, "value_model": cfg.value_model}
    examples, updates, wall_before, last_snapshot, resumed_from = 0, 0, 0.0, -1, None
    # what the run cost, for comparisons at matched compute; kl_history: train/kl of every update
    compute = {"optimizer_steps": 0, "examples_seen": 0, "trained_tokens": 0, "generated_tokens": 0}
    kl_history: list[float] = []
    all_cut = 0  # updates whose trust region cut back every step it took (lr too large for the bound)

    state = load_state(out_dir)
    if state is not None:
        if state["layout"] != layout:
            raise ValueError(f"{out_dir / 'ppo_state'} was written by a run with {state['layout']}, "
                             f"not {layout}; use a fresh out_dir")
        policy.load_state_dict(state["policy"])
        model.load_value_state_dict(state["value"])
        optimizer.load_state_dict(state["optimizer"])
        kl_ctl.load_state_dict(state["kl_controller"])
        compute, kl_history = state["compute"], state["kl_history"]
        if normalizer is not None and state["normalizer"] is not None:
            normalizer.load_state_dict(state["normalizer"])
        if state.get("score_moments") is not None:
            score_moments.load_state_dict(state["score_moments"])
        generator.set_state(state["generator"])
        _set_rng_state(state["rng"])
        examples, updates = state["examples"], state["updates"]
        all_cut = state.get("updates_all_cut_back", 0)
        wall_before, last_snapshot = state["wall_s"], state["last_snapshot"]
        resumed_from = examples
        logging.getLogger(__name__).info("ppo: resuming from %s at %d of %d examples (update %d)",
                                         out_dir / "ppo_state", examples, total, updates)

    def checkpoint() -> None:
        save_state(out_dir, {
            "layout": layout, "policy": policy.state_dict(), "value": model.value_state_dict(),
            "optimizer": optimizer.state_dict(), "kl_controller": kl_ctl.state_dict(),
            "compute": compute, "kl_history": kl_history,
            "normalizer": normalizer.state_dict() if normalizer is not None else None,
            "score_moments": score_moments.state_dict(),
            "generator": generator.get_state(), "rng": _rng_state(), "examples": examples,
            "updates": updates, "updates_all_cut_back": all_cut, "wall_s": wall_before + time.time() - t_start,
            "last_snapshot": last_snapshot})

    t_start = time.time()
    metrics: dict = {}
    bar = tqdm(total=total, initial=examples, unit="ex", desc="ppo", dynamic_ncols=True)
    probe_every = probe_every or cfg.snapshot_every
    if probe is not None and log_fn is not None and examples == 0:  # the reference (not again on resume)
        log_fn({**probe(policy), R.EXAMPLES: 0}, 0)
    while examples < total:
        t0 = time.time()
        prefixes = prompts[examples: examples + cfg.rollout_prefixes]
        queries = [list(p) for p in prefixes for _ in range(cfg.num_completions)]
        kl_coef = kl_ctl.value
        batch, metrics = rollout(model, ref_model, tokenizer, queries, reward_fn, cfg, kl_coef, normalizer,
                                 chunk=chunk, autocast=autocast,
                                 static_cache=bool(runtime is not None and runtime.static_cache),
                                 score_moments=score_moments)
        kl_ctl.update(metrics["train/kl"], len(queries))
        t1 = time.time()
        metrics.update(ppo_update(model, optimizer, batch, cfg, generator, chunk=chunk, autocast=autocast))
        before = examples
        examples += len(prefixes)
        updates += 1
        kl_history.append(metrics["train/kl"])
        compute["optimizer_steps"] += metrics["train/optimizer_steps"]
        compute["examples_seen"] += len(prefixes)
        compute["trained_tokens"] += metrics["train/trained_tokens"]
        compute["generated_tokens"] += metrics["train/completion_tokens"]
        t2 = time.time()
        metrics["train/rollout_s"], metrics["train/optimize_s"] = t1 - t0, t2 - t1
        metrics["train/tokens_per_s"] = metrics["train/completion_tokens"] / (t2 - t0)
        metrics["train/examples"] = before  # the policy the rollout measured had seen `before`
        metrics["train/kl_coef_next"] = kl_ctl.value
        steps_taken = metrics["train/optimizer_steps"]
        if steps_taken and metrics["train/steps_cut_back"] >= steps_taken:
            all_cut += 1
            if all_cut == 1:  # once; the count goes to the log, train/updates_all_cut_back and the summary
                logging.getLogger(__name__).warning(
                    "ppo: the trust region (early_stop_kl=%g) cut back all %d steps of update %d; the policy "
                    "barely moves when every step is cut (likely algorithm.lr=%g is too large)",
                    cfg.early_stop_kl, steps_taken, updates, cfg.lr)
        metrics["train/updates_all_cut_back"] = all_cut
        if log_fn is not None:
            log_fn(log_names(metrics), before)
            if probe is not None and (due(examples, before, probe_every) or examples >= total):
                log_fn({**probe(policy), R.EXAMPLES: examples}, examples)
        # a step to non-finite weights fails in the next rollout's sampling with no word of why
        check_weights(list(policy.parameters()) + list(model.value_modules().parameters()), examples,
                      knob=f"algorithm.lr={cfg.lr:g}")
        bar.update(len(prefixes))
        bar.set_postfix(score=f"{metrics['train/score_mean']:.3f}", kl=f"{metrics['train/kl']:.2f}",
                        coef=f"{kl_coef:.3f}")
        if examples // cfg.snapshot_every > (examples - len(prefixes)) // cfg.snapshot_every:
            save_snapshot(policy, tokenizer, out_dir, examples)
            last_snapshot = examples
            checkpoint()
    bar.close()
    if all_cut:
        logging.getLogger(__name__).warning("ppo: the trust region cut back every step in %d of %d updates", all_cut,
                                            updates)
    if last_snapshot != examples:
        save_snapshot(policy, tokenizer, out_dir, examples)
        last_snapshot = examples
        checkpoint()
    policy.train(was_training)
    tail = kl_history[-max(1, len(kl_history) // 4):]
    return {"examples": examples, "updates": updates, "kl_coef": kl_ctl.value,
            "kl_controller": kl_controller_name(cfg), "kl_recent": sum(tail) / max(1, len(tail)),
            "compute": compute, "updates_all_cut_back": all_cut,
            "wall_s": wall_before + time.time() - t_start, "resumed_from": resumed_from,
            "snapshot_dir": str(out_dir / "snapshots"), **metrics}
