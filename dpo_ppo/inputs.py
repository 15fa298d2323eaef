"""The checks of what a loaded config names on this machine (``check_inputs``): the devices it
has (without importing torch for a CPU build), whether folders can be written, and what local
model, classifier, gold and data folders hold (small JSON files, a local data set memory-mapped).

They sit above ``config`` (which checks the config itself and imports nothing of ``data``) because
they read the data's own rules (``data.sources``, ``data.prompts``), and they run where the job
runs: ``dpo-ppo`` runs them right after ``config.load``, before torch is imported, so bad input
still fails in about a second; the sweeper, which may plan on a machine without the job's GPU,
does not (``runtime.gpus.resolve_device`` turns a checked device name into the job's device)."""

from __future__ import annotations

from dpo_ppo.config import Config, ConfigError
from dpo_ppo.config.fields import check_device_name, local_path
from dpo_ppo.config.schema import check_context


def _torch_built_with_cuda() -> bool:
    """Whether the installed torch was built for CUDA (or ROCm), read from its version file."""
    import importlib.util
    import re
    from pathlib import Path

    spec = importlib.util.find_spec("torch")
    try:
        text = (Path(list(spec.submodule_search_locations)[0]) / "version.py").read_text()
    except (AttributeError, IndexError, OSError, TypeError):
        return True  # unknown: let torch itself say
    builds = re.findall(r"^(?:cuda|hip)\b[^=]*=\s*(.+)$", text, flags=re.M)
    return any(value.strip() != "None" for value in builds) if builds else True


def check_device(key: str, name: str, allow_auto: bool = True) -> None:
    """``name`` is a device name (``fields.check_device_name``) and this machine has that device."""
    check_device_name(key, name, allow_auto)
    if name == "auto" and allow_auto:
        return
    if name.startswith("cuda"):
        if not _torch_built_with_cuda():  # a CPU build: answer without importing torch (seconds)
            raise ConfigError(key, f"{name} asked for, but this torch is a CPU-only build, with no CUDA "
                                   f"device; use {key}=cpu or {key}=auto")
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(key, f"{name} asked for, but torch {torch.__version__} sees no CUDA device "
                                   f"here; use {key}=cpu or {key}=auto")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(key, f"{name} asked for, but there are only {torch.cuda.device_count()} "
                                   f"CUDA devices (cuda:0..cuda:{torch.cuda.device_count() - 1})")
    if name == "mps":
        import torch

        if not torch.backends.mps.is_available():
            raise ConfigError(key, f"mps asked for, but torch sees no MPS device here; use {key}=cpu or {key}=auto")


def check_writable_dir(key: str, path: str) -> None:
    """``path`` exists as a folder, or can be created: its nearest existing ancestor is a folder."""
    import os
    from pathlib import Path

    p = Path(path).expanduser().absolute()
    for parent in (p, *p.parents):
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(key, f"{p} cannot be a folder: {parent} is a file")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ConfigError(key, f"{p} cannot be written: {parent} is not writable")
            return


def check_model_folder(cfg, key: str, folder) -> None:
    """What a save_pretrained model folder must offer the job: a context (config.json) that holds
    prefix + completion, and a tokenizer with a pad or an EOS token (padding uses EOS when there is
    no pad).  Reads small JSON files only."""
    from pathlib import Path

    from dpo_ppo.data.sources import context_length

    folder = Path(folder).expanduser()
    context = context_length(folder)
    if context is not None:
        check_context(cfg, context, f"{key}={cfg.model.source} (its config.json)")
    else:  # the folder does not say: the model.context_length key
        check_context(cfg)
    check_tokenizer_pad(key, folder)


def check_tokenizer_pad(key: str, folder) -> None:
    """The tokenizer saved in ``folder`` has a pad or an EOS token (padding uses EOS when there is
    no pad): refused when its files write both out as null."""
    from pathlib import Path

    from dpo_ppo.data.sources import tokenizer_has_pad_or_eos

    if tokenizer_has_pad_or_eos(Path(folder)) is False:
        raise ConfigError(key, f"the tokenizer in {folder} has neither a pad nor an EOS token to pad batches "
                               f"with (or end completions); save it with tokenizer.eos_token (or pad_token) set")


