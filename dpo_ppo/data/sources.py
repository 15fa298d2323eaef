"""What a local ``model.source``, ``classifier.source`` or ``data.source`` folder must hold.

These checks read only file names and small JSON files (no torch, no transformers), so
``dpo_ppo.inputs.check_inputs`` runs them before any stage starts; the loaders run them again for callers that skip it.
Each raises ``ConfigError`` naming the key and what is missing.
"""

from __future__ import annotations

import json
from pathlib import Path

from dpo_ppo.config.fields import ConfigError, local_path  # noqa: F401  (local_path: read here too)

WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
           "pytorch_model.bin.index.json")
TOKENIZER = ("tokenizer.json", "tokenizer_config.json")


def _folder(key: str, source: str) -> Path | None:
    path = local_path(source)
    if path is None:
        return None
    if not path.exists():
        raise ConfigError(key, f"no such folder: {path}")
    if not path.is_dir():
        raise ConfigError(key, f"{path} is a file; it must be a folder")
    if not any(path.iterdir()):
        raise ConfigError(key, f"{path} is an empty folder")
    return path


def check_pretrained_folder(key: str, source: str, classifier: bool = False, finetune: bool = True,
                            tokenizer: bool = True) -> None:
    """A ``save_pretrained`` folder: config.json, weights and (``tokenizer``) a tokenizer; a
    ``classifier`` used as it is (not ``finetune``d) must be a sequence classifier."""
    path = _folder(key, source)
    if path is None:
        return
    names = {p.name for p in path.iterdir()}
    missing = []
    if "config.json" not in names:
        missing.append("config.json")
    if not names & set(WEIGHTS):
        missing.append("model weights (model.safetensors or pytorch_model.bin)")
    if tokenizer and not names & set(TOKENIZER):
        missing.append("a tokenizer (tokenizer.json or tokenizer_config.json)")
    if missing:
        raise ConfigError(key, f"{path} is not a save_pretrained folder; missing: {', '.join(missing)}")
    if classifier and not finetune:
        try:
            archs = json.loads((path / "config.json").read_text()).get("architectures") or []
        except (OSError, ValueError) as e:
            raise ConfigError(key, f"{path}/config.json is unreadable ({e})") from None
        if archs and not any(a.endswith("ForSequenceClassification") for a in archs):
            why = ("; with classifier.finetune=false it must be a ready sentiment model"
                   if key.startswith("classifier.") else "")
            raise ConfigError(key, f"{path} holds a {archs[0]}, not a sequence classifier{why}")


def _columns(split_dir: Path) -> list[str] | None:
    try:
        info = json.loads((split_dir / "dataset_info.json").read_text())
    except (OSError, ValueError):
        return None
    return list((info.get("features") or {}).keys())


def check_dataset_folder(key: str, source: str, splits=("train", "test"), columns=("text", "label")) -> None:
    """A ``DatasetDict.save_to_disk`` folder with the given splits and columns."""
    path = _folder(key, source)
    if path is None:
        return
    if not (path / "dataset_dict.json").is_file():
        what = ("a single Dataset" if (path / "dataset_info.json").is_file() else
                "no dataset_dict.json")
        raise ConfigError(key, f"{path} is not a DatasetDict saved with save_to_disk ({what}); it needs "
                               f"splits {', '.join(splits)}")
    try:
        found = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
    except (OSError, ValueError) as e:
        raise ConfigError(key, f"{path}/dataset_dict.json is unreadable ({e})") from None
    for split in splits:
        if split not in found or not (path / split).is_dir():
            raise ConfigError(key, f"{path} has no '{split}' split (found: {', '.join(found) or 'none'})")
        cols = _columns(path / split)
        if cols is None:
            raise ConfigError(key, f"{path / split} has no readable dataset_info.json")
        for col in columns:
            if col not in cols:
                raise ConfigError(key, f"split '{split}' of {path} has no '{col}' column "
                                       f"(columns: {', '.join(cols) or 'none'})")


# --------------------------------------------------------------------------- what the data means
# (read, not assumed: the job trains toward label 1 = positive, so a folder whose ClassLabel names
# say 0 = positive would train toward negative sentiment)

