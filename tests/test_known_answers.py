"""Issue 21: PPO and DPO against closed-form answers on an enumerable toy (``exact_toy``).

For a KL coefficient beta the RLHF objective E[r] - beta KL(pi || pi_ref) has the unique optimum
pi* = pi_ref exp(r / beta) / Z with value beta log Z; every completion of the toy is enumerable, so
KL(pi || pi*) of the trained policy and J(pi) are exact numbers, compared with stated bounds.
The tables in docs/kl_control.md ("Known answers") come from ``benchmarks/known_answers.py``,
which runs these same settings.
"""

from __future__ import annotations

import pytest

import exact_toy as T

# updates of 8 prompts x 8 samples (4 epochs x 4 minibatches), lr 3e-3, kl_coef fixed: 200 in the
# default suite (beta 0.1, ~25 s on an idle core), 300 in the slow grid
UPDATES = 200
# KL(pi || pi*) bound (nats, the worse of the two prompts) and the share of the possible gain
# J(pi) - J(pi_ref) of beta log Z - J(pi_ref) that a run must reach; J(pi) = beta log Z - beta KL(pi || pi*).
# Measured (docs/kl_control.md, "Known answers", the trust region per prompt): see the table there, over
# beta {1, 0.3, 0.1} x seeds {0..4} at 300 updates; the old defaults ended at 10, the trust region on
# the minibatch's token mean at 0.59 (beta 0.1 / seed 2, k3) and 0.11 (seed 4, max(k3, Bernoulli)).
KL_BOUND, GAIN_BOUND = 0.1, 0.95


def check_ppo(beta: float, seed: int, tmp_path, updates: int = UPDATES) -> dict:
    cfg = T.ppo_config(kl_coef=beta, examples=8 * updates)
    policy, _, ref_logp, _ = T.train(cfg, tmp_path, seed=seed)
    m = T.measure(policy, ref_logp, beta)
    assert m["kl_to_opt_max"] < KL_BOUND, m
    assert m["gain"] > GAIN_BOUND, m
    assert abs(m["j"] - m["j_star"]) < beta * KL_BOUND, m  # the identity, checked on the numbers
    return m


def test_ppo_reaches_the_optimum_at_small_beta(tmp_path):
    """beta 0.1: pi* puts 0.9997 on one completion per prompt, where the old defaults (whitening
    to unit variance, no trust region) threw the policy off its optimum (issue 21)."""
    m = check_ppo(0.1, 0, tmp_path)
    assert min(m["p_target"].values()) > 0.99


# beta 0.1 also at seeds 3 and 4: seed 2 (a rare wrong sample pushing down a prefix the right answer
# shares, update 299) and seed 4 (one prompt moved 0.029 nats by the last update) left their optimum
# while the trust region read the minibatch's token mean; it reads the largest prompt mean now
GRID = [(beta, seed) for beta in (1.0, 0.3, 0.1) for seed in (0, 1, 2)] + [(0.1, 3), (0.1, 4)]


@pytest.mark.slow
@pytest.mark.parametrize("beta,seed", GRID)
def test_ppo_reaches_the_optimum(beta, seed, tmp_path):
    check_ppo(beta, seed, tmp_path, updates=300)


@pytest.mark.slow
@pytest.mark.parametrize("target", [0.5, 2.0])
def test_log_controller_ends_at_the_beta_whose_optimum_has_the_target_kl(target, tmp_path):
    """The log controller's coefficient ends near beta*(T), the coefficient whose optimum has
    KL(pi* || pi_ref) = T, and the policy's exact KL to the reference near T."""
    cfg = T.ppo_config(kl_target=target, init_kl_coef=1.0, examples=8 * 300)
    policy, _, ref_logp, summary = T.train(cfg, tmp_path, seed=0)
    beta_star = T.beta_for_kl(ref_logp, target)
    m = T.measure(policy, ref_logp, beta_star)
    assert beta_star / 1.5 < summary["kl_coef"] < beta_star * 1.5, (summary["kl_coef"], beta_star)
    assert target / 1.3 < m["kl_to_ref"] < target * 1.3, m


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_dpo_moves_toward_the_same_optimum(seed, tmp_path):
    """Pairs from a Bradley-Terry model of r, completions drawn from pi_ref: DPO's population
    optimum with its beta is the same pi*.  With 2048 finite pairs (4 epochs, lr 3e-3, the project's
    train_dpo through TRL's DPOTrainer) the trained policy must cut the reference's KL to pi* to
    less than a third and reach more than 60% of the possible gain."""
    beta = 1.0
    policy, _, ref_logp, _ = T.train_dpo(beta, 2048, tmp_path, seed=seed)
    m = T.measure(policy, ref_logp, beta)
    assert m["kl_to_opt"] < m["ref_kl_to_opt"] / 3, m
    assert m["gain"] > 0.6, m
