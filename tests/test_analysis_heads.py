"""Analyses 4 and 5: head detection (incl. a trained induction head) and attention to the sentiment word."""

import time

import pytest
import torch
from transformer_lens.head_detector import detect_head

from dpo_ppo.analysis import heads as hd
from dpo_ppo.analysis import sentiment_attention as sa
from dpo_ppo.analysis.common import boot_bridge
from dpo_ppo.train.sampling import pad_token_id as pad_id
from dpo_ppo.config.analysis import parse_marked_prompt
from fixtures import toy_model, toy_reviews, toy_tokenizer



@pytest.fixture(scope="module")
def tok():
    return toy_tokenizer(toy_reviews(60)[0])


# --------------------------------------------------------------------------- head detection


def test_scores_agree_with_transformer_lens_detect_head(tok):
    model = toy_model(tok, layers=2, hidden=32, heads=4, initializer_range=0.3)
    bridge = boot_bridge(model, tok)
    text = "the movie was great and the movie was great and the plot was great"
    ids = tok(text, add_special_tokens=False)["input_ids"]  # detect_head tokenises without BOS here
    assert bridge.to_tokens(text)[0].tolist() == ids
    for head_type, name in [("previous_token", "previous_token_head"), ("duplicate_token", "duplicate_token_head"),
                            ("induction", "induction_head")]:
        ours = hd.head_scores(bridge, [ids], head_type, pad=pad_id(tok))
        theirs = detect_head(bridge, text, name)
        assert torch.allclose(ours, theirs.float(), atol=1e-5), head_type
    # a batch of padded sequences scores each sequence as if alone
    other = tok("I thought the acting was dull", add_special_tokens=False)["input_ids"]
    batch = hd.head_scores(bridge, [ids, other], "previous_token", pad=pad_id(tok))
    alone = (hd.head_scores(bridge, [ids], "previous_token", pad=pad_id(tok))
             + hd.head_scores(bridge, [other], "previous_token", pad=pad_id(tok))) / 2
    assert torch.allclose(batch, alone, atol=1e-5)


def test_repeated_random_tokens(tok):
    seqs = hd.repeated_random_tokens(tok, 3, 7, seed=1)
    special = set(tok.all_special_ids)
    for s in seqs:
        assert len(s) == 15 and s[0] == tok.bos_token_id and s[1:8] == s[8:]
        assert not special & set(s[1:])
    assert seqs != hd.repeated_random_tokens(tok, 3, 7, seed=2)


class _Vocab:
    """The few tokenizer attributes repeated_random_tokens needs, for a model without a tokenizer."""

    def __init__(self, n):
        self.n, self.all_special_ids, self.bos_token_id, self.eos_token_id = n, [0], 0, 0

    def __len__(self):
        return self.n


