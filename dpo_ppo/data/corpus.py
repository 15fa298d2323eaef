"""The corpus: labelled movie reviews with a train/test split (label 1 = positive, 0 = negative).

``data.source=synthetic`` writes reviews here, deterministically from ``data.seed``: sentences
built from templates with sentiment-bearing adjectives, contrasts ("the plot was dull, but the
cast was superb"), neutral filler (running time, who plays whom) and a varied number of sentences,
so that a review's label is what most of its opinions say, not one keyword.  Anything else is a
``datasets`` hub id (stanfordnlp/imdb) or a folder written by ``save_to_disk``.
"""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path

from datasets import Dataset, DatasetDict

from dpo_ppo.config import OFFLINE_HINT

log = logging.getLogger(__name__)

POSITIVE = ["excellent", "great", "wonderful", "brilliant", "superb", "moving", "delightful",
            "charming", "beautiful", "masterful", "gripping", "hilarious", "memorable", "stunning",
            "fantastic", "enjoyable", "clever", "touching", "powerful", "fresh", "perfect",
            "inspiring", "lovely", "thrilling"]
NEGATIVE = ["awful", "terrible", "boring", "dull", "weak", "painful", "clumsy", "tedious",
            "predictable", "horrible", "bland", "mediocre", "annoying", "forgettable", "lazy",
            "messy", "disappointing", "ridiculous", "poor", "flat", "lifeless", "silly", "bad",
            "unbearable"]
NOUNS = ["movie", "film", "plot", "storyline", "acting", "cast", "script", "direction",
         "soundtrack", "ending", "cinematography", "dialogue", "characters", "pacing", "effects",
         "score", "editing", "humor", "story", "lead performance"]
NAMES = ["Anna Berg", "Tom Hale", "Maria Lopez", "James Reed", "Sofia Kim", "David Stone",
         "Clara Wells", "Omar Farid", "Lucy Grant", "Peter Novak", "Emma Clarke", "Jack Moore"]
ROLES = ["detective", "teacher", "young soldier", "retired boxer", "nurse", "journalist",
         "painter", "small-town mayor", "scientist", "widow", "thief", "pilot"]
PLACES = ["a small village", "New York", "a space station", "post-war Berlin", "the desert",
          "a boarding school", "a fishing town", "Paris", "a haunted house", "the suburbs"]
ACTIONS = ["searches for a lost brother", "tries to save a failing business",
           "falls in love with a stranger", "uncovers an old secret", "plans one last heist",
           "returns home after many years", "fights to clear her name", "trains for a final match"]
PEOPLE = ["my friends", "my family", "my wife", "my husband", "the kids", "a friend", "my parents"]
INTENS = ["very", "really", "truly", "quite", "so", "incredibly", "rather", "absolutely"]
POS_VERDICT = ["I would recommend it to anyone.", "Highly recommended.", "I loved every minute of it.",
               "A must see.", "I will watch it again.", "Ten out of ten.", "Easily one of the best this year."]
NEG_VERDICT = ["I would not recommend it.", "Avoid this one.", "I wanted my money back.",
               "A waste of time.", "I almost walked out.", "One out of ten.", "Easily one of the worst this year."]


def _opinion(rng: random.Random, positive: bool) -> str:
    adj = lambda: rng.choice(POSITIVE if positive else NEGATIVE)  # noqa: E731
    other = lambda: rng.choice(NEGATIVE if positive else POSITIVE)  # noqa: E731
    noun, noun2 = rng.sample(NOUNS, 2)
    templates = [
        lambda: f"The {noun} was {adj()}.",
        lambda: f"I thought the {noun} was {rng.choice(INTENS)} {adj()}.",
        lambda: f"This movie was {adj()} because it had a {adj()} {noun} and {adj()} {noun2}.",
        lambda: f"{rng.choice(NAMES)} gave a {adj()} performance as the {rng.choice(ROLES)}.",
        lambda: f"Overall, a {adj()} film.",
        lambda: f"The {noun} was {other()}, but the {noun2} was {rng.choice(INTENS)} {adj()}.",
        lambda: f"What a {adj()} {noun}.",
        lambda: f"The {noun} felt {adj()} and the {noun2} was {adj()}.",
        lambda: rng.choice(POS_VERDICT if positive else NEG_VERDICT),
    ]
    return rng.choice(templates)()


def _filler(rng: random.Random) -> str:
    templates = [
        lambda: f"The film runs about {rng.randint(80, 180)} minutes.",
        lambda: f"It was released in {rng.randint(1950, 2024)}.",
        lambda: f"{rng.choice(NAMES)} plays a {rng.choice(ROLES)} who {rng.choice(ACTIONS)}.",
        lambda: f"The story follows a {rng.choice(ROLES)} in {rng.choice(PLACES)}.",
        lambda: f"I saw it with {rng.choice(PEOPLE)} on a {rng.choice(['Sunday', 'Friday night', 'rainy day', 'long flight'])}.",
        lambda: f"It is directed by {rng.choice(NAMES)}.",
        lambda: f"Most of it was shot in {rng.choice(PLACES)}.",
        lambda: f"The {rng.choice(NOUNS)} is what people talk about.",
    ]
    return rng.choice(templates)()


