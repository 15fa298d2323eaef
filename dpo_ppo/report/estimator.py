"""The estimator: pair[0] - pair[1] (PPO - DPO by default) of one metric on one facet, at matched KL.

A metric is modelled over both algorithms' runs of one facet as metric = f(log KL) +- g(log KL) / 2
(``stats.JointModel``): f, shared, carries what the two have in common; g = PPO - DPO. Fitting each
algorithm apart (a smoother per algorithm, as this module once did) gives each its own smoothing
bias, set by where its runs happen to sit: two identical curves sampled on different KL grids then
differ. The comparison is made only inside the KL range both algorithms' runs cover, at stated KL
points. Standard errors come from a bootstrap of each source of noise apart: each algorithm's seeds
(whole seeds: every run of a seed together; runs when an algorithm has a single seed) and, where
every run has per-prompt rows (eval_rows.csv), the evaluation prompts (the same prompts for every
run, so DPO and PPO stay paired); and from the configurations' scatter about their algorithm's
curve (a random effect, ``stats.config_tau2``). Intervals and p-values are Student t on those
standard errors with Welch-Satterthwaite's degrees of freedom over the sources (k - 1 per
algorithm's seeds): with 3 seeds a side a percentile interval of the draws would be a +-1.96 se
interval where t is 2.78. Each interval also carries a bound on the smoothing bias (how far the
estimate moves when f gets one degree more).

``compare`` is the estimator, in the steps it takes; the numbers land in a ``Comparison`` (its
words: ``report.render``; what a claim concludes from it: ``report.verdicts``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from dpo_ppo import results as R
from dpo_ppo.report import stats
from dpo_ppo.report.facets import PAIR, Facet, label
from dpo_ppo.report.load import Run, is_diverged

ALPHA = 0.05
N_BOOT = 1000
CONFIG_DOF = 2  # configurations left beyond the joint model's coefficients (to see their spread)
GRID = 25  # points of each claim's curve across the common log-KL range
WINDOW = 0.25  # the fit takes runs up to this fraction of the common log-KL span beyond its ends
MIN_WINDOW = 0.35  # ... and at least this far (a factor 1.4 in KL)
# metrics that per-prompt rows reproduce: name -> (statistic, column, transform), evaluation's own
# definitions (results.EVAL_ROW_STATISTICS)
ROW_METRICS = R.EVAL_ROW_STATISTICS


@dataclass
class Point:
    """The two algorithms' fits of one metric at one KL point, and their difference (keys: the
    algorithms' names; the effect is pair[0] - pair[1], PPO - DPO by default)."""

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
    effect_dof: float = float("nan")  # Welch-Satterthwaite over the sources (seeds of each side, prompts, configurations)
    bias: Dict[str, float] = field(default_factory=dict)  # smoothing-bias bound of dpo, ppo, effect (in the intervals)


@dataclass
class Curve:
    """One fitted quantity (the effect, or one algorithm's value) along the common KL range, with a
    simultaneous 95% band: est +- (crit se + bias) holds at every grid point at once in 95% of
    sweeps (sup-t over the grid; the estimates' covariance from every source of noise)."""

    kl: np.ndarray  # the grid (nats), evenly spaced in log KL over the common range
    est: np.ndarray
    se: np.ndarray
    bias: np.ndarray  # the smoothing-bias bound at each grid point
    dof: float  # the smallest Welch-Satterthwaite dof along the grid
    crit: float  # the band's critical value (sup-t)
    sups: np.ndarray = field(default_factory=lambda: np.array([]), repr=False)

    @property
    def lo(self) -> np.ndarray:
        return self.est - self.crit * self.se - self.bias

    @property
    def hi(self) -> np.ndarray:
        return self.est + self.crit * self.se + self.bias

    def sup_p(self) -> float:
        """p of "0 everywhere on the common range" (the sup of (|est| - bias) / se over the grid
        against the simulated sups): p < 0.05 exactly when the band leaves 0 somewhere."""
        excess = np.maximum(np.abs(self.est) - self.bias, 0.0)
        if not np.all(np.isfinite(excess)):
            return float("nan")
        if self.crit == 0.0:  # no noise at all
            return 0.0 if excess.max() > 1e-12 * (1 + np.abs(self.est).max()) else 1.0
        return stats.sup_t_p(float(np.max(excess / self.se)), self.sups)

    def tost_p(self, margin: np.ndarray) -> float:
        """Intersection-union p of "within +-margin everywhere on the range": the largest
        pointwise TOST p (no multiplicity correction is needed for an intersection-union test)."""
        margin = np.broadcast_to(np.asarray(margin, dtype=float), self.est.shape)
        ps = [stats.tost_p(e, s, self.dof, m, b) for e, s, m, b in zip(self.est, self.se, margin, self.bias)]
        return float("nan") if any(math.isnan(p) for p in ps) else float(max(ps))

    def sign(self) -> np.ndarray:
        """+1 where the band lies above 0, -1 below, 0 where it holds 0."""
        return np.where(self.lo > 0, 1, np.where(self.hi < 0, -1, 0))