def _train_induction_model(steps_max=1500, seed=0, vocab=48, max_len=16):
    """A 2-layer, 2-head GPT-NeoX trained to continue ``BOS r r ...`` until it copies the repeat.

    Each row repeats its own random ``r`` (length 6..16, the rest of the row random), and the loss
    is taken only where copying predicts the next token.  With the offset different in every row,
    "attend n tokens back" cannot stand in for the real circuit: a previous-token head in layer 0
    and an induction head in layer 1.  About 200 steps, ~5 s on one core."""
    model = toy_model(None, vocab_size=vocab, layers=2, hidden=32, heads=2, context=64, rotary_pct=1.0,
                      intermediate_size=32, seed=seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    width, loss, step = 2 * max_len + 1, None, 0
    for step in range(steps_max):
        x = torch.randint(1, vocab, (32, width), generator=g)
        x[:, 0] = 0
        n = torch.randint(6, max_len + 1, (32,), generator=g)
        mask = torch.zeros(32, width - 1)
        for i, k in enumerate(n.tolist()):
            x[i, 1 + k: 1 + 2 * k] = x[i, 1: 1 + k]
            mask[i, k + 1: 2 * k] = 1  # targets x[k+2 .. 2k]: the repeat, after its first token
        logits = model(x).logits[:, :-1]
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none")
        loss = (nll * mask).sum() / mask.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if float(loss.detach()) < 0.5:  # chance is ln(47) = 3.85
            break
    return model.eval(), float(loss.detach()), step


def test_detection_finds_a_trained_induction_head():
    untrained = toy_model(None, vocab_size=48, layers=2, hidden=32, heads=2, context=64, rotary_pct=1.0,
                          intermediate_size=32)
    t0 = time.perf_counter()
    model, loss, steps = _train_induction_model()
    assert loss < 0.5, f"no induction after {steps} steps ({time.perf_counter() - t0:.0f}s)"
    probes = hd.repeated_random_tokens(_Vocab(48), 8, 15, seed=5)
    for m, trained in [(model, True), (untrained, False)]:
        bridge = boot_bridge(m, _fake_tokenizer())
        scores = hd.detect_all(bridge, text_seqs=probes, random_seqs=probes, pad=0, progress=False)
        induction, previous = scores["induction"], scores["previous_token"]
        assert induction.shape == (2, 2)
        if trained:
            # a perfect induction head scores 15/31 here (only the repeated half has a target)
            assert induction[1].max() > 0.35
            assert induction[0].max() < 0.15  # layer 0 has nothing to compose with
            assert int(induction.flatten().argmax()) // 2 == 1
            assert previous[0].max() > 0.4  # ...and its partner: a previous-token head below it
        else:
            assert induction.max() < 0.15 and previous.max() < 0.3


def _fake_tokenizer():
    return toy_tokenizer(["a b c"], vocab_size=300)


# --------------------------------------------------------------------------- sentiment token


def test_marked_prompts():
    text, start, end = parse_marked_prompt("This movie was [excellent] because it had")
    assert text == "This movie was excellent because it had" and text[start:end] == "excellent"
    for bad in ["no mark here", "two [marks] in [one]"]:
        with pytest.raises(ValueError):
            parse_marked_prompt(bad)


@pytest.mark.parametrize("word", ["excellent", "awful", "superb"])
@pytest.mark.parametrize("bos", [True, False])
def test_sentiment_token_is_the_words_last_token(word, bos):
    # a tokenizer that never saw the word splits it into several pieces
    small = toy_tokenizer(["the movie was fine because it had a story and"] * 3, vocab_size=280)
    text, start, end = parse_marked_prompt(f"This movie was [{word}] because it had a great storyline and")
    ids, pos = sa.sentiment_token_position(small, text, start, end, prepend_bos=bos)
    body = ids[1:] if bos else ids
    assert body == small(text, add_special_tokens=False)["input_ids"]
    if bos:
        assert ids[0] == small.bos_token_id
    assert small.decode(ids[: pos + 1], skip_special_tokens=True).endswith(word)
    assert not small.decode(ids[:pos], skip_special_tokens=True).endswith(word)
    assert small.decode(ids[pos + 1:]).startswith(" because")
    word_tokens = len(small(" " + word, add_special_tokens=False)["input_ids"])
    assert word_tokens > 1  # the multi-token case is what is being tested

    class NoOffsets:  # a slow tokenizer: no offset mapping
        def __init__(self, inner):
            self.inner, self.bos_token_id, self.eos_token_id = inner, inner.bos_token_id, inner.eos_token_id

        def __call__(self, text, **kw):
            if kw.pop("return_offsets_mapping", False):
                raise NotImplementedError
            return self.inner(text, **kw)

    assert sa.sentiment_token_position(NoOffsets(small), text, start, end, prepend_bos=bos) == (ids, pos)


def test_attention_to_the_sentiment_token_matches_hf_attentions(tok):
    model = toy_model(tok, layers=2, hidden=32, heads=4, initializer_range=0.3)
    prompts = ["This movie was [excellent] because it had a great storyline and",
               "This movie was [awful] because it had a great storyline and"]
    prepared = sa.prepare_prompts(tok, prompts, prepend_bos=True)
    out = sa.attention_to_token(boot_bridge(model, tok), prepared)
    assert out["per_prompt"].shape == (2, 2, 4)
    eager = toy_model(tok, layers=2, hidden=32, heads=4, initializer_range=0.3, attn_implementation="eager")
    for i, item in enumerate(prepared):
        s = item["position"]
        assert item["tokens"][s].endswith(("t", "l"))  # excellen|t, awfu|l
        with torch.no_grad():
            att = eager(torch.tensor([item["ids"]]), output_attentions=True).attentions
        for L in range(2):
            expected = att[L][0, :, s + 1:, s].mean(-1)
            assert torch.allclose(out["per_prompt"][i, L], expected, atol=1e-5)
    assert torch.allclose(out["mean"], out["per_prompt"].mean(0))


def test_top_changes_order_by_absolute_change():
    ref = torch.zeros(2, 3)
    tuned = torch.tensor([[0.1, -0.5, 0.0], [0.3, 0.0, 0.0]])
    top = sa.top_changes(ref, tuned, 2)
    assert [(t["layer"], t["head"], t["change"]) for t in top] == [(0, 1, pytest.approx(-0.5)), (1, 0, pytest.approx(0.3))]
