"""Data or loss? The sweep's arms beyond DPO and PPO, compared pair by pair at matched KL.

An *arm* (``results.ARMS``, results.json ``params.arm``) is a trainer, and for DPO its data and its
loss: ``dpo`` (offline pairs sampled once by the reference), ``online_dpo`` (``algorithm.rounds``
> 1: pairs resampled by the current policy), ``ipo`` (``loss_type=ipo``), ``ppo`` (ours), ``rloo``
and ``grpo`` (TRL's).  The headline claims table stays DPO vs PPO (the ``dpo`` and ``ppo`` arms
only: an online DPO run is never pooled into "DPO").  When a sweep holds more arms, the section
"Data or loss?" answers, with the same claims, intervals and verdict rules (``report.compare``):

- offline vs online DPO: the data (same loss);
- online DPO vs RLOO and vs PPO: the loss (both on-policy);
- PPO vs RLOO: the implementation (ours against TRL's, the same objective).

The comparison code compares two sides named "dpo" and "ppo"; ``compare_pair`` is the one adapter
that puts any two arms in those two places (side A where the claims say DPO, side B where they say
PPO: every effect reads B - A).  Re-point it when ``report.compare`` takes a pair itself.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Sequence, Tuple

from dpo_ppo import results as R
from dpo_ppo.report import compare as C
from dpo_ppo.report.claims import CLAIMS
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
                 **kwargs) -> List[C.ClaimRow]:
    """The claims table of arm ``b`` against arm ``a`` at matched KL (effects B - A), by the
    comparison code the headline uses.  The one adapter between arms and ``report.compare``:
    ``kwargs`` go to ``compare.claims_table`` (min_runs, min_seeds, n_boot, fdr, seed)."""
    both = pair_runs(runs, a, b)
    facets, _ = C.make_facets(both, pool)
    return C.claims_table(both, facets, claims, **kwargs)


def parse_pair(text: str) -> Tuple[str, str]:
    """``--compare A,B`` -> (A, B), two different arms of ``results.ARMS``; SystemExit naming what
    was wrong otherwise."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or parts[0] == parts[1] or not all(p in R.ARMS for p in parts):
        raise SystemExit(f"dpo-ppo-report: --compare A,B takes two different arms of {', '.join(R.ARMS)}, "
                         f"got {text!r}")
    return parts[0], parts[1]


def _relabel(table: List[str], a: str, b: str) -> List[str]:
    """The headline's claims table markdown with the pair's names in its header."""
    la, lb = label(a), label(b)
    return [t.replace("DPO vs PPO at matched KL: PPO - DPO [95%]", f"{la} vs {lb} at matched KL: {lb} - {la} [95%]")
             .replace("runs DPO / PPO", f"runs {la} / {lb}").replace("% of DPO)", f"% of {la})") for t in table]


def pair_markdown(runs: Sequence[Run], a: str, b: str, what: str, claims_markdown, **kwargs) -> Tuple[List[str], List[Dict]]:
    """One pair's subsection and its rows as records (``render.claim_record``)."""
    rows = compare_pair(runs, a, b, **kwargs)
    md = [f"### {label(b)} vs {label(a)}: {what}", ""]
    if not rows:
        md += [f"No facet holds finished runs of both {label(a)} and {label(b)}: nothing to compare.", ""]
        return md, []
    md += _relabel(claims_markdown(rows, len({r.facet.label() for r in rows}) > 1), a, b)
    md += ["", f"Each claim's DPO is {label(a)} here, its PPO {label(b)}: every effect reads {label(b)} - "
               f"{label(a)}, a claim that PPO exceeds DPO is the claim that {label(b)} exceeds {label(a)}.", ""]
    return md, [{"a": a, "b": b, "row": r} for r in rows]


def arms_markdown(runs: Sequence[Run], claims_markdown, extra: Optional[Tuple[str, str]] = None,
                  **kwargs) -> Tuple[List[str], List[Dict[str, Any]]]:
    """The "Data or loss?" section: every question of ``QUESTIONS`` whose two arms have finished
    runs, and ``extra`` (``--compare A,B``) first; empty when the sweep holds DPO and PPO only and no
    pair was asked for.  ``claims_markdown``: render's table writer (passed in: no import cycle)."""
    present = set(arms_present(runs))
    pairs = [(x, y, w) for x, y, w in QUESTIONS if x in present and y in present]
    if extra is not None:
        asked = (extra[0], extra[1], "asked for (--compare)")
        pairs = [asked] + [p for p in pairs if p[:2] != extra]
    if not pairs:
        return [], []
    md = ["## Data or loss?", "",
          "Arms present: " + ", ".join(f"{label(a)} ({sum(arm_of(r) == a for r in finished(runs))} runs)"
                                       for a in arms_present(runs)) + ". "
          "Each pair below is compared as the headline compares DPO and PPO (matched KL, the same intervals and "
          "verdict rules): offline vs online DPO isolates the data, online DPO vs RLOO / PPO the loss, RLOO vs PPO "
          "the implementation.", ""]
    records: List[Dict[str, Any]] = []
    for a, b, what in pairs:
        section, rows = pair_markdown(runs, a, b, what, claims_markdown, **kwargs)
        md += section
        records += rows
    return md, records
