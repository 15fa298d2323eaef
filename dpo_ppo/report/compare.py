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
from dpo_ppo.report.load import LABELS, Run, finished, is_diverged

OVERRIDES = "overrides"  # pseudo facet key: overrides params do not say (experiment=..., model=...)
FACETS = R.FACET_KEYS + (OVERRIDES,)
ALPHA = 0.05
MIN_RUNS, MIN_SEEDS, N_BOOT = 3, 3, 1000
PAIR = ("ppo", "dpo")  # the default comparison: effect = PAIR[0] - PAIR[1] (PPO - DPO)
CONFIG_DOF = 2  # configurations left beyond the joint model's coefficients (to see their spread)
GRID = 25  # points of each claim's curve across the common log-KL range
RUN_CONDITIONS = {"experiment=paper_run1": "run 1", "experiment=paper_run2": "run 2"}  # the seed's two rounds


def label(algorithm: str) -> str:
    return LABELS.get(algorithm, str(algorithm).upper())

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

    def condition(self) -> Optional[str]:
        """The seed's run condition this facet holds ("run 1" / "run 2": experiment=paper_run1/2),
        None when the sweep does not say."""
        text = str(self.values.get(OVERRIDES, ""))
        return next((c for o, c in RUN_CONDITIONS.items() if o in text.split()), None)

    def side(self, algorithm: str) -> List[Run]:
        return self.runs.get(algorithm, [])

    def pooled_text(self) -> str:
        return "; ".join(f"{k} (" + ", ".join(f"{label(a)} {'/'.join(map(_text, v))}" for a, v in per.items() if v)
                         + ")" for k, per in self.pooled.items())


def _text(value: Any) -> str:
    return "none" if value == "" else str(value)


def make_facets(runs: Sequence[Run], pool: Sequence[str] = (), pair: Tuple[str, str] = PAIR
                ) -> Tuple[List[Facet], List[str]]:
    """Facets of the finished runs, and notes on what was split, pooled or not applicable.

    A facet key whose values differ splits the runs, unless the two algorithms share no value of
    it (then no facet could compare them) or ``pool`` names it: then the runs are pooled over it
    and every facet says so. An algorithm without the key (None: DPO has no value model) joins
    every facet of it. Runs with status ``diverged`` join the facets they match (on the finished
    runs' values) so that every comparison they would have entered counts and names them."""
    done = finished(runs)
    diverged = [r for r in runs if r.status == getattr(R, "DIVERGED", "diverged") and r.algorithm]
    split: List[str] = []
    pooled: Dict[str, Dict[str, List[Any]]] = {}
    notes: List[str] = []
    for key in FACETS:
        per = {a: sorted({facet_value(r, key) for r in done if r.algorithm == a} - {None}, key=str)
               for a in R.ALGORITHMS}
        values = set().union(*per.values())
        if len(values) <= 1:
            continue
        one, two = per.get(pair[1], []), per.get(pair[0], [])
        if key in pool:
            pooled[key] = per
            notes.append(f"pooled over {key} as asked (--pool)")
        elif one and two and not set(one) & set(two):
            pooled[key] = per
            notes.append(f"pooled over {key}: {label(pair[1])} and {label(pair[0])} runs share no value of it")
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
        for r in done + diverged:
            if all(facet_value(r, k) in (None, v) for k, v in values.items()):
                members.setdefault(r.algorithm or "", []).append(r)
        facets.append(Facet(values, pooled, members))
    return facets, notes


# --------------------------------------------------------------------------- one comparison


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


