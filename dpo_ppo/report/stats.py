"""Statistics: t-intervals, a local-linear fit, the bootstrap's standard errors, FDR control."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence, Tuple

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


# --------------------------------------------------------------------------- the fit


def bandwidth(x: np.ndarray) -> float:
    """Kernel width in log KL: half the span of the runs' log KL, at least 0.35 (a factor 1.4)."""
    x = np.asarray(x, dtype=float)
    return max(0.35, 0.5 * float(np.ptp(x))) if x.size else 0.35


def local_linear(x: np.ndarray, y: np.ndarray, x0: float, h: float, w: Optional[np.ndarray] = None) -> np.ndarray:
    """Local-linear (Gaussian kernel) estimate of y at x0, row by row.

    ``x``, ``y``, ``w`` are (n,) or (B, n): B resamples of n runs, ``w`` the resampling counts.
    Where the weighted runs sit at one x (or the design is degenerate) the estimate is their
    weighted mean. Returns (B,) (or a 0-d array)."""
    x, y = np.atleast_2d(np.asarray(x, dtype=float)), np.atleast_2d(np.asarray(y, dtype=float))
    w = np.ones_like(x) if w is None else np.atleast_2d(np.asarray(w, dtype=float))
    x, y, w = np.broadcast_arrays(x, y, w)
    u = x - x0
    a = w * np.exp(-0.5 * (u / h) ** 2)
    s0, s1, s2 = a.sum(1), (a * u).sum(1), (a * u * u).sum(1)
    t0, t1 = (a * y).sum(1), (a * u * y).sum(1)
    det = s0 * s2 - s1 * s1
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = t0 / s0
        fit = (s2 * t0 - s1 * t1) / det
    # spread of x among the weighted runs, relative: below 1e-9 they sit at one KL
    ok = det > 1e-9 * np.maximum(s0 * s0, 1e-300) * h * h
    out = np.where(ok, fit, mean)
    return out if out.shape[0] > 1 else out.reshape(())


def fit_curve(x: np.ndarray, y: np.ndarray, grid: np.ndarray, h: Optional[float] = None) -> np.ndarray:
    """The local-linear fit evaluated on a grid of log-KL points (for plots)."""
    h = bandwidth(x) if h is None else h
    return np.array([float(local_linear(x, y, g, h)) for g in grid])


# --------------------------------------------------------------------------- the bootstrap


def cluster_weights(clusters: Sequence, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(B, n) resampling counts of n items when whole clusters (seeds) are drawn with replacement."""
    labels = {c: i for i, c in enumerate(dict.fromkeys(clusters))}
    idx = np.array([labels[c] for c in clusters])
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


def t_interval(estimate: float, se: float, dof: float, level: float = 0.95) -> Tuple[float, float]:
    """estimate +- t(level, dof) se: the interval of a bootstrap standard error from few units.
    With k seeds a percentile interval of the draws is a normal interval (+-1.96 se), too narrow
    for k - 1 degrees of freedom (t = 4.30 at 2, 2.78 at 4)."""
    if not (math.isfinite(estimate) and math.isfinite(se)):
        return float("nan"), float("nan")
    if _degenerate(se, estimate):
        return estimate, estimate
    half = float(_scipy.t.ppf(0.5 + level / 2, dof)) * se if dof >= 1 else float("nan")
    return estimate - half, estimate + half


def t_p(estimate: float, se: float, dof: float) -> float:
    """Two-sided p of "the true value is 0" from a t statistic estimate / se with dof."""
    if not (math.isfinite(estimate) and math.isfinite(se)):
        return float("nan")
    if _degenerate(se, estimate):
        return 1.0 if abs(estimate) <= 1e-12 else 0.0
    if not dof >= 1:
        return float("nan")
    return float(min(1.0, 2 * _scipy.t.sf(abs(estimate) / se, dof)))


def t_p_beyond(estimate: float, se: float, dof: float, margin: float) -> float:
    """One-sided p of "|true value| <= margin" against "beyond it" (least favourable: at the margin)."""
    if not (math.isfinite(estimate) and math.isfinite(se)):
        return float("nan")
    excess = abs(estimate) - margin
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
