"""The reference policy and its tokenizer: the embedded tiny GPT-NeoX, or a hub model.

The embedded default trains a byte-level BPE tokenizer on the corpus (``tokenizers``, well under a
second), builds a GPT-NeoX with Pythia's architecture at toy size and pretrains it on the reviews
with transformers' ``Trainer``, so that it writes review-like text of mixed sentiment.  A hub id
(EleutherAI/pythia-70m) or a local ``save_pretrained`` folder is loaded as it is.  Either way the
result is saved with ``save_pretrained`` into the artifact folder, and every later stage loads it
from there, so both worlds take the same path.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from datasets import Dataset

from dpo_ppo.config import OFFLINE_HINT
from dpo_ppo.runtime.progress import plain as plain_progress
from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling,
                          GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast, Trainer,
                          TrainingArguments)

log = logging.getLogger(__name__)

EOS = "<|endoftext|>"
PAD = "<|padding|>"



def train_tokenizer(texts, vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2/Pythia style) trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS,
                                   unk_token=EOS, pad_token=PAD)


def ensure_pad(tokenizer) -> None:
    """Pythia and GPT-2 ship no pad token; use EOS, as TRL does."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def tiny_neox_config(model_cfg, tokenizer, **overrides) -> GPTNeoXConfig:
    """Pythia's architecture (rotary on a quarter of each head, parallel residual, untied
    embeddings) at ``model_cfg``'s size, no dropout.  ``overrides`` replace or add GPTNeoXConfig
    arguments (the tests' toy models use them)."""
    return GPTNeoXConfig(**dict(
        vocab_size=len(tokenizer), hidden_size=model_cfg.hidden_size,
        num_hidden_layers=model_cfg.num_layers, num_attention_heads=model_cfg.num_heads,
        intermediate_size=4 * model_cfg.hidden_size, max_position_embeddings=model_cfg.context_length,
        rotary_pct=0.25, use_parallel_residual=True, tie_word_embeddings=False,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, hidden_dropout=0.0, attention_dropout=0.0,
    ) | overrides)


def _lm_blocks(texts, tokenizer, seq_len: int) -> Dataset:
    """Reviews joined by EOS and cut into blocks of ``seq_len`` tokens (GPT-style packing)."""
    ids: list[int] = []
    for enc in tokenizer(list(texts))["input_ids"]:
        ids.extend(enc + [tokenizer.eos_token_id])
    n = len(ids) // seq_len
    return Dataset.from_dict({"input_ids": [ids[i * seq_len:(i + 1) * seq_len] for i in range(n)]})