def check_data(cfg: Config) -> None:
    """What the reviews must be before any stage: labels that mean 0 = negative / 1 = positive in
    both splits, non-empty texts (a local folder: read here; a hub data set: when the corpus
    stage loads it), enough test reviews for eval.num_prompts distinct prompts, and some review
    longer than each prefix length.  The number of tokens needs the tokenizer, which the base
    stage may build: here a bound (one token per byte at most); the prompts stage, before the
    scorer, checks the exact count."""
    from dpo_ppo.data.prompts import eval_shortfall, usable_upper_bound
    from dpo_ppo.data.sources import check_corpus, load_dataset_folder

    data, ev, algo = cfg.data, cfg.eval, cfg.algorithm
    if data.source == "synthetic":
        n_test = int(round(data.num_reviews * data.test_fraction))
        if n_test < ev.num_prompts:
            raise eval_shortfall(ev.num_prompts, n_test, n_test, ev.prefix_len, data.source, bound=True)
        return
    if local_path(data.source) is None:  # a hub id: checked when the corpus stage loads it
        return
    ds = load_dataset_folder("data.source", data.source)
    check_corpus("data.source", ds)
    test = list(ds["test"]["text"])
    usable = usable_upper_bound(test, ev.prefix_len)
    if usable < ev.num_prompts:
        raise eval_shortfall(ev.num_prompts, len(test), usable, ev.prefix_len, data.source, bound=True)
    if not usable_upper_bound(list(ds["train"]["text"]), algo.prefix_len):
        raise ConfigError("algorithm.prefix_len",
                          f"no review in the train split of data.source={data.source} can be longer than "
                          f"algorithm.prefix_len={algo.prefix_len} tokens (the longest has "
                          f"{max(len(t.encode()) for t in ds['train']['text'])} bytes); lower algorithm.prefix_len")


def check_gold(ev, where: str = "eval") -> None:
    """A gold classifier named by hub id or folder (``eval.gold``) holds a classifier, and a local
    folder's labels name the gold positive / negative labels the keys ask for (read now, not after
    training)."""
    if ev.gold in (None, "auto", "lexicon", "none"):
        return
    from dpo_ppo.data.sources import check_pretrained_folder, classifier_labels, id2label

    check_pretrained_folder(f"{where}.gold", ev.gold, classifier=True, finetune=False)
    folder = local_path(ev.gold)
    labels = id2label(folder) if folder is not None else None
    if labels:
        classifier_labels(labels, ev.gold_positive_label, ev.gold_negative_label,
                          keys=(f"{where}.gold_positive_label", f"{where}.gold_negative_label"))


def check_inputs(cfg: Config) -> None:
    """Every check of what ``cfg`` (a loaded Config) names on this machine: its devices, the cache
    folder can be written, local model, classifier, gold and data folders hold what their loaders
    and the job need (small JSON files, and the reviews of a local data folder, memory-mapped).
    Raises ConfigError naming the first bad key."""
    check_device("device", cfg.device)
    if cfg.analysis is not None and cfg.analysis.device is not None:
        check_device("analysis.device", cfg.analysis.device)
    check_gold(cfg.eval)
    check_writable_dir("cache_dir", cfg.cache_dir)
    from dpo_ppo.data.sources import check_pretrained_folder, classifier_labels, id2label

    if cfg.model.source != "embedded":
        check_pretrained_folder("model.source", cfg.model.source)
        if local_path(cfg.model.source) is not None:
            check_model_folder(cfg, "model.source", local_path(cfg.model.source))
    cls = cfg.classifier
    if cls.source != "embedded":
        check_pretrained_folder("classifier.source", cls.source, classifier=True, finetune=cls.finetune)
        folder = local_path(cls.source)
        if folder is not None:
            check_tokenizer_pad("classifier.source", folder)  # the scorer pads its batches
        if folder is not None and not cls.finetune:
            labels = id2label(folder)
            if labels:
                classifier_labels(labels, cls.positive_label, cls.negative_label)
    check_data(cfg)