def span_text(a: float, b: float) -> str:
    return f"KL {a:.2g}-{b:.2g}"


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
    pair: Tuple[str, str] = PAIR  # effect = pair[0] - pair[1]
    curve: Optional[Curve] = None  # the effect along the common range
    arm_curves: Dict[str, Curve] = field(default_factory=dict)  # each algorithm's fit along it
    configs: Dict[str, int] = field(default_factory=dict)  # configurations per algorithm in the fit
    tau2: float = float("nan")  # a configuration mean's variance about its curve (nan: not estimable)
    tau2_dof: int = 0
    diverged: Dict[str, List[str]] = field(default_factory=dict)  # algorithm -> diverged runs left out

    def left_out_text(self) -> str:
        return "; ".join(", ".join(f"{n} {label(a)} run(s)" for a, n in per.items()) + f" left out: {reason}"
                         for reason, per in self.left_out.items())

    def diverged_text(self) -> str:
        """The diverged runs this comparison would have used, named (never dropped silently)."""
        parts = [f"{label(a)} {len(names)} (" + ", ".join(f"`{n}`" for n in names[:3])
                 + (", ..." if len(names) > 3 else "") + ")" for a, names in self.diverged.items() if names]
        return ("diverged runs left out: " + "; ".join(parts)) if parts else ""

    def runs_text(self) -> str:
        return " / ".join(str(self.n.get(a, 0)) for a in (self.pair[1], self.pair[0]))

    def curves(self, log_kl: Sequence[float]) -> Dict[str, np.ndarray]:
        """The fitted model at log-KL points: f, effect and each algorithm's curve."""
        return _named(self.model.curves(self.coef, log_kl), self.pair)

    def where_text(self, kind: str = "differ") -> str:
        """Where along the common range the simultaneous band says what: "PPO > DPO at KL 2-8; no
        difference shown at KL 0.5-2"."""
        if self.curve is None:
            return ""
        hi, lo = label(self.pair[0]), label(self.pair[1])
        words = {1: f"{hi} > {lo}", -1: f"{hi} < {lo}", 0: "no difference shown"}
        return "; ".join(f"{words[c]} at {span_text(a, b)}" for c, a, b in regions(self.curve.kl, list(self.curve.sign())))


def _named(curves: Dict[str, np.ndarray], pair: Tuple[str, str]) -> Dict[str, np.ndarray]:
    """JointModel's dpo / ppo (side -1 / +1) renamed to the pair's algorithms."""
    return {"f": curves["f"], "effect": curves["effect"], pair[1]: curves["dpo"], pair[0]: curves["ppo"]}


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


def _leave_out(comp: Comparison, reason: str, algorithm: str, run: Optional[Run] = None) -> None:
    per = comp.left_out.setdefault(reason, {})
    per[algorithm] = per.get(algorithm, 0) + 1
    if run is not None and reason.startswith("diverged"):
        comp.diverged.setdefault(algorithm, []).append(run.rel or str(run.dir))


