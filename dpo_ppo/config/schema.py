"""Typed configuration: one dataclass per config group, registered with Hydra's ConfigStore.

Hydra checks types and key names when it composes the config (a typo'd key or a string where a
number belongs fails there).  The entrypoint then turns the composed DictConfig into these
dataclasses once (``load``: ``OmegaConf.to_object``, then the checks) and passes the typed
``Config`` on; code downstream reads attributes, and ``as_dict`` gives the plain dict that
results.json, the config hash and the artifact cache keys are made of.

Every field carries its help text (``option(default, help)``; ``field_help`` reads it back), and
every dataclass checks its own fields in ``check`` beside them.  ``load`` first looks for keys the
schema does not know (``+key=``; only the DictConfig still has them), then ``Config.check`` runs
the generic checks (non-finite floats, seeds, device names), each group's ``check`` and the checks
across groups (a prefix + completion that fits the model's context and the classifier's
``max_length``, ...).  What the config names on the machine (devices, local folders, the data) is
``dpo_ppo.inputs``' to check, above this package.  Each check raises ``ConfigError`` with a one-line message that
names the key (full dotted path) and what would be allowed.  The checks are methods, not
``__post_init__``: ``to_object`` builds the groups before the checks across them could run, and
tests build out-of-range configs on purpose.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from dpo_ppo.config.analysis import AnalysisConfig
from dpo_ppo.config.fields import ConfigError, check_device_name, choice, finite, local_path, option, positive
from dpo_ppo.results import ALGORITHMS


OFFLINE_HINT = "Offline, use the embedded default (model=tiny data=synthetic classifier=tiny)"


# --------------------------------------------------------------------------- groups


@dataclass
class ModelConfig:
    """The reference policy: the embedded tiny GPT-NeoX, or a hub id / local folder (group ``model``)."""

    name: str = option("tiny", "the preset's name (conf/model/NAME.yaml); names the model in logs and tags")
    source: str = option("embedded", "embedded: a GPT-NeoX built and pretrained here on the corpus; else a "
                                      "hub id (EleutherAI/pythia-70m) or a local folder saved with save_pretrained")
    revision: Optional[str] = option(None, "hub revision (branch, tag or commit) of a hub model; null = main")
    context_length: int = option(256, "longest sequence (prefix + completion) the model takes, in tokens; "
                                      "checked against the lengths asked for (a model folder's own config.json "
                                      "max_position_embeddings is read instead, a hub model's after the base "
                                      "stage); > 0")
    vocab_size: int = option(1024, "embedded only: tokens of the BPE tokenizer trained on the corpus; > 0")
    hidden_size: int = option(128, "embedded only: width of the residual stream; > 0, a multiple of num_heads")
    num_layers: int = option(4, "embedded only: transformer layers; > 0")
    num_heads: int = option(8, "embedded only: attention heads per layer; > 0, divides hidden_size")
    pretrain_steps: int = option(300, "embedded only: optimizer steps of pretraining on the corpus; > 0")
    pretrain_batch_size: int = option(32, "embedded only: sequences per pretraining step; > 0")
    pretrain_seq_len: int = option(64, "embedded only: tokens per pretraining sequence; > 0")
    pretrain_lr: float = option(3e-3, "embedded only: peak AdamW learning rate of pretraining (cosine "
                                      "schedule); > 0")
    pretrain_induction_steps: int = option(0, "embedded only: steps of a first pretraining phase on repeated "
                                                "random token spans alone (BOS r r r ..., fresh every step, "
                                                "constant lr 1e-3), where induction and previous-token heads "
                                                "form before the corpus phase (docs/analyses.md, head roles); "
                                                ">= 0")
    pretrain_repeats: float = option(0.0, "embedded only: share of each pretraining batch replaced by fresh "
                                          "random token spans said again and again (BOS r r r ...), drawn anew "
                                          "every step, so that copying from an earlier occurrence pays and "
                                          "induction heads form (docs/analyses.md, head roles); in [0, 1)")

    def check(self, where: str = "model") -> None:
        for key in ("context_length", "vocab_size", "hidden_size", "num_layers", "num_heads", "pretrain_steps",
                    "pretrain_batch_size", "pretrain_seq_len", "pretrain_lr"):
            positive(f"{where}.{key}", getattr(self, key))
        if self.pretrain_induction_steps < 0:
            raise ConfigError(f"{where}.pretrain_induction_steps", f"must be >= 0 (0: no induction phase), "
                                                                  f"got {self.pretrain_induction_steps}")
        if not 0.0 <= self.pretrain_repeats < 1.0:
            raise ConfigError(f"{where}.pretrain_repeats", f"must be in [0, 1) (a share of each batch; the rest "
                                                          f"is the corpus), got {self.pretrain_repeats}")
        _heads_divide_hidden(self, where)


def _heads_divide_hidden(group, where: str) -> None:
    if group.source == "embedded" and group.hidden_size % group.num_heads:
        raise ConfigError(f"{where}.num_heads", f"must divide {where}.hidden_size ({group.hidden_size}), "
                                                f"got {group.num_heads}")


@dataclass
class DataConfig:
    """Labelled reviews with a train/test split (group ``data``)."""

    name: str = option("synthetic", "the preset's name (conf/data/NAME.yaml)")
    source: str = option("synthetic", "synthetic: reviews generated here; else a datasets hub id "
                                      "(stanfordnlp/imdb) or a folder written by Dataset(Dict).save_to_disk "
                                      "with text and label columns and a test split")
    num_reviews: int = option(10000, "synthetic only: reviews generated (train + test); > 0")
    test_fraction: float = option(0.2, "synthetic only: share of the reviews held out as the test split, "
                                       "in (0, 1); hub data sets bring their own test split")
    seed: int = option(0, "synthetic only: seed of the generated reviews and their split; in [0, 2^32-1]")

    def check(self, where: str = "data") -> None:
        finite(f"{where}.test_fraction", self.test_fraction)
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"{where}.test_fraction", f"must be in (0, 1), got {self.test_fraction}")
        positive(f"{where}.num_reviews", self.num_reviews)


@dataclass
class ClassifierConfig:
    """The reward: p(positive | text) from a sequence classifier (group ``classifier``)."""

    name: str = option("tiny", "the preset's name (conf/classifier/NAME.yaml)")
    source: str = option("embedded", "embedded: a tiny GPT-2 trained from scratch with the corpus tokenizer; "
                                     "else a hub id or local folder, fine-tuned on the corpus labels "
                                     "(finetune=true, e.g. gpt2) or used as it is (finetune=false, an "
                                     "off-the-shelf sentiment model)")
    finetune: bool = option(True, "train the classifier on the corpus labels; false needs a source that "
                                  "already is a sentiment classifier")
    positive_label: Any = option(1, "which output label means positive: an index, or a name of the model's "
                                    "id2label (finetune=false; case-insensitive). The reward is log p(positive) - "
                                    "log p(negative) and evaluation's p_positive its sigmoid, p(positive) / "
                                    "(p(positive) + p(negative)): p(positive) itself for two labels, positive "
                                    "against negative alone (a neutral label's share left out) for more")
    negative_label: Any = option(None, "which output label means negative: an index or an id2label name; "
                                       "null = the other label of two, or with more labels the one named "
                                       "negative (none or several such: refused, set it)")
    max_length: int = option(128, "tokens the scorer reads; longer texts are truncated, so it must cover "
                                  "prefix + completion (checked); > 0")
    train_examples: int = option(4000, "training reviews used to train or fine-tune it; > 0")
    epochs: float = option(2.0, "passes over train_examples (fractions allowed); > 0")
    lr: float = option(1e-3, "AdamW learning rate of its training; > 0")
    batch_size: int = option(32, "reviews per training step; > 0")
    hidden_size: int = option(64, "embedded only: width of the GPT-2; > 0, a multiple of num_heads")
    num_layers: int = option(2, "embedded only: transformer layers; > 0")
    num_heads: int = option(4, "embedded only: attention heads per layer; > 0, divides hidden_size")

    def check(self, where: str = "classifier") -> None:
        for key in ("max_length", "train_examples", "epochs", "lr", "batch_size", "hidden_size", "num_layers",
                    "num_heads"):
            positive(f"{where}.{key}", getattr(self, key))
        _heads_divide_hidden(self, where)
        for key in ("positive_label", "negative_label"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, str, type(None))) or value == "":
                raise ConfigError(f"{where}.{key}", f"must be a label index or name, got {value!r}")
        if self.finetune or self.source == "embedded":  # trained here on the corpus labels: 0 neg, 1 pos
            choice(f"{where}.positive_label", self.positive_label, (0, 1))
            if self.negative_label is not None and self.negative_label != 1 - self.positive_label:
                raise ConfigError(f"{where}.negative_label",
                                  f"a classifier trained here has two labels; with positive_label="
                                  f"{self.positive_label} it must be {1 - self.positive_label} or null, got "
                                  f"{self.negative_label!r}")
        if self.source == "embedded" and not self.finetune:
            raise ConfigError(f"{where}.finetune",
                              f"the embedded classifier is trained from scratch; finetune=false needs "
                              f"{where}.source set to a ready sentiment model")




@dataclass
class AlgorithmConfig:
    """What DPO and PPO share: the data they train on and the optimiser (group ``algorithm``)."""

    name: str = option(MISSING, "dpo, ppo, rloo or grpo: which trainer, and which schema the rest of the group "
                                "follows")
    examples: int = option(512, "training prefixes, each used once per pass (the seed's \"Examples\"); > 0")
    lr: float = option(1e-6, "AdamW learning rate, constant; > 0")
    batch_size: int = option(8, "training prefixes (DPO: preference pairs) per optimizer step; > 0")
    num_completions: int = option(4, "completions sampled per prefix (the seed's \"Completions chosen from "
                                     "per prefix\"); > 0, DPO >= 2")
    prefix_len: int = option(25, "prefix length in tokens; with prefix_len_max, the low end of a range; > 0")
    prefix_len_max: Optional[int] = option(None, "high end of a range of prefix lengths in tokens, drawn per "
                                                 "prefix (e.g. 75 for the seed's 25-75); >= prefix_len; "
                                                 "null = every prefix prefix_len long")
    completion_len: int = option(100, "most new tokens per completion (sampling stops at EOS earlier); > 0")
    temperature: float = option(1.0, "sampling temperature of training completions; > 0")
    top_k: int = option(0, "sample from the k most likely tokens only; 0 = no truncation (pure sampling, "
                           "as in the seed); >= 0")
    weight_decay: float = option(0.0, "AdamW's decoupled weight decay; >= 0")
    adam_eps: float = option(1e-8, "AdamW's epsilon")
    max_grad_norm: float = option(1.0, "gradient clipping by global norm per optimizer step (PPO: the policy's and "
                                  "the value model's gradients apart); 0 = none; >= 0")
    snapshot_every: int = option(2000, "training prefixes between saved policy snapshots (the seed: 2000), "
                                       "for the weight analyses over training; > 0")

    def check(self, where: str = "algorithm") -> None:
        choice(f"{where}.name", self.name, tuple(ALGORITHM_SCHEMAS))
        schema = ALGORITHM_SCHEMAS.get(self.name)
        if type(self) is not AlgorithmConfig and not isinstance(self, schema):
            raise ConfigError(f"{where}.name", f"{self.name} does not fit this group's keys ({type(self).__name__}); "
                                               f"choose the algorithm with algorithm={self.name}")
        for key in ("examples", "lr", "batch_size", "num_completions", "prefix_len", "completion_len",
                    "snapshot_every", "temperature"):
            positive(f"{where}.{key}", getattr(self, key))
        for key in ("weight_decay", "max_grad_norm", "top_k"):
            positive(f"{where}.{key}", getattr(self, key), allow_zero=True)
        if self.prefix_len_max is not None and self.prefix_len_max < self.prefix_len:
            raise ConfigError(f"{where}.prefix_len_max",
                              f"must be >= {where}.prefix_len ({self.prefix_len}), got "
                              f"{self.prefix_len_max}; leave it null for a fixed prefix length")

    @property
    def longest_prefix(self) -> int:
        """Tokens of the longest training prefix."""
        return self.prefix_len_max or self.prefix_len


# TRL 1.16's DPO losses that read label_smoothing (the others, sigmoid included, ignore it)
LABEL_SMOOTHING_LOSSES = ("robust", "exo_pair", "aot", "aot_unpaired")


def check_rounds(where: str, rounds: int, examples: int, batch: int, batch_key: str) -> None:
    """Online DPO's rounds take the offline run's optimizer steps only when each round's prefixes
    fill whole batches."""
    if rounds > 1 and examples % (rounds * batch):
        raise ConfigError(f"{where}.rounds",
                          f"{where}.examples ({examples}) must split into {rounds} rounds of whole batches of "
                          f"{batch_key} ({batch}) so that online DPO takes offline DPO's optimizer steps; choose "
                          f"rounds with rounds x {batch} dividing {examples}")


@dataclass
class DPOAlgorithmConfig(AlgorithmConfig):
    """DPO through TRL's DPOTrainer on pairs the reference sampled (best and worst of num_completions)."""

    name: str = option("dpo", "dpo")
    beta: float = option(0.1, "strength of the implicit KL penalty toward the reference (the beta of the "
                              "DPO loss); > 0")
    loss_type: str = option("sigmoid", "any of TRL's DPO loss types (sigmoid: the DPO paper's loss)")
    epochs: float = option(1.0, "passes over the preference pairs (fractions allowed); > 0")
    label_smoothing: float = option(0.0, "assumed probability that a pair's preference is flipped; in [0, "
                                         "0.5), read only by loss_type robust (conservative DPO), exo_pair, "
                                         "aot, aot_unpaired")
    rounds: int = option(1, "online DPO: the training prefixes split into this many equal rounds; before each, "
                            "num_completions completions per prefix of the round are sampled from the *current* "
                            "policy and the best / worst by the classifier kept (the loss stays anchored to the "
                            "reference). 1 = offline DPO (pairs sampled once by the reference). The same "
                            "examples and optimizer steps either way; > 0, rounds x batch_size divides examples")

    def check(self, where: str = "algorithm") -> None:
        super().check(where)
        positive(f"{where}.beta", self.beta)
        positive(f"{where}.epochs", self.epochs)
        if self.num_completions < 2:
            raise ConfigError(f"{where}.num_completions",
                              f"DPO needs >= 2 completions per prefix to pick chosen and rejected, "
                              f"got {self.num_completions}")
        positive(f"{where}.rounds", self.rounds)
        check_rounds(where, self.rounds, self.examples, self.batch_size, "algorithm.batch_size")
        finite(f"{where}.label_smoothing", self.label_smoothing)
        if not 0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"{where}.label_smoothing", f"must be in [0, 0.5), got {self.label_smoothing}")
        if self.label_smoothing and self.loss_type not in LABEL_SMOOTHING_LOSSES:
            raise ConfigError(f"{where}.label_smoothing",
                              f"TRL's {self.loss_type!r} loss ignores it (it would train plain {self.loss_type}); "
                              f"set {where}.loss_type to one of {', '.join(LABEL_SMOOTHING_LOSSES)} "
                              f"(robust: conservative DPO), or label_smoothing to 0")


