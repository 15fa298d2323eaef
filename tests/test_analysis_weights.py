"""Analysis 1: weight / bias divergence, checked against numbers worked out by hand."""

import math

import pytest
import torch

from dpo_ppo.analysis import weights as W
from fixtures import toy_model, toy_tokenizer


def _state(**tensors):
    return {k.replace("__", "."): torch.tensor(v, dtype=torch.float32) for k, v in tensors.items()}


def test_divergence_hand_computed():
    ref = _state(layers__0__lin__weight=[[0.0, 0.0], [0.0, 0.0]], layers__0__lin__bias=[0.0, 0.0],
                 layers__1__lin__weight=[[1.0, 1.0]], layers__1__lin__bias=[5.0],
                 embed__weight=[[0.0, 0.0, 0.0]])
    tuned = _state(layers__0__lin__weight=[[1.0, 0.0], [0.0, 1.0]],  # sq diffs 1,0,0,1 -> 2 over 4
                   layers__0__lin__bias=[2.0, 0.0],  # 4, 0 -> 4 over 2
                   layers__1__lin__weight=[[1.0, 4.0]],  # 0, 9 -> 9 over 2
                   layers__1__lin__bias=[5.0],  # 0 over 1
                   embed__weight=[[3.0, 0.0, 0.0]])  # 9 over 3
    d = W.divergence(ref, tuned)
    per = {t["tensor"]: t["msd"] for t in d["tensors"]}
    assert per["layers.0.lin.weight"] == pytest.approx(0.5)
    assert per["layers.0.lin.bias"] == pytest.approx(2.0)
    assert per["layers.1.lin.weight"] == pytest.approx(4.5)
    assert per["layers.1.lin.bias"] == pytest.approx(0.0)
    assert per["embed.weight"] == pytest.approx(3.0)
    # pooled over elements: weights (2 + 9 + 9) / (4 + 2 + 3), biases (4 + 0) / (2 + 1)
    assert d["msd_weights"] == pytest.approx(20 / 9)
    assert d["msd_biases"] == pytest.approx(4 / 3)
    assert d["msd_all"] == pytest.approx(24 / 12)
    # unweighted over tensors
    assert d["msd_weights_tensor_mean"] == pytest.approx((0.5 + 4.5 + 3.0) / 3)
    assert d["msd_biases_tensor_mean"] == pytest.approx((2.0 + 0.0) / 2)
    # per layer: layer 0 (2 + 4) / 6, layer 1 (9 + 0) / 3; the embedding belongs to no layer
    assert d["layers"][0]["all"] == pytest.approx(1.0)
    assert d["layers"][0]["weight"] == pytest.approx(0.5)
    assert d["layers"][0]["bias"] == pytest.approx(2.0)
    assert d["layers"][1]["all"] == pytest.approx(3.0)
    assert set(d["layers"]) == {0, 1}
    assert d["skipped"] == []


def test_mismatched_tensors_are_skipped_not_compared():
    ref = _state(a__weight=[1.0, 2.0], b__bias=[1.0])
    tuned = _state(a__weight=[1.0, 2.0, 3.0], c__bias=[0.0])
    d = W.divergence(ref, tuned)
    assert sorted(d["skipped"]) == ["a.weight", "b.bias", "c.bias"]
    assert d["msd_all"] == 0.0


def test_names_kinds_and_layers_on_gpt_neox():
    tok = toy_tokenizer()
    model = toy_model(tok, layers=3)
    params = W.parameters(model)
    layers = {W.layer_of(n) for n in params} - {None}
    assert layers == {0, 1, 2}
    assert W.param_kind("gpt_neox.layers.2.attention.dense.bias") == "bias"
    assert W.param_kind("gpt_neox.layers.2.input_layernorm.weight") == "weight"
    assert W.layer_of("gpt_neox.embed_in.weight") is None
    # identical models: zero everywhere
    d = W.divergence(params, W.parameters(model))
    assert d["msd_all"] == 0.0 and all(v["all"] == 0.0 for v in d["layers"].values())


def test_over_training_from_saved_snapshots(tmp_path):
    tok = toy_tokenizer()
    ref = toy_model(tok, layers=2, hidden=16, heads=2)
    ref_params = W.parameters(ref)
    root = tmp_path / "job" / "snapshots"
    expected = []
    model = toy_model(tok, layers=2, hidden=16, heads=2)
    previous = ref_params
    for k, examples in enumerate([2000, 4000, 6000]):
        with torch.no_grad():  # each stretch of training adds a known offset to every bias
            for n, p in model.named_parameters():
                if n.endswith("bias"):
                    p.add_(0.1 * (k + 1))
        model.save_pretrained(root / f"ex_{examples:07d}")
        now = W.parameters(model)
        expected.append((examples, W.divergence(ref_params, now)["msd_biases"],
                         W.divergence(previous, now)["msd_biases"]))
        previous = now
    (root / "not_a_snapshot").mkdir()
    found = W.find_snapshots(tmp_path / "job")
    assert [W.snapshot_examples(p) for p in found] == [2000, 4000, 6000]
    rows = W.over_training(ref_params, list(reversed(found)))  # order of the input does not matter
    assert [r["examples"] for r in rows] == [2000, 4000, 6000]
    for row, (examples, cum, step) in zip(rows, expected):
        assert row["msd_biases"] == pytest.approx(cum, rel=1e-6)
        assert row["step_msd_biases"] == pytest.approx(step, rel=1e-6)
        assert row["msd_weights"] == 0.0  # only biases moved
    # biases moved by 0.1, then +0.2 (0.3 in all), then +0.3 (0.6): steps 0.01, 0.04, 0.09
    assert [r["step_msd_biases"] for r in rows] == pytest.approx([0.01, 0.04, 0.09], rel=1e-4)
    assert rows[-1]["msd_biases"] == pytest.approx(0.36, rel=1e-4)
    assert math.isclose(rows[0]["msd_biases"], rows[0]["step_msd_biases"], rel_tol=1e-9)
