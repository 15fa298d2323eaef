"""Statistics: t-intervals, the joint fit of both algorithms against log KL, the bootstrap's
standard errors, FDR control."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Iterable, Sequence, Tuple

import numpy as np
from scipy import stats as _scipy


def t975(dof: float) -> float:
    """The two-sided 95% Student t quantile; nan below one degree of freedom."""
    if not dof >= 1:  # nan too
        return float("nan")
    return float(_scipy.t.ppf(0.975, dof))


@dataclass
class Stat:
    mean: float
    half: float  # half-width of the 95% interval; nan with one sample
    n: int

    def text(self, digits: int = 3) -> str:
        if self.n == 0 or not math.isfinite(self.mean):
            return "–"
        if self.n == 1 or not math.isfinite(self.half):
            return f"{self.mean:.{digits}g}"
        return f"{self.mean:.{digits}g} ± {self.half:.2g}"


def mean_ci(values: Iterable[float]) -> Stat:
    """Mean and half-width of the 95% t-interval of the finite values."""
    xs = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = len(xs)
    if n == 0:
        return Stat(float("nan"), float("nan"), 0)
    if n == 1:
        return Stat(float(xs[0]), float("nan"), 1)
    mean = float(xs.mean())
    half = float(t975(n - 1) * xs.std(ddof=1) / math.sqrt(n))
    if half <= 1e-12 * max(1.0, abs(mean)):  # identical values up to rounding
        half = 0.0
    return Stat(mean, half, n)


# --------------------------------------------------------------------------- the joint fit
#
# The comparison's model: over the runs of both algorithms, metric = f(log KL) + s g(log KL) / 2,
# s = +1 for PPO and -1 for DPO, f a polynomial shared by both algorithms and g (PPO - DPO) a
# line (a constant when an algorithm has a single configuration). The shared f carries the
# curvature both algorithms have in common, so identical curves give g = 0 wherever each
# algorithm's runs sit: a per-algorithm smoother (the estimator this replaced) has a smoothing
# bias that depends on its own runs' placement, and two placements gave a difference out of
# nothing. f's degree is chosen by leave-one-configuration-out cross-validation.

MAX_DEGREE = 3


@dataclass
class JointModel:
    """Where the polynomial basis sits: u = (log KL - center) / scale; f of degree ``deg_f``, g of
    degree ``deg_g``."""

    center: float
    scale: float
    deg_f: int
    deg_g: int

    @property
    def size(self) -> int:
        return self.deg_f + self.deg_g + 2

    def design(self, x: np.ndarray, s: np.ndarray) -> np.ndarray:
        """(..., n, p) design of runs at log KL ``x`` on sides ``s`` (+1 PPO, -1 DPO)."""
        u = (np.asarray(x, dtype=float) - self.center) / self.scale
        s = np.broadcast_to(np.asarray(s, dtype=float), u.shape)
        cols = [u ** j for j in range(self.deg_f + 1)] + [0.5 * s * u ** j for j in range(self.deg_g + 1)]
        return np.stack(cols, axis=-1)

    def curves(self, beta: np.ndarray, x: Sequence[float]) -> Dict[str, np.ndarray]:
        """f, g and each side's curve (dpo = f - g/2, ppo = f + g/2) at log-KL points ``x``:
        arrays (..., len(x)) for coefficients ``beta`` (..., p)."""
        u = (np.asarray(x, dtype=float) - self.center) / self.scale
        powers = u[None, :] ** np.arange(max(self.deg_f, self.deg_g) + 1)[:, None]  # (d + 1, m)
        beta = np.asarray(beta, dtype=float)
        f = beta[..., : self.deg_f + 1] @ powers[: self.deg_f + 1]
        g = beta[..., self.deg_f + 1:] @ powers[: self.deg_g + 1]
        return {"f": f, "effect": g, "dpo": f - 0.5 * g, "ppo": f + 0.5 * g}


def weighted_lstsq(X: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted least squares, batched over leading axes: X (..., n, p), y and w (..., n) ->
    (..., p). A design that cannot identify every coefficient gets the minimum-norm solution."""
    X, y, w = np.asarray(X, dtype=float), np.asarray(y, dtype=float), np.asarray(w, dtype=float)
    xtw = np.swapaxes(X, -1, -2) * w[..., None, :]
    return (np.linalg.pinv(xtw @ X) @ (xtw @ y[..., None]))[..., 0]


