"""GRPO's known answer on the exact toy (tests/exact_toy.py; docs/kl_control.md, "GRPO's fixed
point"): TRL 1.16's GRPO loss (beta x k3 per token in the loss, times the differentiable ratio of
``use_bias_correction_kl``; group-centred, by default group-scaled advantages) has a stationary
point that is not RLHF's pi* = pi_ref exp(r / beta) / Z: per state, pi(a|s) proportional to
pi_ref(a|s) exp(Q(s,a) / beta), Q the expected *group advantage* to go (``exact_toy.group_advantage``).

Fast: the solver's point makes the exact expected gradient of that loss vanish (enumerating the 27
completions) and pi* does not; the group advantage's expectation against a direct Monte Carlo of
TRL's formula; TRL's GRPOTrainer at beta 0.3 ends near the point, far from pi*.  Slow: the grid.
"""

from __future__ import annotations

import pytest
import torch

import exact_toy as T


@pytest.fixture(scope="module")
def toy():
    tok = T.tokenizer()
    ref = T.reference(tok)
    return ref, T.sequence_logprobs(ref)


def test_the_group_advantage_matches_a_monte_carlo_of_trls_formula():
    g = torch.Generator().manual_seed(0)
    values = torch.arange(4, dtype=torch.float64)
    probs = torch.tensor([0.05, 0.15, 0.3, 0.5], dtype=torch.float64)
    for scale in (True, False):
        exact = T.group_advantage(probs, values, 8, scale)
        draws = values[torch.multinomial(probs, 200_000 * 8, replacement=True, generator=g)].view(-1, 8)
        a = draws - draws.mean(1, keepdim=True)
        if scale:
            a = a / (draws.std(1, keepdim=True) + 1e-4)  # Bessel, as trl.trainer.utils.nanstd
        mc = torch.stack([a[draws == v].mean() for v in values])
        assert torch.allclose(exact, mc, atol=0.01), (scale, exact, mc)
    # unscaled, the sample's own share of the group mean leaves (G - 1) / G of the centred reward
    mean = float((probs * values).sum())
    assert torch.allclose(T.group_advantage(probs, values, 8, False), 7 / 8 * (values - mean))


def expected_grad(ref, seq_logp: torch.Tensor, name: str, beta: float, scale: bool) -> float:
    """The largest entry of the exact expected gradient, on tabular logits at every state, of TRL's
    GRPO loss (loss_type grpo, num_iterations 1, use_bias_correction_kl) for the policy whose
    completion log-probs are ``seq_logp``: E_y[(1/3) sum_t (-A w_t + beta k3_t w_t)], w_t the ratio
    pi / stop_grad(pi), A's expectation given the reward from ``group_advantage`` (written from the
    loss, independently of ``grpo_fixed_point``'s per-state solution)."""
    r = T.rewards()[name]
    values = torch.arange(T.LENGTH + 1, dtype=torch.float64)
    p_seq = seq_logp.exp()
    probs = torch.stack([p_seq[r == v].sum() for v in values])
    f = T.group_advantage(probs, values, 8, scale)
    # tabular logits z[prefix] initialised to the policy's conditionals
    prefixes = [tuple(y[:t]) for y in T.COMPLETIONS for t in range(T.LENGTH)]
    prefixes = sorted(set(prefixes), key=lambda p: (len(p), p))
    cond = {}
    for p in prefixes:
        mass = torch.stack([p_seq[[i for i, y in enumerate(T.COMPLETIONS) if tuple(y[:len(p) + 1]) == p + (a,)]].sum()
                            for a in range(T.WORDS)])
        cond[p] = (mass / mass.sum()).log()
    z = {p: cond[p].clone().requires_grad_(True) for p in prefixes}
    prompt = T.PROMPTS[name]
    loss = 0.0
    for i, y in enumerate(T.COMPLETIONS):
        a_hat = f[int(r[i])]
        for t in range(T.LENGTH):
            p = tuple(y[:t])
            logp = z[p].log_softmax(0)[y[t]]
            with torch.no_grad():
                ref_logits = ref(input_ids=torch.tensor([prompt + list(p)])).logits[0, -1, :T.WORDS].double()
                ref_logp = ref_logits.log_softmax(0)[y[t]]
            w = torch.exp(logp - logp.detach())
            k3 = torch.exp(ref_logp - logp) - (ref_logp - logp) - 1
            loss = loss + float(p_seq[i]) * (-a_hat * w + beta * k3 * w) / T.LENGTH
    loss.backward()
    return max(float(z[p].grad.abs().max()) for p in prefixes)


