"""The seed paper's findings about DPO vs PPO (../shared/seed, sections 3-4), as testable claims.

Each claim names the metric(s) that measure it (the first one the runs hold is used) and what
the seed says about PPO minus DPO at matched KL:

- ``higher`` / ``lower``: PPO's value is above / below DPO's;
- ``same``: the two are equal within ``margin`` (a fraction of their mean value);
- ``differ``: the two differ (either way);
- ``zero``: for each algorithm the metric is 0 within ``margin`` (an absolute value): what the
  seed says of each fine-tuned model against the reference, read at matched KL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

from dpo_ppo.report.load import POS_NEG_REL
from dpo_ppo.results import P_POSITIVE_STD, policy_metric

KINDS = ("higher", "lower", "same", "differ", "zero")


SAME_MARGIN = 0.25  # a "same" claim: equal within this fraction of the two values' mean


@dataclass(frozen=True)
class Claim:
    id: str
    section: str
    text: str  # what the seed says, in a line
    metrics: Tuple[str, ...]  # candidates, first present wins
    kind: str
    margin: float = SAME_MARGIN  # "same": a fraction of the mean; "zero": an absolute value

    def expectation(self) -> str:
        return {"higher": "PPO > DPO", "lower": "PPO < DPO", "same": "PPO ≈ DPO", "differ": "PPO ≠ DPO",
                "zero": f"|x| < {self.margin:g} for both"}[self.kind]


ABLATION = tuple(f"analysis/ablation/policy/{kind}/lm_loss_increase_{stat}"
                 for stat in ("mean",) for kind in ("zero", "mean"))
ABLATION_MAX = tuple(f"analysis/ablation/policy/{kind}/lm_loss_increase_max" for kind in ("zero", "mean"))

CLAIMS: Tuple[Claim, ...] = (
    Claim("C1", "3.1", "PPO makes fewer negative completions than DPO (binary loss)",
          (policy_metric("binary_loss"),), "lower"),
    Claim("C2", "3.1", "DPO's completions are more positive on average (gradient loss)",
          (policy_metric("gradient_loss"),), "higher"),
    Claim("C3", "3.1", "DPO's completions are more polarised: strongly positive or strongly negative",
          (policy_metric(P_POSITIVE_STD),), "lower"),
    Claim("C4", "3.2", "Weight divergence from the reference is about the same for both (run 1)",
          ("analysis/weights/msd_weights",), "same"),
    Claim("C5", "3.2", "PPO's bias divergence is heavily elevated over DPO's",
          ("analysis/weights/msd_biases",), "higher"),
    Claim("C6", "3.2", "PPO's biases diverge more relative to its weights (bias / weight ratio)",
          ("analysis/weights/bias_weight_ratio",), "higher"),
    Claim("C7", "3.2, 4", "PPO diverges more from the reference overall; DPO stays closer",
          ("analysis/weights/msd_all",), "higher"),
    Claim("C8", "3.2", "Activation divergence is the same on positive and negative prompts "
          "((pos - neg) / all, residual-stream KL)", (POS_NEG_REL,), "zero", margin=0.1),
    Claim("C9", "3.2", "DPO and PPO differ in activation divergence from the reference (residual KL)",
          ("analysis/activations/resid/kl_all_mean",), "differ"),
    Claim("C10", "3.3, 4", "PPO is more robust to head ablation (smaller mean LM-loss increase)",
          ABLATION, "lower"),
    Claim("C11", "4", "PPO is less hurt by losing any single head (smaller worst-head loss increase)",
          ABLATION_MAX, "lower"),
    Claim("C12", "3.4", "Previous-token heads barely change under either (largest change in a head's score)",
          ("analysis/heads/previous_token_max_abs_change",), "zero", margin=0.1),
    Claim("C13", "3.4", "Induction heads barely change under either (largest change in a head's score)",
          ("analysis/heads/induction_max_abs_change",), "zero", margin=0.1),
    Claim("C14", "3.4", "PPO recruits more heads to attend to the sentiment token (largest change "
          "in attention to it)", ("analysis/sentiment_attention/max_abs_change",), "higher"),
)