WINDOW = 0.25  # the fit takes runs up to this fraction of the common log-KL span beyond its ends
MIN_WINDOW = 0.35  # ... and at least this far (a factor 1.4 in KL)


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
    second, first = pair[1], pair[0]
    algs = (second, first)  # sides -1, +1
    comp = Comparison(metric, facet, {}, {}, {}, None, pair=tuple(pair))
    sides: Dict[str, List[Run]] = {}
    for a in algs:
        sides[a] = []
        mine = facet.side(a)
        measures = any(metric in r.metrics for r in mine)  # else: not this algorithm's metric
        for r in mine if measures or any(is_diverged(r) for r in mine) else []:
            if r.status == getattr(R, "DIVERGED", "diverged"):
                _leave_out(comp, "diverged (job status diverged)", a, r)
            elif not (math.isfinite(r.kl) and r.kl > 0):  # the fit is in log KL: a run at KL 0 cannot sit on it
                _leave_out(comp, "diverged: KL not finite and positive (the fit is in log KL)", a, r)
            elif metric not in r.metrics:  # results.json keeps finite numbers only (results.scalar_metrics)
                _leave_out(comp, "no finite value in results.json", a)
            elif not math.isfinite(r.metrics[metric]):
                _leave_out(comp, f"diverged: the metric is {r.metrics[metric]}", a, r)
            else:
                sides[a].append(r)
    use_rows = use_rows and metric in ROW_METRICS and all(r.rows() is not None for a in sides for r in sides[a])
    if use_rows:  # a NaN p_positive would count as a negative completion in p < 0.5, silently
        for a in algs:
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
        missing = [label(a) for a in algs if not comp.n[a]]
        comp.note = f"no {' or '.join(missing)} run with this metric"
        return comp
    lo = max(math.log(comp.kl_range[a][0]) for a in algs)
    hi = min(math.log(comp.kl_range[a][1]) for a in algs)
    if lo > hi + 1e-12:
        comp.note = "KL ranges do not overlap"
        return comp
    comp.common = (math.exp(lo), math.exp(hi))
    margin = max(MIN_WINDOW, WINDOW * (hi - lo))
    comp.window = (math.exp(lo - margin), math.exp(hi + margin))
    inside = {a: [r for r in sides[a] if lo - margin <= math.log(r.kl) <= hi + margin] for a in algs}
    comp.outside = {a: len(sides[a]) - len(inside[a]) for a in algs if len(sides[a]) > len(inside[a])}
    everyone = inside[second] + inside[first]
    side = np.array([-1.0] * len(inside[second]) + [1.0] * len(inside[first]))
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
    comp.configs = configs = {a: len({r.group_key() for r in inside[a]}) for a in algs}
    deg_g = 1 if min(configs.values()) >= 2 else 0
    # f's degree leaves CONFIG_DOF configurations beyond the coefficients where it can (else the
    # curve would pass through every configuration's mean and no spread between them could show)
    max_deg = max(0, min(stats.MAX_DEGREE, len(set(groups)) - deg_g - 2 - CONFIG_DOF))
    center = 0.5 * (lo + hi)
    scale = max(float(np.max(np.abs(x - center))), 0.1)
    deg_f, comp.cv = stats.choose_degree(x, y, side, groups, center, scale, deg_g, max_deg)
    model = comp.model = stats.JointModel(center, scale, deg_f, deg_g)
    X = model.design(x, side)
    comp.coef = stats.weighted_lstsq(X, y, np.ones_like(y))
    x0s = [lo + f * (hi - lo) for f in kl_fracs]
    n_grid = max(2, grid) if hi > lo else 1
    gx = list(np.linspace(lo, hi, n_grid))
    at = x0s + [lo, hi] + gx  # the points, the common range's ends (does the effect vary?), the grid
    G = slice(len(x0s) + 2, len(at))
    named = lambda c: _named(c, comp.pair)  # noqa: E731
    est = named(model.curves(comp.coef, at))
    keys = (second, first, "effect")
    # how far the estimates move when f gets one degree more (where the runs identify it): a
    # bound on the smoothing bias the chosen degree may leave, added to every interval. It is
    # small where both algorithms have runs near a point and large where one of them only
    # interpolates across a gap, which is where the shape of f decides the answer.
    # The same for g (pair[0] - pair[1]) one degree richer, where each algorithm has the
    # configurations for it: a line cannot follow an effect that lives at one end of the range,
    # and where it extrapolates the line's shape decides the answer.
    bias = {q: np.zeros(len(at)) for q in keys}
    richer_f = stats.JointModel(center, scale, deg_f + 1, deg_g)
    if deg_f + 1 <= stats.MAX_DEGREE and richer_f.size <= len(set(groups)) and \
            stats.identified(richer_f.design(x, side), np.ones_like(y)):
        other = named(richer_f.curves(stats.weighted_lstsq(richer_f.design(x, side), y, np.ones_like(y)), at))
        bias = {q: np.abs(other[q] - est[q]) for q in bias}
    comp.bias_degree = deg_f + 1 if bias["effect"].any() else None
    richer_g = stats.JointModel(center, scale, deg_f, deg_g + 1)
    if deg_g >= 1 and min(configs.values()) >= deg_g + 3 and richer_g.size <= len(set(groups)) and \
            stats.identified(richer_g.design(x, side), np.ones_like(y)):
        other = named(richer_g.curves(stats.weighted_lstsq(richer_g.design(x, side), y, np.ones_like(y)), at))
        bias = {q: np.maximum(bias[q], np.abs(other[q] - est[q])) for q in bias}

    # the noise, one source at a time: each algorithm's seeds (whole seeds: every run of a seed
    # together; runs when an algorithm has a single seed) and the prompts (shared by every run, so
    # the two algorithms stay paired) by bootstrap; the configurations' own offsets from their
    # algorithm's curve as a random effect (stats.config_tau2). The variances add; Welch-
    # Satterthwaite gives the dof.
    rng = np.random.default_rng(seed)
    draws: Dict[str, Dict[str, np.ndarray]] = {}
    units: Dict[str, int] = {}
    for a, sign in ((second, -1.0), (first, 1.0)):
        mine = side == sign
        clusters = [r.seed for r in inside[a]] if comp.seeds[a] >= 2 else list(range(len(inside[a])))
        w = np.ones((n_boot, len(y)))
        w[:, mine] = stats.cluster_weights(clusters, n_boot, rng)
        units[a] = len(set(clusters))
        draws[a] = named(model.curves(stats.weighted_lstsq(X[None], y[None], w), at))
    if ids:
        counts = stats.multinomial_counts(len(ids), n_boot, rng)
        xb = np.log(np.maximum(_rows_stat(counts, kls, "mean"), 1e-12))
        yb = _rows_stat(counts, vals, kind)
        draws["prompts"] = named(model.curves(stats.weighted_lstsq(model.design(xb, side), yb, np.ones_like(yb)), at))
        units["prompts"] = len(ids)
    comp.tau2, comp.tau2_dof = stats.config_tau2(X, y, groups)
    loads: Dict[str, np.ndarray] = {}
    if comp.tau2_dof >= 1:
        basis = named(model.curves(np.eye(model.size), at))  # (p, m): each estimate as a functional
        loads = {q: stats.config_loadings(X, basis[q], groups) for q in keys}

    def cov_dof(pick) -> Tuple[np.ndarray, np.ndarray]:
        """Covariance (k, k) and per-item dof of k quantities, ``pick(arrays) -> (N, k)`` applied
        to every source's draws (B, m) and to the configurations' loadings (C, m). Two answers,
        the larger taken (by trace): the configurations' scatter, v L'L with v the configuration
        means' residual variance (their offsets and their seeds' noise), plus the prompts'; or
        each algorithm's seeds' bootstrap covariance (widened: drawing k seeds with replacement
        spreads a mean by sqrt((k-1)/k) of its standard error), which also holds a seed's effect
        shared by every configuration (seed s of every configuration drew the same data), plus
        the prompts' (then with no more degrees of freedom than the scatter's)."""
        parts: Dict[str, Tuple[np.ndarray, int]] = {}
        for src, d in draws.items():
            v = np.asarray(pick(d), dtype=float)
            v = v.reshape(v.shape[0], -1)
            v = v[np.all(np.isfinite(v), axis=1)]
            k = units[src]
            widen = k / (k - 1) if src != "prompts" and k > 1 else 1.0
            c = widen * np.atleast_2d(np.cov(v, rowvar=False)) if len(v) >= 2 else np.full((v.shape[1],) * 2, np.nan)
            parts[src] = (c, k)
        if loads:
            Lq = np.asarray(pick(loads), dtype=float)
            Lq = Lq.reshape(Lq.shape[0], -1)
            parts["configurations"] = (comp.tau2 * Lq.T @ Lq, comp.tau2_dof + 1)

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

    def se_dof(pick) -> Tuple[float, float]:
        cov, dof = cov_dof(lambda d: np.asarray(pick(d))[:, None])
        return math.sqrt(max(cov[0, 0], 0.0)), float(dof[0])

    for i, x0 in enumerate(x0s):
        fit = {a: float(est[a][i]) for a in algs}
        se, dof = {}, {}
        for a in algs:
            se[a], dof[a] = se_dof(lambda d: d[a][:, i])
        effect = float(est["effect"][i])
        effect_se, effect_dof = se_dof(lambda d: d["effect"][:, i])
        b = {q: float(bias[q][i]) for q in bias}
        comp.points.append(Point(
            kl=math.exp(x0), fit=fit,
            fit_ci={a: stats.t_interval(fit[a], se[a], dof[a], bias=b[a]) for a in algs},
            boot={src: d["effect"][:, i] for src, d in draws.items()}, se=se, dof=dof, effect=effect,
            ci=stats.t_interval(effect, effect_se, effect_dof, bias=b["effect"]),
            p=stats.t_p(effect, effect_se, effect_dof, bias=b["effect"]),
            effect_se=effect_se, effect_dof=effect_dof, bias=b))
    kl_grid = np.exp(np.array(gx))
    for q in keys:
        cov, dof = cov_dof(lambda d: d[q][:, G])
        se_g = np.sqrt(np.maximum(np.diag(cov), 0.0))
        dmin = float(np.nanmin(dof)) if np.isfinite(dof).any() else float("nan")
        if np.all(se_g <= 1e-12 * (1.0 + np.abs(est[q][G]))):
            crit, sups = 0.0, np.array([])
        else:
            crit, sups = stats.sup_t(cov, dmin, rng=np.random.default_rng(seed + 1))
        curve = Curve(kl_grid, np.asarray(est[q][G], dtype=float), se_g, np.asarray(bias[q][G], dtype=float),
                      dmin, crit, sups)
        if q == "effect":
            comp.curve = curve
        else:
            comp.arm_curves[q] = curve
    if deg_g and hi > lo:
        i_lo, i_hi = len(x0s), len(x0s) + 1
        change = float(est["effect"][i_hi] - est["effect"][i_lo])
        change_se, change_dof = se_dof(lambda d: d["effect"][:, i_hi] - d["effect"][:, i_lo])
        change_bias = float(bias["effect"][i_hi] + bias["effect"][i_lo])
        comp.vary_p = stats.t_p(change, change_se, change_dof, bias=change_bias)
        if comp.vary_p < ALPHA:
            comp.varies = (f"{label(first)} - {label(second)} changes across the common KL range: "
                           f"{fmt(float(est['effect'][i_lo]))} at KL {math.exp(lo):.3g}, "
                           f"{fmt(float(est['effect'][i_hi]))} at KL {math.exp(hi):.3g} (p = {comp.vary_p:.2g})")
    return comp


