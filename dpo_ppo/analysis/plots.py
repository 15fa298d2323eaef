"""PNG figures for the analyses (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def save(fig, path: Path) -> str:
    """Write ``fig`` as a PNG at ``path`` (the folder made) and close it; the path, as text.
    Every figure of the analyses and of the report is written here."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return str(path)


def heatmaps(panels: dict[str, list[list[float]]], path: Path, title: str, *, diverging: bool = False,
             cbar: str = "") -> str:
    """One layer x head heat map per panel, side by side, on a shared colour scale."""
    arrays = {k: np.asarray(v, dtype=float) for k, v in panels.items()}
    finite = np.concatenate([a[np.isfinite(a)].ravel() for a in arrays.values()] + [np.zeros(1)])
    if diverging:
        lim = float(np.abs(finite).max()) or 1.0
        vmin, vmax, cmap = -lim, lim, "RdBu_r"
    else:
        vmin, vmax, cmap = float(finite.min()), float(finite.max()) or 1.0, "viridis"
    n = len(arrays)
    L, H = next(iter(arrays.values())).shape
    fig, axes = plt.subplots(1, n, figsize=(0.45 * H * n + 1.5, 0.45 * L + 1.2), squeeze=False)
    im = None
    for ax, (name, a) in zip(axes[0], arrays.items()):
        im = ax.imshow(a, cmap=cmap, vmin=vmin, vmax=vmax, aspect="equal")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(H))
        ax.set_yticks(range(L))
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label=cbar)
    return save(fig, path)


def bars(values: dict[str, float], path: Path, title: str, ylabel: str) -> str:
    fig, ax = plt.subplots(figsize=(max(3.0, 0.8 * len(values) + 1), 3))
    ax.bar(list(values), list(values.values()), color=["#4C72B0", "#DD8452", "#55A868", "#C44E52"][: len(values)])
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    return save(fig, path)


def lines(x: list, series: dict[str, list[float]], path: Path, title: str, xlabel: str, ylabel: str,
          logy: bool = False) -> str:
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, ys in series.items():
        ax.plot(x, ys, marker="o", label=name)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("symlog", linthresh=1e-12)
    ax.legend(fontsize=7)
    return save(fig, path)


def attention_patterns(patterns: dict[str, np.ndarray], tokens: list[str], path: Path, title: str,
                       mark: int | None = None) -> str:
    """Rows = models, columns = heads of one layer; each cell a query x key pattern."""
    names = list(patterns)
    H = patterns[names[0]].shape[0]
    T = len(tokens)
    fig, axes = plt.subplots(len(names), H, figsize=(1.6 * H + 1, 1.7 * len(names) + 1.2), squeeze=False)
    labels = [t.replace("Ġ", " ").replace("<|endoftext|>", "<eot>") for t in tokens]
    for r, name in enumerate(names):
        for h in range(H):
            ax = axes[r][h]
            ax.imshow(np.asarray(patterns[name][h]), cmap="Blues", vmin=0, vmax=1)
            if mark is not None:
                ax.axvline(mark, color="red", lw=0.6, alpha=0.7)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"H{h}", fontsize=8)
            if h == 0:
                ax.set_ylabel(name, fontsize=8)
            if r == len(names) - 1 and T <= 24:
                ax.set_xticks(range(T))
                ax.set_xticklabels(labels, rotation=90, fontsize=5)
    fig.suptitle(title, fontsize=9)
    return save(fig, path)
