"""Sampling, log-probabilities, evaluation metrics and W&B recording, against hand-computed values."""

import json
from pathlib import Path

import pytest
import torch

from dpo_ppo import results as R
from dpo_ppo.config import EvalConfig, LoggerConfig
from dpo_ppo.evaluate import distinct_n, evaluate_model
from dpo_ppo.runtime.record import Recorder
from dpo_ppo.train.sampling import generate, pad_batch, sequence_kl
from fixtures import completion_logprobs
from fixtures import read_offline_run, toy_model, word_tokenizer


@pytest.fixture(scope="module")
def word_tok():
    return word_tokenizer(16, specials_first=True)  # <eos> = 0, <pad> = 1, then t0..t13


def tiny_lm(seed=0):
    return toy_model(word_tokenizer(16, specials_first=True), hidden=16, layers=1, heads=2, context=2048,
                     intermediate_size=32, seed=seed)


class FakeScorer:
    """p(positive) = share of 't2' tokens in the text: a scorer we can compute by hand."""

    def logits(self, texts):
        p = torch.tensor([max(1e-4, min(1 - 1e-4, t.split().count("t2") / max(1, len(t.split())))) for t in texts])
        return torch.log(p) - torch.log1p(-p)

    def p_positive(self, texts):
        return torch.sigmoid(self.logits(texts))


def test_distinct_n_by_hand():
    comps = [[1, 2, 1, 2], [1, 2, 3]]
    assert distinct_n(comps, 1) == 3 / 7
    assert distinct_n(comps, 2) == 3 / 5  # (1,2) (2,1) (1,2) | (1,2) (2,3)
    assert distinct_n([], 2) == 0.0


def test_pad_batch_left_and_right():
    ids, mask = pad_batch([[5, 6], [7]], pad_id=1, left=True)
    assert ids.tolist() == [[5, 6], [1, 7]] and mask.tolist() == [[1, 1], [0, 1]]
    ids, mask = pad_batch([[5, 6], [7]], pad_id=1, left=False)
    assert ids.tolist() == [[5, 6], [7, 1]] and mask.tolist() == [[1, 1], [1, 0]]


def test_completion_logprobs_match_a_manual_forward():
    model = tiny_lm()
    prompts, comps = [[3, 4, 5], [6]], [[7, 8], [9, 10, 11]]
    got = completion_logprobs(model, prompts, comps, pad_id=1)
    for i, (p, c) in enumerate(zip(prompts, comps)):
        ids = torch.tensor([p + c])
        logp = torch.log_softmax(model(ids).logits[0], -1)
        want = sum(logp[len(p) - 1 + j, tok] for j, tok in enumerate(c))
        assert torch.allclose(got[i], want, atol=1e-5)
    per_tok = completion_logprobs(model, prompts, comps, pad_id=1, per_token=True)
    assert [len(t) for t in per_tok] == [2, 3] and torch.allclose(per_tok[1].sum(), got[1], atol=1e-5)


def test_generate_respects_lengths_and_stops_at_eos(word_tok):
    model = tiny_lm()
    torch.manual_seed(0)
    prompts = [[2, 3], [4], [5, 6, 7]] * 20
    out = generate(model, word_tok, prompts, 6, batch_size=8, desc=None)
    assert len(out) == 60
    for toks in out:
        assert 1 <= len(toks) <= 6
        assert 0 not in toks[:-1]  # nothing after an EOS
    assert any(len(t) < 6 and t[-1] == 0 for t in out)  # some stopped early (EOS p ~ 1/16 a token)
    assert any(len(t) == 6 for t in out)