def identified(X: np.ndarray, w: np.ndarray) -> bool:
    """Whether the runs with positive weight identify every coefficient of the design."""
    rows = X[np.asarray(w) > 0]
    if rows.shape[0] < X.shape[1]:
        return False
    sv = np.linalg.svd(rows, compute_uv=False)
    return bool(sv[-1] > 1e-8 * sv[0])


def choose_degree(x: np.ndarray, y: np.ndarray, s: np.ndarray, groups: Sequence, center: float,
                  scale: float, deg_g: int, max_deg: int) -> Tuple[int, Dict[int, float]]:
    """The degree of f (0..max_deg) with the smallest leave-one-configuration-out prediction error
    (mean over the configurations of their runs' squared error; ties to the smaller degree), and
    every candidate's error. A fold that leaves an algorithm with one configuration fits g as a
    constant; folds some candidate cannot identify are left out for all candidates, so the
    candidates are scored on the same folds."""
    x, y, s = (np.asarray(v, dtype=float) for v in (x, y, s))
    labels = list(dict.fromkeys(groups))
    idx = np.array([labels.index(g) for g in groups])
    side_of = {g: s[idx == i][0] for i, g in enumerate(labels)}
    candidates = list(range(min(1, max_deg), max_deg + 1))
    folds = []
    for i, g in enumerate(labels):
        keep = idx != i
        left = {side: sum(1 for h in labels if h != g and side_of[h] == side) for side in (-1.0, 1.0)}
        if min(left.values()) < 1:
            continue  # the other configurations hold one algorithm only: g is not identified
        dg = deg_g if min(left.values()) >= 2 else 0
        models = {d: JointModel(center, scale, d, dg) for d in candidates}
        if not all(identified(m.design(x, s), keep.astype(float)) for m in models.values()):
            continue
        folds.append((i, keep, models))
    errors = {d: float("nan") for d in candidates}
    if not folds:
        return candidates[0], errors
    for d in candidates:
        err = []
        for i, keep, models in folds:
            X = models[d].design(x, s)
            beta = weighted_lstsq(X, y, keep.astype(float))
            out = ~keep
            err.append(float(np.mean((X[out] @ beta - y[out]) ** 2)))
        errors[d] = float(np.mean(err))
    best = min(candidates, key=lambda d: (round(errors[d], 12), d))
    return best, errors


# --------------------------------------------------------------------------- the bootstrap


