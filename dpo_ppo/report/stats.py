"""Statistics with numpy only: t-intervals, a local-linear fit, the bootstrap, FDR control."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import numpy as np

# two-sided 95% Student t quantiles by degrees of freedom
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t975(dof: int) -> float:
    if dof < 1:
        return float("nan")
    return _T975[dof - 1] if dof <= len(_T975) else 1.96 + 2.4 / dof


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


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple:
    s = np.asarray(samples, dtype=float)
    s = s[np.isfinite(s)]
    if not s.size:
        return float("nan"), float("nan")
    lo, hi = np.quantile(s, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def bootstrap_p(samples: np.ndarray) -> float:
    """Two-sided bootstrap p-value of "the effect is 0": twice the smaller tail, (k+1)/(B+1)."""
    s = np.asarray(samples, dtype=float)
    s = s[np.isfinite(s)]
    if not s.size:
        return float("nan")
    s = np.where(np.abs(s) <= 1e-12 * (1.0 + np.abs(s).max()), 0.0, s)  # rounding noise is a tie at 0
    tail = min(int((s <= 0).sum()), int((s >= 0).sum()))
    return float(min(1.0, 2 * (tail + 1) / (s.size + 1)))


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