@dataclass
class PPOAlgorithmConfig(AlgorithmConfig):
    """PPO with a KL penalty whose coefficient a controller moves toward a target; see dpo_ppo/train/ppo.py.

    KL penalty: kl_controller=log (default) is a PI controller on log(kl_coef) whose gain is tied to
    the run's number of updates, so the run reaches kl_target; ziegler is old TRL's adaptive
    controller (the paper presets), which moves kl_coef by at most 20% x samples/kl_horizon per
    update.  kl_coef=X fixes the coefficient (no target; the direct analogue of DPO's beta) and
    overrides kl_controller.  See docs/kl_control.md.
    """

    name: str = option("ppo", "ppo")
    batch_size: Optional[int] = option(None, "sequences per forward/backward pass (chunks of a minibatch; "
                                             "never changes the update); > 0; null = hardware.train_micro_batch")
    rollout_prefixes: int = option(32, "prefixes per rollout, each sampled num_completions times; > 0")
    kl_controller: str = option("log", "how kl_coef moves toward kl_target: log (PI controller on "
                                       "log kl_coef) or ziegler (old TRL's); ignored when kl_coef is set")
    kl_target: float = option(6.0, "KL to the reference the controller aims for, in nats per sequence on "
                                   "training rollouts (sum of the per-token estimate over the completion); > 0")
    kl_coef: Optional[float] = option(None, "fixed KL coefficient (per-token penalty weight); >= 0; "
                                            "null = adaptive toward kl_target")
    init_kl_coef: float = option(0.2, "the adaptive controllers' starting coefficient; > 0")
    kl_horizon: int = option(10000, "ziegler only: samples over which a full 20% error acts; > 0")
    kl_gain: Optional[float] = option(None, "log only: integral gain per update; > 0; null = tied to the "
                                            "run's number of updates")
    kl_estimator: str = option("k1", "per-token KL estimate: k1 (log p - log q) or k3 ((r - 1) - log r)")
    reward_kind: str = option("logit", "the score: logit (of p(positive)) or prob (p(positive) itself)")
    normalize_reward: bool = option(False, "normalise the score by its running mean and std")
    ppo_epochs: int = option(4, "passes over each rollout; > 0")
    num_minibatches: int = option(4, "shuffled minibatches per pass, one optimizer step each; > 0, divides "
                                     "rollout_prefixes x num_completions")
    gamma: float = option(1.0, "discount per token in GAE; in [0, 1]")
    lam: float = option(0.95, "GAE's lambda (bias-variance trade-off of the advantages); in [0, 1]")
    cliprange: float = option(0.2, "PPO's clip on the probability ratio (1 +- cliprange); > 0")
    cliprange_value: float = option(0.2, "clip on how far a value prediction moves from the rollout's; > 0")
    vf_coef: float = option(0.1, "weight of the value loss in the summed loss; >= 0")
    whiten_advantages: bool = option(True, "normalise advantages to mean 0 over each rollout and divide them by "
                                           "their std, or by the running std of the score when that is larger "
                                           "(so that agreeing samples' value errors are not blown up)")
    value_model: str = option("separate", "separate: the value head reads its own trainable copy of the "
                                          "reference trunk, so the policy's weights carry the policy loss "
                                          "alone (what the analyses compare with DPO); shared: the head reads "
                                          "the policy's trunk and the value loss trains the policy too")
    early_stop_kl: Optional[float] = option(0.02, "trust region: the bound on how far an update moves the policy "
                                                  "from the rollout's on any one prompt, nats per token (per prompt, "
                                                  "the token mean of ppo.trust_kl: k3, or the sampled token's "
                                                  "Bernoulli KL(new || old) where that is larger; the largest over "
                                                  "the prompts); a step that crosses it is cut back until it holds "
                                                  "(trust_region=shrink) or ends the update (stop, the rule that "
                                                  "named it); > 0; null = no trust region")
    trust_region: str = option("shrink", "what happens at a crossing of early_stop_kl: shrink (the step is "
                                         "cut back and the update goes on: every planned step is taken, as "
                                         "compute=matched needs) or stop (the update ends there, its later "
                                         "steps not taken)")

    def check(self, where: str = "algorithm") -> None:
        super().check(where)
        for key in ("kl_target", "init_kl_coef", "kl_horizon", "ppo_epochs", "num_minibatches",
                    "cliprange", "cliprange_value", "rollout_prefixes"):
            positive(f"{where}.{key}", getattr(self, key))
        positive(f"{where}.vf_coef", self.vf_coef, allow_zero=True)
        positive(f"{where}.early_stop_kl", self.early_stop_kl)
        choice(f"{where}.trust_region", self.trust_region, ("stop", "shrink"))
        choice(f"{where}.kl_estimator", self.kl_estimator, ("k1", "k3"))
        choice(f"{where}.kl_controller", self.kl_controller, ("log", "ziegler"))
        positive(f"{where}.kl_coef", self.kl_coef, allow_zero=True)
        positive(f"{where}.kl_gain", self.kl_gain)
        choice(f"{where}.reward_kind", self.reward_kind, ("logit", "prob"))
        choice(f"{where}.value_model", self.value_model, ("shared", "separate"))
        for key in ("gamma", "lam"):
            value = getattr(self, key)
            finite(f"{where}.{key}", value)
            if not 0 <= value <= 1:
                raise ConfigError(f"{where}.{key}", f"must be in [0, 1], got {value}")
        samples = self.rollout_prefixes * self.num_completions
        if samples % self.num_minibatches:
            raise ConfigError(f"{where}.num_minibatches",
                              f"must divide rollout_prefixes * num_completions = {samples}, "
                              f"got {self.num_minibatches}")


