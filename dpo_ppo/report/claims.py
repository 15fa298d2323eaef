"""The seed paper's findings about DPO vs PPO (../shared/seed, sections 3-4), as testable claims.

Each claim quotes the seed's sentence, names the metric(s) that measure it (the first one the runs
hold is used) and says what the seed says about PPO minus DPO at matched KL:

- ``higher`` / ``lower``: PPO's value is above / below DPO's (somewhere on the common KL range, and
  the verdict says where);
- ``same``: the two are equal within ``margin`` times the mean of the two values (each value is
  itself a change of the policy from the reference: a divergence, an ablation's loss change), all
  along the common range (TOST);
- ``differ``: the two differ (either way);
- ``zero``: for each algorithm of ``arms`` the metric is 0 within ``margin`` times ``scale`` (the
  reference's own value of the quantity, e.g. its top head score; 1 when the metric is already
  relative or the scale is not measured): what the seed says of a fine-tuned model against the
  reference, all along the common range (TOST).

``family=False``: a row derived from or paraphrasing another (``of``): shown with its unadjusted p,
kept out of the false-discovery family so that it cannot inflate it. ``condition``: the seed's run
("run 1": its first round, 25,000 examples, unequal settings; "run 2": 10,000 examples, equal
settings where possible); a sweep with a run-condition facet (experiment=paper_run1/2) compares the
claim only there, any other sweep says in a caveat that the seed stated it of one run.

The reward claims (C1-C3) read the gold reward where the runs have one (``eval.gold``: a scorer no
training step saw, so over-optimisation of the trained classifier cannot pass for a finding) and
the trained classifier (the proxy) otherwise; the row's metric column says which.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from dpo_ppo import results as R
from dpo_ppo.report.load import BIAS_FLUCTUATION, EFFICIENCY, HEADS_RECRUITED, POS_NEG_REL, RECRUIT_THRESHOLD
from dpo_ppo.results import (GOLD_BINARY_LOSS, GOLD_GRADIENT_LOSS, GOLD_P_POSITIVE_STD, P_POSITIVE_STD,
                             policy_metric)

KINDS = ("higher", "lower", "same", "differ", "zero")

SAME_MARGIN = 0.25  # a "same" claim: equal within this fraction of the two values' mean
ZERO_MARGIN = 0.1  # a "zero" claim: within this fraction of the scale


@dataclass(frozen=True)
class Claim:
    id: str
    section: str
    text: str  # what the row tests, in a line
    metrics: Tuple[str, ...]  # candidates, first present wins
    kind: str
    margin: float = SAME_MARGIN  # "same": a fraction of the mean; "zero": a fraction of ``scale``
    quote: str = ""  # the seed's sentence, verbatim
    scale: Optional[str] = None  # "zero": the metric whose mean over the runs sets the margin's unit
    arms: Tuple[str, ...] = ("dpo", "ppo")  # "zero": the algorithms the claim is about
    family: bool = True  # False: derived / paraphrased, outside the FDR family
    of: str = ""  # the row it derives from or paraphrases
    condition: Optional[str] = None  # "run 1" / "run 2": the seed's run it was stated of

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"claim {self.id}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")

    def expectation(self) -> str:
        if self.kind == "zero":
            who = " and ".join(a.upper() for a in self.arms)
            unit = f" x {self.scale.split('/', 1)[-1]}" if self.scale else ""
            return f"|x| < {self.margin:g}{unit} for {who}"
        return {"higher": "PPO > DPO", "lower": "PPO < DPO", "same": f"PPO ≈ DPO (±{self.margin:.0%})",
                "differ": "PPO ≠ DPO"}[self.kind]


def _ablation(measure: str, stat: str = "mean") -> Tuple[str, ...]:
    return tuple(f"analysis/ablation/policy/{kind}/{measure}_{stat}" for kind in ("mean", "zero"))


SEED_LOSS = _ablation("grad_loss_delta")  # the seed's own loss (3.1's gradient loss) under ablation
LM_LOSS = _ablation("lm_loss_increase")
HEADS = "analysis/heads/{}_max_abs_change"
REF_HEADS = "analysis/heads/reference/{}_max"


def _heads_unchanged(claim_id: str, measure: str, name: str) -> Claim:
    """The seed's one sentence about its three head types, as one "zero" row per type: the largest
    change of a head's score, against the reference's top score of that type."""
    return Claim(claim_id, "3.4", f"{name} heads barely change under either (largest change in a head's score)",
                 (HEADS.format(measure),), "zero", margin=ZERO_MARGIN, scale=REF_HEADS.format(measure),
                 quote="we found that there are no big changes in the behavior of previous token, duplicate token, "
                       "and induction heads before and after fine-tuning.")


CLAIMS: Tuple[Claim, ...] = (
    Claim("C1", "3.1", "PPO makes fewer negative completions than DPO (binary loss)",
          (policy_metric(GOLD_BINARY_LOSS), policy_metric(R.BINARY_LOSS)), "lower", condition="run 2",
          quote="In the models from the second training round, PPO considerably outperforms both the reference "
                "and DPO model on the binary task"),
    Claim("C2", "3.1", "DPO's completions are more positive on average (gradient loss)",
          (policy_metric(GOLD_GRADIENT_LOSS), policy_metric(R.GRADIENT_LOSS)), "higher", condition="run 2",
          quote="whilst the DPO model is able to generate on average the most positive completions"),
    Claim("C3", "3.1", "DPO's completions are more polarised: strongly positive or strongly negative",
          (policy_metric(GOLD_P_POSITIVE_STD), policy_metric(P_POSITIVE_STD)), "lower", condition="run 2",
          quote="suggesting completions are either strongly positive or strongly negative, at least relative "
                "to those of compared models"),
    Claim("C4", "3.2", "Weight divergence from the reference is about the same for both (run 1)",
          (R.MSD_WEIGHTS,), "same", condition="run 1",
          quote="For the first training round models; whilst the average weight divergence is very similar "
                "across both models, the PPO average bias divergence is heavily elevated."),
    Claim("C5", "3.2", "PPO's bias divergence is heavily elevated over DPO's",
          (R.MSD_BIASES,), "higher",
          quote="the PPO average bias divergence is heavily elevated"),
    Claim("C6", "3.2", "PPO's biases diverge more relative to its weights (bias / weight ratio; from C4 and C5)",
          (R.BIAS_WEIGHT_RATIO,), "higher", family=False, of="C4, C5",
          quote="As with the first training round, bias elevation is again extreme."),
    Claim("C7", "3.2, 4", "PPO diverges more from the reference in weights and biases (run 2); DPO stays closer",
          (R.MSD_ALL,), "higher", condition="run 2",
          quote="In the second training round PPO diverges strongly from the reference model in both weights "
                "and biases."),
    Claim("C8", "3.2", "Activation divergence is the same on positive and negative prompts "
          "((pos - neg) / all, residual-stream KL)", (POS_NEG_REL,), "zero", margin=ZERO_MARGIN,
          quote="We observed hardly even a trivial change between the divergence in activation vectors for "
                "negative and positive sentiments"),
    Claim("C9", "3.2", "DPO and PPO differ in activation divergence from the reference (residual KL)",
          (R.RESID_KL_MEAN.format("all"),), "differ",
          quote="The dissension between the distance measures for the DPO and PPO model is likely accounted for "
                "by the large bias divergence shown above."),
    Claim("C10", "3.3", "PPO is more robust to head ablation: a smaller mean increase of the seed's "
          "(gradient) loss when one head is ablated (run 1)", SEED_LOSS, "lower", condition="run 1",
          quote="In the first training round, the PPO model is clearly considerably more robust to head ablation "
                "than the DPO model"),
    Claim("C10-lm", "3.3", "The same on the LM loss (a second facet of C10: mean LM-loss increase)",
          LM_LOSS, "lower", condition="run 1",
          quote="In the first training round, the PPO model is clearly considerably more robust to head ablation "
                "than the DPO model"),
    Claim("C11", "4", "PPO is less hurt by losing any single head (worst head; paraphrases C10)",
          _ablation("grad_loss_delta", "max") + _ablation("lm_loss_increase", "max"), "lower",
          family=False, of="C10", condition="run 1",
          quote="the PPO-tuned model may be better at distributing its dependencies across different heads, "
                "resulting in a model that is less likely to have its performance significantly affected by "
                "the failure of a single head"),
    Claim("C19", "3.3, 4", "In run 2 the two are about equally sensitive to head ablation",
          SEED_LOSS, "same", condition="run 2",
          quote="On the contrary, the second training results suggest approximately equivalent dependency "
                "distribution due to the almost equivalence of the impact of ablation on loss."),
    _heads_unchanged("C12", "previous_token", "Previous-token"),
    _heads_unchanged("C16", "duplicate_token", "Duplicate-token"),
    _heads_unchanged("C13", "induction", "Induction"),
    Claim("C14", "3.4", f"PPO recruits more heads to the sentiment token (heads whose attention to it rose by "
          f"more than {RECRUIT_THRESHOLD:g})", (HEADS_RECRUITED,), "higher",
          quote="The PPO-tuned model uses additional heads for attending to the sentiment token that the base "
                "model does not, particularly L4H7. However, the same result is not seen in the DPO-tuned model."),
    Claim("C15", "3.4", "DPO attends to the sentiment token like the reference (largest change of any head's "
          "attention to it)", ("analysis/sentiment_attention/max_abs_change",), "zero", margin=ZERO_MARGIN,
          scale="analysis/sentiment_attention/reference/max_attention", arms=("dpo",),
          quote="the fact that the DPO-tuned model uses its heads in almost the exact same way as the reference "
                "model when attending to the sentiment token"),
    Claim("C17", "3.2", "PPO's bias divergence fluctuates over training more than DPO's (path beyond net "
          "change, over the largest value)", (BIAS_FLUCTUATION,), "higher",
          quote="Overall, the DPO divergence was stable over both training runs, whereas the PPO divergence "
                "fluctuated wildly."),
    Claim("C17-dpo", "3.2", "DPO's bias divergence is stable over training (fluctuation near 0)",
          (BIAS_FLUCTUATION,), "zero", margin=ZERO_MARGIN, arms=("dpo",),
          quote="Overall, the DPO divergence was stable over both training runs"),
    Claim("C18", "4", "DPO's updates are more efficient: more reward gain per unit of weight divergence "
          "(the seed's hypothesis)", (EFFICIENCY,), "lower",
          quote="our data does not strongly support our initial hypothesis that the DPO algorithm's direct "
                "optimization for preferences results in more efficient updates."),
)
