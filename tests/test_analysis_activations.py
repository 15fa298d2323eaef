"""Analysis 2: activation cosine / KL and the logit-lens KL, through TransformerLens bridges."""

import copy
import types

import pytest
import torch
import torch.nn.functional as F

from dpo_ppo.analysis.activations import activation_divergence, softmax_kl
from dpo_ppo.analysis.common import boot_bridge, encode
from dpo_ppo.train.sampling import pad_token_id as pad_id
from fixtures import toy_model, toy_reviews, toy_tokenizer



@pytest.fixture(scope="module")
def setup():
    texts, labels = toy_reviews(40)
    tok = toy_tokenizer(texts)
    ref = toy_model(tok, layers=3, hidden=32, heads=4)
    seqs, kept = encode(tok, texts[:8], 24)
    return tok, ref, seqs, [labels[i] for i in kept]


def _run(tok, ref, pol, seqs, labels, batch_size=16):
    return activation_divergence(boot_bridge(ref, tok), boot_bridge(pol, tok), seqs, labels, pad=pad_id(tok),
                                 batch_size=batch_size, progress=False)


def test_identical_models_have_cosine_one_and_kl_zero(setup):
    tok, ref, seqs, labels = setup
    r = _run(tok, ref, copy.deepcopy(ref), seqs, labels)
    for site, metrics in r["sites"].items():
        for subset in ("all", "pos", "neg"):
            assert metrics["cos"][subset] == pytest.approx([1.0] * 3, abs=1e-6), site
            assert max(abs(v) for v in metrics["kl"][subset]) < 1e-9, site
    assert max(r["logit_lens_kl"]["all"]) < 1e-7
    assert r["num_prompts"] == {"all": len(labels), "pos": sum(labels), "neg": len(labels) - sum(labels)}


def test_perturbing_one_layer_changes_only_that_layer_and_downstream(setup):
    tok, ref, seqs, labels = setup
    pol = copy.deepcopy(ref)
    with torch.no_grad():  # layer 1's MLP only
        pol.gpt_neox.layers[1].mlp.dense_h_to_4h.weight.add_(0.2 * torch.randn_like(
            pol.gpt_neox.layers[1].mlp.dense_h_to_4h.weight))
    r = _run(tok, ref, pol, seqs, labels)
    s = r["sites"]
    # layer 0: untouched everywhere
    for site in ("resid", "attn", "mlp"):
        assert s[site]["cos"]["all"][0] == pytest.approx(1.0, abs=1e-6)
        assert s[site]["kl"]["all"][0] < 1e-9
    # layer 1: the MLP output and the stream change; attention reads the stream *before* the MLP
    # (parallel residual, as in Pythia), so it does not
    assert s["attn"]["cos"]["all"][1] == pytest.approx(1.0, abs=1e-6)
    assert s["mlp"]["cos"]["all"][1] < 0.999 and s["mlp"]["kl"]["all"][1] > 1e-6
    assert s["resid"]["cos"]["all"][1] < 0.9999 and s["resid"]["kl"]["all"][1] > 1e-8
    # layer 2: everything downstream changes
    for site in ("resid", "attn", "mlp"):
        assert s[site]["cos"]["all"][2] < 0.9999 and s[site]["kl"]["all"][2] > 1e-9
    lens = r["logit_lens_kl"]["all"]
    assert lens[0] < 1e-7 and lens[1] > 1e-6 and lens[2] > 1e-6


def test_numbers_match_a_hand_computation_with_plain_transformers(setup):
    """cos / KL of the residual stream and the output KL, recomputed from HF hidden states."""
    tok, ref, seqs, labels = setup
    pol = copy.deepcopy(ref)
    with torch.no_grad():
        for p in pol.parameters():
            p.add_(0.01 * torch.randn_like(p))
    seq = seqs[:1]
    r = _run(tok, ref, pol, seq, labels[:1])
    ids = torch.tensor(seq)
    with torch.no_grad():
        out_r = ref(ids, output_hidden_states=True)
        out_p = pol(ids, output_hidden_states=True)
    for L in range(2):  # hidden_states[L + 1] is the stream after block L (the last one is normed)
        a, b = out_p.hidden_states[L + 1][0].double(), out_r.hidden_states[L + 1][0].double()
        cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
        kl = F.kl_div(F.log_softmax(b, -1), F.log_softmax(a, -1), log_target=True, reduction="none").sum(-1)
        assert r["sites"]["resid"]["cos"]["all"][L] == pytest.approx(float(cos.mean()), rel=1e-5)
        assert r["sites"]["resid"]["kl"]["all"][L] == pytest.approx(float(kl.mean()), rel=1e-4)
    # the logit lens at the last layer is the models' own next-token KL(tuned || ref)
    lp, lq = F.log_softmax(out_p.logits[0].double(), -1), F.log_softmax(out_r.logits[0].double(), -1)
    output_kl = (lp.exp() * (lp - lq)).sum(-1).mean()
    assert r["logit_lens_kl"]["all"][-1] == pytest.approx(float(output_kl), rel=1e-3)
    assert output_kl > 0