# TRL 1.16's GRPO losses whose fixed point docs/kl_control.md discusses (all normalise the
# clipped policy-gradient term differently; the KL term is TRL's k3 estimate in every one)
GRPO_LOSSES = ("grpo", "dr_grpo", "bnpo", "dapo")


@dataclass
class PolicyGradientConfig(AlgorithmConfig):
    """What RLOO and GRPO (TRL's RLOOTrainer / GRPOTrainer) share: on-policy sampling of
    num_completions completions per prefix, the classifier's score as the reward (as PPO's), and
    beta as the KL coefficient.  batch_size counts prefixes per optimizer step (each sampled
    num_completions times), as DPO's counts pairs."""

    batch_size: int = option(16, "training prefixes per optimizer step, each sampled num_completions times; one "
                                 "generation per step; > 0")
    beta: float = option(0.05, "KL coefficient toward the reference: RLOO subtracts beta x (sequence KL, k1) "
                               "from the reward (PPO's kl_coef), GRPO adds beta x (per-token k3 KL) to the "
                               "loss; > 0")
    reward_kind: str = option("logit", "the reward from the classifier, as PPO's: logit (log p(positive) - log "
                                       "p(negative)) or prob (p(positive))")
    num_iterations: int = option(1, "passes over each generation batch (TRL's mu); 1 = strictly on-policy, "
                                    "the clip never binds; > 0")
    epsilon: float = option(0.2, "clip on the probability ratio (1 +- epsilon), read when num_iterations > 1; "
                                 "> 0")

    def check(self, where: str = "algorithm") -> None:
        super().check(where)
        positive(f"{where}.beta", self.beta)
        positive(f"{where}.num_iterations", self.num_iterations)
        positive(f"{where}.epsilon", self.epsilon)
        choice(f"{where}.reward_kind", self.reward_kind, ("logit", "prob"))
        if self.num_completions < 2:
            raise ConfigError(f"{where}.num_completions",
                              f"{self.name} compares each completion with the other completions of its prefix, "
                              f"so it needs >= 2, got {self.num_completions}")


