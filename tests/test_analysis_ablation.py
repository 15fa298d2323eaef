"""Analysis 3: head ablation, batched (stacked variants, shared lower layers) against the naive loop."""

import copy

import pytest
import torch

from dpo_ppo.analysis import ablation as A
from dpo_ppo.analysis import hooks
from dpo_ppo.analysis.common import encode, head_dim
from dpo_ppo.train.sampling import pad_token_id as pad_id
from fixtures import HashScorer, toy_model, toy_reviews, toy_tokenizer



@pytest.fixture(scope="module")
def data():
    texts, labels = toy_reviews(40)
    tok = toy_tokenizer(texts)
    lm_seqs, _ = encode(tok, texts[:7], 28)
    prompts, _ = encode(tok, texts[10:13], 6, min_tokens=6)
    prompts.append(encode(tok, texts[14:15], 4)[0][0])  # one shorter prompt: left padding in generate
    return tok, lm_seqs, prompts


def _model(tok, impl="sdpa", scale=0.02, parallel=True):
    # a larger init makes single heads matter, so that ablations visibly change completions
    return toy_model(tok, layers=3, hidden=32, heads=4, attn_implementation=impl, initializer_range=scale,
                     use_parallel_residual=parallel)


def _loss(model, seqs, tok):
    return float(A.lm_losses(model, seqs, [None], pad=pad_id(tok), progress=False)[0])


def test_zero_and_mean_ablation_equal_editing_the_output_projection(data):
    """An independent implementation: ablating head h == rewriting columns of attention.dense."""
    tok, seqs, _ = data
    model = _model(tok, scale=0.2)
    means = A.head_means(model, seqs, pad=pad_id(tok))
    dh = head_dim(model)
    for layer, head in [(0, 1), (2, 3)]:
        cols = slice(head * dh, (head + 1) * dh)
        zeroed = copy.deepcopy(model)
        with torch.no_grad():
            zeroed.gpt_neox.layers[layer].attention.dense.weight[:, cols] = 0.0
        meaned = copy.deepcopy(model)
        with torch.no_grad():
            dense = meaned.gpt_neox.layers[layer].attention.dense
            dense.bias += dense.weight[:, cols] @ means[layer][head]
            dense.weight[:, cols] = 0.0
        losses = A.lm_losses(model, seqs, [None, (layer, head, "zero"), (layer, head, "mean")], pad=pad_id(tok),
                             means=means, progress=False)
        assert float(losses[0]) == pytest.approx(_loss(model, seqs, tok), rel=1e-6)
        assert float(losses[1]) == pytest.approx(_loss(zeroed, seqs, tok), rel=1e-5)
        assert float(losses[2]) == pytest.approx(_loss(meaned, seqs, tok), rel=1e-5)
        assert abs(float(losses[1] - losses[0])) > 1e-4  # the ablation really changes the output
    assert all(h.shape == (4, dh) for h in means.values())


def test_head_means_are_means_over_real_tokens(data):
    tok, seqs, _ = data
    model = _model(tok)
    captured = []
    handle = model.gpt_neox.layers[1].attention.dense.register_forward_pre_hook(
        lambda m, args: captured.append(args[0][0].detach().clone()))
    with torch.no_grad():
        for s in seqs:  # one at a time: no padding at all
            model(torch.tensor([s]))
    handle.remove()
    expected = torch.cat(captured).mean(0).view(4, -1)
    means = A.head_means(model, seqs, pad=pad_id(tok), batch_size=3)
    assert torch.allclose(means[1], expected, atol=1e-6)


@pytest.mark.parametrize("impl,parallel,share", [("sdpa", True, True), ("eager", True, True),
                                                 ("sdpa", False, True), ("eager", False, True),
                                                 ("sdpa", True, False)])
def test_batched_equals_naive(data, impl, parallel, share):
    """Parallel residual (Pythia): the ablated block's output is corrected and expanded; sequential
    residual: the batch is expanded entering the ablated block; share=False: plain stacking."""
    tok, seqs, prompts = data
    model = _model(tok, impl, scale=0.2, parallel=parallel)
    kwargs = dict(lm_seqs=seqs, prompts=prompts, scorer=HashScorer(), kinds=("zero", "mean"), completion_len=6,
                  batch_size=3, progress=False)
    # rows=13: uneven chunks of variants, three text batches
    batched = A.ablate_heads(model, tok, rows=13, share_lower=share, **kwargs)
    naive = A.ablate_heads(model, tok, naive=True, **kwargs)
    assert batched["lm_loss_base"] == pytest.approx(naive["lm_loss_base"], rel=1e-6)
    assert batched["completions_base"] == naive["completions_base"]
    for kind in ("zero", "mean"):
        for metric in ("lm_loss_increase", "grad_loss_delta", "binary_loss_delta"):
            b = torch.tensor(batched["kinds"][kind][metric])
            n = torch.tensor(naive["kinds"][kind][metric])
            assert b.shape == (3, 4)
            assert torch.allclose(b, n, atol=1e-6, rtol=1e-5), (kind, metric)
    # ablating heads does change the loss and (for some head) the completions and their score
    assert torch.tensor(batched["kinds"]["zero"]["lm_loss_increase"]).abs().max() > 1e-3
    assert torch.tensor(batched["kinds"]["zero"]["grad_loss_delta"]).abs().max() > 0


def test_common_random_numbers_sample_the_right_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    n = 40000
    sampler = A.SharedGumbelSampler(torch.arange(n), width=0, n_prompts=n, temperature=2.0, seed=3)
    picks = sampler(torch.zeros(n, 0, dtype=torch.long), logits.expand(n, 4)).argmax(-1)
    freq = torch.bincount(picks, minlength=4).float() / n
    assert torch.allclose(freq, torch.softmax(logits[0] / 2.0, -1), atol=0.01)
    # rows of the same prompt share their noise; other prompts and other steps do not
    shared = A.SharedGumbelSampler(torch.tensor([0, 1, 0]), width=0, n_prompts=2, temperature=1.0, seed=0)
    out = shared(torch.zeros(3, 0, dtype=torch.long), torch.zeros(3, 50))
    assert torch.equal(out[0], out[2]) and not torch.equal(out[0], out[1])
    later = shared(torch.zeros(3, 1, dtype=torch.long), torch.zeros(3, 50))
    assert not torch.equal(out[0], later[0])


def test_stacked_ablation_rejects_a_wrong_batch_and_removes_its_hooks(data):
    tok, seqs, _ = data
    model = _model(tok)
    ids = torch.tensor([seqs[0][:5]])
    with hooks.StackedAblation(model, [None, (0, 0, "zero")]):
        with pytest.raises(RuntimeError, match="stacked variants"):
            model(ids)  # 1 row for 2 variants
    assert all(not layer.attention.dense._forward_pre_hooks for layer in model.gpt_neox.layers)
    with pytest.raises(ValueError, match="mean ablation"):
        hooks.StackedAblation(model, [(0, 0, "mean")], means=None)


def test_robustness_summary():
    r = A.robustness([[0.0, 1.0], [3.0, -2.0]])
    assert r == {"mean": 0.5, "max": 3.0, "argmax_layer": 1, "argmax_head": 0}
    assert len(hooks.variants_for(_model(toy_tokenizer(toy_reviews(10)[0])), ["zero", "mean"])) == 1 + 2 * 3 * 4
