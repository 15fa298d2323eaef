"""What a config implies beyond its keys: the schedule ``compute=matched`` rewrites, the optimizer
steps a job plans, the KL controller PPO runs, and the swept hyperparameters results.json records
(``params``), whether a job is online DPO and the shared artifacts it reads.  Pure functions of
the typed config: no torch."""

from __future__ import annotations

import math

from dpo_ppo import results as R

# TRL's on-policy trainers (dpo_ppo/train/rl.py): batch_size prefixes per generation, one optimizer
# step per pass over it
ON_POLICY_TRL = ("rloo", "grpo")


def apply_compute(cfg) -> None:
    """Rewrite the algorithm's schedule in place for ``compute.mode=matched`` (after the checks)."""
    compute = getattr(cfg, "compute", None)
    if compute is None or compute.mode != "matched":
        return
    algo, n = cfg.algorithm, compute.prefixes_per_step
    if algo.name == "dpo":
        algo.batch_size, algo.epochs = n, 1.0
    elif algo.name in ON_POLICY_TRL:  # one step per n prefixes, one pass over each generation
        algo.batch_size, algo.num_iterations = n, 1
    else:  # every planned step is taken: trust_region=shrink (the default; stop is refused here)
        algo.ppo_epochs, algo.num_minibatches = 1, algo.rollout_prefixes // n


def planned_optimizer_steps(cfg) -> int:
    """The optimizer steps the job's schedule takes (PPO: all of them under trust_region=shrink,
    the default; with stop, the trust region may end an update before its last)."""
    algo = cfg.algorithm
    if algo.name == "dpo":  # the Trainer's max_steps: ceil(epochs x steps per epoch)
        return math.ceil(math.ceil(algo.examples / algo.batch_size) * algo.epochs)
    if algo.name in ON_POLICY_TRL:  # one generation per step, reused num_iterations times
        return math.ceil(algo.examples / algo.batch_size) * algo.num_iterations
    full, rest = divmod(algo.examples, algo.rollout_prefixes)
    last = rollout_minibatches(algo, rest * algo.num_completions) if rest else 0
    return (full * algo.num_minibatches + last) * algo.ppo_epochs


def rollout_minibatches(cfg, samples: int) -> int:
    """Minibatches of a rollout of ``samples``: ``num_minibatches`` for a full rollout, and for the
    last, partial one (examples not a multiple of rollout_prefixes) as many of the same size as it
    fills (ceil), as DPO's last batch is one step: so compute=matched gives both the same steps."""
    full = cfg.rollout_prefixes * cfg.num_completions
    return max(1, min(samples, math.ceil(samples * cfg.num_minibatches / full)))


def kl_controller_name(cfg) -> str:
    """fixed when ``kl_coef`` is set, else ``kl_controller`` (log | ziegler)."""
    return "fixed" if getattr(cfg, "kl_coef", None) is not None else cfg.kl_controller


def is_online_dpo(algo) -> bool:
    """Whether the job of ``algo`` (a typed algorithm config) is online DPO: its pairs resampled by
    the policy every round (``results.online_dpo``: dpo with rounds > 1)."""
    return R.online_dpo(algo.name, getattr(algo, "rounds", 1))


def artifacts_read(algo) -> tuple:
    """The shared artifacts (``results.SharedArtifact``) a job of ``algo`` reads: online DPO reads
    no pairs made before it (it samples its own)."""
    return R.shared_artifacts(algo.name, getattr(algo, "rounds", 1))


def arm(algo) -> str:
    """The arm a job is (``results.ARMS``): its trainer, and for DPO its data and loss: online_ when
    its pairs are resampled by the policy (rounds > 1), ipo for loss_type=ipo (dpo_<loss> for
    TRL's other DPO losses)."""
    if algo.name != "dpo":
        return algo.name
    loss = "dpo" if algo.loss_type == "sigmoid" else "ipo" if algo.loss_type == "ipo" else f"dpo_{algo.loss_type}"
    return f"online_{loss}" if is_online_dpo(algo) else loss


def swept_params(cfg) -> dict:
    """The hyperparameters a sweep varies, flat (results.json ``params``, ``results.PARAM_KEYS``):
    for W&B grouping and the report."""
    algo = cfg.algorithm
    ppo = algo.name == "ppo"
    controller = kl_controller_name(algo) if ppo else None
    return {
        "algorithm": algo.name, "arm": arm(algo),
        "rounds": getattr(algo, "rounds", None), "loss_type": getattr(algo, "loss_type", None),
        "beta": getattr(algo, "beta", None),
        "kl_target": getattr(algo, "kl_target", None) if controller != "fixed" else None,
        "kl_coef": getattr(algo, "kl_coef", None), "kl_controller": controller,
        "value_model": getattr(algo, "value_model", None) if ppo else None,
        "compute": cfg.compute.mode if cfg.compute is not None else "native",
        "optimizer_steps": planned_optimizer_steps(cfg),
        "seed": cfg.seed, "examples": algo.examples,
        "lr": algo.lr, "num_completions": algo.num_completions, "prefix_len": algo.prefix_len,
        "prefix_len_max": algo.prefix_len_max, "completion_len": algo.completion_len,
        "model": cfg.model.name, "data": cfg.data.name, "classifier": cfg.classifier.name,
    }
