"""Corpus, tokenizer, base model and classifier: the embedded world and the hub loading code,
the latter exercised on local folders written by save_pretrained / save_to_disk."""

import pytest
import torch
from datasets import Dataset, DatasetDict
from transformers import GPT2Config, GPT2ForSequenceClassification, GPTNeoXForCausalLM

from dpo_ppo.config import ClassifierConfig, ModelConfig
from dpo_ppo.config.fields import ConfigError
from dpo_ppo.data.corpus import NEGATIVE, POSITIVE, load_hub, make_synthetic
from dpo_ppo.data.models import build_base, load_policy, train_tokenizer
from dpo_ppo.data.prompts import make_prefixes
from dpo_ppo.data.scorer import Scorer, build_classifier
from fixtures import toy_model


@pytest.fixture(scope="module")
def corpus():
    return make_synthetic(600, 0.25, seed=3)


def test_synthetic_corpus_is_deterministic_balanced_and_varied(corpus):
    again = make_synthetic(600, 0.25, seed=3)
    other = make_synthetic(600, 0.25, seed=4)
    assert corpus["train"]["text"] == again["train"]["text"]
    assert corpus["train"]["text"] != other["train"]["text"]
    assert len(corpus["test"]) == 150 and len(corpus["train"]) == 450
    labels = corpus["train"]["label"]
    assert 0.4 < sum(labels) / len(labels) < 0.6
    lengths = [len(t.split()) for t in corpus["train"]["text"]]
    assert min(lengths) < 40 < max(lengths)
    assert len(set(corpus["train"]["text"])) == len(corpus["train"])
    # sentiment words agree with the label more often than not, but not always
    def balance(text):
        words = text.lower().replace(".", " ").replace(",", " ").split()
        return sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words)
    agree = [(balance(t) > 0) == bool(y) for t, y in zip(corpus["train"]["text"], labels) if balance(t)]
    assert 0.75 < sum(agree) / len(agree) < 1.0


def test_hub_data_loader_on_a_saved_folder(tmp_path):
    DatasetDict({
        "train": Dataset.from_dict({"text": ["Great<br /><br />film.", "Bad."], "label": [1, 0]}),
        "test": Dataset.from_dict({"text": ["Fine<br/>movie", "Dull."], "label": [1, 0]}),
        "unsupervised": Dataset.from_dict({"text": ["x"], "label": [-1]}),
    }).save_to_disk(str(tmp_path / "imdb"))
    ds = load_hub(str(tmp_path / "imdb"))
    assert set(ds) == {"train", "test"}
    assert ds["train"]["text"] == ["Great film.", "Bad."] and ds["test"]["text"] == ["Fine movie", "Dull."]


def test_offline_hub_ids_fail_fast_naming_the_offline_preset():
    with pytest.raises(RuntimeError, match="data=synthetic"):
        load_hub("stanfordnlp/imdb-does-not-exist")
    cfg = ModelConfig(name="pythia70m", source="EleutherAI/pythia-70m-nope")
    with pytest.raises(RuntimeError, match="model=tiny data=synthetic classifier=tiny"):
        build_base(cfg, None, None, 0)


def test_tokenizer_and_prefixes(corpus):
    tok = train_tokenizer(corpus["train"]["text"], 300)
    assert len(tok) <= 300 and tok.eos_token == "<|endoftext|>" and tok.pad_token_id != tok.eos_token_id
    text = corpus["train"]["text"][0]
    assert tok.decode(tok(text)["input_ids"]) == text
    fixed = make_prefixes(corpus["train"]["text"], tok, 50, 10, seed=1)
    assert len(fixed) == 50 and {len(p) for p in fixed} == {10}
    ranged = make_prefixes(corpus["train"]["text"], tok, 2000, 5, 15, seed=1)  # more than the reviews
    assert len(ranged) == 2000 and min(map(len, ranged)) == 5 and max(map(len, ranged)) == 15
    assert ranged[:10] == make_prefixes(corpus["train"]["text"], tok, 2000, 5, 15, seed=1)[:10]
    with pytest.raises(ValueError, match="longer than"):
        make_prefixes(corpus["train"]["text"], tok, 5, 10_000)


def test_embedded_base_pretrains_below_uniform_loss(corpus, tmp_path):
    cfg = ModelConfig(vocab_size=300, hidden_size=32, num_layers=2, num_heads=4,
                      pretrain_steps=30, pretrain_batch_size=16, pretrain_seq_len=32)
    info = build_base(cfg, corpus, tmp_path, seed=0)
    assert info["pretrain_loss"] < 0.8 * torch.log(torch.tensor(300.0)).item()
    model, tok = load_policy(tmp_path)
    assert isinstance(model, GPTNeoXForCausalLM) and model.config.num_hidden_layers == 2
    assert tok.pad_token_id is not None and model.config.pad_token_id == tok.pad_token_id