# --------------------------------------------------------------------------- the claims table


VERDICTS = ("supported", "contradicted", "mixed", "inconclusive")


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
    where: str = ""  # where along the common KL range the verdict holds
    margin: Optional[np.ndarray] = None  # "same" / "zero": the margin along the grid
    margin_note: str = ""  # what the margin's unit is

    @property
    def in_family(self) -> bool:
        return self.claim.family

    def effect_text(self) -> str:
        c = self.comparison
        if c is None or not c.points:
            return "–"
        pt = c.points[0]
        if self.claim.kind == "zero":
            return "; ".join(f"{label(a)} {fmt(pt.fit[a])} [{fmt(pt.fit_ci[a][0])}, {fmt(pt.fit_ci[a][1])}]"
                             for a in self.claim.arms if a in pt.fit) + f" at KL {pt.kl:.3g}"
        second = c.pair[1]
        rel = f" ({pt.effect / abs(pt.fit[second]):+.0%} of {label(second)})" if pt.fit.get(second) else ""
        return f"{fmt(pt.effect)} [{fmt(pt.ci[0])}, {fmt(pt.ci[1])}]{rel} at KL {pt.kl:.3g}"


def fmt(x: float) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.3g}"


def margin_of(claim: Claim, comp: Comparison) -> Tuple[np.ndarray, str]:
    """The margin of a "same" / "zero" claim along the comparison's grid, and its unit in words.
    "same": a fraction of the mean of the two algorithms' fitted values there (each value is a
    change of the policy from the reference); "zero": a fraction of the scale metric's mean over
    the facet's runs (the reference's own value: the same in every run), or of 1 when the claim
    has no scale or the runs lack it."""
    if claim.kind == "same":
        arms = list(comp.arm_curves.values())
        m = claim.margin * 0.5 * (np.abs(arms[0].est) + np.abs(arms[1].est))
        return m, f"±{claim.margin:.0%} of the two values' mean"
    if claim.scale:
        vals = [r.metrics[claim.scale] for a in comp.pair for r in comp.facet.side(a)
                if claim.scale in r.metrics and math.isfinite(r.metrics[claim.scale])]
        if vals:
            unit = float(np.mean(np.abs(vals)))
            return np.full(len(comp.curve.kl), claim.margin * unit), \
                f"±{claim.margin:g} x {unit:.3g} (`{claim.scale}`)"
        return np.full(len(comp.curve.kl), claim.margin), f"±{claim.margin:g} (no `{claim.scale}` in these runs: 1 as unit)"
    return np.full(len(comp.curve.kl), claim.margin), f"±{claim.margin:g}"