@dataclass
class RLOOAlgorithmConfig(PolicyGradientConfig):
    """RLOO through TRL's RLOOTrainer: REINFORCE with the leave-one-out mean of the other
    completions of the same prefix as baseline, beta x KL (k1, summed over the completion)
    subtracted from the reward: the objective PPO optimises with a fixed kl_coef = beta."""

    name: str = option("rloo", "rloo")
    normalize_advantages: bool = option(False, "divide the advantages by their std over each generation batch "
                                               "(TRL's option; off keeps the KL-regularised objective's scale)")


@dataclass
class GRPOAlgorithmConfig(PolicyGradientConfig):
    """GRPO through TRL's GRPOTrainer: advantages are rewards centred (and by default scaled) within
    each prefix's group; the KL to the reference is beta x k3 per token *in the loss*, not in the
    reward, which is a different objective (its fixed point: docs/kl_control.md)."""

    name: str = option("grpo", "grpo")
    beta: float = option(0.04, "weight of the per-token k3 KL to the reference in the loss (GRPO's beta; not "
                               "the same scale as RLOO's or PPO's: docs/kl_control.md); > 0")
    loss_type: str = option("grpo", "TRL's GRPO loss normalisation: grpo (token mean per sequence, then mean), "
                                    "dr_grpo, bnpo or dapo (TRL's default)")
    scale_rewards: str = option("group", "divide the centred rewards by the std of the prefix's group (group, "
                                         "GRPO's), of the whole batch (batch), or not at all (none, Dr. GRPO)")

    def check(self, where: str = "algorithm") -> None:
        super().check(where)
        choice(f"{where}.loss_type", self.loss_type, GRPO_LOSSES)
        choice(f"{where}.scale_rewards", self.scale_rewards, ("group", "batch", "none"))


