"""DPO vs PPO at matched KL: facets, the joint fit of both algorithms against log KL, the claims
table.

A metric is modelled over both algorithms' runs of one facet as metric = f(log KL) +- g(log KL) / 2
(``stats.JointModel``): f, shared, carries what the two have in common; g = PPO - DPO. Fitting each
algorithm apart (a smoother per algorithm, as this module once did) gives each its own smoothing
bias, set by where its runs happen to sit: two identical curves sampled on different KL grids then
differ. The comparison is made only inside the KL range both algorithms' runs cover, at stated KL
points. Standard errors come from a bootstrap of each source of noise apart: each algorithm's seeds
(whole seeds: every run of a seed together; runs when an algorithm has a single seed) and, where
every run has per-prompt rows (eval_rows.csv), the evaluation prompts (the same prompts for every
run, so DPO and PPO stay paired). Intervals and p-values are Student t on those standard errors
with Welch-Satterthwaite's degrees of freedom over the sources (k - 1 per algorithm's seeds): with 3
seeds a side a percentile interval of the draws would be a +-1.96 se interval where t is 2.78.
Each interval also carries a bound on the smoothing bias (how far the estimate moves when f gets
one degree more).
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
from dpo_ppo.report.load import LABELS, Run, finished

OVERRIDES = "overrides"  # pseudo facet key: overrides params do not say (experiment=..., model=...)
FACETS = R.FACET_KEYS + (OVERRIDES,)
ALPHA = 0.05
MIN_RUNS, MIN_SEEDS, N_BOOT = 3, 3, 1000

# metrics that per-prompt rows reproduce: name -> (statistic, column, transform)
ROW_METRICS = {
    R.REWARD: ("mean", "p_positive", None),
    R.policy_metric("gradient_loss"): ("mean", "p_positive", lambda p: 1.0 - p),
    R.policy_metric("binary_loss"): ("mean", "p_positive", lambda p: (p < 0.5).astype(float)),
    R.policy_metric(R.P_POSITIVE_STD): ("std", "p_positive", None),
    R.policy_metric("completion_len"): ("mean", "completion_len", None),
    R.KL: ("mean", "kl", None),
    R.policy_metric("kl_to_ref_k1"): ("mean", "kl_k1", None),
}


# --------------------------------------------------------------------------- facets


def facet_value(run: Run, key: str) -> Any:
    if key == OVERRIDES:  # an algorithm's own settings (algorithm.*) place runs; they are no shared axis
        return " ".join(o for o in run.extra_overrides() if not o.startswith("algorithm."))
    value = run.params.get(key)
    return tuple(value) if isinstance(value, list) else value


@dataclass
class Facet:
    values: Dict[str, Any]  # split keys and the value this facet has
    pooled: Dict[str, Dict[str, List[Any]]]  # pooled keys: algorithm -> its distinct values
    runs: Dict[str, List[Run]]

    def label(self) -> str:
        return ", ".join(f"{k}={_text(v)}" for k, v in self.values.items()) or "all runs"

    def pooled_text(self) -> str:
        return "; ".join(f"{k} (" + ", ".join(f"{LABELS[a]} {'/'.join(map(_text, v))}" for a, v in per.items() if v)
                         + ")" for k, per in self.pooled.items())


def _text(value: Any) -> str:
    return "none" if value == "" else str(value)


def make_facets(runs: Sequence[Run], pool: Sequence[str] = ()) -> Tuple[List[Facet], List[str]]:
    """Facets of the finished runs, and notes on what was split, pooled or not applicable.

    A facet key whose values differ splits the runs, unless the two algorithms share no value of
    it (then no facet could compare them) or ``pool`` names it: then the runs are pooled over it
    and every facet says so. An algorithm without the key (None: DPO has no value model) joins
    every facet of it."""
    done = finished(runs)
    split: List[str] = []
    pooled: Dict[str, Dict[str, List[Any]]] = {}
    notes: List[str] = []
    for key in FACETS:
        per = {a: sorted({facet_value(r, key) for r in done if r.algorithm == a} - {None}, key=str)
               for a in R.ALGORITHMS}
        values = set(per["dpo"]) | set(per["ppo"])
        if len(values) <= 1:
            continue
        if key in pool:
            pooled[key] = per
            notes.append(f"pooled over {key} as asked (--pool)")
        elif per["dpo"] and per["ppo"] and not set(per["dpo"]) & set(per["ppo"]):
            pooled[key] = per
            notes.append(f"pooled over {key}: DPO and PPO runs share no value of it")
        else:
            split.append(key)
    combos = sorted({tuple(facet_value(r, k) for k in split) for r in done}, key=str)
    # a run without a value for a split key (not applicable: DPO has no value model) joins every
    # facet that agrees with it on the other keys; its own combination is dropped when covered
    combos = [c for c in combos if not any(
        d != c and all(x is None or x == y for x, y in zip(c, d)) for d in combos)]
    facets = []
    for combo in combos:
        values = {k: v for k, v in zip(split, combo) if v is not None}
        members: Dict[str, List[Run]] = {a: [] for a in R.ALGORITHMS}
        for r in done:
            if all(facet_value(r, k) in (None, v) for k, v in values.items()):
                members[r.algorithm or ""].append(r)
        facets.append(Facet(values, pooled, members))
    return facets, notes


# --------------------------------------------------------------------------- one comparison


@dataclass
class Point:
    """DPO and PPO fits of one metric at one KL point, and PPO - DPO."""

    kl: float
    fit: Dict[str, float]
    fit_ci: Dict[str, Tuple[float, float]]
    boot: Dict[str, np.ndarray]  # the bootstrap draws of the effect, per source (dpo, ppo seeds; prompts)
    se: Dict[str, float]  # each fit's standard error
    dof: Dict[str, float]  # each fit's degrees of freedom (Welch-Satterthwaite over the sources)
    effect: float
    ci: Tuple[float, float]
    p: float
    effect_se: float = float("nan")
    effect_dof: float = float("nan")  # Welch-Satterthwaite over the sources (seeds of each side, prompts)
    bias: Dict[str, float] = field(default_factory=dict)  # smoothing-bias bound of dpo, ppo, effect (in the intervals)


@dataclass
class Comparison:
    metric: str
    facet: Facet
    n: Dict[str, int]
    seeds: Dict[str, int]
    kl_range: Dict[str, Tuple[float, float]]  # each algorithm's KL range (nats)
    common: Optional[Tuple[float, float]]  # the KL range both cover; None when they don't meet
    points: List[Point] = field(default_factory=list)
    prompts: int = 0  # prompts resampled (0: seeds only)
    note: str = ""
    left_out: Dict[str, Dict[str, int]] = field(default_factory=dict)  # reason -> algorithm -> runs
    model: Optional[stats.JointModel] = None
    coef: Optional[np.ndarray] = None  # the joint model's coefficients
    cv: Dict[int, float] = field(default_factory=dict)  # degree of f -> cross-validated error
    window: Optional[Tuple[float, float]] = None  # the KL window of the runs in the fit (nats)
    outside: Dict[str, int] = field(default_factory=dict)  # runs beyond the window, per algorithm
    varies: str = ""  # set when PPO - DPO changes across the common range (its ends differ, p < ALPHA)
    vary_p: float = float("nan")
    bias_degree: Optional[int] = None  # the degree of f whose fit bounds the bias (None: no bound)

    def left_out_text(self) -> str:
        return "; ".join(", ".join(f"{n} {LABELS[a]} run(s)" for a, n in per.items()) + f" left out: {reason}"
                         for reason, per in self.left_out.items())

    def runs_text(self) -> str:
        return f"{self.n['dpo']} / {self.n['ppo']}"

    def curves(self, log_kl: Sequence[float]) -> Dict[str, np.ndarray]:
        """The fitted model at log-KL points: f, effect, dpo, ppo."""
        return self.model.curves(self.coef, log_kl)


def _row_matrix(runs: Sequence[Run], ids: Sequence[str], metric: str) -> Tuple[np.ndarray, np.ndarray]:
    """(n_runs, n_prompts) per-prompt values of the metric and of the KL, prompts in ``ids`` order."""
    kind, column, transform = ROW_METRICS[metric]
    vals, kls = [], []
    for r in runs:
        rows = r.rows()
        pos = {pid: i for i, pid in enumerate(rows["prompt_id"])}
        take = np.array([pos[i] for i in ids])
        v = rows[column][take]
        vals.append(transform(v) if transform else v)
        kls.append(rows["kl"][take])
    return np.array(vals, dtype=float), np.array(kls, dtype=float)


def _rows_stat(counts: np.ndarray, values: np.ndarray, kind: str) -> np.ndarray:
    """Per-run statistic of resampled prompts: counts (B, P), values (n, P) -> (B, n)."""
    total = counts.sum(1, keepdims=True)
    mean = counts @ values.T / total
    if kind == "mean":
        return mean
    second = counts @ (values ** 2).T / total
    var = np.maximum(second - mean ** 2, 0.0) * total / np.maximum(total - 1, 1)
    return np.sqrt(var)


def _bad_rows(run: Run, metric: str) -> str:
    """Why a run's per-prompt rows cannot stand in for the metric ('' when they can)."""
    rows = run.rows()
    column = ROW_METRICS[metric][1]
    for col in dict.fromkeys((column, "kl")):
        if col not in rows:
            return f"eval_rows.csv has no {col} column"
        bad = int(np.sum(~np.isfinite(rows[col])))
        if bad:
            return f"{bad} non-finite {col} value(s) in eval_rows.csv"
    return ""


