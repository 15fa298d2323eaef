"""Typed configuration: one dataclass per config group, registered with Hydra's ConfigStore.

Hydra checks types and key names when it composes the config (a typo'd key or a string where a
number belongs fails there).  Value checks that a type cannot express (beta > 0, a prefix that fits
the model's context, ...) live in ``validate`` and run before any stage starts; both paths end in a
one-line message that names the key and what would be allowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


OFFLINE_HINT = "Offline, use the embedded default (model=tiny data=synthetic classifier=tiny)"


class ConfigError(ValueError):
    """A config value is out of range; the message names the key and what is allowed."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"{key}: {message}")


# --------------------------------------------------------------------------- groups


@dataclass
class ModelConfig:
    """The reference policy: the embedded tiny GPT-NeoX, or a hub id / local folder."""

    name: str = "tiny"
    # "embedded": built and pretrained here on the corpus; otherwise a hub id or a local folder
    # saved with save_pretrained (e.g. EleutherAI/pythia-70m).
    source: str = "embedded"
    revision: Optional[str] = None
    # longest sequence (prefix + completion) the model takes; checked against the lengths asked for
    context_length: int = 256
    # architecture and pretraining of the embedded model (ignored for a hub model)
    vocab_size: int = 1024
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 8
    pretrain_steps: int = 300
    pretrain_batch_size: int = 32
    pretrain_seq_len: int = 64
    pretrain_lr: float = 3e-3


@dataclass
class DataConfig:
    """Labelled reviews with a train/test split."""

    name: str = "synthetic"
    # "synthetic": generated here; otherwise a datasets hub id (stanfordnlp/imdb) or a folder
    # written by Dataset(Dict).save_to_disk with "text" and "label" columns.
    source: str = "synthetic"
    num_reviews: int = 10000  # synthetic only
    test_fraction: float = 0.2  # synthetic only; hub data sets bring their own test split
    seed: int = 0


@dataclass
class ClassifierConfig:
    """The reward: p(positive | text) from a sequence classifier."""

    name: str = "tiny"
    # "embedded": a tiny GPT-2 trained from scratch with the corpus tokenizer; otherwise a hub id
    # or folder, fine-tuned on the corpus labels when finetune=true (gpt2, as in the seed) or used
    # as it is when finetune=false (an off-the-shelf sentiment model).
    source: str = "embedded"
    finetune: bool = True
    positive_label: int = 1
    max_length: int = 128
    train_examples: int = 4000
    epochs: float = 2.0
    lr: float = 1e-3
    batch_size: int = 32
    # architecture of the embedded classifier
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4


@dataclass
class AlgorithmConfig:
    """What DPO and PPO share: the data they train on and the optimiser."""

    name: str = MISSING
    examples: int = 512  # training prefixes (the seed's "Examples")
    lr: float = 1e-6
    batch_size: int = 8
    num_completions: int = 4  # samples per prefix (the seed's "Completions chosen from per prefix")
    prefix_len: int = 25  # tokens; with prefix_len_max, the low end of a range
    prefix_len_max: Optional[int] = None  # e.g. 75 for the seed's "25-75 tokens"
    completion_len: int = 100  # max new tokens
    temperature: float = 1.0  # sampling temperature for training completions
    top_k: int = 0  # 0 = no top-k truncation (pure sampling, as in the seed)
    weight_decay: float = 0.0
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0
    snapshot_every: int = 2000  # examples between saved policy snapshots (the seed: 2000)


@dataclass
class DPOAlgorithmConfig(AlgorithmConfig):
    name: str = "dpo"
    beta: float = 0.1
    loss_type: str = "sigmoid"  # any of TRL's DPO loss types
    epochs: float = 1.0
    label_smoothing: float = 0.0


