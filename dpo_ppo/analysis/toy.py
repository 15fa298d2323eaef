"""Small, offline stand-ins for the analyses' tests and benchmark: reviews, a BPE tokenizer, a
randomly initialised GPT-NeoX and a lexicon "classifier".  Nothing here is used by the pipeline.
"""

from __future__ import annotations

import random

import torch

POSITIVE_WORDS = ["excellent", "great", "wonderful", "superb", "lovely", "brilliant"]
NEGATIVE_WORDS = ["awful", "terrible", "boring", "dull", "bad", "horrible"]
_NOUNS = ["movie", "film", "plot", "storyline", "acting", "cast", "ending", "music"]
_FILLER = ["It runs about two hours.", "I saw it on a Sunday.", "The story follows a nurse in Paris.",
           "It was released last year.", "Most of it was shot in the desert."]


def toy_reviews(n: int, seed: int = 0) -> tuple[list[str], list[int]]:
    """``n`` short labelled reviews (1 = positive), alternating labels."""
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        pos = i % 2 == 0
        words = POSITIVE_WORDS if pos else NEGATIVE_WORDS
        parts = []
        for _ in range(rng.randint(2, 5)):
            a, b = rng.sample(_NOUNS, 2)
            parts.append(rng.choice([
                f"This movie was {rng.choice(words)} because it had a {rng.choice(words)} {a} and",
                f"The {a} was {rng.choice(words)}.",
                f"I thought the {a} and the {b} were {rng.choice(words)}.",
                rng.choice(_FILLER),
            ]))
        texts.append(" ".join(parts))
        labels.append(int(pos))
    return texts, labels


def toy_tokenizer(texts: list[str] | None = None, vocab_size: int = 400):
    """A byte-level BPE tokenizer (Pythia-style special tokens) trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = texts if texts is not None else toy_reviews(200)[0]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|padding|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>", pad_token="<|padding|>")


def toy_model(tokenizer=None, *, vocab_size: int | None = None, layers: int = 2, hidden: int = 32, heads: int = 4,
              context: int = 128, seed: int = 0, **overrides):
    """A randomly initialised GPT-NeoX (Pythia's architecture: rotary, parallel residual), in eval mode."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    vocab = vocab_size or len(tokenizer)
    eos = tokenizer.eos_token_id if tokenizer is not None else 0
    pad = tokenizer.pad_token_id if tokenizer is not None else 0
    kwargs = dict(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                  intermediate_size=4 * hidden, max_position_embeddings=context, rotary_pct=0.25,
                  use_parallel_residual=True, tie_word_embeddings=False, bos_token_id=eos, eos_token_id=eos,
                  pad_token_id=pad, hidden_dropout=0.0, attention_dropout=0.0)
    kwargs.update(overrides)
    torch.manual_seed(seed)
    return GPTNeoXForCausalLM(GPTNeoXConfig(**kwargs)).eval()


class LexiconScorer:
    """p(positive) from counting sentiment words: sigmoid(2 * (#positive - #negative))."""

    def __init__(self, positive=POSITIVE_WORDS, negative=NEGATIVE_WORDS):
        self.positive, self.negative = set(positive), set(negative)
        self.calls = 0

    def p_positive(self, texts: list[str]) -> torch.Tensor:
        self.calls += 1
        scores = []
        for t in texts:
            words = [w.strip(".,!?").lower() for w in t.split()]
            scores.append(sum(w in self.positive for w in words) - sum(w in self.negative for w in words))
        return torch.sigmoid(2.0 * torch.tensor(scores, dtype=torch.float32))


class HashScorer:
    """A deterministic "classifier" that reacts to any change of the text: p = crc32(text) / 2**32.

    Useless as a sentiment model, useful to check that two code paths produced the same texts."""

    def __init__(self):
        self.calls = 0

    def p_positive(self, texts: list[str]) -> torch.Tensor:
        import zlib

        self.calls += 1
        return torch.tensor([zlib.crc32(t.encode()) / 2 ** 32 for t in texts], dtype=torch.float32)