def _leave_out(comp: Comparison, reason: str, algorithm: str) -> None:
    per = comp.left_out.setdefault(reason, {})
    per[algorithm] = per.get(algorithm, 0) + 1


WINDOW = 0.25  # the fit takes runs up to this fraction of the common log-KL span beyond its ends
MIN_WINDOW = 0.35  # ... and at least this far (a factor 1.4 in KL)


def compare(facet: Facet, metric: str, kl_fracs: Sequence[float] = (0.5,), n_boot: int = N_BOOT,
            seed: int = 0, use_rows: bool = True) -> Comparison:
    """PPO - DPO of the metric at KL points placed at ``kl_fracs`` of the common log-KL range.

    The model (``stats.JointModel``): metric = f(log KL) +- g(log KL) / 2 over both algorithms'
    runs inside the common range (and a margin beyond its ends), f shared, of the degree that
    cross-validates best, g = PPO - DPO a line. Runs with a non-finite value or per-prompt row, or
    a KL that is not positive, are left out and named (``left_out``)."""
    comp = Comparison(metric, facet, {}, {}, {}, None)
    sides: Dict[str, List[Run]] = {}
    for a in R.ALGORITHMS:
        sides[a] = []
        measures = any(metric in r.metrics for r in facet.runs[a])  # else: not this algorithm's metric
        for r in facet.runs[a] if measures else []:
            if metric not in r.metrics:  # results.json keeps finite numbers only (results.scalar_metrics)
                _leave_out(comp, "no finite value in results.json", a)
            elif not math.isfinite(r.metrics[metric]):
                _leave_out(comp, f"the metric is {r.metrics[metric]}", a)
            elif not (r.kl > 0 and math.isfinite(r.kl)):  # the fit is in log KL: a run at KL 0 cannot sit on it
                _leave_out(comp, "KL not positive (the fit is in log KL)", a)
            else:
                sides[a].append(r)
    use_rows = use_rows and metric in ROW_METRICS and all(r.rows() is not None for a in sides for r in sides[a])
    if use_rows:  # a NaN p_positive would count as a negative completion in p < 0.5, silently
        for a in R.ALGORITHMS:
            keep = []
            for r in sides[a]:
                why = _bad_rows(r, metric)
                if why:
                    _leave_out(comp, why, a)
                else:
                    keep.append(r)
            sides[a] = keep
    comp.n = {a: len(s) for a, s in sides.items()}
    comp.seeds = {a: len({r.seed for r in s}) for a, s in sides.items()}
    comp.kl_range = {a: (min(r.kl for r in s), max(r.kl for r in s)) if s else (math.nan, math.nan)
                     for a, s in sides.items()}
    if not all(comp.n.values()):
        missing = [LABELS[a] for a in R.ALGORITHMS if not comp.n[a]]
        comp.note = f"no {' or '.join(missing)} run with this metric"
        return comp
    lo = max(math.log(comp.kl_range[a][0]) for a in R.ALGORITHMS)
    hi = min(math.log(comp.kl_range[a][1]) for a in R.ALGORITHMS)
    if lo > hi + 1e-12:
        comp.note = "KL ranges do not overlap"
        return comp
    comp.common = (math.exp(lo), math.exp(hi))
    margin = max(MIN_WINDOW, WINDOW * (hi - lo))
    comp.window = (math.exp(lo - margin), math.exp(hi + margin))
    inside = {a: [r for r in sides[a] if lo - margin <= math.log(r.kl) <= hi + margin] for a in R.ALGORITHMS}
    comp.outside = {a: len(sides[a]) - len(inside[a]) for a in R.ALGORITHMS if len(sides[a]) > len(inside[a])}
    everyone = inside["dpo"] + inside["ppo"]
    side = np.array([-1.0] * len(inside["dpo"]) + [1.0] * len(inside["ppo"]))
    ids: List[str] = []
    if use_rows:
        common_ids = set(everyone[0].rows()["prompt_id"])
        for r in everyone[1:]:
            common_ids &= set(r.rows()["prompt_id"])
        ids = sorted(common_ids, key=str)
    comp.prompts = len(ids)
    if ids:
        kind = ROW_METRICS[metric][0]
        vals, kls = _row_matrix(everyone, ids, metric)
        ones = np.ones((1, len(ids)))
        x = np.log(np.maximum(_rows_stat(ones, kls, "mean")[0], 1e-12))
        y = _rows_stat(ones, vals, kind)[0]
    else:
        x = np.log([r.kl for r in everyone])
        y = np.array([r.metrics[metric] for r in everyone], dtype=float)

    # the model: g a line when each algorithm has two configurations or more in the window
    groups = [r.group_key() for r in everyone]
    configs = {a: len({r.group_key() for r in inside[a]}) for a in R.ALGORITHMS}
    deg_g = 1 if min(configs.values()) >= 2 else 0
    max_deg = max(0, min(stats.MAX_DEGREE, len(set(groups)) - deg_g - 2))
    center = 0.5 * (lo + hi)
    scale = max(float(np.max(np.abs(x - center))), 0.1)
    deg_f, comp.cv = stats.choose_degree(x, y, side, groups, center, scale, deg_g, max_deg)
    model = comp.model = stats.JointModel(center, scale, deg_f, deg_g)
    X = model.design(x, side)
    comp.coef = stats.weighted_lstsq(X, y, np.ones_like(y))
    x0s = [lo + f * (hi - lo) for f in kl_fracs]
    at = x0s + [lo, hi]  # the points, then the common range's ends (does the effect vary?)
    est = model.curves(comp.coef, at)
    # how far the estimates move when f gets one degree more (where the runs identify it): a
    # bound on the smoothing bias the chosen degree may leave, added to every interval. It is
    # small where both algorithms have runs near a point and large where one of them only
    # interpolates across a gap, which is where the shape of f decides the answer.
    richer = stats.JointModel(center, scale, deg_f + 1, deg_g)
    bias = {q: np.zeros(len(at)) for q in ("dpo", "ppo", "effect")}
    if deg_f + 1 <= stats.MAX_DEGREE and richer.size <= len(set(groups)) and \
            stats.identified(richer.design(x, side), np.ones_like(y)):
        other = richer.curves(stats.weighted_lstsq(richer.design(x, side), y, np.ones_like(y)), at)
        bias = {q: np.abs(other[q] - est[q]) for q in bias}
    comp.bias_degree = deg_f + 1 if bias["effect"].any() else None

    # the bootstrap, one source at a time: each algorithm's seeds (whole seeds: every run of a seed
    # together; runs when an algorithm has a single seed), then the prompts (shared by every run,
    # so DPO and PPO stay paired). The variances add; Welch-Satterthwaite gives the dof.
    rng = np.random.default_rng(seed)
    draws: Dict[str, Dict[str, np.ndarray]] = {}
    units: Dict[str, int] = {}
    for a, sign in (("dpo", -1.0), ("ppo", 1.0)):
        mine = side == sign
        clusters = [r.seed for r in inside[a]] if comp.seeds[a] >= 2 else list(range(len(inside[a])))
        w = np.ones((n_boot, len(y)))
        w[:, mine] = stats.cluster_weights(clusters, n_boot, rng)
        units[a] = len(set(clusters))
        draws[a] = model.curves(stats.weighted_lstsq(X[None], y[None], w), at)
    if ids:
        counts = stats.multinomial_counts(len(ids), n_boot, rng)
        xb = np.log(np.maximum(_rows_stat(counts, kls, "mean"), 1e-12))
        yb = _rows_stat(counts, vals, kind)
        draws["prompts"] = model.curves(stats.weighted_lstsq(model.design(xb, side), yb, np.ones_like(yb)), at)
        units["prompts"] = len(ids)

    def se_dof(pick) -> Tuple[float, float]:
        """Standard error and degrees of freedom of one quantity, ``pick(curves) -> (B,) draws``:
        each source's bootstrap standard error (the seeds' widened: drawing k seeds with
        replacement spreads a mean by sqrt((k-1)/k) of its standard error), added in quadrature."""
        ses = []
        for src, d in draws.items():
            k = units[src]
            widen = math.sqrt(k / (k - 1)) if src != "prompts" and k > 1 else 1.0
            ses.append(widen * stats.boot_se(pick(d)))
        return math.sqrt(sum(v * v for v in ses)), stats.welch_dof(ses, [units[src] for src in draws])

    for i, x0 in enumerate(x0s):
        fit = {a: float(est[a][i]) for a in R.ALGORITHMS}
        se, dof = {}, {}
        for a in R.ALGORITHMS:
            se[a], dof[a] = se_dof(lambda d: d[a][:, i])
        effect = float(est["effect"][i])
        effect_se, effect_dof = se_dof(lambda d: d["effect"][:, i])
        b = {q: float(bias[q][i]) for q in bias}
        comp.points.append(Point(
            kl=math.exp(x0), fit=fit,
            fit_ci={a: stats.t_interval(fit[a], se[a], dof[a], bias=b[a]) for a in R.ALGORITHMS},
            boot={src: d["effect"][:, i] for src, d in draws.items()}, se=se, dof=dof, effect=effect,
            ci=stats.t_interval(effect, effect_se, effect_dof, bias=b["effect"]),
            p=stats.t_p(effect, effect_se, effect_dof, bias=b["effect"]),
            effect_se=effect_se, effect_dof=effect_dof, bias=b))
    if deg_g and hi > lo:
        i_lo, i_hi = len(x0s), len(x0s) + 1
        change = float(est["effect"][i_hi] - est["effect"][i_lo])
        change_se, change_dof = se_dof(lambda d: d["effect"][:, i_hi] - d["effect"][:, i_lo])
        change_bias = float(bias["effect"][i_hi] + bias["effect"][i_lo])
        comp.vary_p = stats.t_p(change, change_se, change_dof, bias=change_bias)
        if comp.vary_p < ALPHA:
            comp.varies = (f"PPO - DPO changes across the common KL range: {fmt(float(est['effect'][i_lo]))} "
                           f"at KL {math.exp(lo):.3g}, {fmt(float(est['effect'][i_hi]))} at KL {math.exp(hi):.3g} "
                           f"(p = {comp.vary_p:.2g})")
    return comp