@dataclass
class PPOAlgorithmConfig(AlgorithmConfig):
    """PPO with the adaptive KL controller of Ziegler et al. (2019); see dpo_ppo/ppo.py."""

    name: str = "ppo"
    # sequences per forward/backward pass (chunks of a minibatch; never changes the update);
    # null = hardware.train_micro_batch
    batch_size: Optional[int] = None
    rollout_prefixes: int = 32  # prefixes per rollout (x num_completions samples)
    # KL penalty.  kl_controller=log (default): a PI controller on log(kl_coef) whose gain is tied
    # to the run's number of updates, so the run reaches kl_target; ziegler: old TRL's adaptive
    # controller (Ziegler et al. 2019; the paper presets), which moves kl_coef by at most
    # 20% x samples/kl_horizon per update.  kl_coef=X fixes the coefficient (no target; the direct
    # analogue of DPO's beta) and overrides kl_controller.
    kl_controller: str = "log"
    kl_target: float = 6.0  # nats per sequence on training rollouts (sum of k1 over the completion)
    kl_coef: Optional[float] = None  # fixed KL coefficient; null = adaptive toward kl_target
    init_kl_coef: float = 0.2  # the adaptive controllers' starting coefficient
    kl_horizon: int = 10000  # ziegler only: samples over which a full 20% error acts
    kl_gain: Optional[float] = None  # log only: integral gain per update; null = tied to run length
    kl_estimator: str = "k1"  # k1: log p - log q per token; k3: (r - 1) - log r
    # reward
    reward_kind: str = "logit"  # logit of p(positive) or the probability itself
    normalize_reward: bool = False  # running mean/std normalisation of the score
    # optimisation
    ppo_epochs: int = 4
    num_minibatches: int = 4
    gamma: float = 1.0
    lam: float = 0.95
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    whiten_advantages: bool = True
    # separate (default): the value head reads its own trainable copy of the reference trunk, so
    # the policy's weights carry the policy loss alone (what the analyses compare with DPO);
    # shared: the head reads the policy's trunk and the value loss trains the policy too
    value_model: str = "separate"
    early_stop_kl: Optional[float] = None  # stop an update's epochs when approx KL exceeds this


@dataclass
class EvalConfig:
    """Evaluation on unseen test prefixes (the seed's 5.2: 2000 prefixes, 25 tokens, 100 new)."""

    num_prompts: int = 2000
    prefix_len: int = 25
    completion_len: int = 100
    # sequences per sampling batch; null = hardware.gen_batch_size (set from the device).  The
    # sampling is keyed, so the batch size never changes a completion, only the speed
    batch_size: Optional[int] = None
    temperature: float = 1.0
    num_samples_logged: int = 32  # rows of the W&B sample table
    # sampling key: completions are a function of (seed, prompt index) and the model alone, so
    # every job samples its eval prompts with the same noise and rows pair across jobs
    seed: int = 0


@dataclass
class ComputeConfig:
    """How much optimisation each algorithm gets.

    native: each algorithm's own schedule (DPO: one step per ``batch_size`` pairs for ``epochs``;
    PPO: ``ppo_epochs`` x ``num_minibatches`` steps per rollout, ~8x DPO's steps at the paper's
    settings).  matched: both take one AdamW step per ``prefixes_per_step`` training prefixes, one
    pass (DPO: batch_size = prefixes_per_step, epochs = 1; PPO: ppo_epochs = 1, num_minibatches =
    rollout_prefixes / prefixes_per_step), so a DPO and a PPO job with the same examples take the
    same number of optimizer steps on the same prefixes.
    """

    mode: str = "native"  # native | matched
    prefixes_per_step: int = 16  # matched only


def apply_compute(cfg: DictConfig) -> None:
    """Rewrite the algorithm's schedule in place for ``compute.mode=matched`` (after ``validate``)."""
    compute = cfg.get("compute")
    if compute is None or compute.mode != "matched":
        return
    algo, n = cfg.algorithm, compute.prefixes_per_step
    if algo.name == "dpo":
        algo.batch_size, algo.epochs = n, 1.0
    else:
        algo.ppo_epochs, algo.num_minibatches = 1, algo.rollout_prefixes // n


def planned_optimizer_steps(cfg: DictConfig) -> int:
    """The optimizer steps the job's schedule takes (PPO without early stopping)."""
    algo = cfg.algorithm
    if algo.name == "dpo":  # the Trainer's max_steps: ceil(epochs x steps per epoch)
        return math.ceil(math.ceil(algo.examples / algo.batch_size) * algo.epochs)
    updates = math.ceil(algo.examples / algo.rollout_prefixes)
    return updates * algo.ppo_epochs * algo.num_minibatches


