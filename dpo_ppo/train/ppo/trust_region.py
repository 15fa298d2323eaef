"""The trust region (``early_stop_kl``, on by default): a bound on how far one update moves the
policy from the rollout's, kept by cutting steps back (TRPO's line search).

Before each optimizer step, the minibatch's ``trust_kl`` to the rollout policy (k3, or the sampled
token's Bernoulli KL(new || old) where that is larger) is read as a token mean per prompt and the
largest over the minibatch's prompts (``trust_statistic``); past the bound the step before is
halved until it keeps it (``backtrack``), and the update goes on with this minibatch's gradient
recomputed (``trust_region=shrink``, the default: every planned step is taken) or ends there
(``stop``).  ``TrustRegion`` holds that per-update state; the statistic itself comes free with the
minibatch's own forward pass (``loop``); a cut-back costs one or two extra no-grad forwards of the
minibatch, up to five (``backtrack``), and under ``shrink`` the minibatch's gradient again.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch

from dpo_ppo.train.ppo.losses import token_logprobs
from dpo_ppo.train.ppo.model import PolicyWithValue, select


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


def token_sums(logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per sample, ``trust_kl`` summed over the completion's tokens: what ``trust_statistic`` reads."""
    return (trust_kl(logprobs, old_logprobs) * mask).sum(1)


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
        sums.append(token_sums(token_logprobs(logits, part["completion_ids"]), part["old_logprobs"], part["mask"]))
    return trust_statistic(torch.cat(sums), mask_all.sum(1), batch.get("prompt_group"))


@torch.no_grad()
def backtrack(model: PolicyWithValue, params: list, before: list, batch: dict, check: torch.Tensor, cfg,
              chunk: int, autocast, stop: float) -> tuple[float, int]:
    """Backtrack along the last step (TRPO's line search): the largest of 1/2, 1/4, ...,
    1/2^BACKTRACK_STEPS of it whose trust statistic on minibatch ``check`` is within ``stop``, else
    undo it; returns (the fraction kept, the forwards it took).  On the exact toy (tests/exact_toy.py)
    one AdamW step at lr 3e-3 took the policy from 0.997 to 1e-5 on the right answer: ending the
    update after that step was too late, and undoing it whole froze a run whose every first step
    crossed the bound (issue 21).

    The statistic grows along the step (taken as monotone, as a KL from the step's start is near
    it), so the fractions that keep the bound are the smallest ones: 1/2 is tried first (a mild
    crossing: one forward), then the smallest (if even it crosses, the KL is older than this step,
    and the step is undone: two forwards), then bisection between them.  Halving in turn took one
    forward per halving: on the embedded default's trained base most cut-backs were undone, at 6
    forwards each (docs/performance.md)."""
    deltas = [p - b for p, b in zip(params, before)]
    forwards = 0

    def move(halvings: Optional[int]) -> None:  # to the step cut to 2^-halvings (None: undone)
        for p, b, d in zip(params, before, deltas):
            p.copy_(b if halvings is None else b + 0.5 ** halvings * d)

    def keeps(halvings: int) -> bool:
        nonlocal forwards
        forwards += 1
        move(halvings)
        return float(rollout_trust_kl(model, select(batch, check), cfg, chunk, autocast)) <= stop

    if keeps(1):
        return 0.5, forwards
    if BACKTRACK_STEPS == 1 or not keeps(BACKTRACK_STEPS):
        move(None)
        return 0.0, forwards
    crosses, kept = 1, BACKTRACK_STEPS  # halvings known to cross / to keep the bound
    while kept - crosses > 1:
        mid = (crosses + kept) // 2
        if keeps(mid):
            kept = mid
        else:
            crosses = mid
    move(kept)
    return 0.5 ** kept, forwards