# --------------------------------------------------------------------------- the claims table


@dataclass
class ClaimRow:
    claim: Claim
    facet: Facet
    metric: Optional[str]
    comparison: Optional[Comparison]
    eligible: bool = False
    reason: str = ""
    p: float = float("nan")
    q: float = float("nan")
    verdict: str = "inconclusive"
    caveat: str = ""  # e.g. unequal optimizer steps behind a weight-divergence claim

    def effect_text(self) -> str:
        c = self.comparison
        if c is None or not c.points:
            return "–"
        pt = c.points[0]
        if self.claim.kind == "zero":
            return "; ".join(f"{LABELS[a]} {fmt(pt.fit[a])} [{fmt(pt.fit_ci[a][0])}, {fmt(pt.fit_ci[a][1])}]"
                             for a in R.ALGORITHMS)
        rel = f" ({pt.effect / abs(pt.fit['dpo']):+.0%} of DPO)" if pt.fit["dpo"] else ""
        return f"{fmt(pt.effect)} [{fmt(pt.ci[0])}, {fmt(pt.ci[1])}]{rel} at KL {pt.kl:.3g}"


def fmt(x: float) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.3g}"


def _margin(row: ClaimRow) -> float:
    pt = row.comparison.points[0]
    if row.claim.kind == "zero":
        return row.claim.margin
    return row.claim.margin * 0.5 * (abs(pt.fit["dpo"]) + abs(pt.fit["ppo"]))