POSITIVE_NAMES = ("pos", "positive", "good")
NEGATIVE_NAMES = ("neg", "negative", "bad")
LABEL_RULE = ("labels must be 0 = negative, 1 = positive (integers, or a ClassLabel / strings named "
              "neg/negative/bad and pos/positive/good)")


def sentiment_of(name) -> int | None:
    """1 for a name that means positive, 0 for negative (case-insensitive), else None."""
    text = str(name).strip().lower()
    return 1 if text in POSITIVE_NAMES else 0 if text in NEGATIVE_NAMES else None


def label_mapping(key: str, names, values) -> dict | None:
    """How a corpus's labels become 0 = negative / 1 = positive: None when they already are, else
    ``{label as stored: 0 or 1}``.  ``names``: a ClassLabel's names (None for plain values);
    ``values``: the distinct labels stored.  Raises ConfigError when their meaning is unclear."""
    values = sorted(set(values), key=str)
    if names is not None:
        names = list(names)
        if len(names) != 2:
            raise ConfigError(key, f"its label is a ClassLabel of {len(names)} classes ({', '.join(map(str, names))}); "
                                   f"the job needs two, {LABEL_RULE}; keep only the negative and positive reviews")
        meaning = [sentiment_of(n) for n in names]
        if names == ["0", "1"] or meaning == [0, 1]:
            return None
        if meaning == [1, 0]:
            return {0: 1, 1: 0}
        raise ConfigError(key, f"its ClassLabel names ({', '.join(map(str, names))}) do not say which class is "
                               f"positive; {LABEL_RULE}")
    if all(isinstance(v, str) for v in values):
        meaning = {v: sentiment_of(v) for v in values}
        if None in meaning.values() or len(set(meaning.values())) != len(meaning):
            raise ConfigError(key, f"its labels are strings ({', '.join(map(repr, values[:6]))}) that do not "
                                   f"name negative and positive one to one; {LABEL_RULE}")
        return meaning
    if any(isinstance(v, bool) for v in values) or not all(isinstance(v, int) for v in values) \
            or not set(values) <= {0, 1}:
        shown = ", ".join(map(repr, values[:6])) + (", ..." if len(values) > 6 else "")
        raise ConfigError(key, f"its labels are {shown}; {LABEL_RULE}")
    return None


def check_corpus(key: str, ds) -> dict | None:
    """A loaded DatasetDict with train and test splits: non-empty texts, labels that mean
    0 = negative / 1 = positive (``label_mapping``), both classes in each split.  Returns the
    label mapping (None: none needed)."""
    mapping, names = None, None
    for split in ("train", "test"):
        feature = ds[split].features.get("label")
        if getattr(feature, "names", None) is not None:
            names = feature.names
        labels = list(ds[split]["label"])
        if not labels:
            raise ConfigError(key, f"its '{split}' split is empty")
        if any(v is None for v in labels):
            raise ConfigError(key, f"split '{split}' has {sum(v is None for v in labels)} reviews without a label")
        mapping = label_mapping(key, names, labels)
        mapped = set(labels) if mapping is None else {mapping[v] for v in labels}
        if mapped != {0, 1}:
            only = "positive" if mapped == {1} else "negative"
            raise ConfigError(key, f"split '{split}' holds only {only} reviews ({len(labels)}); the classifier "
                                   f"and the evaluation need both classes in train and test")
        texts = list(ds[split]["text"])
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
        if bad:
            raise ConfigError(key, f"split '{split}' has {len(bad)} empty or non-text reviews (the first at row "
                                   f"{bad[0]}); drop them before saving")
    return mapping


def load_dataset_folder(key: str, source: str):
    """The ``save_to_disk`` folder ``source``, checked (``check_dataset_folder``), memory-mapped."""
    from datasets import load_from_disk

    check_dataset_folder(key, source)
    return load_from_disk(str(Path(source).expanduser()))


# --------------------------------------------------------------------------- what a model folder can do


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length")


def context_length(folder: Path) -> int | None:
    """The longest sequence a save_pretrained model takes, from its config.json (None: not said)."""
    config = read_json(folder / "config.json")
    for name in CONTEXT_KEYS:
        if isinstance(config.get(name), int) and config[name] > 0:
            return config[name]
    return None


