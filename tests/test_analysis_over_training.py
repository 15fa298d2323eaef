"""Analysis 6 (heads over training): at each snapshot the head scores and the attention to the
sentiment word, checked against analyses 4 and 5 on the same models."""

import copy

import pytest
import torch

from dpo_ppo.analysis.suite import run_analysis
from fixtures import LexiconScorer, toy_model, toy_reviews, toy_tokenizer
from test_analysis_suite import _fast

MEASURES = ("previous_token", "duplicate_token", "induction", "sentiment_attention")


def test_snapshots_equal_to_the_reference_and_to_the_policy_give_zero_and_the_final_change(tmp_path):
    texts, labels = toy_reviews(40)
    tok = toy_tokenizer(texts)
    ref = toy_model(tok, layers=2, hidden=32, heads=4, initializer_range=0.1)
    pol = copy.deepcopy(ref)
    with torch.no_grad():
        for p in pol.parameters():
            p.add_(0.05 * torch.randn_like(p))
    # the snapshot at 10 examples is the reference, the one at 20 the final policy
    ref.save_pretrained(tmp_path / "snapshots" / "ex_0000010")
    pol.save_pretrained(tmp_path / "snapshots" / "ex_0000020")
    snaps = sorted((tmp_path / "snapshots").iterdir(), reverse=True)  # order must not matter
    cfg = _fast(weights=False, activations=False, ablation=False)
    res = run_analysis(cfg, ref, pol, tok, texts=texts, labels=labels, scorer=LexiconScorer(),
                       out_dir=tmp_path / "out", snapshots=snaps, device="cpu", strict=True)
    table = res["tables"]["heads_over_training"]
    rows = [dict(zip(table["columns"], r)) for r in table["data"]]
    assert [r["examples"] for r in rows] == [0, 10, 20]
    s = res["scalars"]
    assert s["analysis/over_training/num_snapshots"] == 2
    for m in MEASURES:
        assert rows[0][f"{m}_max_abs_change"] == 0.0 and rows[0][f"{m}_mean_abs_change"] == 0.0
        assert rows[1][f"{m}_max_abs_change"] == pytest.approx(0.0, abs=1e-6), m
        final = s[f"analysis/heads/{m}_max_abs_change"] if m != "sentiment_attention" \
            else s["analysis/sentiment_attention/max_abs_change"]
        assert final > 1e-4, m  # the policy did move
        assert rows[2][f"{m}_max_abs_change"] == pytest.approx(final, rel=1e-4, abs=1e-7), m
    for t in MEASURES[:3]:
        assert rows[2][f"{t}_max"] == pytest.approx(s[f"analysis/heads/policy/{t}_max"], rel=1e-4)
        assert rows[0][f"{t}_max"] == pytest.approx(s[f"analysis/heads/reference/{t}_max"], rel=1e-4)
    per_head = res["tables"]["heads_over_training_per_head"]
    assert len(per_head["data"]) == 2 * len(MEASURES) * 2 * 4  # snapshots x measures x layers x heads
    assert "heads_over_training" in res["images"]


def test_without_snapshots_or_switched_off_it_adds_nothing(tmp_path):
    texts, labels = toy_reviews(20)
    tok = toy_tokenizer(texts)
    ref = toy_model(tok, layers=1, hidden=16, heads=2)
    ref.save_pretrained(tmp_path / "snapshots" / "ex_0000010")
    cfg = _fast(weights=False, activations=False, ablation=False, heads=False, sentiment_attention=False)
    res = run_analysis(cfg, ref, copy.deepcopy(ref), tok, texts=texts, labels=labels, scorer=LexiconScorer(),
                       out_dir=tmp_path / "a", device="cpu", strict=True)
    assert "heads_over_training" not in res["tables"] and "analysis/time_s/heads_over_training" in res["scalars"]
    cfg.heads_over_training = False
    res = run_analysis(cfg, ref, copy.deepcopy(ref), tok, texts=texts, labels=labels, scorer=LexiconScorer(),
                       out_dir=tmp_path / "b", snapshots=[tmp_path / "snapshots" / "ex_0000010"], device="cpu",
                       strict=True)
    assert "heads_over_training" not in res["tables"] and "analysis/time_s/heads_over_training" not in res["scalars"]