@pytest.mark.parametrize("scale_rewards", ["group", "none"])
def test_the_fixed_point_zeroes_the_expected_gradient_of_trls_loss(toy, scale_rewards):
    ref, ref_logp = toy
    beta = 0.3
    point = T.grpo_fixed_point(ref, beta, scale_rewards)
    star = T.optimum(ref_logp, beta)
    for name in T.PROMPTS:
        at_point = expected_grad(ref, point[name], name, beta, scale_rewards == "group")
        at_star = expected_grad(ref, star[name], name, beta, scale_rewards == "group")
        assert at_point < 1e-6 < 1e-3 < at_star, (name, at_point, at_star)


# KL(pi || point) bound, as PPO's and RLOO's known answers (test_arms.KL_BOUND): REINFORCE's noise at
# a constant lr keeps a trained policy off any fixed point by an amount that shrinks with the lr
# (docs/kl_control.md, "GRPO's fixed point")
KL_BOUND = 0.1


def check_grpo(beta: float, seed: int, tmp_path, steps: int, lr: float, bound: float, **fields) -> dict:
    cfg = T.rl_config("grpo", beta=beta, examples=8 * steps, lr=lr, **fields)
    policy, ref, ref_logp, summary = T.train_rl(cfg, tmp_path, seed=seed)
    m = {**T.measure(policy, ref_logp, beta), **T.measure_grpo(policy, ref, cfg)}
    assert summary["compute"]["optimizer_steps"] == steps
    assert m["kl_to_fixed_max"] < bound, m
    assert m["kl_to_fixed"] < m["kl_to_opt"] / 2, m  # nearer the derived point than RLHF's pi*
    return m


def test_grpo_ends_near_its_fixed_point_not_the_rlhf_optimum(tmp_path):
    """beta 0.3, the group's std (the defaults): the point has p(target) 0.998, pi* 0.820 (0.17-0.18
    nats from where GRPO ends); at lr 2e-3 over 300 steps seeds 0-3 ended 0.021-0.043 from the point
    on the worse prompt (at lr 3e-3 over 150, seed 1 ended 0.13 away: not yet converged)."""
    m = check_grpo(0.3, 0, tmp_path, steps=300, lr=2e-3, bound=KL_BOUND)
    assert m["kl_to_ref"] > m["opt_kl_to_ref"] + 0.5, m  # overshoots pi*'s KL, as the point does (3.25 vs 2.42)


# lr and steps where the distance is far below the bound (group, seeds 0-2: 0.006-0.008 on the worse
# prompt; none, seed 0: 0.0048, where 1200 steps left seeds 1-2 at 0.009-0.010 and only 2.3x nearer the
# point than pi*, the two being 0.022 apart)
GRID = {"group": (1e-3, 1200), "none": (5e-4, 2400)}


@pytest.mark.slow
@pytest.mark.parametrize("scale_rewards,seed", [(s, seed) for s in GRID for seed in (0, 1, 2)])
def test_grpo_ends_at_its_fixed_point(scale_rewards, seed, tmp_path):
    lr, steps = GRID[scale_rewards]
    check_grpo(0.3, seed, tmp_path, steps=steps, lr=lr, bound=0.03, scale_rewards=scale_rewards)
