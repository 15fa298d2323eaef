"""Data or loss? The sweep's arms beyond DPO and PPO, compared pair by pair at matched KL.

An *arm* (``results.ARMS``, results.json ``params.arm``) is a trainer, and for DPO its data and its
loss: ``dpo`` (offline pairs sampled once by the reference), ``online_dpo`` (``algorithm.rounds``
> 1: pairs resampled by the current policy), ``ipo`` (``loss_type=ipo``), ``ppo`` (ours), ``rloo``
and ``grpo`` (TRL's).  The headline claims table stays DPO vs PPO (the ``dpo`` and ``ppo`` arms
only: an online DPO run is never pooled into "DPO").  When a sweep holds more arms, the section
"Data or loss?" answers, with the same claims, intervals and verdict rules (``report.verdicts``):

- offline vs online DPO: the data (same loss);
- online DPO vs RLOO and vs PPO: the loss (both on-policy);
- PPO vs RLOO: the implementation (ours against TRL's, the same objective).

The comparison code compares two sides named "dpo" and "ppo"; ``compare_pair`` is the one adapter
that puts any two arms in those two places (side A where the claims say DPO, side B where they say
PPO: every effect reads B - A).  Re-point it when ``report.verdicts.claims_table`` takes a pair
itself.  This module says which runs each pair pools (the arms' facets); the section's words are
``render.arms_markdown``'s.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

from dpo_ppo import results as R
from dpo_ppo.report import verdicts as V
from dpo_ppo.report.claims import CLAIMS
from dpo_ppo.report.facets import make_facets
from dpo_ppo.report.load import Run, finished

HEADLINE = ("dpo", "ppo")
ARM_LABELS = {"dpo": "DPO", "online_dpo": "online DPO", "ipo": "IPO", "online_ipo": "online IPO", "ppo": "PPO",
              "rloo": "RLOO", "grpo": "GRPO"}
ARM_COLORS = {"dpo": "tab:blue", "online_dpo": "tab:cyan", "ipo": "tab:purple", "online_ipo": "tab:pink",
              "ppo": "tab:orange", "rloo": "tab:green", "grpo": "tab:red"}
ARM_CMAPS = {"dpo": "Blues", "online_dpo": "GnBu", "ipo": "Purples", "online_ipo": "RdPu", "ppo": "Oranges",
             "rloo": "Greens", "grpo": "Reds"}
# (A, B, what the pair isolates): the effect reads B - A
QUESTIONS = (
    ("dpo", "online_dpo", "the data: offline vs online DPO (the same loss)"),
    ("online_dpo", "rloo", "the loss: online DPO vs RLOO (both on-policy)"),
    ("online_dpo", "ppo", "the loss: online DPO vs PPO (both on-policy)"),
    ("rloo", "ppo", "the implementation: TRL's RLOO vs our PPO (the same objective)"),
)


def arm_of(run: Run) -> str:
    """The run's arm: params ``arm`` (jobs from before the arms: their algorithm)."""
    return run.params.get("arm") or run.algorithm or "?"


def label(arm: str) -> str:
    return ARM_LABELS.get(arm, arm)


def arms_present(runs: Sequence[Run]) -> List[str]:
    """The arms with finished runs, in ``results.ARMS`` order (unknown ones last)."""
    have = {arm_of(r) for r in finished(runs)}
    return [a for a in R.ARMS if a in have] + sorted(have - set(R.ARMS))


def headline_runs(runs: Sequence[Run]) -> List[Run]:
    """The runs of the headline comparison: the dpo and ppo arms (and every unfinished job, which
    the progress counts need)."""
    return [r for r in runs if r.status != R.FINISHED or arm_of(r) in HEADLINE]


def pair_runs(runs: Sequence[Run], a: str, b: str) -> List[Run]:
    """The finished runs of arms ``a`` and ``b`` as the comparison code's two sides: copies whose
    ``algorithm`` is "dpo" (arm a) and "ppo" (arm b)."""
    side = {a: "dpo", b: "ppo"}
    return [dataclasses.replace(r, algorithm=side[arm_of(r)]) for r in finished(runs) if arm_of(r) in side]


def compare_pair(runs: Sequence[Run], a: str, b: str, claims=CLAIMS, pool: Sequence[str] = (),
                 **kwargs) -> List[V.ClaimRow]:
    """The claims table of arm ``b`` against arm ``a`` at matched KL (effects B - A), by the
    comparison code the headline uses.  The one adapter between arms and ``report.verdicts``:
    ``kwargs`` go to ``verdicts.claims_table`` (min_runs, min_seeds, n_boot, fdr, seed)."""
    both = pair_runs(runs, a, b)
    facets, _ = make_facets(both, pool)
    return V.claims_table(both, facets, claims, **kwargs)


def present_counts(runs: Sequence[Run]) -> Dict[str, int]:
    """Each arm with finished runs (``arms_present``'s order) and how many."""
    done = finished(runs)
    return {a: sum(arm_of(r) == a for r in done) for a in arms_present(runs)}


def sections(runs: Sequence[Run], extra: Optional[Tuple[str, str]] = None,
             **kwargs) -> List[Tuple[str, str, str, List[V.ClaimRow]]]:
    """The "Data or loss?" section's pairs, each with its claims table: (A, B, what the pair
    isolates, rows). Every question of ``QUESTIONS`` whose two arms have finished runs, and
    ``extra`` (``--compare A,B``) first; empty when the sweep holds DPO and PPO only and no pair was
    asked for. ``kwargs`` go to ``compare_pair`` (pool, min_runs, min_seeds, n_boot, fdr, seed);
    the words are ``render.arms_markdown``'s."""
    present = set(arms_present(runs))
    pairs = [(x, y, w) for x, y, w in QUESTIONS if x in present and y in present]
    if extra is not None:
        asked = (extra[0], extra[1], "asked for (--compare)")
        pairs = [asked] + [p for p in pairs if p[:2] != extra]
    return [(a, b, what, compare_pair(runs, a, b, **kwargs)) for a, b, what in pairs]
