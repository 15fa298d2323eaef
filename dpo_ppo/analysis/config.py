"""The analysis suite's configuration: group ``analysis`` (conf/analysis/{full,fast,none}.yaml).

One switch per analysis of the seed paper (sections 2.2-2.3 and 3.2-3.4) and the sizes that set its
cost.  The defaults are the ``full`` preset: on the embedded default (4 layers, hidden 128, 8 heads)
the whole suite costs about as much as training one policy on two CPU cores.  Every size is a
number of prompts / texts / tokens, never a layer or head count: those come from the model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import List, Optional

# A sentiment prompt marks its sentiment word with square brackets; the attention paid to the
# word's last BPE token is what analysis 5 measures.  These are the seed's prompt (section 3.4)
# and its negative twin ("awful" instead of "excellent").
DEFAULT_SENTIMENT_PROMPTS = [
    "This movie was [excellent] because it had a great storyline and",
    "This movie was [awful] because it had a great storyline and",
]

ABLATION_KINDS = ("zero", "mean")
_MARK = re.compile(r"\[([^\[\]]+)\]")


@dataclass
class AnalysisConfig:
    name: str = "full"
    enabled: bool = True  # master switch: false skips the whole suite
    # --- which analyses run
    weights: bool = True  # 1. mean-square weight / bias divergence (and over snapshots)
    activations: bool = True  # 2. activation cosine / KL per layer, logit-lens KL
    ablation: bool = True  # 3. per-head zero / mean ablation: LM loss and sentiment
    heads: bool = True  # 4. previous-token / duplicate-token / induction head scores
    sentiment_attention: bool = True  # 5. attention paid to the sentiment token
    # --- shared
    seed: int = 0  # which held-out texts are drawn (texts are shuffled with this seed)
    batch_size: Optional[int] = None  # sequences per forward pass; null = hardware.analysis_batch_size
    max_tokens: int = 64  # texts are cut to this many tokens (activations, LM loss, heads)
    device: str = "auto"  # auto: the policy's device
    # --- 2. activations
    activation_prompts: int = 256  # held-out texts, half positive, half negative where possible
    # --- 3. ablation
    ablation_kinds: List[str] = field(default_factory=lambda: ["zero", "mean"])
    ablation_reference: bool = True  # ablate the reference as well as the policy
    ablation_lm_texts: int = 32  # held-out texts for the LM loss (and the mean activations)
    ablation_sentiment: bool = True  # also measure the sentiment objective under ablation
    ablation_prompts: int = 16  # prompts whose completions are scored under each ablation
    ablation_prefix_len: int = 16  # tokens of each prompt
    ablation_completion_len: int = 16  # new tokens per completion
    ablation_temperature: float = 1.0
    ablation_score_prompt: bool = True  # score prompt + completion (false: completion only)
    ablation_rows: int = 512  # stacked rows (variants x texts) per forward in the batched ablation
    # --- 4. head detection
    head_texts: int = 16  # natural held-out texts for previous-token scores
    head_random_seqs: int = 16  # repeated random-token sequences for duplicate / induction scores
    head_random_len: int = 20  # length of the random half (the sequence is BOS + r + r)
    # --- 5. attention to the sentiment token
    sentiment_prompts: List[str] = field(default_factory=lambda: list(DEFAULT_SENTIMENT_PROMPTS))
    attention_layer: int = -1  # layer whose patterns are plotted; -1: where attention changed most
    prepend_bos: bool = True  # heads and sentiment prompts start with BOS (<|endoftext|>), as in TL
    top_heads: int = 5  # heads listed as "changed most"
    # --- 1. weights over training
    snapshots: bool = True  # divergence at every snapshot folder the job saved


def parse_marked_prompt(prompt: str) -> tuple[str, int, int]:
    """``"was [excellent] because"`` -> (``"was excellent because"``, start, end) of the word."""
    marks = _MARK.findall(prompt)
    if len(marks) != 1:
        raise ValueError(f"sentiment prompt {prompt!r} must mark exactly one word in square brackets, "
                         f"e.g. 'This movie was [excellent] because'")
    m = _MARK.search(prompt)
    text = prompt[: m.start()] + m.group(1) + prompt[m.end():]
    return text, m.start(), m.start() + len(m.group(1))


def validate(cfg) -> None:
    """Range checks for ``cfg.analysis``; raises ConfigError naming the key."""
    from dpo_ppo.config import ConfigError  # lazy: dpo_ppo.config imports this module

    a = cfg.analysis
    if a is None or not a.enabled:
        return
    for key in ("batch_size", "max_tokens", "activation_prompts", "ablation_lm_texts", "ablation_prompts",
                "ablation_prefix_len", "ablation_completion_len", "ablation_rows", "head_texts",
                "head_random_seqs", "head_random_len", "top_heads"):
        if a[key] is not None and a[key] <= 0:
            raise ConfigError(f"analysis.{key}", f"must be > 0, got {a[key]}")
    if a.max_tokens < 2:
        raise ConfigError("analysis.max_tokens", f"must be >= 2 (a next-token loss needs two), got {a.max_tokens}")
    if a.ablation_temperature <= 0:
        raise ConfigError("analysis.ablation_temperature", f"must be > 0, got {a.ablation_temperature}")
    bad = [k for k in a.ablation_kinds if k not in ABLATION_KINDS]
    if bad or not len(a.ablation_kinds):
        raise ConfigError("analysis.ablation_kinds",
                          f"must be a non-empty subset of {list(ABLATION_KINDS)}, got {list(a.ablation_kinds)}")
    if a.attention_layer < -1:
        raise ConfigError("analysis.attention_layer", f"must be -1 (auto) or a layer index >= 0, got {a.attention_layer}")
    if a.device != "auto" and not re.fullmatch(r"cpu|cuda(:\d+)?|mps", a.device):
        raise ConfigError("analysis.device", f"must be auto, cpu, cuda or cuda:N, got {a.device!r}")
    if a.sentiment_attention and not len(a.sentiment_prompts):
        raise ConfigError("analysis.sentiment_prompts", "needs at least one prompt when sentiment_attention=true")
    for i, p in enumerate(a.sentiment_prompts):
        try:
            text, _, end = parse_marked_prompt(p)
        except ValueError as e:
            raise ConfigError(f"analysis.sentiment_prompts[{i}]", str(e)) from None
        if not text[end:].strip():
            raise ConfigError(f"analysis.sentiment_prompts[{i}]",
                              f"the marked word must be followed by more text (attention is measured "
                              f"from later positions), got {p!r}")
    model = cfg.get("model") if hasattr(cfg, "get") else None
    context = getattr(model, "context_length", None) if model is not None else None
    if context:
        checks = [("analysis.max_tokens", a.max_tokens + 1),
                  ("analysis.ablation_prefix_len", a.ablation_prefix_len + a.ablation_completion_len),
                  ("analysis.head_random_len", 2 * a.head_random_len + 1)]
        for key, need in checks:
            if need > context:
                raise ConfigError(key, f"needs {need} tokens, more than the context of "
                                       f"model={model.name} ({context} tokens)")
        layers = getattr(model, "num_layers", None)
        if model.source == "embedded" and layers and a.attention_layer >= layers:
            raise ConfigError("analysis.attention_layer",
                              f"model={model.name} has {layers} layers (0..{layers - 1}), got {a.attention_layer}")