def regions(kl: np.ndarray, classes: Sequence[Any]) -> List[Tuple[Any, float, float]]:
    """Runs of equal class along the grid: (class, from KL, to KL), ends placed half way (in log
    KL) between grid points where the class changes."""
    out: List[Tuple[Any, float, float]] = []
    logk = np.log(kl)
    start = 0
    for i in range(1, len(classes) + 1):
        if i == len(classes) or classes[i] != classes[start]:
            a = kl[start] if start == 0 else math.exp(0.5 * (logk[start - 1] + logk[start]))
            b = kl[i - 1] if i == len(classes) else math.exp(0.5 * (logk[i - 1] + logk[i]))
            out.append((classes[start], float(a), float(b)))
            start = i
    return out


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
    # pair[0] - pair[1] at the common range's ends: ((KL, effect) at the low end, at the high end),
    # and p of "the same at both" (nan: not tested, g a constant)
    ends: Optional[Tuple[Tuple[float, float], Tuple[float, float]]] = None
    vary_p: float = float("nan")
    bias_degree: Optional[int] = None  # the degree of f whose fit bounds the bias (None: no bound)
    pair: Tuple[str, str] = PAIR  # effect = pair[0] - pair[1]
    curve: Optional[Curve] = None  # the effect along the common range
    arm_curves: Dict[str, Curve] = field(default_factory=dict)  # each algorithm's fit along it
    configs: Dict[str, int] = field(default_factory=dict)  # configurations per algorithm in the fit
    tau2: float = float("nan")  # a configuration mean's variance about its curve (nan: not estimable)
    tau2_dof: int = 0
    diverged: Dict[str, List[str]] = field(default_factory=dict)  # algorithm -> diverged runs left out
    use_rows: bool = False  # the fit reads the per-prompt rows (every run has them and they stand in for the metric)

    @property
    def varies(self) -> bool:
        """pair[0] - pair[1] changes across the common range (its ends differ, p < ALPHA)."""
        return self.vary_p < ALPHA

    def curves(self, log_kl: Sequence[float]) -> Dict[str, np.ndarray]:
        """The fitted model at log-KL points: f, effect and each algorithm's curve."""
        return _named(self.model.curves(self.coef, log_kl), self.pair)

    def sign_regions(self) -> List[Tuple[int, float, float]]:
        """Where along the common range the effect's simultaneous band lies above 0 (1), below
        (-1) or across it (0): (sign, from KL, to KL); empty without a curve."""
        if self.curve is None:
            return []
        return regions(self.curve.kl, [int(c) for c in self.curve.sign()])


def _named(curves: Dict[str, np.ndarray], pair: Tuple[str, str]) -> Dict[str, np.ndarray]:
    """JointModel's dpo / ppo (side -1 / +1) renamed to the pair's algorithms."""
    return {"f": curves["f"], "effect": curves["effect"], pair[1]: curves["dpo"], pair[0]: curves["ppo"]}