def cluster_weights(clusters: Sequence, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(B, n) resampling counts of n items when whole clusters (seeds) are drawn with replacement."""
    labels = {c: i for i, c in enumerate(dict.fromkeys(clusters))}
    idx = np.array([labels[c] for c in clusters], dtype=int)  # int also when no cluster is left
    k = len(labels)
    draws = rng.integers(0, k, size=(n_boot, k))
    counts = np.zeros((n_boot, k))
    np.add.at(counts, (np.repeat(np.arange(n_boot), k), draws.ravel()), 1.0)
    return counts[:, idx]


def multinomial_counts(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(B, n) counts of n items drawn n times with replacement."""
    draws = rng.integers(0, n, size=(n_boot, n))
    counts = np.zeros((n_boot, n))
    np.add.at(counts, (np.repeat(np.arange(n_boot), n), draws.ravel()), 1.0)
    return counts


def boot_se(draws: np.ndarray) -> float:
    """The standard error the bootstrap draws give (their standard deviation; nan with < 2)."""
    d = np.asarray(draws, dtype=float)
    d = d[np.isfinite(d)]
    return float(d.std(ddof=1)) if d.size >= 2 else float("nan")


def welch_dof(se: Sequence[float], k: Sequence[int]) -> float:
    """Welch-Satterthwaite degrees of freedom of a sum of independent estimates with standard
    errors ``se``, each from ``k`` independent units (seeds): between min(k) - 1 and sum(k) - len(k)."""
    v = np.asarray(se, dtype=float) ** 2
    dof = np.asarray(k, dtype=float) - 1
    if np.any(dof < 1) or not np.all(np.isfinite(v)):
        return float("nan")
    den = float((v ** 2 / dof).sum())
    return float(v.sum() ** 2 / den) if den > 0 else float(dof.min())


def _degenerate(se: float, estimate: float) -> bool:
    return se <= 1e-12 * (1.0 + abs(estimate))  # draws equal up to rounding


def t_interval(estimate: float, se: float, dof: float, level: float = 0.95, bias: float = 0.0) -> Tuple[float, float]:
    """estimate +- (t(level, dof) se + bias): the interval of a bootstrap standard error from few
    units, widened by a bound on the estimate's bias (0: none). With k seeds a percentile
    interval of the draws is a normal interval (+-1.96 se), too narrow for k - 1 degrees of
    freedom (t = 4.30 at 2, 2.78 at 4)."""
    if not (math.isfinite(estimate) and math.isfinite(se)):
        return float("nan"), float("nan")
    if _degenerate(se, estimate):
        return estimate - bias, estimate + bias
    half = float(_scipy.t.ppf(0.5 + level / 2, dof)) * se if dof >= 1 else float("nan")
    return estimate - half - bias, estimate + half + bias


def t_p(estimate: float, se: float, dof: float, bias: float = 0.0) -> float:
    """Two-sided p of "the true value is 0" from a t statistic (|estimate| - bias) / se with dof:
    an estimate within its bias bound of 0 is no evidence (p = 1). Consistent with ``t_interval``:
    p < 1 - level exactly when its interval excludes 0."""
    if not (math.isfinite(estimate) and math.isfinite(se)):
        return float("nan")
    excess = max(abs(estimate) - bias, 0.0)
    if _degenerate(se, estimate):
        return 1.0 if excess <= 1e-12 else 0.0
    if not dof >= 1:
        return float("nan")
    return float(min(1.0, 2 * _scipy.t.sf(excess / se, dof)))


def t_p_beyond(estimate: float, se: float, dof: float, margin: float, bias: float = 0.0) -> float:
    """One-sided p of "|true value| <= margin" against "beyond it" (least favourable: at the
    margin, the estimate's bias bound in the null's favour)."""
    if not (math.isfinite(estimate) and math.isfinite(se)):
        return float("nan")
    excess = abs(estimate) - margin - bias
    if _degenerate(se, estimate):
        return 0.0 if excess > 0 else 1.0
    if not dof >= 1:
        return float("nan")
    return float(_scipy.t.sf(excess / se, dof))


# --------------------------------------------------------------------------- many tests


def _ranked(p: Sequence[float]):
    """(p as floats, an all-nan q, the indices of the finite p in ascending order)."""
    p = np.asarray(p, dtype=float)
    ok = np.flatnonzero(np.isfinite(p))
    return p, np.full(p.shape, np.nan), ok[np.argsort(p[ok])]


def benjamini_hochberg(p: Sequence[float]) -> np.ndarray:
    """BH-adjusted p-values (q-values); nan stays nan and does not count as a test."""
    p, q, order = _ranked(p)
    m = order.size
    if m:
        ranked = p[order] * m / np.arange(1, m + 1)
        q[order] = np.minimum(1.0, np.minimum.accumulate(ranked[::-1])[::-1])
    return q


def holm(p: Sequence[float]) -> np.ndarray:
    """Holm-adjusted p-values; nan stays nan and does not count as a test."""
    p, q, order = _ranked(p)
    m = order.size
    if m:
        q[order] = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    return q


def tost_p(estimate: float, se: float, dof: float, margin: float, bias: float = 0.0) -> float:
    """Two one-sided tests of equivalence, H0 "|true value| >= margin": the larger of the two
    one-sided p, sf((margin - |estimate| - bias) / se) with dof (the estimate's bias bound counted
    against equivalence). p < alpha exactly when the 1 - 2 alpha interval lies within +-margin."""
    if not (math.isfinite(estimate) and math.isfinite(se) and math.isfinite(margin)):
        return float("nan")
    room = margin - abs(estimate) - bias
    if _degenerate(se, estimate):
        return 0.0 if room > 0 else 1.0
    if not dof >= 1:
        return float("nan")
    return float(_scipy.t.sf(room / se, dof))


# --------------------------------------------------------------------------- configurations
#
# A sweep's configurations (learning rate, beta, a fixed coefficient, a KL target) are not
# interchangeable: each may sit off its algorithm's curve by an offset of its own. Resampling seeds
# and prompts never sees that spread, so an interval built from them alone is too narrow by the
# configurations' scatter. The comparison treats the offsets as a random effect: u_c ~ (0, tau^2)
# per configuration. Every estimate is linear in the runs' values (a = X (X'X)^+ L), so the offsets
# add tau^2 sum_c (sum_{i in c} a_i)^2 to its variance; tau^2 is estimated by the method of moments
# (the configuration means' scatter about the fitted curve, less what the seeds' own noise explains).


def config_tau2(X: np.ndarray, y: np.ndarray, groups: Sequence) -> Tuple[float, int]:
    """The variance of a configuration's mean about its algorithm's curve, tau^2 + sigma^2 / k
    (its own offset plus its seeds' noise averaged), and its degrees of freedom (configurations -
    coefficients): the residual variance of the model fitted to the configurations' mean rows.
    (nan, 0) when there are no more configurations than coefficients."""
    X, y = np.asarray(X, dtype=float), np.asarray(y, dtype=float)
    labels = list(dict.fromkeys(groups))
    idx = np.array([labels.index(g) for g in groups])
    C, p = len(labels), X.shape[1]
    if C <= p:
        return float("nan"), 0
    size = np.bincount(idx, minlength=C).astype(float)
    Xm = np.stack([X[idx == c].mean(0) for c in range(C)])
    ym = np.array([y[idx == c].mean() for c in range(C)])
    beta_m = weighted_lstsq(Xm, ym, np.ones(C))
    between = float(np.sum((ym - Xm @ beta_m) ** 2) / (C - p))
    return between, C - p


def config_loadings(X: np.ndarray, L: np.ndarray, groups: Sequence) -> np.ndarray:
    """(C, m) weights of each configuration's offset in m linear functionals L (p, m) of the least
    squares fit: the estimate moves by loadings[c] u_c when configuration c is shifted by u_c."""
    X = np.asarray(X, dtype=float)
    labels = list(dict.fromkeys(groups))
    idx = np.array([labels.index(g) for g in groups])
    a = X @ np.linalg.pinv(X.T @ X) @ np.asarray(L, dtype=float)  # (n, m)
    out = np.zeros((len(labels), a.shape[1]))
    np.add.at(out, idx, a)
    return out


# --------------------------------------------------------------------------- simultaneous bands


def sup_t(cov: np.ndarray, dof: float, level: float = 0.95, n_sim: int = 5000,
          rng: np.random.Generator = None) -> Tuple[float, np.ndarray]:
    """The critical value c of a simultaneous band est +- c se over a grid whose estimates have
    covariance ``cov`` (the sup of |T| over the grid, T multivariate t with ``dof``), and the
    simulated sups (for p-values). Montiel Olea & Plagborg-Moller's sup-t band."""
    rng = rng if rng is not None else np.random.default_rng(0)
    cov = np.asarray(cov, dtype=float)
    se = np.sqrt(np.maximum(np.diag(cov), 0.0))
    ok = se > 0
    if not ok.any() or not dof >= 1:
        return float("nan"), np.array([])
    corr = cov[np.ix_(ok, ok)] / np.outer(se[ok], se[ok])
    w, v = np.linalg.eigh(corr)
    root = v * np.sqrt(np.maximum(w, 0.0))
    z = rng.standard_normal((n_sim, len(w))) @ root.T
    scale = np.sqrt(rng.chisquare(dof, size=(n_sim, 1)) / dof) if math.isfinite(dof) else 1.0
    sups = np.max(np.abs(z / scale), axis=1)
    return float(np.quantile(sups, level)), sups


def sup_t_p(stat: float, sups: np.ndarray) -> float:
    """p of an observed sup |t| against simulated sups ((count + 1) / (n + 1))."""
    if not (math.isfinite(stat) and len(sups)):
        return float("nan")
    return float((np.sum(sups >= stat) + 1) / (len(sups) + 1))
