"""Model shapes and a word-level tokenizer shared by the benchmark scripts (random weights)."""

from __future__ import annotations

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (GPTNeoXConfig, GPTNeoXForCausalLM, GPTNeoXForSequenceClassification,
                          PreTrainedTokenizerFast)

SHAPES = {  # hidden, layers, heads, vocab, context
    "embedded": (128, 4, 8, 1024, 256),
    "pythia70m": (512, 6, 8, 50304, 2048),
}


def word_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """Every id decodes to a word, so sampled completions always make text for a scorer."""
    vocab = {f"t{i}": i for i in range(vocab_size - 2)} | {"<eos>": vocab_size - 2, "<pad>": vocab_size - 1}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")


def neox_config(shape: str, tok, **extra) -> GPTNeoXConfig:
    """GPT-NeoX config of the named shape (Pythia's rotary fraction, no dropout); ``extra`` e.g.
    ``num_labels=1`` for a sequence-classification (reward or value) model."""
    hidden, layers, heads, vocab, context = SHAPES[shape]
    return GPTNeoXConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, intermediate_size=4 * hidden,
                         max_position_embeddings=context, rotary_pct=0.25, hidden_dropout=0.0,
                         attention_dropout=0.0, eos_token_id=tok.eos_token_id,
                         bos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **extra)


def build_model(shape: str, tok, device) -> GPTNeoXForCausalLM:
    """A randomly initialised GPT-NeoX causal LM of the named shape."""
    model = GPTNeoXForCausalLM(neox_config(shape, tok)).to(device)
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


def build_scorer(shape: str, tok, device) -> GPTNeoXForSequenceClassification:
    """A randomly initialised GPT-NeoX with a one-logit sequence-classification head (a reward or
    value model of the named shape)."""
    return GPTNeoXForSequenceClassification(neox_config(shape, tok, num_labels=1)).to(device)
