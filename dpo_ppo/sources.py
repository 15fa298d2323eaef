"""What a local ``model.source``, ``classifier.source`` or ``data.source`` folder must hold.

These checks read only file names and small JSON files (no torch, no transformers), so the config
check runs them before any stage starts; the loaders run them again for callers that skip it.
Each raises ``ConfigError`` naming the key and what is missing.
"""

from __future__ import annotations

import json
from pathlib import Path

from dpo_ppo.checks import ConfigError

WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
           "pytorch_model.bin.index.json")
TOKENIZER = ("tokenizer.json", "tokenizer_config.json")


def local_path(source: str) -> Path | None:
    """The folder ``source`` names, or None for a hub id (or a built-in name such as embedded)."""
    path = Path(source).expanduser()
    if path.exists() or source.startswith(("/", "./", "../", "~")) or source in (".", ".."):
        return path
    return None


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


def check_pretrained_folder(key: str, source: str, classifier: bool = False, finetune: bool = True) -> None:
    """A ``save_pretrained`` folder: config.json, weights and a tokenizer."""
    path = _folder(key, source)
    if path is None:
        return
    names = {p.name for p in path.iterdir()}
    missing = []
    if "config.json" not in names:
        missing.append("config.json")
    if not names & set(WEIGHTS):
        missing.append("model weights (model.safetensors or pytorch_model.bin)")
    if not names & set(TOKENIZER):
        missing.append("a tokenizer (tokenizer.json or tokenizer_config.json)")
    if missing:
        raise ConfigError(key, f"{path} is not a save_pretrained folder; missing: {', '.join(missing)}")
    if classifier and not finetune:
        try:
            archs = json.loads((path / "config.json").read_text()).get("architectures") or []
        except (OSError, ValueError) as e:
            raise ConfigError(key, f"{path}/config.json is unreadable ({e})") from None
        if archs and not any(a.endswith("ForSequenceClassification") for a in archs):
            raise ConfigError(key, f"{path} holds a {archs[0]}, not a sequence classifier; with "
                                   f"classifier.finetune=false it must be a ready sentiment model")


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
