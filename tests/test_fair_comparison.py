"""Issue 8: runs land where asked and on equal terms: keyed (paired) evaluation sampling, exact
token pairs for DPO, matched compute, the scorer's max_length check, compute records."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import compose_cfg
from dpo_ppo.config import ConfigError, load, planned_optimizer_steps
from dpo_ppo.train.sampling import KeyedGumbelSampler, generate, keyed_uniform, sample_keys


# ----------------------------------------------------------------------------- keyed sampling


def test_keyed_uniform_is_a_function_of_key_step_and_column():
    a = keyed_uniform(torch.tensor([5, 9]), 3, 50)
    b = keyed_uniform(torch.tensor([9]), 3, 50)
    assert torch.equal(a[1], b[0])  # the row does not depend on its batch-mates
    assert not torch.equal(a[0], a[1]) and not torch.equal(a, keyed_uniform(torch.tensor([5, 9]), 4, 50))
    u = keyed_uniform(torch.arange(64), 0, 4096).flatten()
    assert 0 < float(u.min()) and float(u.max()) < 1
    assert float(u.mean()) == pytest.approx(0.5, abs=0.005)
    assert float(u.var()) == pytest.approx(1 / 12, abs=0.002)


def test_gumbel_sampler_draws_from_the_softmax():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, -3.0])
    temperature = 0.7
    n = 20000
    sampler = KeyedGumbelSampler(torch.arange(n), prompt_width=0, temperature=temperature)
    picks = sampler(torch.zeros(n, 0, dtype=torch.long), logits.expand(n, -1)).argmax(-1)
    freq = torch.bincount(picks, minlength=5).float() / n
    expected = torch.softmax(logits / temperature, -1)
    # binomial standard error is at most 0.0036 at n = 20000; allow 4 of them
    torch.testing.assert_close(freq, expected, atol=0.015, rtol=0)
    top2 = KeyedGumbelSampler(torch.arange(2000), 0, top_k=2)(torch.zeros(2000, 0, dtype=torch.long),
                                                                logits.expand(2000, -1)).argmax(-1)
    assert set(top2.tolist()) == {0, 1}


def _word_model():
    from test_ppo import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    return tiny_model(tok), tok


def test_keyed_generate_ignores_batching_and_the_global_rng():
    model, tok = _word_model()
    prompts = [[4, 5, 6], [7, 8], [9, 10, 11, 12], [13], [5, 5, 5, 5, 5]]
    keys = sample_keys(3, range(len(prompts)))
    torch.manual_seed(0)
    whole = generate(model, tok, prompts, 12, batch_size=5, desc=None, keys=keys)
    torch.manual_seed(99)
    torch.rand(1000)
    split = generate(model, tok, prompts, 12, batch_size=2, desc=None, keys=keys)
    alone = generate(model, tok, prompts[2:3], 12, batch_size=1, desc=None, keys=keys[2:3])
    assert whole == split and alone[0] == whole[2]
    other_seed = generate(model, tok, prompts, 12, batch_size=5, desc=None, keys=sample_keys(4, range(5)))
    assert other_seed != whole
    # unkeyed sampling follows torch's RNG (what evaluation did before)
    torch.manual_seed(1)
    a = generate(model, tok, prompts, 12, batch_size=5, desc=None)
    torch.manual_seed(2)
    assert a != generate(model, tok, prompts, 12, batch_size=5, desc=None)


def test_evaluation_is_the_same_whatever_ran_before_and_keeps_a_row_per_prompt(tmp_path):
    from test_ppo import share_of_target

    from dpo_ppo import results as R
    from dpo_ppo.evaluate import evaluate_model

    model, tok = _word_model()
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))

    class Scorer:
        def logits(self, texts):
            p = share_of_target(texts).clamp(1e-4, 1 - 1e-4)
            return torch.log(p) - torch.log1p(-p)

    cfg = compose_cfg(["eval.num_prompts=6", "eval.completion_len=10", "eval.batch_size=4"]).eval
    prompts = [[4 + i, 5, 6 + i] for i in range(6)]
    torch.manual_seed(0)
    m1, rows1 = evaluate_model(model, tok, Scorer(), prompts, cfg, ref_model=ref, desc=None)
    torch.manual_seed(12345)
    torch.randn(777)
    m2, rows2 = evaluate_model(model, tok, Scorer(), prompts, cfg, ref_model=ref, desc=None)
    assert m1 == m2 and rows1 == rows2
    assert [r["prompt_id"] for r in rows1] == list(range(6))
    assert m1["kl_to_ref"] == pytest.approx(sum(r["kl"] for r in rows1) / 6)
    assert m1["p_positive_mean"] == pytest.approx(sum(r["p_positive"] for r in rows1) / 6)
    R.write_eval_rows(tmp_path / "rows.csv", rows1)
    back = R.read_eval_rows(tmp_path / "rows.csv")
    assert (tmp_path / "rows.csv").read_text().splitlines()[0] == ",".join(R.EVAL_ROW_COLUMNS)
    assert back["completion_len"] == [r["completion_len"] for r in rows1]
    assert back["kl"] == pytest.approx([r["kl"] for r in rows1], rel=1e-5)


# ----------------------------------------------------------------------------- DPO on sampled tokens


def test_dpo_trains_on_the_sampled_token_ids(tmp_path):
    """Pairs keep the reference's exact tokens: no EOS added to a completion cut at the length
    limit, no shifted prompt/completion split (the prompt here ends mid-'word' for BPE: with a
    word-level tokenizer, ids that decode to text that re-encodes differently)."""
    from datasets import Dataset
    from trl import DPOConfig

    from dpo_ppo.train.dpo import TokenDPOTrainer

    model, tok = _word_model()
    eos = tok.eos_token_id
    pairs = Dataset.from_dict({"prompt": ["x"], "chosen": ["y"], "rejected": ["z"],
                               "prompt_ids": [[4, 5, 6]], "chosen_ids": [[7, 8, 9]],
                               "rejected_ids": [[10, eos]]})
    args = DPOConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, max_length=32,
                     per_device_train_batch_size=1)
    trainer = TokenDPOTrainer(model=model, ref_model=copy.deepcopy(model), args=args, train_dataset=pairs,
                              processing_class=tok)
    row = trainer.train_dataset[0]
    assert (row["prompt_ids"], row["chosen_ids"], row["rejected_ids"]) == ([4, 5, 6], [7, 8, 9], [10, eos])


# ----------------------------------------------------------------------------- config


def test_scorer_must_read_prefix_plus_completion():
    with pytest.raises(ConfigError, match=r"classifier\.max_length.*prefix \+ algorithm\.completion_len = 41"):
        load(compose_cfg(["classifier.max_length=40"]))
    with pytest.raises(ConfigError, match=r"classifier\.max_length.*eval\.completion_len = 125"):
        load(compose_cfg(["classifier.max_length=100", "eval.completion_len=100"]))
    # the confound sweep's longest jobs fit the embedded classifier, the paper's run 1 fits gpt2_imdb
    load(compose_cfg(["algorithm.prefix_len=50", "algorithm.completion_len=100"], tiny=False))
    load(compose_cfg(["experiment=paper_run1", "model=pythia70m", "classifier=gpt2_imdb"], tiny=False))
    with pytest.raises(ConfigError, match="classifier.max_length"):
        load(compose_cfg(["experiment=paper_run1", "model=pythia70m", "classifier=gpt2_imdb",
                              "classifier.max_length=256"], tiny=False))


def test_matched_compute_gives_both_algorithms_the_same_steps():
    native = {a: compose_cfg([f"algorithm={a}"], tiny=False) for a in ("dpo", "ppo")}
    # native: 512 pairs / 16 per step = 32 DPO steps; 32 rollouts x 4 epochs x 4 minibatches = 512 PPO steps
    assert planned_optimizer_steps(native["dpo"]) == 32 and planned_optimizer_steps(native["ppo"]) == 512
    matched = {}
    for a in ("dpo", "ppo"):
        cfg = load(compose_cfg([f"algorithm={a}", "compute=matched", "compute.prefixes_per_step=8"], tiny=False))
        matched[a] = planned_optimizer_steps(cfg)
    assert matched == {"dpo": 64, "ppo": 64}
    # the paper presets: examples not a multiple of PPO's 32-prefix rollouts (a partial last one)
    for run, native_steps, matched_steps in (("paper_run1", (1563, 12500), 1563), ("paper_run2", (625, 5000), 625)):
        steps = {}
        for a in ("dpo", "ppo"):
            cfg = compose_cfg([f"experiment={run}", f"algorithm={a}"], tiny=False)
            steps[a] = planned_optimizer_steps(cfg)
            cfg = load(compose_cfg([f"experiment={run}", f"algorithm={a}", "compute=matched", "model=pythia70m",
                                    "classifier=gpt2_imdb"], tiny=False))  # the paper's lengths need their context
            assert planned_optimizer_steps(cfg) == matched_steps, (run, a)
        assert (steps["dpo"], steps["ppo"]) == native_steps, run
    with pytest.raises(ConfigError, match=r"compute\.prefixes_per_step.*rollout_prefixes \(16\)"):
        load(compose_cfg(["algorithm=ppo", "compute=matched", "compute.prefixes_per_step=12"]))
    # a trust region that ends updates would skip planned steps: refused under matched compute
    with pytest.raises(ConfigError, match=r"^algorithm\.trust_region: stop ends an update.*use shrink"):
        load(compose_cfg(["algorithm=ppo", "compute=matched", "algorithm.trust_region=stop"]))
    load(compose_cfg(["algorithm=ppo", "compute=matched", "algorithm.trust_region=stop", "algorithm.early_stop_kl=null"]))
    load(compose_cfg(["algorithm=ppo", "algorithm.trust_region=stop"]))  # native: allowed


def test_matched_jobs_take_equal_steps_while_the_trust_region_cuts_them_back(shared_cache, tmp_path):
    """Issue 21: under compute=matched a DPO job and a PPO job on the same shrunk config record the
    same optimizer steps, planned and taken, even when PPO's trust region acts on every step.  A
    bound of 1e-6 nats is crossed by any step (measured: every update's later steps cut back); with
    trust_region=stop that ends each update after its first step (1 of 2 per rollout here, 2 of 4
    in all), which is what compute=matched refuses; shrink cuts the step back and takes it."""
    from dpo_ppo import results as R
    from dpo_ppo.job import run_job

    common = [f"cache_dir={shared_cache}", "analysis=none", "logger=none", "compute=matched",
              "compute.prefixes_per_step=8"]
    run_job(compose_cfg(["algorithm=ppo", "algorithm.early_stop_kl=1e-6", *common]), tmp_path / "ppo")
    run_job(compose_cfg(["algorithm=dpo", *common]), tmp_path / "dpo")
    res = {k: json.loads((tmp_path / k / R.RESULTS_FILE).read_text()) for k in ("ppo", "dpo")}
    # 32 prefixes, one step per 8: 4 each (PPO: 2 rollouts of 16 prefixes x 1 epoch x 2 minibatches)
    assert [r["params"]["optimizer_steps"] for r in res.values()] == [4, 4]
    assert [r["compute"]["optimizer_steps"] for r in res.values()] == [4, 4]
    assert [r["compute"]["examples_seen"] for r in res.values()] == [32, 32]
    log = [row for row in R.read_train_log(tmp_path / "ppo") if "train/steps_cut_back" in row]
    assert [row["train/optimizer_steps"] for row in log] == [2, 2]
    assert all(row["train/steps_cut_back"] >= 1 for row in log), log  # the trust region did act


def test_a_partial_last_rollout_takes_minibatches_of_the_usual_size(tmp_path):
    """40 examples in rollouts of 16 prefixes: two full rollouts (4 minibatches of 8 samples each)
    and one of 8 prefixes, which takes 2 minibatches of 8 samples (not 4 of 4): 10 steps a pass,
    as planned_optimizer_steps says, and as DPO with batch 4 would take for 40 pairs."""
    from test_ppo import ppo_cfg, run

    from dpo_ppo.config.schedule import rollout_minibatches

    cfg = ppo_cfg(examples=40, rollout_prefixes=16, ppo_epochs=1, num_minibatches=8, num_completions=2,
                  completion_len=4, early_stop_kl=None)  # the schedule alone: no trust region cutting it
    assert [rollout_minibatches(cfg, n) for n in (32, 16, 2, 1)] == [8, 4, 1, 1]
    _, _, log, summary = run(cfg, tmp_path)
    assert [m["train/optimizer_steps"] for _, m in log] == [8, 8, 4]
    assert summary["compute"]["optimizer_steps"] == 20 == planned_optimizer_steps(SimpleNamespace(algorithm=cfg))


def test_ppo_counts_what_it_did(tmp_path):
    from test_ppo import ppo_cfg, run

    cfg = ppo_cfg(examples=32, rollout_prefixes=8, ppo_epochs=2, num_minibatches=2, num_completions=2,
                  completion_len=6, early_stop_kl=None)  # the schedule alone: no trust region cutting it
    _, _, log, summary = run(cfg, tmp_path)
    c = summary["compute"]
    assert c["optimizer_steps"] == 4 * 2 * 2 and c["examples_seen"] == 32
    assert c["generated_tokens"] == sum(m["train/rollout/completion_tokens"] for _, m in log)
    # every sample is forwarded once per epoch with gradients: prefix (4 tokens) + its completion
    assert c["trained_tokens"] == 2 * (32 * 2 * 4 + c["generated_tokens"])
    assert summary["kl_recent"] == pytest.approx(log[-1][1]["train/rollout/kl"])  # 4 updates: the last one


# ----------------------------------------------------------------------------- whole jobs


@pytest.mark.slow  # builds a cold artifact cache: about a minute on 2 idle cores
def test_jobs_cold_or_warm_cache_give_the_same_metrics_and_matched_compute_equal_steps(shared_cache, tmp_path):
    """The same config gives byte-identical metrics on a cold cache (every artifact built in the
    job's process first, using torch's RNG) and a warm one; under compute=matched a DPO and a PPO
    job record the same optimizer steps on the same prefixes; every eval prompt has a row."""
    from dpo_ppo import results as R
    from dpo_ppo.job import run_job

    common = ["analysis=none", "logger=none", "compute=matched", "compute.prefixes_per_step=8"]
    cold = run_job(compose_cfg([f"cache_dir={tmp_path / 'cold-cache'}", "algorithm=ppo", *common]), tmp_path / "cold")
    warm = run_job(compose_cfg([f"cache_dir={shared_cache}", "algorithm=ppo", *common]), tmp_path / "warm")
    assert cold.status == warm.status == "finished"
    assert cold.metrics == warm.metrics
    dpo = run_job(compose_cfg([f"cache_dir={shared_cache}", "algorithm=dpo", *common]), tmp_path / "dpo")
    res = {k: json.loads((tmp_path / k / "results.json").read_text()) for k in ("warm", "dpo")}
    # 32 prefixes, one step per 8: 4 steps each (PPO: 2 rollouts of 16 x 1 epoch x 2 minibatches)
    assert res["warm"]["compute"]["optimizer_steps"] == res["dpo"]["compute"]["optimizer_steps"] == 4
    assert res["warm"]["params"]["optimizer_steps"] == res["dpo"]["params"]["optimizer_steps"] == 4
    for r in res.values():
        c = r["compute"]
        assert c["examples_seen"] == 32 and c["trained_tokens"] > 0 and c["generated_tokens"] > 0
        assert c["wall_s"] > 0 and c["accelerator_s"] == 0.0
        assert r["params"]["compute"] == "matched"
    assert res["warm"]["params"]["value_model"] == "separate" and res["warm"]["params"]["kl_controller"] == "log"
    rows = {k: R.read_eval_rows(tmp_path / k) for k in ("warm", "dpo")}
    assert rows["warm"]["prompt_id"] == rows["dpo"]["prompt_id"] == [str(i) for i in range(32)]
    ref_rows = R.read_eval_rows(Path(res["dpo"]["artifacts"]["ref_eval"]) / R.REF_ROWS_FILE)
    assert len(ref_rows["kl"]) == 32 and all(v == 0 for v in ref_rows["kl"])
    assert dpo.metrics["eval/policy/kl_to_ref"] == pytest.approx(sum(rows["dpo"]["kl"]) / 32, rel=1e-4)


def test_eval_completions_as_long_as_training_and_the_paper_presets_use_100():
    for algo in ("dpo", "ppo"):
        cfg = compose_cfg([f"algorithm={algo}", "algorithm.completion_len=64"], tiny=False)
        assert cfg.eval.completion_len == 64
        for exp in ("paper_run1", "paper_run2"):  # the seed's 5.2, whatever each algorithm trained on
            paper = compose_cfg([f"experiment={exp}", f"algorithm={algo}", "model=pythia70m",
                                 "classifier=gpt2_imdb"], tiny=False)
            assert paper.eval.completion_len == 100 and paper.eval.prefix_len == 25


def test_dpo_counts_pairs_over_a_fractional_epoch(tmp_path):
    """11 pairs in batches of 4 (3 steps an epoch, the last of 3 pairs), 1.5 epochs: the Trainer
    takes ceil(3 x 1.5) = 5 steps, 11 pairs then 2 batches of 4 of a fresh shuffle: 19 pairs."""
    from fixtures import dpo_algo, token_pairs
    from test_ppo import tiny_model, tiny_tokenizer

    from dpo_ppo.train.dpo import train_dpo

    tok = tiny_tokenizer()
    model = tiny_model(tok)
    pairs, algo = token_pairs(11), dpo_algo(lr=1e-3, max_grad_norm=1.0, epochs=1.5)
    summary = train_dpo(algo, copy.deepcopy(model), copy.deepcopy(model).eval(), tok, pairs, tmp_path)
    c = summary["compute"]
    assert (c["optimizer_steps"], c["examples_seen"]) == (5, 19)
    per_pair = 2 * 4 + 5 + 3
    assert c["trained_tokens"] == 19 * per_pair  # every pair has the same length here
