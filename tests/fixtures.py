"""Offline stand-ins shared by the tests and the benchmarks: toy reviews, tokenizers, a randomly
initialised tiny GPT-NeoX, fake sentiment scorers, and a reader for offline W&B runs.

Tests import it as ``from fixtures import ...`` (pytest puts tests/ on ``sys.path``); the benchmark
scripts put tests/ on ``sys.path`` themselves (benchmarks/bench_common.py).  Nothing in dpo_ppo/
imports it, so none of it ships in the wheel.
"""

from __future__ import annotations

import json
import random
import struct
import time
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

import torch
import torch.nn.functional as F

# --------------------------------------------------------------------------- texts

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


# --------------------------------------------------------------------------- tokenizers


def toy_tokenizer(texts: list[str] | None = None, vocab_size: int = 400):
    """The pipeline's byte-level BPE tokenizer (``dpo_ppo.data.models.train_tokenizer``: Pythia-style
    special tokens) trained on ``texts``, by default 200 toy reviews."""
    from dpo_ppo.data.models import train_tokenizer

    return train_tokenizer(texts if texts is not None else toy_reviews(200)[0], vocab_size)


def word_tokenizer(vocab_size: int, specials_first: bool = False):
    """A word-level tokenizer of ``vocab_size`` ids: the words ``t0``, ``t1``, ... and ``<eos>``,
    ``<pad>``, last (or first, at ids 0 and 1, with ``specials_first``).  Every id decodes to a
    word, so sampled completions always make text for a scorer; text splits on whitespace."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [f"t{i}" for i in range(vocab_size - 2)]
    tokens = ["<eos>", "<pad>"] + words if specials_first else words + ["<eos>", "<pad>"]
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token="<eos>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")


# --------------------------------------------------------------------------- the model


class _IdsOnly:
    """What ``tiny_neox_config`` reads from a tokenizer, for models fed token ids directly:
    ``vocab_size`` ids, EOS = pad = 0."""

    eos_token_id = pad_token_id = 0

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def __len__(self) -> int:
        return self.vocab_size


def toy_model(tokenizer=None, *, vocab_size: int | None = None, layers: int = 2, hidden: int = 32,
              heads: int = 4, context: int = 128, seed: int = 0, **overrides):
    """A randomly initialised GPT-NeoX built as the pipeline builds its embedded base
    (``dpo_ppo.data.models.tiny_neox_config``: Pythia's architecture, no dropout), in eval mode.

    The weights are drawn after ``torch.manual_seed(seed)``.  Without a tokenizer, ``vocab_size``
    ids with EOS = pad = 0; ``overrides`` are further ``GPTNeoXConfig`` arguments
    (``intermediate_size``, ``rotary_pct``, ``initializer_range``, ``attn_implementation``, ...).
    """
    from transformers import GPTNeoXForCausalLM

    from dpo_ppo.data.models import tiny_neox_config

    size = SimpleNamespace(hidden_size=hidden, num_layers=layers, num_heads=heads, context_length=context)
    if vocab_size is not None:
        overrides = {"vocab_size": vocab_size, **overrides}
    config = tiny_neox_config(size, tokenizer if tokenizer is not None else _IdsOnly(vocab_size), **overrides)
    torch.manual_seed(seed)
    return GPTNeoXForCausalLM(config).eval()


# --------------------------------------------------------------------------- fake scorers


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
        self.calls += 1
        return torch.tensor([zlib.crc32(t.encode()) / 2 ** 32 for t in texts], dtype=torch.float32)


# --------------------------------------------------------------------------- DPO inputs


def token_pairs(n: int, seed: int = 0, texts: bool = False):
    """``n`` preference pairs of random token ids (prompt 4, chosen 5, rejected 3 tokens) as the
    prefs stage saves them; ``texts`` adds placeholder text columns."""
    from datasets import Dataset

    g = torch.Generator().manual_seed(seed)

    def ids(length: int) -> list[int]:
        return torch.randint(4, 20, (length,), generator=g).tolist()

    columns = {"prompt_ids": [ids(4) for _ in range(n)], "chosen_ids": [ids(5) for _ in range(n)],
               "rejected_ids": [ids(3) for _ in range(n)]}
    if texts:
        columns = {"prompt": ["p"] * n, "chosen": ["c"] * n, "rejected": ["r"] * n, **columns}
    return Dataset.from_dict(columns)


def dpo_algo(**overrides):
    """The ``algorithm`` group ``train_dpo`` reads, for token_pairs: batch 4, one epoch, lr 1e-2."""
    from omegaconf import OmegaConf

    base = {"beta": 0.1, "loss_type": "sigmoid", "label_smoothing": 0.0, "lr": 1e-2, "weight_decay": 0.0,
            "adam_eps": 1e-8, "max_grad_norm": 1e9, "batch_size": 4, "epochs": 1.0, "prefix_len": 4,
            "prefix_len_max": None, "completion_len": 6, "snapshot_every": 1000}
    return OmegaConf.create({**base, **overrides})


# --------------------------------------------------------------------------- offline W&B runs


def wandb_records(data: bytes):
    """Yield the payloads of an offline run's ``.wandb`` file: after W&B's 7-byte header,
    LevelDB-log framed protobuf ``Record`` messages."""
    block, header = 32768, 7
    pos, pending = 7, b""
    while pos + header <= len(data):
        left = block - pos % block
        if left < header:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + header])
        pos += header
        chunk = data[pos:pos + length]
        pos += length
        if kind == 0 and length == 0:
            continue
        if kind == 1:  # FULL
            yield chunk
        elif kind == 2:  # FIRST
            pending = chunk
        elif kind == 3:  # MIDDLE
            pending += chunk
        elif kind == 4:  # LAST
            yield pending + chunk
            pending = b""


def read_offline_run(run_dir: Path, wait_s: float = 20.0) -> dict:
    """Config, history rows, summary, run facts (id, group, tags, ...), metric definitions
    (``define_metric``), logged artifacts and saved files of an offline W&B run folder.

    W&B's service may still be flushing the file for a moment after ``finish()`` returns, so this
    re-reads it for up to ``wait_s`` seconds until the run's exit record is there.
    """
    deadline = time.time() + wait_s
    while True:
        out = _read_offline_run_once(Path(run_dir))
        if out["exit_code"] is not None or time.time() > deadline:
            return out
        time.sleep(0.2)


def _read_offline_run_once(run_dir: Path) -> dict:
    from wandb.proto import wandb_internal_pb2 as pb

    files = list(run_dir.glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"no run-*.wandb in {run_dir}")
    data = files[0].read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{files[0]} is not a W&B log")
    out = {"config": {}, "history": [], "summary": {}, "run": {}, "metrics": {}, "exit_code": None,
           "artifacts": [], "files": []}
    for payload in wandb_records(data):
        rec = pb.Record()
        rec.ParseFromString(payload)
        which = rec.WhichOneof("record_type")
        if which == "run":
            out["run"] = {"group": rec.run.run_group, "job_type": rec.run.job_type,
                          "project": rec.run.project, "name": rec.run.display_name,
                          "id": rec.run.run_id, "tags": list(rec.run.tags)}
            for item in rec.run.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif which == "config":
            for item in rec.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif which == "history":
            row = {}
            for item in rec.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json)
            out["history"].append(row)
        elif which == "summary":
            for item in rec.summary.update:
                key = item.key or "/".join(item.nested_key)
                out["summary"][key] = json.loads(item.value_json)
        elif which == "metric":  # define_metric
            m = rec.metric
            summary = [f.name for f, v in m.summary.ListFields() if v] if m.HasField("summary") else []
            out["metrics"][m.name or m.glob_name] = {"step_metric": m.step_metric or None, "summary": summary}
        elif which == "artifact":  # log_artifact / log_model: name, type, aliases, metadata, manifest paths
            a = rec.artifact
            out["artifacts"].append({"name": a.name, "type": a.type, "aliases": list(a.aliases),
                                     "metadata": json.loads(a.metadata or "{}"),
                                     "paths": [c.path for c in a.manifest.contents],
                                     "refs": [c.ref for c in a.manifest.contents if c.ref]})
        elif which == "files":  # run.save
            out["files"] += [f.path for f in rec.files.files]
        elif which == "exit":
            out["exit_code"] = rec.exit.exit_code
    return out


def completion_logprobs(model, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
                        *, pad_id: int = 0, batch_size: int = 64, per_token: bool = False,
                        grad: bool = False):
    """log p(completion | prompt) under ``model``: per sequence (summed), or per token; a plain
    forward pass the tests hold the package's log-probs and KL estimates against.

    Returns a tensor of shape [N] (sum over completion tokens), or with ``per_token`` a list of
    1-D tensors, one per completion.
    """
    device = next(model.parameters()).device
    sums, tokens = [], []
    ctx = torch.enable_grad() if grad else torch.no_grad()
    with ctx:
        for start in range(0, len(prompts), batch_size):
            ps = prompts[start: start + batch_size]
            cs = completions[start: start + batch_size]
            from dpo_ppo.train.sampling import pad_batch

            ids, mask = pad_batch([list(p) + list(c) for p, c in zip(ps, cs)], pad_id, left=False,
                                  device=device)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            logp = torch.gather(F.log_softmax(logits, -1), 2, ids[:, 1:, None]).squeeze(-1)
            for row, (p, c) in enumerate(zip(ps, cs)):
                lp = logp[row, len(p) - 1: len(p) - 1 + len(c)]
                if per_token:
                    tokens.append(lp)
                else:
                    sums.append(lp.sum())
    if per_token:
        return tokens
    return torch.stack(sums) if sums else torch.zeros(0)
