"""Model shapes shared by the benchmark scripts, built (random weights, word-level tokenizer) by the
tests' fixtures module, tests/fixtures.py, which this puts on ``sys.path``."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fixtures import toy_model, word_tokenizer  # noqa: E402,F401  (word_tokenizer: for the scripts)
from transformers import GPTNeoXForSequenceClassification  # noqa: E402

SHAPES = {  # hidden, layers, heads, vocab, context
    "embedded": (128, 4, 8, 1024, 256),
    "pythia70m": (512, 6, 8, 50304, 2048),
}


def build_model(shape: str, tok, device, seed: int = 0):
    """A randomly initialised GPT-NeoX causal LM of the named shape (weights drawn after
    ``torch.manual_seed(seed)``, in eval mode) on ``device``, for ``tok``."""
    hidden, layers, heads, vocab, context = SHAPES[shape]
    return toy_model(tok, hidden=hidden, layers=layers, heads=heads, context=context, seed=seed).to(device)


def build(shape: str, device, seed: int = 0):
    """``build_model`` with its word-level tokenizer (every id decodes to a word): (model, tokenizer)."""
    tok = word_tokenizer(SHAPES[shape][3])
    return build_model(shape, tok, device, seed), tok


def build_scorer(shape: str, tok, device, seed: int = 0) -> GPTNeoXForSequenceClassification:
    """A randomly initialised GPT-NeoX of the named shape with a one-logit sequence-classification
    head (a reward or value model)."""
    config = build_model(shape, tok, "cpu", seed).config
    config.num_labels = 1
    return GPTNeoXForSequenceClassification(config).to(device)