def test_subsets_average_the_right_prompts_and_padding_is_harmless(setup):
    tok, ref, seqs, labels = setup
    pol = copy.deepcopy(ref)
    with torch.no_grad():
        pol.gpt_neox.layers[0].attention.dense.bias.add_(0.3)
    two = [seqs[0], seqs[1][:9]]  # different lengths in one padded batch
    assert len(two[0]) != len(two[1])
    both = _run(tok, ref, pol, two, [1, 0])
    alone_pos = _run(tok, ref, pol, two[:1], [1])
    alone_neg = _run(tok, ref, pol, two[1:], [0])
    for site in ("resid", "attn", "mlp"):
        for metric in ("cos", "kl"):
            assert both["sites"][site][metric]["pos"] == pytest.approx(alone_pos["sites"][site][metric]["all"], rel=1e-5)
            assert both["sites"][site][metric]["neg"] == pytest.approx(alone_neg["sites"][site][metric]["all"], rel=1e-5)
            mean = [(x + y) / 2 for x, y in zip(alone_pos["sites"][site][metric]["all"],
                                                 alone_neg["sites"][site][metric]["all"])]
            assert both["sites"][site][metric]["all"] == pytest.approx(mean, rel=1e-5)
    assert both["logit_lens_kl"]["pos"] == pytest.approx(alone_pos["logit_lens_kl"]["all"], rel=1e-4)


def test_softmax_kl_definition():
    a, b = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 1.0, 1.0])
    p, q = torch.softmax(a, 0), torch.softmax(b, 0)
    assert float(softmax_kl(a, b)) == pytest.approx(float((p * (p / q).log()).sum()))
    assert float(softmax_kl(a, a + 5.0)) == pytest.approx(0.0, abs=1e-12)  # shift-invariant, as softmax is
    assert float(softmax_kl(2 * a, 2 * b)) > float(softmax_kl(a, b))  # but not scale-invariant


def test_bridge_leaves_the_callers_model_alone(setup):
    tok, ref, seqs, _ = setup
    before = type(ref.gpt_neox.layers[0].attention)
    impl = ref.config._attn_implementation
    boot_bridge(ref, tok)
    assert type(ref.gpt_neox.layers[0].attention) is before
    assert ref.config._attn_implementation == impl


def test_a_trainer_patched_forward_does_not_bypass_the_bridge(setup):
    """accelerate/TRL replace model.forward by a closure around the original's bound forward; a
    plain deep copy would keep calling the original, and no bridge hook would fire."""
    tok, ref, seqs, labels = setup
    patched = copy.deepcopy(ref)
    original_forward = patched.forward

    def wrapper(self, *args, **kwargs):
        return original_forward(*args, **kwargs)

    patched.forward = types.MethodType(wrapper, patched)
    pol = copy.deepcopy(patched)
    with torch.no_grad():
        pol.gpt_neox.layers[1].mlp.dense_4h_to_h.bias.add_(0.5 * torch.randn(32))
    r = _run(tok, patched, pol, seqs[:2], labels[:2])
    assert r["sites"]["resid"]["cos"]["all"][0] == pytest.approx(1.0, abs=1e-6)
    assert r["sites"]["mlp"]["kl"]["all"][1] > 1e-6
    assert "forward" in patched.__dict__  # the caller's model keeps its patch


def test_divergences_are_float32_under_bf16_autocast(setup):
    """A nearby policy (weights moved below bf16's resolution): under bf16 autocast the divergences
    are the float32 ones (hardware.exact_float32), not bf16 rounding of two models."""
    tok, ref, seqs, labels = setup
    pol = copy.deepcopy(ref)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in pol.parameters():
            p.add_(5e-4 * p.std().clamp_min(1e-3) * torch.randn(p.shape, generator=g))
    plain = _run(tok, ref, pol, seqs, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = _run(tok, ref, pol, seqs, labels)
    assert auto == plain
    assert 0 < max(plain["logit_lens_kl"]["all"]) < 1e-4


def test_kl_of_nearby_distributions_is_never_negative():
    """Issue 20: for two nearby models sum p (log p - log q) cancels, and in float32 it came out at
    -3.3e-9 on one x86 CPU.  softmax_kl works in float64 and clamps what rounding is left at 0;
    evaluation's sequence KL clamps its per-sequence sum.  Checked against a float64 reference with
    a tolerance, not a bit pattern: BLAS and CPU may round differently."""
    from dpo_ppo.analysis.activations import _logit_lens_kl
    from dpo_ppo.train.sampling import sequence_kl

    g = torch.Generator().manual_seed(0)
    p = 8 * torch.randn(6, 10, 3000, generator=g)  # float32 logits, as the models give them
    q = p + 1e-5 * torch.randn(p.shape, generator=g)
    kl = softmax_kl(p, q)
    assert kl.dtype == torch.float64 and bool((kl >= 0).all())
    exact = (F.softmax(p.double(), -1) * (F.log_softmax(p.double(), -1) - F.log_softmax(q.double(), -1))).sum(-1)
    assert torch.allclose(kl, exact.clamp_min(0), rtol=1e-6, atol=1e-15)
    assert torch.allclose(_logit_lens_kl(p, q, rows=4), kl, rtol=1e-12, atol=0)  # the row chunks change nothing
    assert float(softmax_kl(p, p).abs().max()) == 0.0

    texts, _ = toy_reviews(20)
    tok = toy_tokenizer(texts)
    ref = toy_model(tok, layers=2, hidden=32, heads=4)
    prompts = [tok(t, add_special_tokens=False)["input_ids"][:6] for t in texts[:8]]
    completions = [tok(t, add_special_tokens=False)["input_ids"][6:14] for t in texts[:8]]
    exact_kl, _ = sequence_kl(ref, copy.deepcopy(ref), prompts, completions, pad_id=tok.pad_token_id)
    assert bool((exact_kl >= 0).all()) and float(exact_kl.max()) < 1e-6  # a model against itself: 0, never below