def synthetic_review(rng: random.Random, positive: bool) -> str:
    """One review: filler and opinions, most (not all) of them agreeing with the label."""
    n = rng.randint(3, 12)
    sentences = []
    for _ in range(n):
        if rng.random() < 0.35:
            sentences.append(_filler(rng))
        else:
            agree = rng.random() < 0.8
            sentences.append(_opinion(rng, positive if agree else not positive))
    # the verdict settles the label even when the sampled opinions happened to disagree
    sentences.append(_opinion(rng, positive))
    return " ".join(sentences)


# --------------------------------------------------------------------------- the gold reward
# What the generator knows about a review's sentiment, as a scorer that no training step sees
# (evaluation's gold beside the trained classifier's proxy; eval.gold=lexicon, the default on the
# synthetic corpus).  The generator writes each opinion in the label's direction with probability
# 0.8 (and its last one always), and the contrast template adds one word of the other side, so a
# sentiment word of POSITIVE / NEGATIVE names the review's label with probability q_word and a
# verdict sentence with q_verdict, nearly independently of the others.  The naive-Bayes posterior
# log-odds of "positive" given the text is then
#     log q_word/(1-q_word) * (#positive words - #negative words)
#   + log q_verdict/(1-q_verdict) * (#positive verdicts - #negative verdicts).
# q_word = 0.777 and q_verdict = 0.847 are the shares measured on 4000 generated reviews
# (tests/test_gold.py measures them again from make_synthetic).  A text of neither scores 0
# (p = 0.5): it says nothing about sentiment.
Q_WORD, Q_VERDICT = 0.777, 0.847
_WORD = re.compile(r"[a-z]+")


def lexicon_logit(text: str) -> float:
    """The generator's naive-Bayes log-odds that ``text`` is a positive review (see above)."""
    import math

    low = text.lower()
    words = _WORD.findall(low)
    pos, neg = set(POSITIVE), set(NEGATIVE)
    n_word = sum(w in pos for w in words) - sum(w in neg for w in words)
    n_verdict = sum(low.count(v.lower()) for v in POS_VERDICT) - sum(low.count(v.lower()) for v in NEG_VERDICT)
    return (math.log(Q_WORD / (1 - Q_WORD)) * n_word + math.log(Q_VERDICT / (1 - Q_VERDICT)) * n_verdict)


def make_synthetic(num_reviews: int, test_fraction: float, seed: int) -> DatasetDict:
    rng = random.Random(seed)
    labels = [i % 2 for i in range(num_reviews)]
    rng.shuffle(labels)
    texts = [synthetic_review(rng, bool(y)) for y in labels]
    n_test = int(round(num_reviews * test_fraction))
    return DatasetDict({
        "train": Dataset.from_dict({"text": texts[n_test:], "label": labels[n_test:]}),
        "test": Dataset.from_dict({"text": texts[:n_test], "label": labels[:n_test]}),
    })


_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)


def _clean(batch):
    return {"text": [" ".join(_BR.sub(" ", t).split()) for t in batch["text"]]}


def load_hub(source: str) -> DatasetDict:
    """IMDb-like data: a ``save_to_disk`` folder or a hub id, with text/label train and test splits."""
    from datasets import load_dataset, load_from_disk

    from dpo_ppo.data.sources import check_dataset_folder

    if Path(source).expanduser().exists():
        check_dataset_folder("data.source", source)
        # in memory: cleaning it below must not write cache files into the user's folder
        ds = load_from_disk(source, keep_in_memory=True)
    else:
        try:
            ds = load_dataset(source)
        except Exception as e:  # offline: no hub
            raise RuntimeError(
                f"data.source={source!r}: could not load it from the Hugging Face hub "
                f"({type(e).__name__}: {str(e).splitlines()[0][:200]}). {OFFLINE_HINT}, or point "
                f"data.source at a folder saved with save_to_disk."
            ) from e
    if not isinstance(ds, DatasetDict) or not {"train", "test"} <= set(ds):
        raise RuntimeError(f"data.source={source!r}: needs 'train' and 'test' splits, found "
                           f"{list(ds) if isinstance(ds, DatasetDict) else type(ds).__name__}")
    from dpo_ppo.data.sources import check_corpus

    out = DatasetDict({split: ds[split].select_columns(["text", "label"]) for split in ("train", "test")})
    mapping = check_corpus("data.source", out)  # labels read, not assumed (the config check ran it too)
    if mapping is not None:  # names say 0 = positive, or string labels: stored as 0 = negative, 1 = positive
        from datasets import Features, Value

        log.info("corpus: labels mapped to 0 = negative, 1 = positive: %s", mapping)
        out = out.map(lambda b: {"label": [mapping[v] for v in b["label"]]}, batched=True,
                      features=Features({**out["train"].features, "label": Value("int64")}), desc="labels")
    return out.map(_clean, batched=True, desc="cleaning")


def build_corpus(data_cfg, path: Path) -> None:
    if data_cfg.source == "synthetic":
        ds = make_synthetic(data_cfg.num_reviews, data_cfg.test_fraction, data_cfg.seed)
    else:
        ds = load_hub(data_cfg.source)
    ds.save_to_disk(str(path))
    log.info("corpus: %d train / %d test reviews, %.0f%% positive", len(ds["train"]), len(ds["test"]),
             100 * sum(ds["train"]["label"]) / max(1, len(ds["train"])))