def claim_p(row: ClaimRow) -> float:
    """The row's p-value: of "no difference anywhere on the common range" (sup-t) for higher /
    lower / differ; of "beyond the margin somewhere" (intersection-union TOST) for same / zero."""
    comp, kind = row.comparison, row.claim.kind
    if kind in ("higher", "lower", "differ"):
        return comp.curve.sup_p()
    if kind == "same":
        return comp.curve.tost_p(row.margin)
    ps = [comp.arm_curves[a].tost_p(row.margin) for a in row.claim.arms if a in comp.arm_curves]
    return float("nan") if not ps or any(math.isnan(p) for p in ps) else float(max(ps))


def _beyond(curve: Curve, m: np.ndarray) -> np.ndarray:
    """Where the simultaneous band lies wholly beyond +-m: a difference larger than the margin."""
    return (curve.lo > m) | (curve.hi < -m)


def _margin_regions(curve: Curve, m: np.ndarray, words: Dict[int, str], prefix: str = "") -> Tuple[List[str], bool]:
    """Where the band lies within +-m (1), wholly beyond it (-1) or neither (0), in words; and
    whether it lies beyond anywhere."""
    inside = (curve.lo >= -m) & (curve.hi <= m)
    beyond = _beyond(curve, m)
    classes = list(np.where(inside, 1, np.where(beyond, -1, 0)))
    return [f"{prefix}{words[c]} at {span_text(a, b)}" for c, a, b in regions(curve.kl, classes)], bool(beyond.any())