def _within(ci: Tuple[float, float], m: float) -> bool:
    return math.isfinite(ci[0]) and -m <= ci[0] and ci[1] <= m


def _beyond(ci: Tuple[float, float], m: float) -> bool:
    """The whole interval lies outside +-m (on one side): a difference larger than the margin."""
    return math.isfinite(ci[0]) and (ci[0] > m or ci[1] < -m)


def decide(row: ClaimRow, alpha: float = ALPHA) -> str:
    """The verdict of an eligible row from its adjusted p-value (the rule under the table)."""
    pt = row.comparison.points[0]
    kind, m, sig = row.claim.kind, _margin(row), row.q < alpha
    if kind in ("higher", "lower"):
        if not sig:
            return "inconclusive"
        return "supported" if (pt.effect > 0) == (kind == "higher") else "contradicted"
    if kind == "same":
        if _within(pt.ci, m):
            return "supported"
        return "contradicted" if sig and _beyond(pt.ci, m) else "inconclusive"
    if kind == "differ":
        if sig:
            return "supported"
        return "contradicted" if _within(pt.ci, m) else "inconclusive"
    # zero: each algorithm's own value is 0 within the margin
    if all(_within(pt.fit_ci[a], m) for a in R.ALGORITHMS):
        return "supported"
    return "contradicted" if sig else "inconclusive"