def _token_set(value) -> bool:
    if isinstance(value, dict):  # an AddedToken written out
        value = value.get("content")
    return isinstance(value, str) and bool(value)


def tokenizer_has_pad_or_eos(folder: Path) -> bool | None:
    """Whether the folder's tokenizer names a pad or an EOS token: False only where its
    tokenizer_config.json or special_tokens_map.json writes both out as null (save_pretrained of a
    tokenizer without them); None where neither file says (a tokenizer class may bring defaults,
    as GPT-2's does)."""
    said = None
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        data = read_json(folder / name)
        keys = [k for k in ("pad_token", "eos_token") if k in data]
        if any(_token_set(data[k]) for k in keys):
            return True
        if len(keys) == 2:
            said = False
    return said


def id2label(folder: Path) -> dict[int, str] | None:
    """A classifier folder's labels by index (config.json id2label), or None when unreadable."""
    config = read_json(folder / "config.json")
    raw = config.get("id2label")
    if not isinstance(raw, dict):
        n = config.get("num_labels")
        return {i: f"LABEL_{i}" for i in range(n)} if isinstance(n, int) else None
    try:
        return {int(k): str(v) for k, v in raw.items()}
    except (TypeError, ValueError):
        return None


def resolve_label(key: str, value, labels: dict[int, str]) -> int:
    """``value`` (an index, or a name of ``labels``, case-insensitive) as an index of ``labels``."""
    shown = ", ".join(f"{i}={n}" for i, n in sorted(labels.items()))
    if isinstance(value, bool):
        raise ConfigError(key, f"must be a label index or name, got {value}")
    if isinstance(value, int) or (isinstance(value, str) and value.strip().lstrip("-").isdigit()):
        index = int(value)
        if index not in labels:
            raise ConfigError(key, f"{index} is not a label of the classifier ({shown})")
        return index
    hits = [i for i, n in labels.items() if n.strip().lower() == str(value).strip().lower()]
    if len(hits) != 1:
        raise ConfigError(key, f"{value!r} {'names no' if not hits else 'names more than one'} label of the "
                               f"classifier ({shown}); give an index or one of these names")
    return hits[0]


def classifier_labels(labels: dict[int, str], positive, negative, where: str = "classifier",
                      keys: tuple[str, str] | None = None) -> tuple[int, int]:
    """(positive index, negative index) of a classifier with ``labels`` (index -> name).

    By index or by name; ``negative`` None means the other label of a two-label classifier, and
    with more labels the one named negative.  Refused (ConfigError): an index or name the model
    lacks, positive == negative, more than two labels with no unambiguous negative, and a name
    that contradicts the role (positive_label pointing at a label named negative or neutral).
    ``keys``: the (positive, negative) keys an error names; by default ``{where}.positive_label``
    and ``{where}.negative_label``."""
    pos_key, neg_key = keys or (f"{where}.positive_label", f"{where}.negative_label")
    pos = resolve_label(pos_key, positive, labels)
    shown = ", ".join(f"{i}={n}" for i, n in sorted(labels.items()))
    if negative is None:
        if len(labels) == 2:
            neg = 1 - pos if set(labels) == {0, 1} else next(i for i in labels if i != pos)
        else:
            named = [i for i, n in labels.items() if sentiment_of(n) == 0]
            if len(named) != 1:
                raise ConfigError(neg_key,
                                  f"the classifier has {len(labels)} labels ({shown}); say which is negative "
                                  f"(an index or a name) as well as {pos_key}")
            neg = named[0]
    else:
        neg = resolve_label(neg_key, negative, labels)
    if pos == neg:
        raise ConfigError(neg_key, f"is the positive label ({pos}={labels[pos]}); "
                                   f"the reward needs two different labels ({shown})")
    if sentiment_of(labels[pos]) == 0 or sentiment_of(labels[neg]) == 1 or \
            (len(labels) > 2 and sentiment_of(labels[pos]) is None and
             any(sentiment_of(n) == 1 for n in labels.values())):
        raise ConfigError(pos_key,
                          f"{pos} is {labels[pos]!r} and the negative label {neg} is {labels[neg]!r} in this "
                          f"classifier ({shown}); set {pos_key} and {neg_key} to the "
                          f"positive and negative labels (by index or name)")
    return pos, neg