# --------------------------------------------------------------------------- the estimator


def compare(facet: Facet, metric: str, kl_fracs: Sequence[float] = (0.5,), n_boot: int = N_BOOT,
            seed: int = 0, use_rows: bool = True, pair: Tuple[str, str] = PAIR, grid: int = GRID) -> Comparison:
    """pair[0] - pair[1] (PPO - DPO by default; any two algorithms of the facet, e.g.
    ``pair=("online_dpo", "dpo")``) of the metric at KL points placed at ``kl_fracs`` of the common
    log-KL range, and along that range (``Comparison.curve``: ``grid`` points, a simultaneous band).

    The model (``stats.JointModel``): metric = f(log KL) +- g(log KL) / 2 over both algorithms'
    runs inside the common range (and a margin beyond its ends), f shared, of the degree that
    cross-validates best, g = pair[0] - pair[1] a line. Runs with a non-finite value or per-prompt
    row are left out and named (``left_out``); diverged ones (status diverged, the metric or KL not
    finite, KL not positive) are named too (``diverged``)."""
    comp = Comparison(metric, facet, {}, {}, {}, None, pair=tuple(pair))
    sides = usable_runs(comp, facet, metric, use_rows)
    span = common_range(comp, sides)
    if span is None:
        return comp
    data = fit_data(comp, sides, metric, span)
    fit = fit_model(comp, data, kl_fracs, grid)
    noise = Noise.of(comp, data, fit, n_boot, seed)
    comp.points = [point(fit, noise, i) for i in range(len(fit.x0s))]
    for q in fit.keys:
        curve = band(fit, noise, q, seed)
        if q == "effect":
            comp.curve = curve
        else:
            comp.arm_curves[q] = curve
    variation(comp, fit, noise)
    return comp


def usable_runs(comp: Comparison, facet: Facet, metric: str, use_rows: bool) -> Dict[str, List[Run]]:
    """Each algorithm's runs the fit can use (side -1 first, +1 second); the others counted in
    ``comp.left_out`` with the reason and, when diverged, named in ``comp.diverged``. With per-prompt
    rows in every run (and ``use_rows``), runs whose rows cannot stand in for the metric are left
    out too, and ``comp.prompts`` becomes > 0 in ``fit_data``."""
    second, first = comp.pair[1], comp.pair[0]
    sides: Dict[str, List[Run]] = {}
    for a in (second, first):
        sides[a] = []
        mine = facet.side(a)
        measures = any(metric in r.metrics for r in mine)  # else: not this algorithm's metric
        for r in mine if measures or any(is_diverged(r) for r in mine) else []:
            if r.status == R.DIVERGED:
                _leave_out(comp, "diverged (job status diverged)", a, r)
            elif not (math.isfinite(r.kl) and r.kl > 0):  # the fit is in log KL: a run at KL 0 cannot sit on it
                _leave_out(comp, "diverged: KL not finite and positive (the fit is in log KL)", a, r)
            elif metric not in r.metrics:  # results.json keeps finite numbers only (results.scalar_metrics)
                _leave_out(comp, "no finite value in results.json", a)
            elif not math.isfinite(r.metrics[metric]):
                _leave_out(comp, f"diverged: the metric is {r.metrics[metric]}", a, r)
            else:
                sides[a].append(r)
    comp.use_rows = use_rows and metric in ROW_METRICS and all(r.rows() is not None for a in sides for r in sides[a])
    if comp.use_rows:  # a NaN p_positive would count as a negative completion in p < 0.5, silently
        for a in sides:
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
    return sides


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


def _leave_out(comp: Comparison, reason: str, algorithm: str, run: Optional[Run] = None) -> None:
    per = comp.left_out.setdefault(reason, {})
    per[algorithm] = per.get(algorithm, 0) + 1
    if run is not None and reason.startswith("diverged"):
        comp.diverged.setdefault(algorithm, []).append(run.rel or str(run.dir))