ALGORITHM_SCHEMAS = {"dpo": DPOAlgorithmConfig, "ppo": PPOAlgorithmConfig, "rloo": RLOOAlgorithmConfig,
                     "grpo": GRPOAlgorithmConfig}


@dataclass
class EvalConfig:
    """Evaluation on unseen test prefixes (group ``eval``; the seed's 5.2: 2000 prefixes, 25 tokens, 100 new)."""

    num_prompts: int = option(1950, "unseen test prefixes, the same for every job, each from a different test "
                                    "review (refused when the test split has fewer reviews longer than "
                                    "prefix_len); > 0. conf: 1950 (the embedded test split has 1987 such "
                                    "reviews), 2000 (the seed's) in experiment=paper_run1/2")
    prefix_len: int = option(25, "tokens of each test prefix; > 0")
    completion_len: int = option(100, "most new tokens per completion; > 0 (conf: = algorithm.completion_len)")
    batch_size: Optional[int] = option(None, "sequences per sampling batch; > 0; null = hardware.gen_batch_size. "
                                             "Sampling is keyed, so it never changes a completion, only the speed")
    temperature: float = option(1.0, "sampling temperature; > 0")
    num_samples_logged: int = option(32, "rows of the sample table (W&B, samples.json); >= 0")
    seed: int = option(0, "sampling key: completions are a function of (seed, prompt index) and the model "
                          "alone, so every job samples its eval prompts with the same noise and rows pair "
                          "across jobs; in [0, 2^32-1]")
    gold: Optional[str] = option("auto", "the gold reward, scored beside the proxy (the trained classifier) and "
                                         "never optimised: lexicon = the synthetic generator's own log-odds of "
                                         "positive (its sentiment words and verdicts); a hub id or save_pretrained "
                                         "folder = a ready sentiment classifier (e.g. siebert/sentiment-roberta-"
                                         "large-english, the DPO paper's ground truth, with gold_positive_label="
                                         "POSITIVE); none / null = no gold; auto = lexicon on data=synthetic, "
                                         "none on other corpora")
    gold_positive_label: Any = option(1, "a gold classifier's positive label: an index or an id2label name")
    gold_negative_label: Any = option(None, "a gold classifier's negative label: an index or an id2label name; "
                                            "null = the other of two labels, or the one named negative")

    def check(self, where: str = "eval") -> None:
        for key in ("num_prompts", "prefix_len", "completion_len", "batch_size", "temperature"):
            positive(f"{where}.{key}", getattr(self, key))
        positive(f"{where}.num_samples_logged", self.num_samples_logged, allow_zero=True)
        for key in ("gold_positive_label", "gold_negative_label"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, str, type(None))) or value == "":
                raise ConfigError(f"{where}.{key}", f"must be a label index or name, got {value!r}")
        if self.gold == "":
            raise ConfigError(f"{where}.gold", "is empty; use auto, lexicon, none, a hub id or a folder")
        # a gold folder's contents and labels: dpo_ppo.inputs.check_gold, where the job runs