def test_evaluate_metrics_by_hand(word_tok):
    model = tiny_lm(1)
    cfg = EvalConfig(num_prompts=8, prefix_len=2, completion_len=5, batch_size=4)
    prompts = [[2, 3]] * 8
    metrics, rows = evaluate_model(model, word_tok, FakeScorer(), prompts, cfg, ref_model=model)
    p = torch.tensor([r["p_positive"] for r in rows])
    assert metrics["p_positive_mean"] == pytest.approx(float(p.mean()), abs=1e-6)
    assert metrics["gradient_loss"] == pytest.approx(float((1 - p).mean()), abs=1e-6)
    assert metrics["binary_loss"] == pytest.approx(float((p < 0.5).float().mean()))
    assert metrics["kl_to_ref"] == pytest.approx(0.0, abs=1e-6)  # a model against itself
    # results.EVAL_METRICS is the list of what evaluation writes (the gold ones with a gold scorer)
    assert set(metrics) == {m for m in R.EVAL_METRICS if not m.startswith("gold_")}
    # the scorer sees prompt + completion, the two texts joined as they are
    for r in rows:
        words = (r["prompt"] + r["completion"]).split()
        assert r["p_positive"] == pytest.approx(max(1e-4, words.count("t2") / len(words)), rel=1e-3)
    other, _ = evaluate_model(model, word_tok, FakeScorer(), prompts, cfg, ref_model=tiny_lm(2))
    assert other["kl_to_ref"] > 0.01 and other["kl_to_ref_k1"] != other["kl_to_ref"]


def test_sequence_kl_by_hand():
    """Per-position KL of full next-token distributions, summed over the completion only."""
    p, q = tiny_lm(3), tiny_lm(4)
    prompts, comps = [[2, 3, 4]], [[5, 6]]
    got, k1 = sequence_kl(p, q, prompts, comps, pad_id=1)
    ids = torch.tensor([[2, 3, 4, 5, 6]])
    lp, lq = (torch.log_softmax(m(ids).logits[0], -1) for m in (p, q))
    want = sum((lp[t].exp() * (lp[t] - lq[t])).sum() for t in (2, 3))  # predicting 5 and 6
    assert torch.allclose(got[0], want, atol=1e-5)
    want_k1 = (lp[2, 5] - lq[2, 5]) + (lp[3, 6] - lq[3, 6])
    assert torch.allclose(k1[0], want_k1, atol=1e-5)
    assert torch.allclose(k1, completion_logprobs(p, prompts, comps, pad_id=1)
                          - completion_logprobs(q, prompts, comps, pad_id=1), atol=1e-5)
    assert sequence_kl(p, p, prompts, comps, pad_id=1)[0].abs().max() < 1e-6


def test_recorder_writes_results_and_an_offline_wandb_run(tmp_path):
    cfg = LoggerConfig(project="proj")
    results = {"status": "running", "algorithm": "ppo", "name": "mysweep", "metrics": {}}
    rec = Recorder(tmp_path, results, cfg, {"algorithm": {"kl_target": 3.0}, "params": {"kl_target": 3.0}},
                   run_name="job1")
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "running"
    for step in range(3):
        rec.log({"train/kl": 0.5 * step, "train/kl_coef": 0.2}, step)
    rec.metrics({"eval/policy/p_positive_mean": 0.75})
    rec.table("samples", ["prompt", "completion", "p_positive"], [["a", "b", 0.5]])
    rec.finish("finished", wall_time_s=1.0)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["status"] == "finished" and saved["metrics"]["eval/policy/p_positive_mean"] == 0.75
    assert len((tmp_path / "train_log.jsonl").read_text().splitlines()) == 3
    run = read_offline_run(next(Path(tmp_path, "wandb").glob("offline-run-*")))
    assert run["run"]["group"] == "mysweep/ppo" and run["run"]["job_type"] == "ppo"
    assert run["run"]["project"] == "proj" and run["run"]["name"] == "job1"
    assert run["config"]["params"]["kl_target"] == 3.0
    assert [r["train/kl"] for r in run["history"] if "train/kl" in r] == [0.0, 0.5, 1.0]
    assert run["summary"]["eval/policy/p_positive_mean"] == 0.75 and run["summary"]["status"] == "finished"
    assert any(r.get("samples/_type") == "table-file" for r in run["history"])