def common_range(comp: Comparison, sides: Dict[str, List[Run]]) -> Optional[Tuple[float, float, float]]:
    """The KL range both algorithms' runs cover (``comp.common``) and the window of runs the fit
    takes (``comp.window``): (lo, hi, margin) in log KL; None, with ``comp.note`` saying why, when
    there is nothing to compare."""
    algs = list(sides)
    if not all(comp.n.values()):
        missing = [label(a) for a in algs if not comp.n[a]]
        comp.note = f"no {' or '.join(missing)} run with this metric"
        return None
    lo = max(math.log(comp.kl_range[a][0]) for a in algs)
    hi = min(math.log(comp.kl_range[a][1]) for a in algs)
    if lo > hi + 1e-12:
        comp.note = "KL ranges do not overlap"
        return None
    comp.common = (math.exp(lo), math.exp(hi))
    margin = max(MIN_WINDOW, WINDOW * (hi - lo))
    comp.window = (math.exp(lo - margin), math.exp(hi + margin))
    return lo, hi, margin


@dataclass
class FitData:
    """The runs in the fit and the numbers fitted: per run its log KL ``x``, metric ``y``, side
    (-1 pair[1], +1 pair[0]) and configuration; with per-prompt rows, their matrices."""

    lo: float  # the common range in log KL
    hi: float
    inside: Dict[str, List[Run]]
    x: np.ndarray
    y: np.ndarray
    side: np.ndarray
    groups: List[Any]
    ids: List[str]  # the prompts every run has (empty: seeds only)
    kind: str = "mean"  # the rows' statistic
    vals: Optional[np.ndarray] = None  # (n_runs, n_prompts) per-prompt metric
    kls: Optional[np.ndarray] = None  # (n_runs, n_prompts) per-prompt KL


def fit_data(comp: Comparison, sides: Dict[str, List[Run]], metric: str,
             span: Tuple[float, float, float]) -> FitData:
    """The runs inside the window, and x, y: from the per-prompt rows of the prompts every run has
    where the rows stand in for the metric, else from results.json."""
    second, first = comp.pair[1], comp.pair[0]
    lo, hi, margin = span
    inside = {a: [r for r in sides[a] if lo - margin <= math.log(r.kl) <= hi + margin] for a in (second, first)}
    comp.outside = {a: len(sides[a]) - len(inside[a]) for a in (second, first) if len(sides[a]) > len(inside[a])}
    everyone = inside[second] + inside[first]
    side = np.array([-1.0] * len(inside[second]) + [1.0] * len(inside[first]))
    groups = [r.group_key() for r in everyone]
    ids: List[str] = []
    if comp.use_rows:
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
        return FitData(lo, hi, inside, x, y, side, groups, ids, kind, vals, kls)
    x = np.log([r.kl for r in everyone])
    y = np.array([r.metrics[metric] for r in everyone], dtype=float)
    return FitData(lo, hi, inside, x, y, side, groups, ids)


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