def claims_table(runs: Sequence[Run], facets: Sequence[Facet], claims: Sequence[Claim] = CLAIMS,
                 min_runs: int = MIN_RUNS, min_seeds: int = MIN_SEEDS, n_boot: int = N_BOOT,
                 fdr: str = "bh", alpha: float = ALPHA, seed: int = 0) -> List[ClaimRow]:
    """One row per claim and facet holding both algorithms; verdicts after FDR control over the
    rows that could give one."""
    min_runs = max(2, min_runs)  # one run per side never gives a verdict, whatever is asked
    present = {k for r in finished(runs) for k in r.metrics}
    rows: List[ClaimRow] = []
    for claim in claims:
        metric = next((m for m in claim.metrics if m in present), None)
        for facet in facets:
            if not (facet.runs["dpo"] and facet.runs["ppo"]):
                continue
            if metric is None:
                rows.append(ClaimRow(claim, facet, None, None, reason="not measured by these runs"))
                continue
            comp = compare(facet, metric, (0.5,), n_boot=n_boot, seed=seed)
            row = ClaimRow(claim, facet, metric, comp)
            if not comp.points:
                row.reason = comp.note
            elif min(comp.n.values()) < min_runs:
                row.reason = f"fewer than {min_runs} runs per side"
            elif min(comp.seeds.values()) < min_seeds:
                row.reason = f"fewer than {min_seeds} seeds per side"
            else:
                row.eligible = True
                pt = comp.points[0]
                row.p = beyond_margin_p(pt, claim.margin) if claim.kind == "zero" else pt.p
            caveats = [steps_caveat(facet) if metric.startswith("analysis/weights/") else "",
                       comp.left_out_text(), comp.varies]
            row.caveat = "; ".join(c for c in caveats if c)
            rows.append(row)
    adjust = stats.holm if fdr == "holm" else stats.benjamini_hochberg
    q = adjust([r.p if r.eligible else float("nan") for r in rows])
    for row, qi in zip(rows, q):
        row.q = float(qi)
        if row.eligible:
            row.verdict = decide(row, alpha)
    return rows