class RepeatedSpans:
    """A collator that replaces a share of each batch by fresh ``BOS r r r ...`` sequences.

    ``r`` is a span of 8 to ``seq_len // 2`` tokens drawn uniformly from the non-special vocabulary
    (the tokens of the induction probe, ``analysis.heads.repeated_random_tokens``), repeated until
    the sequence is full.  From its second copy on, every token is predictable only by looking up
    what followed the current token last time: the job of an induction head, which needs a
    previous-token head beside it (Olsson et al. 2022).  The span's length varies so that no head
    can do it by position alone (with one fixed length a head attending a fixed distance back
    scores as an induction head on a probe of that length: docs/analyses.md).  The corpus never
    asks for that (its templates are predictable from position and the last few words), which is
    why the base pretrained on reviews alone has no such heads.  Spans are drawn anew every step from a
    generator seeded with the build's seed: a fixed set of spans would be memorised instead (that
    is how the first tries failed, docs/analyses.md).  The rest of the batch is the corpus, so the
    base still learns the reviews' language.
    """

    def __init__(self, collate, tokenizer, share: float, vocab: int, seed: int):
        self.collate, self.share = collate, share
        special = set(tokenizer.all_special_ids)
        self.allowed = torch.tensor([i for i in range(vocab) if i not in special])
        self.bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        self.g = torch.Generator().manual_seed(seed)

    def __call__(self, examples):
        batch = self.collate(examples)
        ids = batch["input_ids"]
        n, seq_len = ids.shape
        for i in (torch.rand(n, generator=self.g) < self.share).nonzero().flatten().tolist():
            h = int(torch.randint(min(8, seq_len // 2), seq_len // 2 + 1, (1,), generator=self.g))
            r = self.allowed[torch.randint(len(self.allowed), (h,), generator=self.g)]
            seq = torch.cat([torch.tensor([self.bos]), r.repeat(seq_len // h + 1)])[:seq_len]
            ids[i] = seq
            batch["labels"][i] = seq
            batch["labels"][i, 0] = -100
            if "attention_mask" in batch:
                batch["attention_mask"][i] = 1
        return batch


def pretrain(model, tokenizer, texts, model_cfg, out_dir: Path, seed: int, bf16: bool = False) -> float:
    """Causal-LM pretraining with ``Trainer``; returns the last logged training loss.

    With ``pretrain_induction_steps`` > 0 a first phase trains on repeated random spans alone
    (``RepeatedSpans`` at share 1, constant learning rate 1e-3) until induction and previous-token
    heads form, then the corpus phase runs as before with ``pretrain_repeats`` of each batch still
    spans, so that the heads are kept while the model learns the reviews (docs/analyses.md)."""
    blocks = _lm_blocks(texts, tokenizer, model_cfg.pretrain_seq_len)
    vocab = min(len(tokenizer), model.config.vocab_size)
    base = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    warm = model_cfg.pretrain_induction_steps
    if warm > 0:
        _train_lm(model, blocks, RepeatedSpans(base, tokenizer, 1.0, vocab, seed + 1), out_dir, seed, bf16,
                  steps=warm, lr=1e-3, batch=model_cfg.pretrain_batch_size, schedule="constant")
    share = model_cfg.pretrain_repeats
    collate = RepeatedSpans(base, tokenizer, share, vocab, seed) if share > 0 else base
    return _train_lm(model, blocks, collate, out_dir, seed, bf16, steps=model_cfg.pretrain_steps,
                     lr=model_cfg.pretrain_lr, batch=model_cfg.pretrain_batch_size, schedule="cosine")


def _train_lm(model, blocks, collate, out_dir: Path, seed: int, bf16: bool, *, steps: int, lr: float,
              batch: int, schedule: str) -> float:
    args = TrainingArguments(
        output_dir=str(out_dir / "_trainer"), max_steps=steps, per_device_train_batch_size=batch,
        learning_rate=lr, lr_scheduler_type=schedule,
        warmup_steps=max(1, steps // 20) if schedule == "cosine" else 0, weight_decay=0.01,
        logging_steps=max(1, steps // 10), save_strategy="no", report_to=[],
        seed=seed, use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0,
        disable_tqdm=plain_progress(), bf16=bf16,
    )
    trainer = Trainer(model=model, args=args, train_dataset=blocks, data_collator=collate)
    result = trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return float(losses[-1] if losses else result.training_loss)


def build_base(model_cfg, corpus, path: Path, seed: int, bf16: bool = False) -> dict:
    """Write the reference policy and its tokenizer to ``path``; returns facts for the log."""
    if model_cfg.source == "embedded":
        torch.manual_seed(seed)
        texts = corpus["train"]["text"]
        tokenizer = train_tokenizer(texts, model_cfg.vocab_size)
        model = GPTNeoXForCausalLM(tiny_neox_config(model_cfg, tokenizer))
        loss = pretrain(model, tokenizer, texts, model_cfg, path, seed, bf16=bf16)
        import shutil
        shutil.rmtree(path / "_trainer", ignore_errors=True)
        info = {"pretrain_loss": loss}
    else:
        model, tokenizer = load_hub_lm(model_cfg.source, model_cfg.revision)
        info = {}
    ensure_pad(tokenizer)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    info["parameters"] = sum(p.numel() for p in model.parameters())
    return info


def load_hub_lm(source: str, revision: str | None = None):
    from dpo_ppo.data.sources import check_pretrained_folder

    if Path(source).expanduser().exists():  # a local folder: say what it lacks, not a loader's guess
        check_pretrained_folder("model.source", source)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, revision=revision)
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
    except OSError as e:
        raise RuntimeError(f"model.source={source!r}: could not load it ({str(e).splitlines()[0][:200]}). "
                           f"{OFFLINE_HINT}, or point model.source at a save_pretrained folder.") from e
    return model, tokenizer


def load_policy(path, device: str | torch.device = "cpu"):
    """Load a saved causal LM and its tokenizer (float32, on ``device``)."""
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).to(device)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    ensure_pad(tokenizer)
    return model, tokenizer