@dataclass
class ComputeConfig:
    """How much optimisation each algorithm gets (group ``compute``): the schedule mode, asked
    for.  Not results.json's ``compute``, which is what a job measured it cost (``JobResults.cost``).

    native: each algorithm's own schedule (DPO: one step per ``batch_size`` pairs for ``epochs``;
    PPO: ``ppo_epochs`` x ``num_minibatches`` steps per rollout, ~8x DPO's steps at the paper's
    settings).  matched: both take one AdamW step per ``prefixes_per_step`` training prefixes, one
    pass (DPO: batch_size = prefixes_per_step, epochs = 1; PPO: ppo_epochs = 1, num_minibatches =
    rollout_prefixes / prefixes_per_step), so a DPO and a PPO job with the same examples take the
    same number of optimizer steps on the same prefixes.
    """

    mode: str = option("native", "native (each algorithm's own schedule) or matched (one step per "
                                  "prefixes_per_step prefixes for both)")
    prefixes_per_step: int = option(16, "matched only: training prefixes per optimizer step; > 0, divides "
                                        "a PPO job's algorithm.rollout_prefixes")

    def check(self, where: str = "compute") -> None:
        choice(f"{where}.mode", self.mode, ("native", "matched"))
        positive(f"{where}.prefixes_per_step", self.prefixes_per_step)


@dataclass
class HardwareConfig:
    """How a job uses its device: batch sizes and how many jobs share a GPU (group ``hardware``).

    None of these change what a job computes (sampling is keyed, training batches are the
    algorithm's), only its speed and memory, so they are left out of a job's identity: a sweep
    started on CPUs resumes on a GPU.  null = chosen from the device when the job starts
    (``dpo_ppo.runtime.hardware.resolve``): today's sizes on a CPU, larger ones on a GPU, scaled by its
    memory shared among ``jobs_per_gpu`` jobs.  The chosen values are in results.json ``hardware``.
    """

    name: str = option("auto", "the preset's name (conf/hardware/NAME.yaml: auto, cpu, gpu80)")
    gen_batch_size: Optional[int] = option(None, "sequences per generate call (prefs, evaluation); > 0; "
                                                 "null = from the device")
    forward_batch_size: Optional[int] = option(None, "sequences per no-grad forward (scoring, KL); > 0; "
                                                     "null = from the device")
    train_micro_batch: Optional[int] = option(None, "sequences per forward/backward (PPO chunks, DPO "
                                                    "micro-batches); > 0; null = from the device")
    analysis_batch_size: Optional[int] = option(None, "sequences per forward in the analyses; > 0; "
                                                      "null = from the device")
    static_cache: Optional[bool] = option(None, "sample with transformers' static KV cache, which generate "
                                                "compiles on a GPU (torch.compile, CUDA graphs): ~12 s per model and "
                                                "shape, then 21x the tokens/s of an eager PPO rollout on an H200. "
                                                "Used for PPO's rollouts (hundreds of same-shaped calls) and for a "
                                                "prefs or evaluation call of at least static_cache_min_tokens. "
                                                "Completions are the same either way; null = on a GPU, off on a CPU "
                                                "(docs/performance.md)")
    static_cache_min_tokens: Optional[int] = option(None, "with static_cache on, a prefs or evaluation call "
                                                          "(prompts x new tokens) of fewer tokens decodes eagerly, "
                                                          "its compile costing more than it saves; >= 0 (0: every "
                                                          "call); null = 2000000")
    jobs_per_gpu: int = option(1, "jobs that share one GPU: local sweeps (hydra/launcher=joblib_gpu) start this "
                                  "many per visible GPU; on SLURM (hydra/launcher=slurm_gpu) one allocation "
                                  "runs this many at once; > 0")

    def check(self, where: str = "hardware") -> None:
        for key in ("gen_batch_size", "forward_batch_size", "train_micro_batch", "analysis_batch_size",
                    "jobs_per_gpu"):
            positive(f"{where}.{key}", getattr(self, key))
        positive(f"{where}.static_cache_min_tokens", self.static_cache_min_tokens, allow_zero=True)


PRECISIONS = ("auto", "fp32", "bf16")
LOGGER_MODES = ("offline", "online", "disabled")


