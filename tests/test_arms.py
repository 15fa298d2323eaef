"""Issue 31: RLOO, GRPO (TRL's trainers) and online DPO as arms of the same sweep.

Config: the groups compose, every field has help, bad values and keys of another algorithm are
refused in one line, compute=matched gives every arm DPO's optimizer steps.  Online DPO with one
round is offline DPO bit for bit.  Known answers on the exact toy (tests/exact_toy.py): RLOO with
the KL in the reward reaches pi* = pi_ref exp(r / beta) / Z.  Slow: a trained policy of each new arm
beats the reference on the embedded default.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys

import pytest
import torch

import exact_toy as T
from conftest import compose_cfg
from dpo_ppo import config as C
from dpo_ppo import results as R
from dpo_ppo.config import ConfigError, field_help
from dpo_ppo.config.keys import check_keys
from dpo_ppo.config.schedule import arm, planned_optimizer_steps, swept_params

# ------------------------------------------------------------------ config


@pytest.mark.parametrize("name", ["rloo", "grpo"])
def test_the_groups_compose_with_help_on_every_field(name):
    cfg = C.load(compose_cfg([f"algorithm={name}"]))
    assert cfg.algorithm.name == name and type(cfg.algorithm).__name__.lower().startswith(name)
    for f in dataclasses.fields(type(cfg.algorithm)):
        assert field_help(type(cfg.algorithm), f.name), f.name
    assert swept_params(cfg)["arm"] == name


@pytest.mark.parametrize("overrides,key,words", [
    (["algorithm=grpo", "algorithm.loss_type=sapo"], "algorithm.loss_type", "grpo"),
    (["algorithm=rloo", "algorithm.beta=0"], "algorithm.beta", "> 0"),
    (["algorithm=rloo", "algorithm.num_completions=1"], "algorithm.num_completions", ">= 2"),
    (["algorithm=grpo", "algorithm.scale_rewards=std"], "algorithm.scale_rewards", "group"),
    (["algorithm.rounds=3"], "algorithm.rounds", "rounds x"),
    (["algorithm.rounds=2", "compute=matched", "compute.prefixes_per_step=512"], "algorithm.rounds",
     "compute.prefixes_per_step"),
])
def test_bad_values_are_refused_naming_the_key(overrides, key, words):
    with pytest.raises(ConfigError) as err:
        C.load(compose_cfg(overrides))
    assert err.value.key == key and words in str(err.value) and "\n" not in str(err.value)


def test_a_key_of_another_algorithm_is_refused_in_one_line():
    from hydra.errors import ConfigCompositionException

    with pytest.raises((ConfigError, ConfigCompositionException)) as err:
        cfg = compose_cfg(["algorithm=rloo", "+algorithm.kl_target=3"])
        check_keys(cfg)
    assert "algorithm.kl_target" in str(err.value) and "algorithm=ppo" in str(err.value)


def test_compute_matched_gives_every_arm_the_same_optimizer_steps():
    steps = {}
    for name in ("dpo", "ppo", "rloo", "grpo"):
        cfg = C.load(compose_cfg([f"algorithm={name}", "compute=matched", "compute.prefixes_per_step=8",
                                  "algorithm.examples=64"] + (["algorithm.rollout_prefixes=16"] if name == "ppo" else [])))
        steps[name] = planned_optimizer_steps(cfg)
    assert set(steps.values()) == {8}, steps
    online = C.load(compose_cfg(["algorithm.rounds=4", "compute=matched", "compute.prefixes_per_step=8",
                                 "algorithm.examples=64"]))
    assert planned_optimizer_steps(online) == 8 and arm(online.algorithm) == "online_dpo"
    ipo = C.load(compose_cfg(["algorithm.loss_type=ipo"]))
    assert arm(ipo.algorithm) == "ipo"


# ------------------------------------------------------------------ online DPO


def _dpo(**overrides):
    base = dict(examples=16, batch_size=4, num_completions=4, prefix_len=1, completion_len=T.LENGTH, lr=3e-3,
                beta=1.0, snapshot_every=8)
    base.update(overrides)
    return C.DPOAlgorithmConfig(**base)


class _ToyScorer:
    """The toy's reward as the prefs stage calls a scorer (it joins prompt and completion texts
    without a space: "t3" + "t0 t1 t2")."""

    def p_positive(self, texts):
        return T.reward_fn([" ".join(re.findall(r"t\d", t)) for t in texts])


def test_one_round_of_online_dpo_is_offline_dpo_bit_for_bit(tmp_path):
    """rounds=1 through train_online_dpo (the policy samples its own pairs) against the offline path
    (build_prefs from the reference, then train_dpo): the same pairs, the same weights, exactly."""
    from datasets import load_from_disk

    from dpo_ppo.data.prefs import build_prefs
    from dpo_ppo.train.dpo import train_dpo
    from dpo_ppo.train.online_dpo import train_online_dpo

    tok = T.tokenizer()
    ref = T.reference(tok)
    prompts = T.prompt_list(16)
    algo = _dpo()
    offline = T.trainable_copy(ref)
    build_prefs(algo, prompts, ref, tok, _ToyScorer(), tmp_path / "prefs", seed=3)
    pairs = load_from_disk(str(tmp_path / "prefs"))
    train_dpo(algo, offline, ref, tok, pairs, tmp_path / "offline", seed=3)
    online = T.trainable_copy(ref)
    summary = train_online_dpo(algo, online, ref, tok, _ToyScorer(), prompts, tmp_path / "online", seed=3)
    round_pairs = load_from_disk(str(tmp_path / "online" / "online" / "round_0" / "prefs"))
    for col in ("prompt_ids", "chosen_ids", "rejected_ids"):
        assert round_pairs[col] == pairs[col]
    moved = False
    for (name, a), (_, b) in zip(offline.named_parameters(), online.named_parameters()):
        assert torch.equal(a, b), name
        moved |= not torch.equal(a, dict(ref.named_parameters())[name])
    assert moved  # training did something
    assert summary["steps"] == 4 and summary["compute"]["examples_seen"] == 16


def test_online_dpo_resamples_from_the_policy_with_offline_steps(tmp_path):
    """Two rounds: round 1's pairs are the trained policy's samples (not the offline rows there),
    the run takes offline's 4 steps over 16 examples, snapshots count examples across rounds, and
    a relaunch after both rounds finds them done."""
    from datasets import load_from_disk

    from dpo_ppo.data.prefs import build_prefs
    from dpo_ppo.train.online_dpo import train_online_dpo

    tok = T.tokenizer()
    ref = T.reference(tok)
    prompts = T.prompt_list(16)
    algo = _dpo(rounds=2, lr=3e-2)
    policy = T.trainable_copy(ref)
    summary = train_online_dpo(algo, policy, ref, tok, _ToyScorer(), prompts, tmp_path, seed=0)
    assert summary["steps"] == 4 and [r["steps"] for r in summary["rounds"]] == [2, 2]
    build_prefs(algo, prompts, ref, tok, _ToyScorer(), tmp_path / "offline", seed=0)
    offline = load_from_disk(str(tmp_path / "offline"))
    r0 = load_from_disk(str(tmp_path / "online" / "round_0" / "prefs"))
    r1 = load_from_disk(str(tmp_path / "online" / "round_1" / "prefs"))
    assert r0["chosen_ids"] == offline["chosen_ids"][:8]  # the reference's samples, keyed alike
    samples = lambda d: [c for row in zip(d["chosen_ids"], d["rejected_ids"]) for c in row]  # noqa: E731
    assert samples(r1) != samples(offline)[16:]  # the moved policy sampled round 1
    assert sorted(p.name for p in (tmp_path / "snapshots").iterdir()) == ["ex_0000008", "ex_0000016"]
    again = T.trainable_copy(ref)
    resumed = train_online_dpo(algo, again, ref, tok, _ToyScorer(), prompts, tmp_path, seed=0)
    assert resumed["steps"] == 4
    for a, b in zip(policy.parameters(), again.parameters()):
        assert torch.equal(a, b)


# ------------------------------------------------------------------ known answers (exact toy)

# KL(pi || pi*) bound of PPO's known answers (test_known_answers.KL_BOUND)
KL_BOUND = 0.1


def check_rloo(beta: float, seed: int, tmp_path, steps: int, lr: float = 3e-3) -> dict:
    cfg = T.rl_config("rloo", beta=beta, examples=8 * steps, lr=lr)
    policy, _, ref_logp, summary = T.train_rl(cfg, tmp_path, seed=seed)
    m = T.measure(policy, ref_logp, beta)
    assert m["kl_to_opt_max"] < KL_BOUND, m
    assert m["j"] > m["j_ref"]  # beats the reference on the objective it optimises
    assert summary["compute"]["optimizer_steps"] == steps
    return m


def test_rloo_reaches_the_optimum_at_beta_1(tmp_path):
    check_rloo(1.0, 0, tmp_path, steps=75)


# REINFORCE's noise at a constant lr: at beta 0.3, lr 3e-3 ended 0.089-0.105 from pi* (seeds 0, 1);
# lr 1e-3 over 600 steps ends 0.0003-0.0004 (seeds 0-2, docs/kl_control.md)
GRID = {1.0: (3e-3, 300), 0.3: (1e-3, 600)}


@pytest.mark.slow
@pytest.mark.parametrize("beta,seed", [(b, s) for b in GRID for s in (0, 1, 2)])
def test_rloo_reaches_the_optimum(beta, seed, tmp_path):
    lr, steps = GRID[beta]
    check_rloo(beta, seed, tmp_path, steps=steps, lr=lr)


# ------------------------------------------------------------------ the embedded default (slow)


def _run(out, cache, *overrides):
    proc = subprocess.run([sys.executable, "-m", "dpo_ppo.main", f"hydra.run.dir={out}", f"cache_dir={cache}",
                           *overrides], capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["rloo", "grpo"])
def test_a_new_arm_beats_the_reference_on_the_embedded_default(name, tmp_path, default_cache):
    res = _run(tmp_path, default_cache, f"algorithm={name}", "analysis=fast", "logger=none")
    m = res["metrics"]
    assert res["status"] == "finished"
    assert m["eval/policy/binary_loss"] < m["eval/reference/binary_loss"]
    assert m["eval/policy/gradient_loss"] < m["eval/reference/gradient_loss"]
    assert m["eval/policy/kl_to_ref"] > 0
    assert res["compute"]["optimizer_steps"] == 32 and res["compute"]["generated_tokens"] > 0
    assert res["analysis"]["over_training"]  # the snapshots reached the over-training analyses


class _Kill(Exception):
    pass


def test_rloo_resumes_after_a_kill_from_its_trainer_checkpoint(tmp_path, monkeypatch):
    """A run killed after its step-4 checkpoint resumes there: the second attempt takes the
    remaining 4 of 8 steps (not 8), and snapshots and compute cover the whole run."""
    from transformers import TrainerCallback

    from dpo_ppo.train import rl

    class KillAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 6:
                raise _Kill()

    cfg = T.rl_config("rloo", examples=8 * 8, snapshot_every=32)  # a checkpoint every 4 steps
    tok = T.tokenizer()
    ref = T.reference(tok)
    real = rl.RLLogCallback
    monkeypatch.setattr(rl, "RLLogCallback", lambda *a: KillAt())
    with pytest.raises(_Kill):
        rl.train_rl(cfg, T.trainable_copy(ref), ref, tok, T.prompt_list(64), T.reward_fn, tmp_path)
    assert rl.last_complete_checkpoint(tmp_path / "rl_trainer").endswith("checkpoint-4")
    monkeypatch.setattr(rl, "RLLogCallback", real)
    logged = []
    policy = T.trainable_copy(ref)
    summary = rl.train_rl(cfg, policy, ref, tok, T.prompt_list(64), T.reward_fn, tmp_path,
                          log_fn=lambda m, examples: logged.append((examples, m.get(R.OPTIMIZER_STEP))))
    assert summary["resumed_from"].endswith("checkpoint-4")
    # steps 5-8 taken again, each logged at the examples (8 per step) and the optimizer steps its
    # samples' policy had (4-7)
    assert summary["steps"] == 8 and sorted(set(logged)) == [(32, 4), (40, 5), (48, 6), (56, 7)]
    assert sorted(p.name for p in (tmp_path / "snapshots").iterdir()) == ["ex_0000032", "ex_0000064"]
    assert summary["compute"]["examples_seen"] == 64


@pytest.mark.slow
def test_online_dpo_on_bradley_terry_pairs_ends_as_close_to_the_optimum_as_offline(tmp_path):
    """Pairs drawn Bradley-Terry (best of 2 under r + Gumbel noise, exact_toy.BradleyTerryScorer):
    DPO's population optimum with its beta is pi* whoever samples the pairs, so online DPO (4 rounds
    sampled by the policy) must end at least as close to pi* as offline DPO on the same budget (2048
    pairs, 4 epochs, 256 steps). Measured over seeds 0-7 (docs/kl_control.md): mean KL(pi || pi*)
    0.073 online, 0.076 offline, from the reference's 0.364; per seed either may win."""
    from dpo_ppo.train.online_dpo import train_online_dpo

    kl = {1: [], 4: []}
    for seed in range(8):
        for rounds in kl:
            tok = T.tokenizer()
            ref = T.reference(tok)
            ref_logp = T.sequence_logprobs(ref)
            algo = C.DPOAlgorithmConfig(examples=2048, batch_size=32, num_completions=2, prefix_len=1,
                                        completion_len=T.LENGTH, lr=3e-3, beta=1.0, epochs=4.0,
                                        snapshot_every=10 ** 9, rounds=rounds)
            policy = T.trainable_copy(ref)
            summary = train_online_dpo(algo, policy, ref, tok, T.BradleyTerryScorer(seed), T.prompt_list(2048),
                                       tmp_path / f"{seed}_{rounds}", seed=seed)
            assert summary["steps"] == 256
            kl[rounds].append(T.measure(policy.eval(), ref_logp, 1.0)["kl_to_opt"])
    offline, online = sum(kl[1]) / 8, sum(kl[4]) / 8
    assert online <= 1.25 * offline, kl
    assert max(offline, online) < T.measure(ref, ref_logp, 1.0)["ref_kl_to_opt"] / 3, kl
