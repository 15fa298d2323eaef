"""The reward: a sequence classifier's log p(positive | text) - log p(negative | text).

``classifier.source=embedded`` trains a tiny GPT-2 from scratch with the corpus tokenizer;
``classifier.source=gpt2`` fine-tunes GPT-2 on the corpus labels (the seed's reward); with
``finetune=false`` the source is taken as a ready sentiment classifier.  Training goes through
transformers' ``Trainer``; held-out accuracy is measured on the test split and kept beside the
weights.  The scorer always takes text, never token ids: its tokenizer need not be the policy's.

A classifier of K > 2 labels (negative / neutral / positive) is scored on its positive and negative
labels (``classifier.positive_label`` / ``negative_label``, by index or id2label name): the reward
is log p(positive) - log p(negative) and ``p_positive`` its sigmoid, p(positive) / (p(positive) +
p(negative)), how much more positive than negative the text reads with the neutral share left
out.  For two labels these are the logit and p(positive) themselves.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import torch
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                          GPT2Config, GPT2ForSequenceClassification, Trainer, TrainingArguments)

from dpo_ppo.config import OFFLINE_HINT
from dpo_ppo.data.models import ensure_pad
from dpo_ppo.runtime.progress import plain as plain_progress
from dpo_ppo.train.sampling import pad_batch

log = logging.getLogger(__name__)


class Scorer:
    """log p(positive) - log p(negative) and its sigmoid from a saved sequence classifier."""

    def __init__(self, model, tokenizer, positive_label: int = 1, max_length: int = 256,
                 batch_size: int = 64, autocast=None, negative_label: int | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.positive_label = positive_label
        self.negative_label = 1 - positive_label if negative_label is None else negative_label
        self.max_length = max_length
        self.batch_size = batch_size
        self.autocast = autocast or contextlib.nullcontext  # a context factory (Runtime.autocast)

    @classmethod
    def load(cls, path, device="cpu", positive_label: int | None = None, max_length: int | None = None,
             batch_size: int = 64, autocast=None):
        path = Path(path)
        meta = json.loads((path / "scorer.json").read_text()) if (path / "scorer.json").exists() else {}
        model = AutoModelForSequenceClassification.from_pretrained(str(path), dtype=torch.float32).to(device)
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        ensure_pad(tokenizer)
        model.config.pad_token_id = tokenizer.pad_token_id
        return cls(model, tokenizer,
                   positive_label if positive_label is not None else meta.get("positive_label", 1),
                   max_length or meta.get("max_length", 256), batch_size=batch_size, autocast=autocast,
                   negative_label=None if positive_label is not None else meta.get("negative_label"))

    @torch.no_grad()
    def logits(self, texts: list[str]) -> torch.Tensor:
        """log p(pos) - log p(neg) for each text (float32 on the CPU).

        Texts are tokenized once and batched by length (a text's score does not depend on its
        batch), so a batch pads to its own longest text rather than to the longest of all."""
        if not len(texts):
            return torch.zeros(0)
        device = next(self.model.parameters()).device
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = torch.empty(len(ids))
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            batch, mask = pad_batch([ids[i] for i in idx], pad, left=self.tokenizer.padding_side == "left",
                                    device=device)
            with self.autocast():
                logits = self.model(input_ids=batch, attention_mask=mask).logits
            logp = torch.log_softmax(logits.float(), -1)
            out[idx] = (logp[:, self.positive_label] - logp[:, self.negative_label]).cpu()
        return out

    def p_positive(self, texts: list[str]) -> torch.Tensor:
        return torch.sigmoid(self.logits(texts))


def _accuracy(scorer: Scorer, ds) -> float:
    p = scorer.p_positive(ds["text"]).numpy()
    labels = np.asarray(ds["label"])
    return float(((p > 0.5).astype(int) == labels).mean())


def load_classifier(key: str, source: str, finetune: bool = False):
    """A hub id or ``save_pretrained`` folder as a sequence classifier and its tokenizer (with a pad
    token): the classifier to fine-tune (``finetune``: a fresh two-label head) or a ready one (the
    proxy's ``classifier.source`` with finetune=false, and the gold's ``eval.gold``)."""
    from dpo_ppo.data.sources import check_pretrained_folder

    if Path(source).expanduser().exists():  # a local folder: say what it lacks
        check_pretrained_folder(key, source, classifier=True, finetune=finetune)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        ensure_pad(tokenizer)
        kwargs = {"num_labels": 2} if finetune else {}
        model = AutoModelForSequenceClassification.from_pretrained(source, **kwargs)
    except OSError as e:
        raise RuntimeError(f"{key}={source!r}: could not load it "
                           f"({str(e).splitlines()[0][:200]}). {OFFLINE_HINT}.") from e
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


# --------------------------------------------------------------------------- the gold reward


class LexiconGold:
    """The gold reward of the synthetic corpus: the generator's own log-odds that a text is a
    positive review (``corpus.lexicon_logit``: its sentiment words and verdict sentences, weighed
    by how often the generator lets each name the label).  It has the ``Scorer`` interface
    (``logits`` / ``p_positive``) and no weights: nothing trained it, so optimising the trained
    classifier cannot have bent it."""

    name = "lexicon"

    def logits(self, texts: list[str]) -> torch.Tensor:
        from dpo_ppo.data.corpus import lexicon_logit

        return torch.tensor([lexicon_logit(t) for t in texts], dtype=torch.float32)

    def p_positive(self, texts: list[str]) -> torch.Tensor:
        return torch.sigmoid(self.logits(texts))


GOLD_MAX_LENGTH = 512  # tokens a gold classifier reads (its own tokenizer's; evaluation texts are far shorter)


def gold_source(eval_cfg, data_source: str) -> str | None:
    """What ``eval.gold`` names once ``auto`` is read: ``lexicon`` on the synthetic corpus, nothing
    (None) on any other; ``none`` is None; anything else (a hub id or folder) as it is."""
    gold = eval_cfg.gold
    if gold in (None, "none"):
        return None
    if gold == "auto":
        return "lexicon" if data_source == "synthetic" else None
    return gold


def load_gold(eval_cfg, data_source: str, device="cpu", hw=None):
    """The gold reward evaluation reports beside the proxy (the trained classifier): ``LexiconGold``
    for ``lexicon``, a ready sentiment classifier (hub id or ``save_pretrained`` folder, loaded as
    ``classifier.source`` with finetune=false is, labels ``eval.gold_positive_label`` /
    ``gold_negative_label``) as a ``Scorer``; None when there is none."""
    source = gold_source(eval_cfg, data_source)
    if source is None:
        return None
    if source == "lexicon":
        return LexiconGold()
    from dpo_ppo.data.sources import classifier_labels

    model, tokenizer = load_classifier("eval.gold", source)
    positive, negative = classifier_labels({int(k): str(v) for k, v in model.config.id2label.items()},
                                           eval_cfg.gold_positive_label, eval_cfg.gold_negative_label,
                                           keys=("eval.gold_positive_label", "eval.gold_negative_label"))
    scorer = Scorer(model.to(device), tokenizer, positive, GOLD_MAX_LENGTH, negative_label=negative,
                    **({"batch_size": hw.forward_batch_size, "autocast": hw.autocast} if hw else {}))
    scorer.name = source
    return scorer


def build_classifier(cls_cfg, corpus, base_path: Path, path: Path, seed: int, device, hw=None) -> dict:
    """Train (or take) the classifier, save it to ``path``; returns its held-out accuracy."""
    torch.manual_seed(seed)
    if cls_cfg.source == "embedded":
        tokenizer = AutoTokenizer.from_pretrained(str(base_path))  # the corpus BPE
        ensure_pad(tokenizer)
        config = GPT2Config(vocab_size=len(tokenizer), n_positions=cls_cfg.max_length,
                            n_embd=cls_cfg.hidden_size, n_layer=cls_cfg.num_layers, n_head=cls_cfg.num_heads,
                            num_labels=2, pad_token_id=tokenizer.pad_token_id,
                            bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
        model = GPT2ForSequenceClassification(config)
    else:
        model, tokenizer = load_classifier("classifier.source", cls_cfg.source, cls_cfg.finetune)
    positive, negative = cls_cfg.positive_label, None
    if not cls_cfg.finetune:  # a ready classifier: its labels by index or id2label name
        from dpo_ppo.data.sources import classifier_labels

        positive, negative = classifier_labels({int(k): str(v) for k, v in model.config.id2label.items()},
                                               cls_cfg.positive_label, cls_cfg.negative_label)
    info = {}
    if cls_cfg.finetune:
        train = corpus["train"].shuffle(seed=seed)
        train = train.select(range(min(cls_cfg.train_examples, len(train))))

        def tok(batch):
            return tokenizer(batch["text"], truncation=True, max_length=cls_cfg.max_length)

        train = train.map(tok, batched=True, remove_columns=["text"], desc="tokenizing").rename_column("label", "labels")
        args = TrainingArguments(
            output_dir=str(path / "_trainer"), num_train_epochs=cls_cfg.epochs,
            per_device_train_batch_size=cls_cfg.batch_size, learning_rate=cls_cfg.lr,
            warmup_steps=10, weight_decay=0.01, lr_scheduler_type="linear",
            logging_steps=25, save_strategy="no", report_to=[], seed=seed, disable_tqdm=plain_progress(),
            use_cpu=str(device) == "cpu", dataloader_num_workers=0,
            bf16=bool(hw is not None and hw.bf16),
        )
        trainer = Trainer(model=model, args=args, train_dataset=train,
                          data_collator=DataCollatorWithPadding(tokenizer))
        info["train_loss"] = float(trainer.train().training_loss)
        shutil.rmtree(path / "_trainer", ignore_errors=True)
    model = model.to(device)
    scorer = Scorer(model, tokenizer, positive, cls_cfg.max_length, negative_label=negative,
                    **({"batch_size": hw.forward_batch_size, "autocast": hw.autocast} if hw else {}))
    test = corpus["test"].shuffle(seed=seed).select(range(min(2000, len(corpus["test"]))))
    info["test_accuracy"] = _accuracy(scorer, test)
    log.info("classifier: held-out accuracy %.3f on %d test reviews", info["test_accuracy"], len(test))
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    labels = {"positive_label": positive}
    if negative is not None and negative != 1 - positive:  # a binary scorer.json stays as it was
        labels["negative_label"] = negative
    (path / "scorer.json").write_text(json.dumps({**labels, "max_length": cls_cfg.max_length, **info}, indent=1))
    return info