@dataclass
class HardwareConfig:
    """How a job uses its device: batch sizes and how many jobs share a GPU (group ``hardware``).

    None of these change what a job computes (sampling is keyed, training batches are the
    algorithm's), only its speed and memory, so they are left out of a job's identity: a sweep
    started on CPUs resumes on a GPU.  null = chosen from the device when the job starts
    (``dpo_ppo.hardware.resolve``): today's sizes on a CPU, larger ones on a GPU, scaled by its
    memory shared among ``jobs_per_gpu`` jobs.  The chosen values are in results.json ``hardware``.
    """

    name: str = "auto"
    gen_batch_size: Optional[int] = None  # sequences per generate call (prefs, evaluation)
    forward_batch_size: Optional[int] = None  # sequences per no-grad forward (scoring, KL)
    train_micro_batch: Optional[int] = None  # sequences per forward/backward (PPO chunks, DPO micro-batches)
    analysis_batch_size: Optional[int] = None  # sequences per forward in the analyses
    # PPO rollouts sample with transformers' static KV cache, which ``generate`` compiles on a GPU
    # (torch.compile, CUDA graphs): fewer launches per token after a one-off compile, paid back
    # over hundreds of same-shaped rollouts (evaluation and DPO's pairs are a few large batches,
    # where it would not be).  Completions are the same either way; docs/performance.md has the
    # measured trade-off
    static_cache: bool = False
    # jobs that share one GPU: local sweeps (hydra/launcher=joblib) start this many per visible
    # GPU; on SLURM (hydra/launcher=slurm_gpu) one allocation runs this many jobs at once
    jobs_per_gpu: int = 1


PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class LoggerConfig:
    name: str = "wandb_offline"
    enabled: bool = True
    project: str = "dpo-ppo"
    entity: Optional[str] = None
    mode: str = "offline"  # offline | online | disabled
    dir: Optional[str] = None  # default: the job folder
    tags: list = field(default_factory=list)


@dataclass
class Config:
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    classifier: ClassifierConfig = MISSING
    algorithm: Any = MISSING
    eval: EvalConfig = MISSING
    analysis: Any = MISSING
    logger: LoggerConfig = MISSING
    compute: ComputeConfig = MISSING
    hardware: HardwareConfig = MISSING
    name: str = "default"  # experiment or sweep name: W&B group, output folder
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # auto: bf16 autocast with float32 master weights on CUDA (TF32 matmuls on), float32 on a CPU;
    # fp32: float32 everywhere (TF32 off); bf16: bf16 autocast on any device. Applies to every
    # stage that trains or samples (pretraining, classifier, prefs, DPO, PPO, evaluation, analysis)
    precision: str = "auto"
    # torch CPU threads for this job; 0 = torch's default (all cores). Parallel local jobs
    # (hydra/launcher=joblib) should take cores / n_jobs each: oversubscribed threads spin.
    threads: int = 0
    cache_dir: str = ".cache/dpo-ppo"  # shared artifacts (corpus, base, classifier, prefs)
    force: bool = False  # re-run a job whose folder already holds finished results
    # the sweep file a job came from (set by sweeps/<name>.yaml; logged with the job's config)
    sweep: Optional[str] = None
    # build the shared artifacts this config needs (corpus, base, classifier, reference
    # evaluation, DPO preferences) and stop: the sweeper's prepare step before the GPU jobs
    prepare: bool = False


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    # schemas live in their own group so that `--help` lists only real options under each group;
    # each group's yaml starts with `- /schema@_here_: <name>`
    for name, node in [("model", ModelConfig), ("data", DataConfig), ("classifier", ClassifierConfig),
                       ("dpo", DPOAlgorithmConfig), ("ppo", PPOAlgorithmConfig), ("eval", EvalConfig),
                       ("logger", LoggerConfig), ("compute", ComputeConfig),
                       ("hardware", HardwareConfig)]:
        cs.store(group="schema", name=name, node=node)
    from dpo_ppo.analysis.config import AnalysisConfig  # the analysis schema lives with the analyses

    cs.store(group="schema", name="analysis", node=AnalysisConfig)


# --------------------------------------------------------------------------- validation