def beyond_margin_p(pt: Point, margin: float) -> float:
    """For "within the margin for both" claims: the p of "some algorithm's value lies beyond the
    margin" (one-sided t per algorithm, null at the margin), Bonferroni over the two."""
    ps = [stats.t_p_beyond(pt.fit[a], pt.se[a], pt.dof[a], margin, bias=pt.bias.get(a, 0.0)) for a in R.ALGORITHMS]
    if any(math.isnan(p) for p in ps):
        return float("nan")
    return float(min(1.0, 2 * min(ps)))


def optimizer_steps(run: Run) -> Optional[float]:
    value = run.compute.get("optimizer_steps", run.params.get("optimizer_steps"))
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def steps_caveat(facet: Facet) -> str:
    """Weight divergence grows with optimizer steps under Adam whatever the algorithm: say so when
    the two sides took unequal steps (median ratio above 1.5)."""
    med = {}
    for a in R.ALGORITHMS:
        steps = [s for s in map(optimizer_steps, facet.runs[a]) if s is not None]
        if not steps:
            return ""
        med[a] = float(np.median(steps))
    lo, hi = sorted(med.values())
    if lo > 0 and hi / lo <= 1.5:
        return ""
    return (f"unequal optimizer steps (median DPO {med['dpo']:g}, PPO {med['ppo']:g}); "
            "compare at compute=matched")


def kl_points_text(comp: Comparison) -> str:
    return ", ".join(f"{p.kl:.3g}" for p in comp.points)


def all_metrics_table(runs: Sequence[Run], facets: Sequence[Facet], metrics: Sequence[str],
                      n_boot: int = 400, seed: int = 0) -> List[Dict[str, Any]]:
    """Every metric, every facet, at the middle of the common KL range (the appendix CSV), with
    BH q-values over the whole table. No verdicts: this is a screen, not a test of claims."""
    out = []
    for facet, metric in itertools.product(facets, metrics):
        if not (facet.runs["dpo"] and facet.runs["ppo"]) or metric == R.KL:
            continue
        comp = compare(facet, metric, (0.5,), n_boot=n_boot, seed=seed)
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
