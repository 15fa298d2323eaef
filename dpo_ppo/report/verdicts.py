"""Verdicts: each claim of the seed tested on each facet, the verdict rules, FDR control.

A claim's row reads one ``estimator.Comparison``: its p (the band's sup-t test for "higher",
"lower", "differ"; the intersection-union TOST of the margin for "same", "zero"), q after
Benjamini-Hochberg or Holm over the family, and the verdict rule (``decide``). Where along the
common KL range the verdict holds is kept as regions (class, from KL, to KL), and what the caveat
says as facts; their words are ``report.render``'s. ``all_metrics_table`` is the screen of every
metric (estimates and BH q-values, no verdicts).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from dpo_ppo import results as R
from dpo_ppo.report import stats
from dpo_ppo.report.claims import CLAIMS, Claim
from dpo_ppo.report.estimator import ALPHA, N_BOOT, Comparison, Curve, compare, regions
from dpo_ppo.report.facets import PAIR, Facet
from dpo_ppo.report.load import Run, finished

MIN_RUNS, MIN_SEEDS = 3, 3
VERDICTS = ("supported", "contradicted", "mixed", "inconclusive")
STEPS_RATIO = 1.5  # optimizer steps of the two sides (medians) further apart than this: a caveat


@dataclass
class Margin:
    """A "same" / "zero" claim's margin along the comparison's grid, and what sets it: ``basis``
    "mean" (a fraction of the mean of the two algorithms' fitted values), "scale" (a fraction of
    ``unit``, the scale metric's mean over the facet's runs), "no scale" (the claim names a scale
    these runs lack: 1 as unit) or "plain" (1 as unit)."""

    values: np.ndarray
    basis: str
    fraction: float
    scale: Optional[str] = None
    unit: float = 1.0


@dataclass
class ClaimRow:
    claim: Claim
    facet: Facet
    metric: Optional[str]
    comparison: Optional[Comparison]
    eligible: bool = False
    reason: str = ""  # why there is no verdict (too few runs, not measured, ...)
    p: float = float("nan")
    q: float = float("nan")
    verdict: str = "inconclusive"
    margin: Optional[Margin] = None  # "same" / "zero" / "differ": the margin along the grid
    # where along the common KL range the verdict holds: (arm or "", class, from KL, to KL); the
    # classes: the band's sign (higher / lower / differ), within 1 / beyond -1 / neither 0 the
    # margin (same; zero per arm)
    regions: List[Tuple[str, int, float, float]] = field(default_factory=list)
    # what the caveat says, as facts (render.caveat_text): the seed's run condition this sweep has
    # no facet for, and each side's median optimizer steps when they differ (weight divergence)
    missing_condition: Optional[str] = None
    unequal_steps: Optional[Dict[str, float]] = None

    @property
    def in_family(self) -> bool:
        return self.claim.family


def margin_of(claim: Claim, comp: Comparison) -> Margin:
    """The margin of a "same" / "zero" claim along the comparison's grid.
    "same": a fraction of the mean of the two algorithms' fitted values there (each value is a
    change of the policy from the reference); "zero": a fraction of the scale metric's mean over
    the facet's runs (the reference's own value: the same in every run), or of 1 when the claim
    has no scale or the runs lack it."""
    if claim.kind == "same":
        arms = list(comp.arm_curves.values())
        m = claim.margin * 0.5 * (np.abs(arms[0].est) + np.abs(arms[1].est))
        return Margin(m, "mean", claim.margin)
    n = len(comp.curve.kl)
    if claim.scale:
        vals = [r.metrics[claim.scale] for a in comp.pair for r in comp.facet.side(a)
                if claim.scale in r.metrics and math.isfinite(r.metrics[claim.scale])]
        if vals:
            unit = float(np.mean(np.abs(vals)))
            return Margin(np.full(n, claim.margin * unit), "scale", claim.margin, claim.scale, unit)
        return Margin(np.full(n, claim.margin), "no scale", claim.margin, claim.scale)
    return Margin(np.full(n, claim.margin), "plain", claim.margin)


def claim_p(row: ClaimRow) -> float:
    """The row's p-value: of "no difference anywhere on the common range" (sup-t) for higher /
    lower / differ; of "beyond the margin somewhere" (intersection-union TOST) for same / zero."""
    comp, kind = row.comparison, row.claim.kind
    if kind in ("higher", "lower", "differ"):
        return comp.curve.sup_p()
    if kind == "same":
        return comp.curve.tost_p(row.margin.values)
    ps = [comp.arm_curves[a].tost_p(row.margin.values) for a in row.claim.arms if a in comp.arm_curves]
    return float("nan") if not ps or any(math.isnan(p) for p in ps) else float(max(ps))


def _margin_regions(curve: Curve, m: np.ndarray) -> Tuple[List[Tuple[int, float, float]], bool]:
    """Where the band lies within +-m (1), wholly beyond it (-1: a difference larger than the
    margin) or neither (0); and whether it lies beyond anywhere."""
    inside = (curve.lo >= -m) & (curve.hi <= m)
    beyond = (curve.lo > m) | (curve.hi < -m)
    classes = [int(c) for c in np.where(inside, 1, np.where(beyond, -1, 0))]
    return regions(curve.kl, classes), bool(beyond.any())


def decide(row: ClaimRow, alpha: float = ALPHA) -> str:
    """The verdict of an eligible row (the rule under the table), and ``row.regions``."""
    comp, kind = row.comparison, row.claim.kind
    sig = (row.q if row.in_family else row.p) < alpha
    curve = comp.curve
    if kind in ("higher", "lower", "differ"):
        row.regions = [("", c, a, b) for c, a, b in comp.sign_regions()]
        if not sig:
            if kind == "differ" and row.margin is not None and curve.tost_p(row.margin.values) < alpha:
                return "contradicted"  # equivalent within the margin everywhere
            return "inconclusive"
        if kind == "differ":
            return "supported"
        signs = set(int(s) for s in curve.sign()) - {0}
        want = 1 if kind == "higher" else -1
        if signs == {want}:
            return "supported"
        if signs == {-want}:
            return "contradicted"
        return "mixed" if signs else "inconclusive"
    m = row.margin.values
    if kind == "same":
        found, beyond = _margin_regions(curve, m)
        row.regions = [("", c, a, b) for c, a, b in found]
    else:  # zero: each arm's own value is 0 within the margin
        row.regions, beyond = [], False
        for arm in row.claim.arms:
            if arm in comp.arm_curves:
                found, far = _margin_regions(comp.arm_curves[arm], m)
                row.regions += [(arm, c, a, b) for c, a, b in found]
                beyond = beyond or far
    if sig:
        return "supported"
    return "contradicted" if beyond else "inconclusive"


def claims_table(runs: Sequence[Run], facets: Sequence[Facet], claims: Sequence[Claim] = CLAIMS,
                 min_runs: int = MIN_RUNS, min_seeds: int = MIN_SEEDS, n_boot: int = N_BOOT,
                 fdr: str = "bh", alpha: float = ALPHA, seed: int = 0,
                 pair: Tuple[str, str] = PAIR) -> List[ClaimRow]:
    """One row per claim and facet holding both algorithms; verdicts after FDR control over the
    rows that could give one and belong to the family (derived and paraphrased rows do not)."""
    min_runs = max(2, min_runs)  # one run per side never gives a verdict, whatever is asked
    present = {k for r in finished(runs) for k in r.metrics}
    conditions = {f.condition() for f in facets} - {None}
    rows: List[ClaimRow] = []
    for claim in claims:
        metric = next((m for m in claim.metrics if m in present), None)
        for facet in facets:
            if not (facet.side(pair[0]) and facet.side(pair[1])):
                continue
            if claim.condition and conditions and facet.condition() != claim.condition:
                continue  # the seed said it of its other round
            missing = claim.condition if claim.condition and not conditions else None
            if metric is None:
                rows.append(ClaimRow(claim, facet, None, None, reason="not measured by these runs",
                                     missing_condition=missing))
                continue
            rows.append(claim_row(claim, facet, metric, missing, min_runs, min_seeds, n_boot, seed, pair))
    adjust = stats.holm if fdr == "holm" else stats.benjamini_hochberg
    q = adjust([r.p if r.eligible and r.in_family else float("nan") for r in rows])
    for row, qi in zip(rows, q):
        row.q = float(qi)
        if row.eligible:
            row.verdict = decide(row, alpha)
    return rows


def claim_row(claim: Claim, facet: Facet, metric: str, missing_condition: Optional[str], min_runs: int,
              min_seeds: int, n_boot: int, seed: int, pair: Tuple[str, str]) -> ClaimRow:
    """One claim on one facet: its comparison, whether it can give a verdict, its p."""
    comp = compare(facet, metric, (0.5,), n_boot=n_boot, seed=seed, pair=pair)
    row = ClaimRow(claim, facet, metric, comp, missing_condition=missing_condition)
    if not comp.points:
        row.reason = comp.note
    elif min(comp.n.values()) < min_runs:
        row.reason = f"fewer than {min_runs} runs per side"
    elif min(comp.seeds.values()) < min_seeds:
        row.reason = f"fewer than {min_seeds} seeds per side"
    else:
        row.eligible = True
        if claim.kind in ("same", "zero", "differ"):  # differ: contradicted when equivalent within the same margin
            row.margin = margin_of(Claim(**{**vars(claim), "kind": "same"}) if claim.kind == "differ" else claim, comp)
        row.p = claim_p(row)
    if metric.startswith(R.ANALYSIS + "weights/"):
        row.unequal_steps = unequal_steps(facet, pair)
    return row


def optimizer_steps(run: Run) -> Optional[float]:
    value = run.cost.get("optimizer_steps", run.params.get("optimizer_steps"))
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def unequal_steps(facet: Facet, pair: Tuple[str, str] = PAIR) -> Optional[Dict[str, float]]:
    """Weight divergence grows with optimizer steps under Adam whatever the algorithm: each side's
    median optimizer steps (pair[1] first) when they differ by more than STEPS_RATIO, else None."""
    med = {}
    for a in (pair[1], pair[0]):
        steps = [s for s in map(optimizer_steps, facet.side(a)) if s is not None]
        if not steps:
            return None
        med[a] = float(np.median(steps))
    lo, hi = sorted(med.values())
    if lo > 0 and hi / lo <= STEPS_RATIO:
        return None
    return med


def all_metrics_table(runs: Sequence[Run], facets: Sequence[Facet], metrics: Sequence[str],
                      n_boot: int = 400, seed: int = 0) -> List[Dict[str, Any]]:
    """Every metric, every facet, at the middle of the common KL range (the appendix CSV), with
    BH q-values over the whole table. No verdicts: this is a screen, not a test of claims."""
    out = []
    for facet, metric in itertools.product(facets, metrics):
        if not (facet.runs["dpo"] and facet.runs["ppo"]) or metric == R.KL:
            continue
        comp = compare(facet, metric, (0.5,), n_boot=n_boot, seed=seed, grid=2)
        pt = comp.points[0] if comp.points else None
        out.append({"facet": facet.label(), "metric": metric, "n_dpo": comp.n["dpo"], "n_ppo": comp.n["ppo"],
                    "kl": pt.kl if pt else None, "dpo": pt.fit["dpo"] if pt else None,
                    "ppo": pt.fit["ppo"] if pt else None, "effect": pt.effect if pt else None,
                    "ci_lo": pt.ci[0] if pt else None, "ci_hi": pt.ci[1] if pt else None,
                    "p": pt.p if pt and min(comp.n.values()) >= 2 else None, "note": comp.note})
    q = stats.benjamini_hochberg([r["p"] if r["p"] is not None else float("nan") for r in out])
    for r, qi in zip(out, q):
        r["q"] = None if not math.isfinite(qi) else float(qi)
    return out