def _positive(cfg, key: str, allow_zero: bool = False) -> None:
    value = OmegaConf.select(cfg, key)
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(key, f"must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def _choice(cfg, key: str, allowed: tuple) -> None:
    value = OmegaConf.select(cfg, key)
    if value not in allowed:
        raise ConfigError(key, f"must be one of {', '.join(map(str, allowed))}; got {value!r}")


def validate(cfg: DictConfig) -> None:
    """Range and consistency checks; raises ConfigError naming the first bad key."""
    validate_generic(cfg)
    algo = cfg.algorithm
    _choice(cfg, "algorithm.name", ("dpo", "ppo"))
    for key in ("examples", "lr", "batch_size", "num_completions", "prefix_len", "completion_len",
                "snapshot_every", "temperature"):
        _positive(cfg, f"algorithm.{key}")
    for key in ("weight_decay", "max_grad_norm", "top_k"):
        _positive(cfg, f"algorithm.{key}", allow_zero=True)
    if algo.prefix_len_max is not None and algo.prefix_len_max < algo.prefix_len:
        raise ConfigError("algorithm.prefix_len_max",
                          f"must be >= algorithm.prefix_len ({algo.prefix_len}), got "
                          f"{algo.prefix_len_max}; leave it null for a fixed prefix length")
    if algo.name == "dpo":
        _positive(cfg, "algorithm.beta")
        _positive(cfg, "algorithm.epochs")
        if algo.num_completions < 2:
            raise ConfigError("algorithm.num_completions",
                              f"DPO needs >= 2 completions per prefix to pick chosen and rejected, "
                              f"got {algo.num_completions}")
        if not 0 <= algo.label_smoothing < 0.5:
            raise ConfigError("algorithm.label_smoothing", f"must be in [0, 0.5), got {algo.label_smoothing}")
    else:
        for key in ("kl_target", "init_kl_coef", "kl_horizon", "ppo_epochs", "num_minibatches",
                    "cliprange", "cliprange_value", "rollout_prefixes"):
            _positive(cfg, f"algorithm.{key}")
        _positive(cfg, "algorithm.vf_coef", allow_zero=True)
        _positive(cfg, "algorithm.early_stop_kl")
        _choice(cfg, "algorithm.kl_estimator", ("k1", "k3"))
        _choice(cfg, "algorithm.kl_controller", ("log", "ziegler"))
        _positive(cfg, "algorithm.kl_coef", allow_zero=True)
        _positive(cfg, "algorithm.kl_gain")
        _choice(cfg, "algorithm.reward_kind", ("logit", "prob"))
        _choice(cfg, "algorithm.value_model", ("shared", "separate"))
        for key in ("gamma", "lam"):
            value = algo[key]
            if not 0 <= value <= 1:
                raise ConfigError(f"algorithm.{key}", f"must be in [0, 1], got {value}")
        samples = algo.rollout_prefixes * algo.num_completions
        if samples % algo.num_minibatches:
            raise ConfigError("algorithm.num_minibatches",
                              f"must divide rollout_prefixes * num_completions = {samples}, "
                              f"got {algo.num_minibatches}")
    compute = cfg.get("compute")
    if compute is not None:
        _choice(cfg, "compute.mode", ("native", "matched"))
        _positive(cfg, "compute.prefixes_per_step")
        if compute.mode == "matched" and algo.name == "ppo" and algo.rollout_prefixes % compute.prefixes_per_step:
            raise ConfigError("compute.prefixes_per_step",
                              f"must divide algorithm.rollout_prefixes ({algo.rollout_prefixes}) for "
                              f"compute=matched, got {compute.prefixes_per_step}")
    context = cfg.model.context_length
    longest_prefix = algo.prefix_len_max or algo.prefix_len
    if longest_prefix + algo.completion_len > context:
        raise ConfigError("algorithm.prefix_len" if algo.prefix_len_max is None else "algorithm.prefix_len_max",
                          f"prefix ({longest_prefix}) + algorithm.completion_len ({algo.completion_len}) "
                          f"= {longest_prefix + algo.completion_len} tokens exceeds the context of "
                          f"model={cfg.model.name} ({context} tokens)")
    for key in ("num_prompts", "prefix_len", "completion_len", "batch_size", "temperature"):
        _positive(cfg, f"eval.{key}")
    if cfg.eval.prefix_len + cfg.eval.completion_len > context:
        raise ConfigError("eval.prefix_len",
                          f"eval.prefix_len + eval.completion_len = "
                          f"{cfg.eval.prefix_len + cfg.eval.completion_len} exceeds the context of "
                          f"model={cfg.model.name} ({context} tokens)")
    # the scorer truncates at classifier.max_length: it must read the whole prefix + completion
    scored = {"algorithm.completion_len": longest_prefix + algo.completion_len,
              "eval.completion_len": cfg.eval.prefix_len + cfg.eval.completion_len}
    for key, tokens in scored.items():
        if tokens > cfg.classifier.max_length:
            raise ConfigError("classifier.max_length",
                              f"the scorer would truncate what it scores: prefix + {key} = {tokens} "
                              f"tokens > classifier.max_length ({cfg.classifier.max_length}) of "
                              f"classifier={cfg.classifier.name}; raise classifier.max_length to >= {tokens} "
                              f"or shorten the completions")
    if not 0 < cfg.data.test_fraction < 1:
        raise ConfigError("data.test_fraction", f"must be in (0, 1), got {cfg.data.test_fraction}")
    _positive(cfg, "data.num_reviews")
    _choice(cfg, "logger.mode", ("offline", "online", "disabled"))
    _positive(cfg, "threads", allow_zero=True)
    _choice(cfg, "precision", PRECISIONS)
    for key in ("gen_batch_size", "forward_batch_size", "train_micro_batch", "analysis_batch_size",
                "jobs_per_gpu"):
        _positive(cfg, f"hardware.{key}")
    _choice(cfg, "classifier.positive_label", (0, 1))
    if cfg.classifier.source == "embedded" and not cfg.classifier.finetune:
        raise ConfigError("classifier.finetune",
                          "the embedded classifier is trained from scratch; finetune=false needs "
                          "classifier.source set to a ready sentiment model")
    from dpo_ppo.analysis.config import validate as analysis_validate

    analysis_validate(cfg)


# --------------------------------------------------------------------------- generic checks
# (any group: unknown keys, non-finite floats, seeds, devices, local folders, sizes)

SEED_MAX = 2**32 - 1
DEVICES = "auto, cpu, cuda, cuda:N or mps"
# other names users reach for; a typo of one of them suggests the real key
_ALIASES = {"lr": ("learning_rate",), "examples": ("num_examples", "n_examples"),
            "epochs": ("num_epochs", "num_train_epochs"), "kl_target": ("target_kl",),
            "batch_size": ("bs", "batch"), "num_completions": ("completions",),
            "completion_len": ("max_new_tokens", "completion_length"), "prefix_len": ("prompt_len",)}


def _dataclass_fields(obj_type) -> dict | None:
    import dataclasses

    if obj_type is None or not dataclasses.is_dataclass(obj_type):
        return None
    return {f.name: f for f in dataclasses.fields(obj_type)}


def schema_keys() -> list[str]:
    """Every key of the schema, dotted (both algorithms' keys under ``algorithm``)."""
    import typing

    from dpo_ppo.analysis.config import AnalysisConfig

    any_fields = {"algorithm": (DPOAlgorithmConfig, PPOAlgorithmConfig), "analysis": (AnalysisConfig,)}
    keys = []
    for name, hint in typing.get_type_hints(Config).items():
        keys.append(name)
        for sub in any_fields.get(name, (hint,)):
            for child in _dataclass_fields(sub) or {}:
                if f"{name}.{child}" not in keys:
                    keys.append(f"{name}.{child}")
    return keys


def closest_key(key: str, candidates) -> str:
    """The valid key nearest to ``key``: by its last part (or an alias of it), then by its parent."""
    import difflib

    parent, _, name = key.rpartition(".")

    def score(cand: str) -> float:
        c_parent, _, c_name = cand.rpartition(".")
        names = (c_name, *_ALIASES.get(c_name, ()))
        best = max(difflib.SequenceMatcher(None, name.lower(), n).ratio() for n in names)
        return best + (0.15 if c_parent == parent else 0.0)

    # a key under a group is matched within that group; on a tie the algorithm's key wins: that
    # is where the knobs people mistype live
    siblings = [c for c in candidates if parent and c.rpartition(".")[0] == parent]
    ordered = sorted(siblings or candidates, key=lambda c: not c.startswith("algorithm."))
    return max(ordered, key=score)


def check_keys(cfg: DictConfig) -> None:
    """Every key of the composed config must be in the schema, at any depth (``+key=`` adds keys
    the schema does not know; Hydra lets them through)."""
    valid, unknown = [], []

    def walk(node: DictConfig, prefix: str) -> None:
        fields = _dataclass_fields(OmegaConf.get_type(node))
        for key in node.keys():
            full = f"{prefix}.{key}" if prefix else str(key)
            if fields is not None and key not in fields:
                unknown.append(full)
                continue
            valid.append(full)
            child = node._get_node(key)
            if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
                walk(child, full)

    walk(cfg, "")
    if unknown:
        raise ConfigError(unknown[0], unknown_key_message(unknown[0], valid))


def unknown_key_message(key: str, candidates) -> str:
    """What to say about a key the schema does not have: whose key it is, or the closest one."""
    parent, _, name = key.rpartition(".")
    if parent == "algorithm":
        for algo, schema in (("dpo", DPOAlgorithmConfig), ("ppo", PPOAlgorithmConfig)):
            if name in _dataclass_fields(schema) and key not in candidates:
                return f"not a key of this algorithm; it belongs to algorithm={algo}"
    return f"not a key of the config; the closest valid key is {closest_key(key, candidates)}"


def _leaves(node, prefix: str = ""):
    from omegaconf import ListConfig

    items = node.items_ex(resolve=False) if isinstance(node, DictConfig) else enumerate(node)
    for key, _ in items:
        full = f"{prefix}.{key}" if prefix else str(key)
        child = node._get_node(key)
        if isinstance(child, (DictConfig, ListConfig)):
            if not child._is_missing() and not child._is_none():
                yield from _leaves(child, full)
        elif not child._is_missing():
            try:
                yield full, node[key]  # resolved: a seed may be ${seed}
            except Exception:  # an interpolation that does not resolve fails where it is used
                continue


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
    import re

    if name == "auto" and allow_auto:
        return
    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", str(name)):
        raise ConfigError(key, f"must be {DEVICES}; got {name!r}")
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


def _check_writable_dir(key: str, path: str) -> None:
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


def validate_generic(cfg: DictConfig) -> None:
    """The checks every group shares; run first, so that a NaN or a typo'd key never reaches the
    range checks (NaN compares false with everything, so ``lr < 0`` lets it through)."""
    check_keys(cfg)
    for key, value in _leaves(cfg):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(key, f"must be a finite number, got {value}")
        name = key.rpartition(".")[2]
        if (name == "seed" or name.endswith("_seed")) and value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
                raise ConfigError(key, f"must be an integer in [0, 2^32-1], got {value}")
    check_device("device", cfg.device)
    if OmegaConf.select(cfg, "analysis.device") is not None:
        check_device("analysis.device", cfg.analysis.device)
    for key in ("context_length", "vocab_size", "hidden_size", "num_layers", "num_heads", "pretrain_steps",
                "pretrain_batch_size", "pretrain_seq_len", "pretrain_lr"):
        _positive(cfg, f"model.{key}")
    for key in ("max_length", "train_examples", "epochs", "lr", "batch_size", "hidden_size", "num_layers",
                "num_heads"):
        _positive(cfg, f"classifier.{key}")
    for group in ("model", "classifier"):
        node = cfg[group]
        if node.source == "embedded" and node.hidden_size % node.num_heads:
            raise ConfigError(f"{group}.num_heads", f"must divide {group}.hidden_size ({node.hidden_size}), "
                                                    f"got {node.num_heads}")
    _positive(cfg, "eval.num_samples_logged", allow_zero=True)
    _check_writable_dir("cache_dir", cfg.cache_dir)
    from dpo_ppo.sources import check_dataset_folder, check_pretrained_folder

    if cfg.model.source != "embedded":
        check_pretrained_folder("model.source", cfg.model.source)
    if cfg.classifier.source != "embedded":
        check_pretrained_folder("classifier.source", cfg.classifier.source, classifier=True,
                                finetune=cfg.classifier.finetune)
    if cfg.data.source != "synthetic":
        check_dataset_folder("data.source", cfg.data.source)
