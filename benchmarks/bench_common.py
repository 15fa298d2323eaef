"""Model shapes shared by the benchmark scripts, built (random weights, word-level tokenizer) by the
tests' fixtures module, tests/fixtures.py, which this puts on ``sys.path``."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fixtures import toy_model, word_tokenizer  # noqa: E402

SHAPES = {  # hidden, layers, heads, vocab, context
    "embedded": (128, 4, 8, 1024, 256),
    "pythia70m": (512, 6, 8, 50304, 2048),
}


def build(shape: str, device, seed: int = 0):
    """A randomly initialised GPT-NeoX of the named shape (weights drawn after
    ``torch.manual_seed(seed)``, in eval mode) on ``device``, and its word-level tokenizer."""
    hidden, layers, heads, vocab, context = SHAPES[shape]
    tok = word_tokenizer(vocab)
    model = toy_model(tok, hidden=hidden, layers=layers, heads=heads, context=context, seed=seed)
    return model.to(device), tok