@dataclass
class Fit:
    """The joint model fitted, evaluated at every place the comparison reads it: the KL points
    (``x0s``), the common range's ends (does the effect vary?) and the grid (``G`` of ``at``)."""

    model: stats.JointModel
    X: np.ndarray  # the design of the runs
    x0s: List[float]
    at: List[float]  # x0s + [lo, hi] + the grid, in log KL
    G: slice  # the grid's part of ``at``
    est: Dict[str, np.ndarray]  # f, effect and each algorithm's curve at ``at``
    bias: Dict[str, np.ndarray]  # smoothing-bias bound of each algorithm's curve and the effect at ``at``
    keys: Tuple[str, str, str]  # pair[1], pair[0], "effect"
    pair: Tuple[str, str]

    def named(self, curves: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        return _named(curves, self.pair)


def fit_model(comp: Comparison, data: FitData, kl_fracs: Sequence[float], grid: int) -> Fit:
    """The joint model: g a line when each algorithm has two configurations or more in the window;
    f of the degree that cross-validates best, leaving CONFIG_DOF configurations beyond the
    coefficients where it can (else the curve would pass through every configuration's mean and no
    spread between them could show); and the bound on its smoothing bias."""
    second, first = comp.pair[1], comp.pair[0]
    x, y, side, groups, lo, hi = data.x, data.y, data.side, data.groups, data.lo, data.hi
    comp.configs = configs = {a: len({r.group_key() for r in data.inside[a]}) for a in (second, first)}
    deg_g = 1 if min(configs.values()) >= 2 else 0
    max_deg = max(0, min(stats.MAX_DEGREE, len(set(groups)) - deg_g - 2 - CONFIG_DOF))
    center = 0.5 * (lo + hi)
    scale = max(float(np.max(np.abs(x - center))), 0.1)
    deg_f, comp.cv = stats.choose_degree(x, y, side, groups, center, scale, deg_g, max_deg)
    model = comp.model = stats.JointModel(center, scale, deg_f, deg_g)
    X = model.design(x, side)
    comp.coef = stats.weighted_lstsq(X, y, np.ones_like(y))
    x0s = [lo + f * (hi - lo) for f in kl_fracs]
    n_grid = max(2, grid) if hi > lo else 1
    at = x0s + [lo, hi] + list(np.linspace(lo, hi, n_grid))
    fit = Fit(model, X, x0s, at, slice(len(x0s) + 2, len(at)), {}, {}, (second, first, "effect"), comp.pair)
    fit.est = fit.named(model.curves(comp.coef, at))
    fit.bias = smoothing_bias(comp, data, fit)
    return fit


def smoothing_bias(comp: Comparison, data: FitData, fit: Fit) -> Dict[str, np.ndarray]:
    """How far the estimates move when f gets one degree more (where the runs identify it): a
    bound on the smoothing bias the chosen degree may leave, added to every interval. It is small
    where both algorithms have runs near a point and large where one of them only interpolates
    across a gap, which is where the shape of f decides the answer. The same for g (pair[0] -
    pair[1]) one degree richer, where each algorithm has the configurations for it: a line cannot
    follow an effect that lives at one end of the range, and where it extrapolates the line's
    shape decides the answer."""
    x, y, side, groups = data.x, data.y, data.side, data.groups
    model, est, at = fit.model, fit.est, fit.at
    deg_f, deg_g = model.deg_f, model.deg_g
    bias = {q: np.zeros(len(at)) for q in fit.keys}
    richer_f = stats.JointModel(model.center, model.scale, deg_f + 1, deg_g)
    if deg_f + 1 <= stats.MAX_DEGREE and richer_f.size <= len(set(groups)) and \
            stats.identified(richer_f.design(x, side), np.ones_like(y)):
        other = fit.named(richer_f.curves(stats.weighted_lstsq(richer_f.design(x, side), y, np.ones_like(y)), at))
        bias = {q: np.abs(other[q] - est[q]) for q in bias}
    comp.bias_degree = deg_f + 1 if bias["effect"].any() else None
    richer_g = stats.JointModel(model.center, model.scale, deg_f, deg_g + 1)
    if deg_g >= 1 and min(comp.configs.values()) >= deg_g + 3 and richer_g.size <= len(set(groups)) and \
            stats.identified(richer_g.design(x, side), np.ones_like(y)):
        other = fit.named(richer_g.curves(stats.weighted_lstsq(richer_g.design(x, side), y, np.ones_like(y)), at))
        bias = {q: np.maximum(bias[q], np.abs(other[q] - est[q])) for q in bias}
    return bias


@dataclass
class Noise:
    """The noise, one source at a time: each algorithm's seeds (whole seeds: every run of a seed
    together; runs when an algorithm has a single seed) and the prompts (shared by every run, so
    the two algorithms stay paired) by bootstrap (``draws``: source -> quantity -> (B, len(at)));
    the configurations' own offsets from their algorithm's curve as a random effect
    (``stats.config_tau2``: ``tau2`` and each estimate's ``loads`` on the configurations). The
    variances add; Welch-Satterthwaite gives the dof."""

    draws: Dict[str, Dict[str, np.ndarray]]
    units: Dict[str, int]  # resampled units per source (seeds, runs or prompts)
    loads: Dict[str, np.ndarray]
    tau2: float
    tau2_dof: int

    @classmethod
    def of(cls, comp: Comparison, data: FitData, fit: Fit, n_boot: int, seed: int) -> "Noise":
        second, first = comp.pair[1], comp.pair[0]
        model, X, y, side, at = fit.model, fit.X, data.y, data.side, fit.at
        rng = np.random.default_rng(seed)
        draws: Dict[str, Dict[str, np.ndarray]] = {}
        units: Dict[str, int] = {}
        for a, sign in ((second, -1.0), (first, 1.0)):
            mine = side == sign
            clusters = [r.seed for r in data.inside[a]] if comp.seeds[a] >= 2 else list(range(len(data.inside[a])))
            w = np.ones((n_boot, len(y)))
            w[:, mine] = stats.cluster_weights(clusters, n_boot, rng)
            units[a] = len(set(clusters))
            draws[a] = fit.named(model.curves(stats.weighted_lstsq(X[None], y[None], w), at))
        if data.ids:
            counts = stats.multinomial_counts(len(data.ids), n_boot, rng)
            xb = np.log(np.maximum(_rows_stat(counts, data.kls, "mean"), 1e-12))
            yb = _rows_stat(counts, data.vals, data.kind)
            draws["prompts"] = fit.named(model.curves(
                stats.weighted_lstsq(model.design(xb, side), yb, np.ones_like(yb)), at))
            units["prompts"] = len(data.ids)
        comp.tau2, comp.tau2_dof = stats.config_tau2(X, y, data.groups)
        loads: Dict[str, np.ndarray] = {}
        if comp.tau2_dof >= 1:
            basis = fit.named(model.curves(np.eye(model.size), at))  # (p, m): each estimate as a functional
            loads = {q: stats.config_loadings(X, basis[q], data.groups) for q in fit.keys}
        return cls(draws, units, loads, comp.tau2, comp.tau2_dof)

    def cov_dof(self, pick: Callable[[Dict[str, np.ndarray]], Any]) -> Tuple[np.ndarray, np.ndarray]:
        """Covariance (k, k) and per-item dof of k quantities, ``pick(arrays) -> (N, k)`` applied
        to every source's draws (B, m) and to the configurations' loadings (C, m). Two answers,
        the larger taken (by trace): the configurations' scatter, v L'L with v the configuration
        means' residual variance (their offsets and their seeds' noise), plus the prompts'; or
        each algorithm's seeds' bootstrap covariance (widened: drawing k seeds with replacement
        spreads a mean by sqrt((k-1)/k) of its standard error), which also holds a seed's effect
        shared by every configuration (seed s of every configuration drew the same data), plus
        the prompts' (then with no more degrees of freedom than the scatter's)."""
        parts: Dict[str, Tuple[np.ndarray, int]] = {}
        for src, d in self.draws.items():
            v = np.asarray(pick(d), dtype=float)
            v = v.reshape(v.shape[0], -1)
            v = v[np.all(np.isfinite(v), axis=1)]
            k = self.units[src]
            widen = k / (k - 1) if src != "prompts" and k > 1 else 1.0
            c = widen * np.atleast_2d(np.cov(v, rowvar=False)) if len(v) >= 2 else np.full((v.shape[1],) * 2, np.nan)
            parts[src] = (c, k)
        if self.loads:
            Lq = np.asarray(pick(self.loads), dtype=float)
            Lq = Lq.reshape(Lq.shape[0], -1)
            parts["configurations"] = (self.tau2 * Lq.T @ Lq, self.tau2_dof + 1)

        def combine(names):
            covs = [parts[n][0] for n in names]
            total = sum(covs)
            dof = np.array([stats.welch_dof([math.sqrt(max(c[i, i], 0.0)) for c in covs], [parts[n][1] for n in names])
                            for i in range(total.shape[0])])
            return total, dof

        prompts = ["prompts"] if "prompts" in parts else []
        seeds = combine([n for n in parts if n not in ("prompts", "configurations")] + prompts)
        if "configurations" not in parts:
            return seeds
        spread = combine(["configurations"] + prompts)
        if np.trace(spread[0]) >= np.trace(seeds[0]) or not np.isfinite(np.trace(seeds[0])):
            return spread
        # the seeds say more than the configurations' scatter: their covariance, but no more
        # degrees of freedom than the scatter has (a scatter that came out small by chance must
        # not buy the seeds' many)
        return seeds[0], np.minimum(seeds[1], spread[1])

    def se_dof(self, pick: Callable[[Dict[str, np.ndarray]], Any]) -> Tuple[float, float]:
        """The standard error and dof of one quantity (``pick(arrays) -> (N,)``)."""
        cov, dof = self.cov_dof(lambda d: np.asarray(pick(d))[:, None])
        return math.sqrt(max(cov[0, 0], 0.0)), float(dof[0])


def point(fit: Fit, noise: Noise, i: int) -> Point:
    """The fits, the effect and their t-intervals at the i-th KL point."""
    algs, est = fit.keys[:2], fit.est
    value = {a: float(est[a][i]) for a in algs}
    se, dof = {}, {}
    for a in algs:
        se[a], dof[a] = noise.se_dof(lambda d: d[a][:, i])
    effect = float(est["effect"][i])
    effect_se, effect_dof = noise.se_dof(lambda d: d["effect"][:, i])
    b = {q: float(fit.bias[q][i]) for q in fit.bias}
    return Point(
        kl=math.exp(fit.x0s[i]), fit=value,
        fit_ci={a: stats.t_interval(value[a], se[a], dof[a], bias=b[a]) for a in algs},
        boot={src: d["effect"][:, i] for src, d in noise.draws.items()}, se=se, dof=dof, effect=effect,
        ci=stats.t_interval(effect, effect_se, effect_dof, bias=b["effect"]),
        p=stats.t_p(effect, effect_se, effect_dof, bias=b["effect"]),
        effect_se=effect_se, effect_dof=effect_dof, bias=b)


def band(fit: Fit, noise: Noise, q: str, seed: int) -> Curve:
    """Quantity ``q`` (an algorithm's curve or the effect) along the grid with its simultaneous
    band (sup-t on the grid's covariance)."""
    G = fit.G
    cov, dof = noise.cov_dof(lambda d: d[q][:, G])
    se_g = np.sqrt(np.maximum(np.diag(cov), 0.0))
    dmin = float(np.nanmin(dof)) if np.isfinite(dof).any() else float("nan")
    if np.all(se_g <= 1e-12 * (1.0 + np.abs(fit.est[q][G]))):
        crit, sups = 0.0, np.array([])
    else:
        crit, sups = stats.sup_t(cov, dmin, rng=np.random.default_rng(seed + 1))
    return Curve(np.exp(np.array(fit.at[G])), np.asarray(fit.est[q][G], dtype=float), se_g,
                 np.asarray(fit.bias[q][G], dtype=float), dmin, crit, sups)


def variation(comp: Comparison, fit: Fit, noise: Noise) -> None:
    """Does pair[0] - pair[1] change across the common range (g a line): the t-test of its two
    ends (``comp.vary_p``, ``comp.ends``)."""
    lo, hi = fit.at[len(fit.x0s)], fit.at[len(fit.x0s) + 1]
    if not (fit.model.deg_g and hi > lo):
        return
    i_lo, i_hi = len(fit.x0s), len(fit.x0s) + 1
    est = fit.est["effect"]
    change = float(est[i_hi] - est[i_lo])
    change_se, change_dof = noise.se_dof(lambda d: d["effect"][:, i_hi] - d["effect"][:, i_lo])
    change_bias = float(fit.bias["effect"][i_hi] + fit.bias["effect"][i_lo])
    comp.vary_p = stats.t_p(change, change_se, change_dof, bias=change_bias)
    comp.ends = ((math.exp(lo), float(est[i_lo])), (math.exp(hi), float(est[i_hi])))
