"""PPO for RLHF with an adaptive KL target: our trainer, as a small package.

TRL no longer ships a PPO trainer, and the last one it shipped had no adaptive KL target; this is
ours, after CleanRL's ``ppo.py`` and "The N Implementation Details of RLHF with PPO" (Huang et al.,
2024).  One *update* is:

1. rollout (``loop.rollout``): take ``rollout_prefixes`` prefixes, repeat each ``num_completions``
   times, sample a completion for each and score ``prefix + completion`` as text with
   ``reward_fn``; one no-grad forward of policy (+ values) and of the frozen reference over the
   rollout gives per-token log-probs and the KL to the reference.
2. advantages (``loop.compute_advantages``): reward per token = -kl_coef * kl_t, plus the score at
   the last token; GAE (``gamma``, ``lam``) on those rewards and values, advantages whitened over
   the rollout: centred, and divided by their std or the running std of the score, whichever is
   larger.
3. the update (``loop.ppo_update``): ``ppo_epochs`` passes over the rollout in ``num_minibatches``
   shuffled minibatches: clipped policy loss + ``vf_coef`` * clipped value loss, gradient clipping,
   AdamW; within a trust region (``early_stop_kl``, on by default; ``trust_region``): past the
   bound, a step is cut back until it keeps it, and the update goes on (``trust_region=shrink``,
   the default) or ends there (``stop``).
4. the KL controller (``controllers``) moves ``kl_coef`` toward ``kl_target``: by default
   ``LogKLController`` (a PI controller on log kl_coef, gain tied to the run's updates);
   ``ZieglerKLController`` (Ziegler et al. 2019, old TRL's, the paper presets); or ``kl_coef`` fixed
   (``FixedKLController``, no target).

Modules: ``loop`` (``train_ppo``, the main loop, top to bottom as above), ``losses`` (losses, GAE,
whitening, estimators: pure functions), ``controllers``, ``trust_region``, ``model`` (policy with
value head, the batch layout), ``state`` (snapshots, the resume state).  The public names are
importable from here.
"""

from dpo_ppo.train.ppo.controllers import (FixedKLController, LogKLController, ZieglerKLController,
                                           make_kl_controller)
from dpo_ppo.train.ppo.losses import (RunningMoments, entropy_from_logits, explained_variance, gae, kl_per_token,
                                      masked_mean, masked_var, policy_loss, token_logprobs, value_loss, whiten)
from dpo_ppo.train.ppo.loop import (ROLLOUT_STATS, clip_apart, compute_advantages, log_names, make_optimizer,
                                    minibatch_gradient, param_groups, ppo_update, rollout, train_ppo)
from dpo_ppo.train.ppo.model import PolicyWithValue, completion_hidden, make_batch, select
from dpo_ppo.train.ppo.state import (Progress, UnsafeState, load_state, rng_state, save_snapshot, save_state,
                                     set_rng_state)
from dpo_ppo.train.ppo.trust_region import (BACKTRACK_STEPS, TrustRegion, backtrack, prompt_groups,
                                            rollout_trust_kl, sampled_token_kl, token_sums, trust_kl,
                                            trust_statistic)

__all__ = [
    "BACKTRACK_STEPS", "FixedKLController", "LogKLController", "PolicyWithValue", "Progress", "ROLLOUT_STATS",
    "RunningMoments", "TrustRegion", "UnsafeState", "ZieglerKLController", "backtrack", "clip_apart",
    "completion_hidden", "compute_advantages", "entropy_from_logits", "explained_variance", "gae", "kl_per_token",
    "load_state", "log_names", "make_batch", "make_kl_controller", "make_optimizer", "masked_mean", "masked_var",
    "minibatch_gradient", "param_groups", "policy_loss", "ppo_update", "prompt_groups", "rng_state", "rollout",
    "rollout_trust_kl", "sampled_token_kl", "save_snapshot", "save_state", "select", "set_rng_state",
    "token_logprobs", "token_sums", "train_ppo", "trust_kl", "trust_statistic", "value_loss", "whiten",
]