@dataclass
class LoggerConfig:
    """Weights & Biases logging (group ``logger``); results.json is written whatever these say."""

    name: str = option("wandb_offline", "the preset's name (conf/logger/NAME.yaml: none, wandb, wandb_offline)")
    enabled: bool = option(True, "log a W&B run at all")
    project: str = option("dpo-ppo", "W&B project")
    entity: Optional[str] = option(None, "W&B entity (user or team); null = the default of the login")
    mode: str = option("offline", "offline (written to disk; dpo-ppo-sync uploads), online or disabled")
    dir: Optional[str] = option(None, "folder of the W&B files; null = the job folder")
    tags: list = option(help="extra W&B tags, beside algorithm=, sweep= and model=", factory=list)
    policy_artifact: str = option("upload", "the trained policy as a W&B model artifact: upload (its files), "
                                            "reference (its path on this filesystem) or none")
    probe_prompts: int = option(16, "DPO and PPO: training prefixes (the first N, fixed) sampled during training "
                                    "for train/kl and train/p_positive_mean, the same for both algorithms; 0 = none. "
                                    "Also written to train_log.jsonl without W&B; never changes the training")
    probe_every: Optional[int] = option(None, "examples between two such probes (and one before training, one at "
                                              "the end); null = algorithm.snapshot_every")

    def check(self, where: str = "logger") -> None:
        choice(f"{where}.mode", self.mode, LOGGER_MODES)
        choice(f"{where}.policy_artifact", self.policy_artifact, ("upload", "reference", "none"))
        positive(f"{where}.probe_prompts", self.probe_prompts, allow_zero=True)
        positive(f"{where}.probe_every", self.probe_every)


@dataclass
class Config:
    """One job: every group, plus the keys of no group (the top level of conf/config.yaml)."""

    model: ModelConfig = option(MISSING, "the reference policy (group model: tiny, pythia70m)")
    data: DataConfig = option(MISSING, "the labelled reviews (group data: synthetic, imdb)")
    classifier: ClassifierConfig = option(MISSING, "the reward model (group classifier: tiny, gpt2_imdb)")
    algorithm: Any = option(MISSING, "DPO-, PPO-, RLOO- or GRPOAlgorithmConfig, by name (group algorithm: dpo, "
                                     "ppo, rloo, grpo)")
    eval: EvalConfig = option(MISSING, "the evaluation (group eval)")
    analysis: AnalysisConfig = option(MISSING, "the analyses of what changed (group analysis: full, fast, none)")
    logger: LoggerConfig = option(MISSING, "W&B logging (group logger: wandb_offline, wandb, none)")
    compute: ComputeConfig = option(MISSING, "the optimisation schedule (group compute: native, matched)")
    hardware: HardwareConfig = option(MISSING, "batch sizes from the device (group hardware: auto, cpu, gpu80)")
    name: str = option("default", "experiment or sweep name: W&B group, output folder")
    seed: int = option(0, "seed of training (prefixes, sampling, initialisation); in [0, 2^32-1]")
    device: str = option("auto", "auto (cuda when there is one, else cpu), cpu, cuda, cuda:N or mps")
    precision: str = option("auto", "auto: bf16 autocast with float32 master weights on CUDA (TF32 matmuls "
                                    "on), float32 on a CPU; fp32: float32 everywhere (TF32 off); bf16: bf16 "
                                    "autocast on any device. Applies to every stage that trains or samples "
                                    "(decoding itself runs float32 except compiled rollouts: "
                                    "docs/performance.md)")
    threads: int = option(0, "torch CPU threads for this job; 0 = torch's default (all cores). Parallel local "
                             "jobs (hydra/launcher=joblib, joblib_gpu) get cores / n_jobs each from joblib; >= 0")
    cache_dir: str = option(".cache/dpo-ppo", "folder of the shared artifacts (corpus, base, classifier, "
                                               "prefs, reference evaluation); created if missing")
    force: bool = option(False, "re-run a job whose folder already holds finished results (or results made "
                                "under another config)")
    sweep: Optional[str] = option(None, "the sweep file a job came from (set by sweeps/NAME.yaml; logged with "
                                        "the job's config)")
    prepare: bool = option(False, "build the shared artifacts this config needs (corpus, base, classifier, "
                                  "reference evaluation, DPO preferences) and stop: the sweeper's prepare step")

    def check(self) -> None:
        """Every check of the config, in order: the generic ones (they guard the range checks: NaN
        compares false with everything), each group's own, those across groups; raises ConfigError
        naming the first bad key.  Devices and folders on this machine: ``dpo_ppo.inputs``."""
        check_generic(self)
        self.model.check("model")
        self.data.check("data")
        self.classifier.check("classifier")
        self.algorithm.check("algorithm")
        self.compute.check("compute")
        self.eval.check("eval")
        self.logger.check("logger")
        self.hardware.check("hardware")
        positive("threads", self.threads, allow_zero=True)
        choice("precision", self.precision, PRECISIONS)
        self.check_across()
        if self.analysis is not None and self.analysis.enabled:
            self.analysis.check("analysis")
            self.analysis.check_model(self.model, "analysis")

    def check_across(self) -> None:
        """What no group can check alone: the lengths asked for against the model's context and
        the classifier's max_length, and compute=matched against PPO's rollouts."""
        algo, model, ev = self.algorithm, self.model, self.eval
        compute = self.compute
        if (compute.mode == "matched" and algo.name == "ppo" and algo.early_stop_kl is not None
                and algo.trust_region == "stop"):
            raise ConfigError("algorithm.trust_region",
                              "stop ends an update at the trust region and skips its later steps, so PPO would "
                              "take fewer optimizer steps than DPO under compute=matched; use shrink (the "
                              "default) or algorithm.early_stop_kl=null")
        if compute.mode == "matched" and algo.name == "dpo":
            check_rounds("algorithm", algo.rounds, algo.examples, compute.prefixes_per_step,
                         "compute.prefixes_per_step")
        if compute.mode == "matched" and algo.name == "ppo" and algo.rollout_prefixes % compute.prefixes_per_step:
            raise ConfigError("compute.prefixes_per_step",
                              f"must divide algorithm.rollout_prefixes ({algo.rollout_prefixes}) for "
                              f"compute=matched, got {compute.prefixes_per_step}")
        if model.source == "embedded" or local_path(model.source) is None:
            check_context(self)  # a local folder's own context: dpo_ppo.inputs.check_model_folder
        longest_prefix = algo.longest_prefix
        # the scorer truncates at classifier.max_length: it must read the whole prefix + completion
        scored = {"algorithm.completion_len": longest_prefix + algo.completion_len,
                  "eval.completion_len": ev.prefix_len + ev.completion_len}
        for key, tokens in scored.items():
            if tokens > self.classifier.max_length:
                raise ConfigError("classifier.max_length",
                                  f"the scorer would truncate what it scores: prefix + {key} = {tokens} "
                                  f"tokens > classifier.max_length ({self.classifier.max_length}) of "
                                  f"classifier={self.classifier.name}; raise classifier.max_length to >= "
                                  f"{tokens} or shorten the completions")