class TrustRegion:
    """One update's trust region: ``check`` after each minibatch's gradient, ``remember`` before each
    optimizer step, ``finish`` after the last; ``stats`` for the update's log row.  Off (every
    method a no-op) when ``early_stop_kl`` is null."""

    KEEP, CUT_BACK, STOP = "keep", "cut_back", "stop"  # what ``check`` says of a minibatch

    def __init__(self, model: PolicyWithValue, params: list, batch: dict, cfg, chunk: int, autocast):
        self.model, self.params, self.batch, self.cfg, self.chunk, self.autocast = (
            model, params, batch, cfg, chunk, autocast)
        self.bound = cfg.early_stop_kl
        # trust_region=shrink (the default): a step that crossed the bound is cut back and the update
        # goes on, so every planned step is taken; stop: the update ends at the crossing
        self.shrink = self.bound is not None and getattr(cfg, "trust_region", "shrink") == "shrink"
        self.stopped, self.last_kl = False, 0.0
        self.before: Optional[list] = None  # the policy's weights before the last step
        self.crossing: Optional[torch.Tensor] = None  # stop: the minibatch that crossed the bound
        self.kept_fractions: list[float] = []  # one per cut-back step
        self.forwards = 0  # no-grad minibatch forwards the trust region added (its cost beside the recomputes)
        self.recomputes = 0  # minibatch gradients computed again after a cut-back (shrink)

    @property
    def ended(self) -> bool:
        """``stop`` ended the update at a crossing."""
        return self.stopped and not self.shrink

    def check(self, mb: torch.Tensor, trust_kl_now: torch.Tensor) -> str:
        """Minibatch ``mb``'s trust statistic (``trust_kl_now``, read with its gradient) measures where
        the steps taken so far moved the policy on samples of the rollout.  Past the bound: STOP
        (``stop``: the update ends here, without this step) or CUT_BACK (``shrink``: the step before
        was cut back until it keeps the bound; recompute this minibatch's gradient where the policy
        now is).  Reads the statistic back (a sync) only when the trust region is on."""
        if self.bound is None:
            return self.KEEP
        self.last_kl = float(trust_kl_now)
        if self.last_kl > self.bound and not self.shrink:
            self.stopped, self.crossing = True, mb
            return self.STOP
        if self.last_kl > self.bound and self.before is not None:
            self.kept_fractions.append(self._backtrack(mb))
            self.stopped = True
            self.recomputes += 1
            return self.CUT_BACK
        return self.KEEP

    def remember(self) -> None:
        """Before an optimizer step: the policy's weights, for a later cut-back of that step."""
        if self.bound is not None:
            self.before = [p.detach().clone() for p in self.params]

    def finish(self, steps: int, first: torch.Tensor) -> None:
        """After the update's last step, which no minibatch measured yet: checked on ``first`` (the
        last epoch's first minibatch) and cut back past the bound; ``stop``: the step before the
        crossing minibatch cut back."""
        if self.bound is not None and steps and (self.shrink or not self.stopped):
            self.last_kl = float(rollout_trust_kl(self.model, select(self.batch, first), self.cfg, self.chunk,
                                                  self.autocast))
            self.forwards += 1
            if self.last_kl > self.bound:
                self.stopped = True
                self.kept_fractions.append(self._backtrack(first))
        elif self.stopped and self.before is not None:
            self.kept_fractions.append(self._backtrack(self.crossing))

    def _backtrack(self, check: torch.Tensor) -> float:
        kept, forwards = backtrack(self.model, self.params, self.before, self.batch, check, self.cfg, self.chunk,
                                   self.autocast, self.bound)
        self.forwards += forwards
        return kept

    def stats(self) -> dict:
        return {
            "train/trust_kl_last": self.last_kl,  # the last check of the trust region (0 without it)
            "train/early_stopped": int(self.stopped),
            # 1, or what the trust region kept of the update's last step
            "train/last_step_kept": self.kept_fractions[-1] if self.kept_fractions else 1.0,
            "train/steps_cut_back": len(self.kept_fractions),  # steps the trust region cut back (shrink: any step)
            "train/trust_forwards": self.forwards,
            "train/trust_recomputes": self.recomputes,
        }