def test_repeated_spans_replace_a_share_of_each_batch_by_fresh_periodic_spans(corpus):
    """share 1: every sequence is BOS then one random span of 8..seq_len/2 tokens said until the
    block is full, labelled as itself (BOS not predicted); fresh every call; the same for the same
    seed.  share 0.5: some blocks stay the corpus."""
    from transformers import DataCollatorForLanguageModeling

    from dpo_ppo.data.models import RepeatedSpans, _lm_blocks

    tok = train_tokenizer(corpus["train"]["text"], 300)
    blocks = _lm_blocks(corpus["train"]["text"][:200], tok, 64)
    examples = [blocks[i] for i in range(16)]
    base = DataCollatorForLanguageModeling(tok, mlm=False)

    def periods(batch):
        out = []
        for row in batch["input_ids"].tolist():
            assert row[0] == tok.eos_token_id  # BOS
            body = row[1:]
            out.append(next(h for h in range(1, 64) if body[h:] == body[:len(body) - h]))
        return out

    spans = RepeatedSpans(base, tok, 1.0, len(tok), seed=3)
    first, second = spans(examples), spans(examples)
    assert all(8 <= h <= 32 for h in periods(first)) and len(set(periods(first))) > 1
    assert not torch.equal(first["input_ids"], second["input_ids"])  # drawn anew every step
    assert (first["labels"][:, 0] == -100).all() and torch.equal(first["labels"][:, 1:], first["input_ids"][:, 1:])
    special = set(tok.all_special_ids)
    assert not special & set(first["input_ids"][:, 1:].flatten().tolist())
    assert torch.equal(RepeatedSpans(base, tok, 1.0, len(tok), seed=3)(examples)["input_ids"], first["input_ids"])
    mixed = RepeatedSpans(base, tok, 0.5, len(tok), seed=3)(examples)["input_ids"]
    kept = [i for i in range(16) if mixed[i].tolist() == examples[i]["input_ids"]]
    assert 0 < len(kept) < 16


def test_embedded_base_with_an_induction_phase(corpus, tmp_path):
    """The two phases run (spans alone, then the corpus with a share of spans) and are refused
    with one line naming the key when out of range."""
    cfg = ModelConfig(vocab_size=300, hidden_size=32, num_layers=2, num_heads=4, pretrain_steps=10,
                      pretrain_batch_size=8, pretrain_seq_len=32, pretrain_induction_steps=5,
                      pretrain_repeats=0.25)
    info = build_base(cfg, corpus, tmp_path, seed=0)
    assert 0 < info["pretrain_loss"] < 2 * torch.log(torch.tensor(300.0)).item()
    for key, value in (("pretrain_repeats", 1.0), ("pretrain_induction_steps", -1)):
        with pytest.raises(ConfigError, match=f"model.{key}"):
            ModelConfig(**{key: value}).check()


def test_hub_model_path_on_a_saved_folder(corpus, tmp_path):
    """model.source pointing at a save_pretrained folder goes through the hub loading code."""
    tok = train_tokenizer(corpus["train"]["text"], 300)
    tok.pad_token = None  # like Pythia: no pad token
    src = toy_model(tok, hidden=32, layers=2, heads=4, context=2048, intermediate_size=64)
    src.save_pretrained(str(tmp_path / "hub"))
    tok.save_pretrained(str(tmp_path / "hub"))
    cfg = ModelConfig(name="local", source=str(tmp_path / "hub"))
    build_base(cfg, None, tmp_path / "out", seed=0)
    model, tok2 = load_policy(tmp_path / "out")
    assert tok2.pad_token == tok2.eos_token  # ensure_pad
    for a, b in zip(src.parameters(), model.parameters()):
        assert torch.equal(a, b)


def test_classifier_finetunes_a_saved_gpt2_and_scores_text(tmp_path):
    """classifier.source = a save_pretrained GPT-2 folder (stand-in for gpt2), fine-tuned on labels."""
    corpus = make_synthetic(2500, 0.2, seed=5)
    tok = train_tokenizer(corpus["train"]["text"], 1024)
    tok.pad_token = None  # GPT-2 has no pad token either
    GPT2ForSequenceClassification(GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=64, n_layer=2,
                                             n_head=4, num_labels=2)).save_pretrained(str(tmp_path / "gpt2"))
    tok.save_pretrained(str(tmp_path / "gpt2"))
    cfg = ClassifierConfig(name="local", source=str(tmp_path / "gpt2"), train_examples=2000,
                           epochs=3, lr=1e-3, batch_size=32, max_length=128)
    info = build_classifier(cfg, corpus, None, tmp_path / "clf", seed=0, device="cpu")
    assert info["test_accuracy"] > 0.75  # from chance, on held-out reviews
    scorer = Scorer.load(tmp_path / "clf")
    p = scorer.p_positive(["This movie was excellent, a wonderful film. Highly recommended.",
                           "This movie was awful, a boring film. Avoid this one."])
    assert p[0] > 0.5 > p[1]
    assert torch.allclose(torch.sigmoid(scorer.logits(["x y z"])), scorer.p_positive(["x y z"]))
