"""The analysis suite's configuration: group ``analysis`` (conf/analysis/{full,fast,none}.yaml).

One switch per analysis of the seed paper (sections 2.2-2.3 and 3.2-3.4) and the sizes that set its
cost.  The defaults are the ``full`` preset: on the embedded default (4 layers, hidden 128, 8 heads)
the whole suite costs about as much as training one policy on two CPU cores.  Every size is a
number of prompts / texts / tokens, never a layer or head count: those come from the model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Optional

from dpo_ppo.config.fields import DEVICE_PATTERN, DEVICES, ConfigError, option, positive

# A sentiment prompt marks its sentiment word with square brackets; the attention paid to the
# word's last BPE token is what analysis 5 measures.  The first two are the seed's prompt (section
# 3.4) and its negative twin ("awful" instead of "excellent"); the rest vary the template, the
# word's place and the word, always as a positive / negative pair on the same template so that the
# two polarities are compared on equal terms.
DEFAULT_SENTIMENT_PROMPTS = [
    "This movie was [excellent] because it had a great storyline and",
    "This movie was [awful] because it had a great storyline and",
    "The acting was [brilliant] and the script kept me watching until",
    "The acting was [terrible] and the script kept me watching until",
    "I thought the film was [wonderful], and my friends said that",
    "I thought the film was [boring], and my friends said that",
    "A [superb] story about a detective who searches for",
    "A [tedious] story about a detective who searches for",
    "Honestly, the direction felt [delightful] from the first scene to",
    "Honestly, the direction felt [clumsy] from the first scene to",
    "What a [great] cast, and the music in the second half",
    "What a [dull] cast, and the music in the second half",
]

ABLATION_KINDS = ("zero", "mean")
_MARK = re.compile(r"\[([^\[\]]+)\]")


# part of the key of every cached reference-side result (Job.reference_cache, Context.for_model):
# raise it whenever an analysis changes what it computes for the reference, so that no sweep reads
# results of older code
REFERENCE_ANALYSIS_VERSION = 1


@dataclass
class AnalysisConfig:
    """The analysis suite (group ``analysis``): which analyses run and the sizes that set their cost.

    ``check`` holds the group's own ranges; ``check_model`` what must fit the model (``Config.check``
    runs both when the suite is enabled).
    """

    name: str = option("full", "the preset's name (conf/analysis/NAME.yaml: full, fast, none)")
    enabled: bool = option(True, "master switch: false skips the whole suite (and its checks)")
    # --- which analyses run
    weights: bool = option(True, "1. mean-square weight / bias divergence from the reference (and over snapshots)")
    activations: bool = option(True, "2. activation cosine / KL per layer, logit-lens KL")
    ablation: bool = option(True, "3. per-head zero / mean ablation: LM loss and sentiment")
    heads: bool = option(True, "4. previous-token / duplicate-token / induction head scores")
    sentiment_attention: bool = option(True, "5. attention paid to the sentiment token")
    heads_over_training: bool = option(True, "6. the head scores of 4 and the attention of 5 at every snapshot "
                                             "the job saved (the seed's next experiment, 3.4); needs snapshots")
    # --- shared
    seed: int = option(0, "which held-out texts are drawn (texts are shuffled with this seed); in [0, 2^32-1]")
    batch_size: Optional[int] = option(None, "sequences per forward pass; > 0; null = hardware.analysis_batch_size")
    max_tokens: int = option(64, "texts are cut to this many tokens (activations, LM loss, heads); >= 2, "
                                 "max_tokens + 1 within the model's context")
    device: str = option("auto", "auto (the policy's device), cpu, cuda, cuda:N or mps")
    # --- 2. activations
    activation_prompts: int = option(256, "held-out texts, half positive, half negative where possible; > 0")
    # --- 3. ablation
    ablation_kinds: List[str] = option(help="how a head is ablated: a non-empty subset of [zero, mean]",
                                       factory=lambda: ["zero", "mean"])
    ablation_reference: bool = option(True, "ablate the reference as well as the policy")
    ablation_lm_texts: int = option(32, "held-out texts for the LM loss (and the mean activations); > 0")
    ablation_sentiment: bool = option(True, "also measure the sentiment objective under ablation")
    ablation_prompts: int = option(16, "prompts whose completions are scored under each ablation; > 0")
    ablation_prefix_len: int = option(16, "tokens of each ablation prompt; > 0")
    ablation_completion_len: int = option(16, "new tokens per ablation completion; > 0, prefix + completion "
                                              "within the model's context")
    ablation_temperature: float = option(1.0, "sampling temperature of the ablation completions; > 0")
    ablation_score_prompt: bool = option(True, "score prompt + completion (false: the completion only)")
    ablation_rows: int = option(512, "stacked rows (variants x texts) per forward in the batched ablation; > 0")
    # --- 4. head detection
    head_texts: int = option(16, "natural held-out texts for previous-token scores; > 0")
    head_random_seqs: int = option(16, "repeated random-token sequences for duplicate / induction scores; > 0")
    head_random_len: int = option(20, "tokens of the random half (the sequence is BOS + r + r); > 0, "
                                      "2 x head_random_len + 1 within the model's context")
    # --- 5. attention to the sentiment token
    sentiment_prompts: List[str] = option(help="prompts with one sentiment word marked in square brackets and "
                                               "more text after it; at least one when sentiment_attention",
                                          factory=lambda: list(DEFAULT_SENTIMENT_PROMPTS))
    attention_layer: int = option(-1, "layer whose patterns are plotted (0-based, below the model's layer "
                                      "count); -1: where attention changed most")
    prepend_bos: bool = option(True, "heads and sentiment prompts start with BOS (<|endoftext|>), as in "
                                     "TransformerLens")
    top_heads: int = option(5, "heads listed as \"changed most\"; > 0")
    # --- 1. weights over training
    snapshots: bool = option(True, "analyse the snapshot folders the job saved (1: divergence over training; "
                                   "6: heads over training); false: the final policy only")

    def check(self, where: str = "analysis") -> None:
        """The group's own ranges (whether or not the suite is enabled; callers skip a disabled one)."""
        for key in ("batch_size", "max_tokens", "activation_prompts", "ablation_lm_texts", "ablation_prompts",
                    "ablation_prefix_len", "ablation_completion_len", "ablation_rows", "head_texts",
                    "head_random_seqs", "head_random_len", "top_heads"):
            positive(f"{where}.{key}", getattr(self, key))
        if self.max_tokens < 2:
            raise ConfigError(f"{where}.max_tokens", f"must be >= 2 (a next-token loss needs two), got {self.max_tokens}")
        positive(f"{where}.ablation_temperature", self.ablation_temperature)
        bad = [k for k in self.ablation_kinds if k not in ABLATION_KINDS]
        if bad or not len(self.ablation_kinds):
            raise ConfigError(f"{where}.ablation_kinds", f"must be a non-empty subset of {list(ABLATION_KINDS)}, "
                                                         f"got {list(self.ablation_kinds)}")
        if self.attention_layer < -1:
            raise ConfigError(f"{where}.attention_layer",
                              f"must be -1 (auto) or a layer index >= 0, got {self.attention_layer}")
        if self.device != "auto" and not re.fullmatch(DEVICE_PATTERN, self.device):
            raise ConfigError(f"{where}.device", f"must be {DEVICES}; got {self.device!r}")
        if self.sentiment_attention and not len(self.sentiment_prompts):
            raise ConfigError(f"{where}.sentiment_prompts", "needs at least one prompt when sentiment_attention=true")
        for i, p in enumerate(self.sentiment_prompts):
            try:
                text, _, end = parse_marked_prompt(p)
            except ValueError as e:
                raise ConfigError(f"{where}.sentiment_prompts[{i}]", str(e)) from None
            if not text[end:].strip():
                raise ConfigError(f"{where}.sentiment_prompts[{i}]",
                                  f"the marked word must be followed by more text (attention is measured "
                                  f"from later positions), got {p!r}")

    def check_model(self, model, where: str = "analysis") -> None:
        """What must fit ``model`` (a ModelConfig: ``name``, ``source``, ``context_length``,
        ``num_layers``): the lengths asked for, and attention_layer for the embedded model."""
        context = getattr(model, "context_length", None)
        if not context:
            return
        checks = [(f"{where}.max_tokens", self.max_tokens + 1),
                  (f"{where}.ablation_prefix_len", self.ablation_prefix_len + self.ablation_completion_len),
                  (f"{where}.head_random_len", 2 * self.head_random_len + 1)]
        for key, need in checks:
            if need > context:
                raise ConfigError(key, f"needs {need} tokens, more than the context of "
                                       f"model={model.name} ({context} tokens)")
        layers = getattr(model, "num_layers", None)
        if model.source == "embedded" and layers and self.attention_layer >= layers:
            raise ConfigError(f"{where}.attention_layer",
                              f"model={model.name} has {layers} layers (0..{layers - 1}), got {self.attention_layer}")


def parse_marked_prompt(prompt: str) -> tuple[str, int, int]:
    """``"was [excellent] because"`` -> (``"was excellent because"``, start, end) of the word."""
    marks = _MARK.findall(prompt)
    if len(marks) != 1:
        raise ValueError(f"sentiment prompt {prompt!r} must mark exactly one word in square brackets, "
                         f"e.g. 'This movie was [excellent] because'")
    m = _MARK.search(prompt)
    text = prompt[: m.start()] + m.group(1) + prompt[m.end():]
    return text, m.start(), m.start() + len(m.group(1))
