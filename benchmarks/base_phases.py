"""Pretraining phases for the embedded base's head roles, as measured for docs/analyses.md ("Marked
repeats over the whole vocabulary"): builds the embedded default's tokenizer and tiny GPT-NeoX and
trains it through the phases named, in order, printing each type's best head score after each (the
analysis suite's detector, ``base_heads.head_roles``).  An experiment, not the default: the base that
jobs build is ``dpo_ppo.data.models.build_base``.

    THREADS=1 python benchmarks/base_phases.py MARKED_STEPS REPEAT_SHARE PHASES
    e.g. python benchmarks/base_phases.py 1200 0.3 marked,induction_3000,corpus   # all three roles

Phases: ``marked`` (MARKED_STEPS steps of ``BOS t1 m1 t2 m2 ...``: t random, or with REPEAT_SHARE one
seen earlier; m says whether t occurred before; loss on the markers), ``induction`` (the default's
span phase, ``model.pretrain_induction_steps``), ``induction_N`` (the span phase for N steps),
``mixed`` (half marked, half spans, MARKED_STEPS steps), ``corpus`` (the default's corpus phase).
Prints figures, asserts nothing.
"""
import os, sys, time, tempfile, torch
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from base_heads import head_roles
from hydra import compose, initialize_config_dir
from dpo_ppo.main import CONF_DIR
from dpo_ppo.config import to_typed
from dpo_ppo.data.corpus import make_synthetic
from dpo_ppo.data import models as M
from transformers import DataCollatorForLanguageModeling, GPTNeoXForCausalLM
torch.set_num_threads(int(os.environ.get("THREADS", "1")))
dup_steps, share_rep = int(sys.argv[1]), float(sys.argv[2])
with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
    cfg = to_typed(compose("config"))
mc = cfg.model
corpus = make_synthetic(cfg.data.num_reviews, cfg.data.test_fraction, cfg.data.seed)
texts = corpus["train"]["text"]
torch.manual_seed(0)
tok = M.train_tokenizer(texts, mc.vocab_size)
model = GPTNeoXForCausalLM(M.tiny_neox_config(mc, tok))
blocks = M._lm_blocks(texts, tok, mc.pretrain_seq_len)
vocab = min(len(tok), model.config.vocab_size)
base = DataCollatorForLanguageModeling(tok, mlm=False)

class Marked:
    """BOS t1 m1 t2 m2 ...: t random from the vocabulary, or (share_rep) a token seen earlier in the
    sequence; m = NEW or REP marker: whether t occurred before. Loss on markers only."""
    def __init__(self, seed):
        special = set(tok.all_special_ids)
        allowed = [i for i in range(vocab) if i not in special]
        self.new, self.rep = allowed[-1], allowed[-2]
        self.allowed = torch.tensor(allowed[:-2])
        self.bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        self.g = torch.Generator().manual_seed(seed)
    def __call__(self, examples):
        batch = base(examples)
        n, L = batch["input_ids"].shape
        for i in range(n):
            seq, lab, seen = [self.bos], [-100], []
            while len(seq) < L:
                if seen and float(torch.rand(1, generator=self.g)) < share_rep:
                    t = seen[int(torch.randint(len(seen), (1,), generator=self.g))]
                else:
                    t = int(self.allowed[int(torch.randint(len(self.allowed), (1,), generator=self.g))])
                m = self.rep if t in seen else self.new
                seen.append(t)
                seq += [t, m]; lab += [-100, m]
            batch["input_ids"][i] = torch.tensor(seq[:L]); batch["labels"][i] = torch.tensor(lab[:L])
            if "attention_mask" in batch: batch["attention_mask"][i] = 1
        return batch

def score(tag):
    s = head_roles(model, tok, corpus["test"]["text"])
    print(tag, {k: (round(float(v.max()), 3), f"L{int(v.flatten().argmax()) // v.shape[1]}H{int(v.flatten().argmax()) % v.shape[1]}") for k, v in s.items()}, flush=True)

out = Path(tempfile.mkdtemp())


def train(collate, steps: int, lr: float = 1e-3, schedule: str = "constant") -> float:
    return M._train_lm(model, blocks, collate, out, 0, False, steps=steps, lr=lr, batch=32, schedule=schedule)


def spans() -> M.RepeatedSpans:  # the span phase's collator, as build_base's first phase makes it
    return M.RepeatedSpans(base, tok, 1.0, vocab, 1)


c0 = time.process_time()
for phase in sys.argv[3].split(","):
    if phase == "marked":
        loss = train(Marked(5), dup_steps)
    elif phase == "mixed":  # half marked sequences, half repeated spans, from step 0
        repeated, marked = spans(), Marked(5)
        def mixed(examples, g=torch.Generator().manual_seed(9)):
            a, b = repeated(examples), marked(examples)
            pick = torch.rand(len(examples), generator=g) < 0.5
            for k in a:
                if k in b and torch.is_tensor(a[k]): a[k][pick] = b[k][pick]
            return a
        loss = train(mixed, dup_steps)
    elif phase == "induction":
        loss = train(spans(), mc.pretrain_induction_steps)
    elif phase.startswith("induction_") and phase[10:].isdigit():
        loss = train(spans(), int(phase[10:]))
    elif phase == "corpus":
        loss = train(M.RepeatedSpans(base, tok, mc.pretrain_repeats, vocab, 0), mc.pretrain_steps,
                     lr=mc.pretrain_lr, schedule="cosine")
    else:
        sys.exit(f"base_phases.py: unknown phase {phase!r}; choose marked, mixed, induction, induction_N, corpus")
    print(phase, "phase loss", loss, f"cpu {time.process_time()-c0:.0f}", flush=True); score("after " + phase)