def decide(row: ClaimRow, alpha: float = ALPHA) -> str:
    """The verdict of an eligible row (the rule under the table), and ``row.where``."""
    comp, kind = row.comparison, row.claim.kind
    sig = (row.q if row.in_family else row.p) < alpha
    curve = comp.curve
    if kind in ("higher", "lower", "differ"):
        row.where = comp.where_text()
        if not sig:
            if kind == "differ" and row.margin is not None and curve.tost_p(row.margin) < alpha:
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
    m = row.margin
    if kind == "same":
        same = f"{label(comp.pair[0])} ≈ {label(comp.pair[1])} (within the margin)"
        parts, beyond = _margin_regions(curve, m, {1: same, -1: "beyond the margin", 0: "not shown either way"})
    else:  # zero: each arm's own value is 0 within the margin
        parts, beyond = [], False
        for a in row.claim.arms:
            if a in comp.arm_curves:
                more, far = _margin_regions(comp.arm_curves[a], m, {1: "within the margin", -1: "beyond it",
                                                                    0: "not shown either way"}, f"{label(a)} ")
                parts, beyond = parts + more, beyond or far
    row.where = "; ".join(parts)
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
            cond_note = ""
            if claim.condition and conditions:
                if facet.condition() != claim.condition:
                    continue
            elif claim.condition:
                cond_note = (f"the seed states this of its {claim.condition}; this sweep has no run-condition "
                             "facet (experiment=paper_run1/2)")
            if metric is None:
                rows.append(ClaimRow(claim, facet, None, None, reason="not measured by these runs", caveat=cond_note))
                continue
            comp = compare(facet, metric, (0.5,), n_boot=n_boot, seed=seed, pair=pair)
            row = ClaimRow(claim, facet, metric, comp)
            if not comp.points:
                row.reason = comp.note
            elif min(comp.n.values()) < min_runs:
                row.reason = f"fewer than {min_runs} runs per side"
            elif min(comp.seeds.values()) < min_seeds:
                row.reason = f"fewer than {min_seeds} seeds per side"
            else:
                row.eligible = True
                if claim.kind in ("same", "zero", "differ"):
                    row.margin, row.margin_note = margin_of(Claim(**{**vars(claim), "kind": "same"})
                                                            if claim.kind == "differ" else claim, comp)
                row.p = claim_p(row)
            caveats = [comp.diverged_text(), steps_caveat(facet, pair) if metric.startswith("analysis/weights/") else "",
                       comp.left_out_text() if not comp.diverged else
                       "; ".join(t for t in comp.left_out_text().split("; ") if "diverged" not in t),
                       comp.varies, cond_note,
                       "" if claim.family else f"derived from / paraphrasing {claim.of}: outside the FDR family "
                                                "(its verdict reads its unadjusted p)"]
            row.caveat = "; ".join(c for c in caveats if c)
            rows.append(row)
    adjust = stats.holm if fdr == "holm" else stats.benjamini_hochberg
    q = adjust([r.p if r.eligible and r.in_family else float("nan") for r in rows])
    for row, qi in zip(rows, q):
        row.q = float(qi)
        if row.eligible:
            row.verdict = decide(row, alpha)
    return rows


def optimizer_steps(run: Run) -> Optional[float]:
    value = run.compute.get("optimizer_steps", run.params.get("optimizer_steps"))
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def steps_caveat(facet: Facet, pair: Tuple[str, str] = PAIR) -> str:
    """Weight divergence grows with optimizer steps under Adam whatever the algorithm: say so when
    the two sides took unequal steps (median ratio above 1.5)."""
    med = {}
    for a in (pair[1], pair[0]):
        steps = [s for s in map(optimizer_steps, facet.side(a)) if s is not None]
        if not steps:
            return ""
        med[a] = float(np.median(steps))
    lo, hi = sorted(med.values())
    if lo > 0 and hi / lo <= 1.5:
        return ""
    return (f"unequal optimizer steps (median " + ", ".join(f"{label(a)} {v:g}" for a, v in med.items())
            + "); compare at compute=matched")


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