GROUPS = {"model": ModelConfig, "data": DataConfig, "classifier": ClassifierConfig, "dpo": DPOAlgorithmConfig,
          "ppo": PPOAlgorithmConfig, "rloo": RLOOAlgorithmConfig, "grpo": GRPOAlgorithmConfig, "eval": EvalConfig, "logger": LoggerConfig, "compute": ComputeConfig,
          "hardware": HardwareConfig, "analysis": AnalysisConfig}


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    # schemas live in their own group so that `--help` lists only real options under each group;
    # each group's yaml starts with `- /schema@_here_: <name>`
    for name, node in GROUPS.items():
        cs.store(group="schema", name=name, node=node)
    from dpo_ppo.config.analyze import AnalyzeConfig

    cs.store(name="analyze_schema", node=AnalyzeConfig)  # dpo-ppo-analyze's top (conf/analyze.yaml)


# --------------------------------------------------------------------------- conversion


def to_typed(cfg) -> Config:
    """The composed config as the ``Config`` dataclass (``OmegaConf.to_object``: interpolations
    resolved; ``algorithm`` a DPOAlgorithmConfig or PPOAlgorithmConfig as its yaml's schema says,
    ``analysis`` an AnalysisConfig).  No checks (``load`` runs them); a Config passes through."""
    if isinstance(cfg, Config):
        return cfg
    if not isinstance(cfg, DictConfig) or OmegaConf.get_type(cfg) is not Config:
        raise TypeError(f"expected the composed dpo-ppo config (a DictConfig of {Config.__name__}) or a "
                        f"{Config.__name__}, got {type(cfg).__name__}")
    typed = OmegaConf.to_object(cfg)
    algo = typed.algorithm
    if isinstance(algo, dict) and algo.get("name") in ALGORITHM_SCHEMAS:
        # an algorithm node without its schema (``algorithm`` is Any in Config): by its name
        typed.algorithm = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ALGORITHM_SCHEMAS[algo["name"]]),
                                                              algo))
    return typed


def as_dict(cfg) -> dict:
    """The plain dict of a config dataclass (``dataclasses.asdict``; a DictConfig resolved the
    same way): what results.json's ``config``, the config hash and the artifact keys are made of."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return dataclasses.asdict(cfg)
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    raise TypeError(f"expected a config dataclass, got {type(cfg).__name__}")


# --------------------------------------------------------------------------- checks of any group

SEED_MAX = 2**32 - 1


def _leaves(node, prefix: str = ""):
    """(dotted key, value) of every leaf of a plain dict / list tree (``as_dict`` of a config)."""
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, value in items:
        full = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, (dict, list, tuple)):
            yield from _leaves(value, full)
        else:
            yield full, value


def check_generic(cfg: Config) -> None:
    """The checks every group shares; run first, so that a NaN never reaches the range checks
    (NaN compares false with everything, so ``lr < 0`` lets it through)."""
    for key, value in _leaves(as_dict(cfg)):
        finite(key, value)
        name = key.rpartition(".")[2]
        if (name == "seed" or name.endswith("_seed")) and value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
                raise ConfigError(key, f"must be an integer in [0, 2^32-1], got {value}")
    check_device_name("device", cfg.device)  # whether this machine has it: dpo_ppo.inputs.check_device
    if cfg.analysis is not None and cfg.analysis.device is not None:
        check_device_name("analysis.device", cfg.analysis.device)


def check_context(cfg, context: int | None = None, what: str | None = None) -> None:
    """Prefix + completion, in training and in evaluation, fit the model's context: ``context``
    tokens (what the model itself says, ``what`` naming where that was read), else the
    ``model.context_length`` key."""
    algo, ev, model = cfg.algorithm, cfg.eval, cfg.model
    if context is None:
        context, what = model.context_length, f"model={model.name}"
    longest_prefix = algo.longest_prefix
    if longest_prefix + algo.completion_len > context:
        raise ConfigError("algorithm.prefix_len" if algo.prefix_len_max is None else "algorithm.prefix_len_max",
                          f"prefix ({longest_prefix}) + algorithm.completion_len ({algo.completion_len}) "
                          f"= {longest_prefix + algo.completion_len} tokens exceeds the context of "
                          f"{what} ({context} tokens)")
    if ev.prefix_len + ev.completion_len > context:
        raise ConfigError("eval.prefix_len",
                          f"eval.prefix_len + eval.completion_len = "
                          f"{ev.prefix_len + ev.completion_len} exceeds the context of "
                          f"{what} ({context} tokens)")
