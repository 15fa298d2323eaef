"""dpo-ppo-report: a sweep folder -> report/report.md with plots, tables and plain sentences.

    dpo-ppo-report multirun/confound                       # the whole sweep
    dpo-ppo-report multirun/paper --compare JOB_A JOB_B    # plus the paper's side-by-side plots
    dpo-ppo-report multirun/confound --bins 5 --bin-mode log --no-wandb

It reads every job folder's results.json (finished or not), and the sweeper's sweep.json for jobs
not started yet, then writes into PATH/report/:
  report.md          progress & cost, the reward-KL frontier, every metric against achieved KL,
                     the matched-KL table with a sentence per notable difference, --compare plots
  *.png              the plots (matplotlib, Agg)
  runs.csv           one row per job: status, params, metrics
  summary.json       counts, cost, per-configuration means and the matched-KL bins
  wandb/             a sweep-level W&B run (job_type "report", group = the sweep name), offline
                     unless --wandb-mode online; sync with `wandb sync PATH/report/wandb/offline-run-*`

Seeds are aggregated: runs whose params differ only in the seed form one configuration, shown as
the mean with a 95% t-interval. In the matched-KL table runs are binned by their own achieved KL
(quantile bins by default) and every run in a bin is one sample.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

KL = "eval/policy/kl_to_ref"
REWARD = "eval/policy/reward_mean"
REF_REWARD = "eval/reference/reward_mean"
ALGORITHMS = ("dpo", "ppo")
COLORS = {"dpo": "tab:blue", "ppo": "tab:orange"}
LABELS = {"dpo": "DPO", "ppo": "PPO"}
KNOB = {"dpo": ("beta", "β"), "ppo": ("kl_target", "KL*")}
RESULTS = "results.json"
SKIP_DIRS = {"report", "wandb", ".submitit", ".hydra", "__pycache__"}
# override keys that name where/how a job runs, not what it computes (cf. conf/config.yaml's
# hydra.job.config.override_dirname.exclude_keys)
NOT_CONFIG = {"seed", "logger", "device", "force", "cache_dir", "sweep", "name", "hydra"}

# two-sided 95% Student t quantiles by degrees of freedom (no scipy needed)
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

    @property
    def lo(self) -> float:
        return self.mean - (self.half if self.half == self.half else 0.0)

    @property
    def hi(self) -> float:
        return self.mean + (self.half if self.half == self.half else 0.0)

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


def overlap(a: Stat, b: Stat) -> bool:
    return not (a.lo > b.hi or b.lo > a.hi)


# --------------------------------------------------------------------------- reading the sweep


@dataclass
class Run:
    dir: Path
    rel: str  # folder relative to the sweep folder
    status: str  # finished | failed | running | no results | pending
    algorithm: Optional[str] = None
    params: Dict[str, Any] = field(default_factory=dict)
    overrides: List[str] = field(default_factory=list)
    metrics: Dict[str, float] = field(default_factory=dict)
    per_head: Dict[str, np.ndarray] = field(default_factory=dict)
    images: Dict[str, str] = field(default_factory=dict)
    wall_time_s: Optional[float] = None
    peak_mem_mb: Optional[float] = None
    error: Optional[str] = None
    config: Dict[str, Any] = field(default_factory=dict)

    @property
    def seed(self) -> Any:
        return self.params.get("seed")

    def extra_overrides(self) -> List[str]:
        """Overrides that params do not already say (model=pythia70m, experiment=...), minus the
        seed and the keys that do not change a result (logger, device, ...)."""
        out = []
        for o in self.overrides:
            key = o.split("=", 1)[0].lstrip("+~")
            if key in NOT_CONFIG or key.split(".")[0] in NOT_CONFIG or key == "algorithm":
                continue
            if key.startswith("algorithm.") and key[len("algorithm."):] in self.params:
                continue
            if key in self.params:
                continue
            out.append(o.lstrip("+"))
        return sorted(out)

    def group_key(self) -> Tuple:
        """Everything that defines the configuration except the seed: params and any other
        override (runs of model=tiny and model=pythia70m are not pooled)."""
        items = [(k, v) for k, v in self.params.items() if k != "seed"]
        items += [("override", o) for o in self.extra_overrides()]
        return (self.algorithm,) + tuple(sorted((str(k), json.dumps(v, sort_keys=True, default=str))
                                                for k, v in items))

    def knob(self) -> str:
        key, symbol = KNOB.get(self.algorithm or "", (None, None))
        value = self.params.get(key) if key else None
        return f"{symbol}={value:g}" if isinstance(value, (int, float)) else ""

    def label(self) -> str:
        seed = f" seed {self.seed}" if self.seed is not None else ""
        return f"{LABELS.get(self.algorithm or '', self.algorithm or '?')} {self.knob()}{seed}".replace("  ", " ")


def _scalar_metrics(metrics: Any) -> Dict[str, float]:
    out: Dict[str, float] = {}
    for key, value in (metrics or {}).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(float(value)):
            out[str(key)] = float(value)
    return out


def _per_head(analysis: Any) -> Dict[str, np.ndarray]:
    out: Dict[str, np.ndarray] = {}
    for key, value in ((analysis or {}).get("per_head") or {}).items():
        try:
            arr = np.array(value, dtype=float)
        except (TypeError, ValueError):
            continue
        if arr.ndim == 2 and arr.size:
            out[str(key)] = arr
    return out


def _find_job_dirs(root: Path, max_depth: int = 3) -> List[Path]:
    """Folders holding results.json or .hydra/ (a started job), not descending into a job."""
    found: List[Path] = []

    def walk(folder: Path, depth: int) -> None:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return
        names = {e.name for e in entries}
        if RESULTS in names or ".hydra" in names:
            if folder != root or RESULTS in names:
                found.append(folder)
            return
        if depth >= max_depth:
            return
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.is_dir() and entry.name not in SKIP_DIRS and not entry.name.startswith("."):
                walk(Path(entry.path), depth + 1)

    walk(root, 0)
    return found


def load_run(folder: Path, root: Path) -> Run:
    rel = os.path.relpath(folder, root)
    path = folder / RESULTS
    if not path.exists():
        return Run(dir=folder, rel=rel, status="no results")
    try:
        data = json.loads(path.read_text())
        assert isinstance(data, dict)
    except Exception as err:  # half-written or foreign file
        return Run(dir=folder, rel=rel, status="no results", error=f"unreadable {RESULTS}: {err}")
    params = dict(data.get("params") or {})
    algorithm = data.get("algorithm") or params.get("algorithm")
    analysis = data.get("analysis") or {}
    return Run(
        dir=folder, rel=rel, status=str(data.get("status") or "running"),
        algorithm=str(algorithm).lower() if algorithm else None,
        params=params, overrides=list(data.get("overrides") or []),
        metrics=_scalar_metrics(data.get("metrics")), per_head=_per_head(analysis),
        images={str(k): str(v) for k, v in (analysis.get("images") or {}).items()},
        wall_time_s=data.get("wall_time_s"), peak_mem_mb=data.get("peak_mem_mb"),
        error=data.get("error"), config=data.get("config") or {},
    )


def load_sweep(root: Path) -> Tuple[List[Run], Dict[str, Any]]:
    """Every job of the sweep: folders found on disk plus planned jobs from sweep.json."""
    root = Path(root)
    runs = [load_run(folder, root) for folder in _find_job_dirs(root)]
    meta: Dict[str, Any] = {}
    sweep_file = root / "sweep.json"
    if sweep_file.exists():
        try:
            meta = json.loads(sweep_file.read_text())
        except ValueError:
            meta = {}
        by_rel = {os.path.normpath(r.rel): r for r in runs}
        known = set(by_rel)
        for job in meta.get("jobs", []):
            rel = job.get("dir")
            if not rel or os.path.isabs(rel):
                continue
            run = by_rel.get(os.path.normpath(rel))
            if run is not None and run.status == "no results" and job.get("status") == "failed":
                # e.g. a config error raised before the job could write results.json
                run.status, run.error = "failed", job.get("error")
            if os.path.normpath(rel) in known:
                continue
            known.add(os.path.normpath(rel))
            algorithm = next((o.split("=", 1)[1] for o in job.get("overrides", [])
                              if o.split("=", 1)[0] == "algorithm"), None)
            runs.append(Run(dir=root / rel, rel=rel, status="pending", algorithm=algorithm,
                            overrides=list(job.get("overrides", []))))
    return runs, meta


# --------------------------------------------------------------------------- aggregation


@dataclass
class Group:
    algorithm: str
    runs: List[Run]

    def stat(self, metric: str) -> Stat:
        return mean_ci(r.metrics.get(metric, float("nan")) for r in self.runs)

    def label(self) -> str:
        return self.runs[0].knob()


def finished(runs: Sequence[Run]) -> List[Run]:
    return [r for r in runs if r.status == "finished" and r.algorithm in ALGORITHMS]


def group_runs(runs: Sequence[Run]) -> List[Group]:
    groups: Dict[Tuple, Group] = {}
    for run in finished(runs):
        groups.setdefault(run.group_key(), Group(run.algorithm or "", [])).runs.append(run)
    return sorted(groups.values(), key=lambda g: (g.algorithm, g.stat(KL).mean))


def metric_names(runs: Sequence[Run]) -> List[str]:
    """The policy's metrics: eval/ ones first, then analysis/ ones. The reference's own metrics
    (eval/reference/*) are left out: the reference is the same model for every run; the plots
    show it as a star at KL 0. Timings (*time_s*) are cost, not findings: left out too."""
    names = {k for r in finished(runs) for k in r.metrics
             if not k.startswith("eval/reference/") and "time_s" not in k}
    return sorted(names, key=lambda k: (not k.startswith("eval/"), k))


def varying_params(runs: Sequence[Run]) -> List[str]:
    """Params (other than seed) that take more than one value among the finished runs."""
    values: Dict[str, set] = {}
    for r in finished(runs):
        for k, v in r.params.items():
            values.setdefault(k, set()).add(json.dumps(v, sort_keys=True, default=str))
    return sorted(k for k, v in values.items() if len(v) > 1 and k not in ("seed", "algorithm"))


@dataclass
class KLBin:
    lo: float
    hi: float
    runs: Dict[str, List[Run]]

    def label(self) -> str:
        return f"{self.lo:.2g}-{self.hi:.2g} nats"

    def stat(self, algorithm: str, metric: str) -> Stat:
        return mean_ci(r.metrics.get(metric, float("nan")) for r in self.runs.get(algorithm, []))


def kl_edges(kls: Sequence[float], bins: int, mode: str = "quantile") -> np.ndarray:
    kls = np.asarray(kls, dtype=float)
    if len(kls) == 0:
        return np.array([])
    lo, hi = float(kls.min()), float(kls.max())
    if mode == "log":
        positive = kls[kls > 0]
        lo_pos = float(positive.min()) if len(positive) else 1e-3
        edges = np.geomspace(lo_pos, max(hi, lo_pos * 1.0001), bins + 1)
        edges[0] = min(lo, edges[0])
    else:
        edges = np.quantile(kls, np.linspace(0, 1, bins + 1))
    return np.unique(edges)


def auto_bins(n_runs: int) -> int:
    """About four runs per bin (so a bin can hold both algorithms), between 1 and 6 bins."""
    return int(min(6, max(1, n_runs // 4)))


def matched_kl(runs: Sequence[Run], bins: Optional[int] = None, mode: str = "quantile") -> List[KLBin]:
    """KL bins holding runs of both algorithms; each run is placed by its own achieved KL.

    ``bins=None`` picks ``auto_bins`` of the finished runs."""
    done = [r for r in finished(runs) if KL in r.metrics]
    bins = bins or auto_bins(len(done))
    edges = kl_edges([r.metrics[KL] for r in done], bins, mode)
    if len(edges) < 2:
        return []
    out = [KLBin(float(edges[i]), float(edges[i + 1]), {a: [] for a in ALGORITHMS})
           for i in range(len(edges) - 1)]
    for run in done:
        i = int(np.clip(np.searchsorted(edges, run.metrics[KL], side="right") - 1, 0, len(out) - 1))
        out[i].runs[run.algorithm or ""].append(run)
    return [b for b in out if all(b.runs[a] for a in ALGORITHMS)]


def notable_differences(kl_bin: KLBin, metrics: Sequence[str]) -> List[str]:
    """One sentence per metric whose DPO and PPO intervals do not overlap in this bin."""
    sentences = []
    for metric in metrics:
        if metric == KL:
            continue
        stats = {a: kl_bin.stat(a, metric) for a in ALGORITHMS}
        if any(s.n < 2 or not math.isfinite(s.half) for s in stats.values()):
            continue
        if overlap(stats["dpo"], stats["ppo"]):
            continue
        hi_alg, lo_alg = sorted(ALGORITHMS, key=lambda a: -stats[a].mean)
        hi, lo = stats[hi_alg].mean, stats[lo_alg].mean
        if (hi > 0 and lo > 0) or (hi < 0 and lo < 0):
            big, small = (hi_alg, lo_alg) if abs(hi) >= abs(lo) else (lo_alg, hi_alg)
            ratio = abs(stats[big].mean) / abs(stats[small].mean)
            sentences.append(
                f"At KL {kl_bin.label()}, {LABELS[big]}'s {metric} is {ratio:.3g}x {LABELS[small]}'s "
                f"({stats[big].text()} vs {stats[small].text()}; intervals don't overlap).")
        else:
            sentences.append(
                f"At KL {kl_bin.label()}, {LABELS[hi_alg]}'s {metric} is higher than {LABELS[lo_alg]}'s "
                f"({stats[hi_alg].text()} vs {stats[lo_alg].text()}; intervals don't overlap).")
    return sentences


# --------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _err(half: float) -> Optional[float]:
    return half if math.isfinite(half) else None


def _reference_of(metric: str) -> Optional[str]:
    if metric.startswith("eval/policy/"):
        return "eval/reference/" + metric[len("eval/policy/"):]
    return None


def plot_frontier(groups: Sequence[Group], runs: Sequence[Run], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    for algorithm in ALGORITHMS:
        mine = [g for g in groups if g.algorithm == algorithm]
        if not mine:
            continue
        xs = [r.metrics.get(KL, np.nan) for g in mine for r in g.runs]
        ys = [r.metrics.get(REWARD, np.nan) for g in mine for r in g.runs]
        ax.scatter(xs, ys, s=10, alpha=0.25, color=COLORS[algorithm])
        for i, g in enumerate(mine):
            x, y = g.stat(KL), g.stat(REWARD)
            ax.errorbar(x.mean, y.mean, xerr=_err(x.half), yerr=_err(y.half), fmt="o", capsize=3,
                        color=COLORS[algorithm],
                        label=f"{LABELS[algorithm]} ({len(mine)} configs, {sum(len(g.runs) for g in mine)} runs)"
                        if i == 0 else None)
            ax.annotate(g.label(), (x.mean, y.mean), textcoords="offset points", xytext=(4, 4), fontsize=7,
                        color=COLORS[algorithm])
    ref = mean_ci(r.metrics.get(REF_REWARD, np.nan) for r in finished(runs))
    if ref.n:
        ax.errorbar(0.0, ref.mean, yerr=_err(ref.half), fmt="*", markersize=12, color="black", capsize=3,
                    label="reference (KL 0)")
    ax.set_xlabel("KL(policy || reference) on test prefixes, nats")
    ax.set_ylabel("test reward (eval/policy/reward_mean)")
    ax.set_title("Reward-KL frontier (mean and 95% interval over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_metrics_vs_kl(groups: Sequence[Group], runs: Sequence[Run], metrics: Sequence[str],
                       folder: Path, per_page: int = 24, cols: int = 4) -> List[Path]:
    plt = _pyplot()
    metrics = [m for m in metrics if m != KL]
    paths: List[Path] = []
    for page in range(0, len(metrics), per_page):
        chunk = metrics[page:page + per_page]
        rows = math.ceil(len(chunk) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(cols * 3.4, rows * 2.6), squeeze=False)
        for ax, metric in zip(axes.flat, chunk):
            for algorithm in ALGORITHMS:
                pts = [(g.stat(KL), g.stat(metric)) for g in groups if g.algorithm == algorithm]
                pts = [(x, y) for x, y in pts if y.n and x.n]
                if not pts:
                    continue
                ax.errorbar([x.mean for x, _ in pts], [y.mean for _, y in pts],
                            xerr=[0 if not math.isfinite(x.half) else x.half for x, _ in pts],
                            yerr=[0 if not math.isfinite(y.half) else y.half for _, y in pts],
                            fmt="o", markersize=3, capsize=2, color=COLORS[algorithm], label=LABELS[algorithm])
            ref_key = _reference_of(metric)
            if ref_key:
                ref = mean_ci(r.metrics.get(ref_key, np.nan) for r in finished(runs))
                if ref.n:
                    ax.plot([0], [ref.mean], "*", color="black", markersize=8, label="reference")
            ax.set_title(metric, fontsize=7)
            ax.tick_params(labelsize=6)
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(chunk):]:
            ax.axis("off")
        handles, labels = axes.flat[0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="upper right", fontsize=8)
        fig.supxlabel("achieved KL(policy || reference), nats", fontsize=9)
        # fixed margins: tight_layout costs seconds per page and a sweep has ~10 pages
        fig.subplots_adjust(left=0.06, right=0.9, bottom=0.5 / (rows * 2.6), top=1 - 0.35 / (rows * 2.6),
                            wspace=0.3, hspace=0.45)
        path = folder / ("metrics_vs_kl.png" if page == 0 else f"metrics_vs_kl_{page // per_page + 1}.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def _is_divergence(key: str) -> bool:
    """A weight/bias divergence scalar: analysis/weights/*, or any analysis key naming a mean
    squared difference (msd) or a divergence; counts, timings and ratios are not."""
    k = key.lower()
    if not k.startswith("analysis/") or any(x in k for x in ("time_s", "num_", "ratio")):
        return False
    return k.startswith("analysis/weights/") or "msd" in k or "diverg" in k


def _bars(ax, names: Sequence[str], series: Dict[str, Sequence[float]], colors: Dict[str, str]) -> None:
    width = 0.8 / max(1, len(series))
    x = np.arange(len(names))
    for i, (label, values) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=label, color=colors.get(label))
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)


def plot_compare(a: Run, b: Run, folder: Path) -> Dict[str, Any]:
    """The seed paper's side-by-side comparisons of two runs. Returns what was drawn."""
    plt = _pyplot()
    la, lb = f"A: {a.label()}", f"B: {b.label()}"
    colors = {la: "tab:green", lb: "tab:purple", "reference": "grey"}
    out: Dict[str, Any] = {"images": {}, "notes": []}

    # gradient / binary loss, with the reference
    losses = ["gradient_loss", "binary_loss"]
    if any(f"eval/policy/{l}" in r.metrics for r in (a, b) for l in losses):
        fig, ax = plt.subplots(figsize=(6, 4))
        _bars(ax, [l.replace("_", " ") for l in losses], {
            "reference": [a.metrics.get(f"eval/reference/{l}", b.metrics.get(f"eval/reference/{l}", np.nan)) for l in losses],
            la: [a.metrics.get(f"eval/policy/{l}", np.nan) for l in losses],
            lb: [b.metrics.get(f"eval/policy/{l}", np.nan) for l in losses],
        }, colors)
        ax.set_title("Test losses (lower is better)")
        fig.tight_layout()
        fig.savefig(folder / "compare_losses.png", dpi=110)
        plt.close(fig)
        out["images"]["losses"] = "compare_losses.png"
    else:
        out["notes"].append("no gradient/binary loss metrics in either run")

    # divergence from the reference: weights vs biases
    keys = sorted(k for k in {k for r in (a, b) for k in r.metrics} if _is_divergence(k))
    leaf = {k: k.rsplit("/", 1)[-1].lower() for k in keys}
    weights = [k for k in keys if "weight" in leaf[k] and "bias" not in leaf[k]]
    biases = [k for k in keys if "bias" in leaf[k] and "weight" not in leaf[k]]
    panels = [("weights", weights), ("biases", biases)]
    rest = [k for k in keys if k not in weights and k not in biases]
    if rest:
        panels.append(("other", rest))
    panels = [(t, ks) for t, ks in panels if ks]
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
        for ax, (title, ks) in zip(axes.flat, panels):
            short = [k.split("/", 2)[-1] for k in ks]
            _bars(ax, short, {la: [a.metrics.get(k, np.nan) for k in ks],
                              lb: [b.metrics.get(k, np.nan) for k in ks]}, colors)
            ax.set_title(f"divergence from reference: {title}", fontsize=9)
        fig.tight_layout()
        fig.savefig(folder / "compare_divergence.png", dpi=110)
        plt.close(fig)
        out["images"]["divergence"] = "compare_divergence.png"
    else:
        out["notes"].append("no divergence metrics (analysis/weights/*, *msd*, *diverg*) in either run")

    # per-head heat maps (ablations, head detection, ...): A, B and B - A on one colour scale
    for key in sorted(set(a.per_head) & set(b.per_head)):
        ha, hb = a.per_head[key], b.per_head[key]
        if ha.shape != hb.shape:
            out["notes"].append(f"{key}: shapes differ ({ha.shape} vs {hb.shape})")
            continue
        vmin, vmax = float(np.nanmin([ha, hb])), float(np.nanmax([ha, hb]))
        diff = hb - ha
        dmax = float(np.nanmax(np.abs(diff))) or 1.0
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
        for ax, data, title, kwargs in (
                (axes[0], ha, la, dict(vmin=vmin, vmax=vmax, cmap="viridis")),
                (axes[1], hb, lb, dict(vmin=vmin, vmax=vmax, cmap="viridis")),
                (axes[2], diff, "B - A", dict(vmin=-dmax, vmax=dmax, cmap="RdBu_r"))):
            im = ax.imshow(data, aspect="auto", **kwargs)
            ax.set_title(title, fontsize=8)
            ax.set_xlabel("head", fontsize=7)
            ax.set_ylabel("layer", fontsize=7)
            if data.shape[1] <= 32:
                ax.set_xticks(range(data.shape[1]))
            if data.shape[0] <= 32:
                ax.set_yticks(range(data.shape[0]))
            ax.tick_params(labelsize=6)
            fig.colorbar(im, ax=ax, fraction=0.046)
        fig.suptitle(key, fontsize=9)
        fig.tight_layout()
        name = "compare_" + "".join(c if c.isalnum() else "_" for c in key).strip("_") + ".png"
        fig.savefig(folder / name, dpi=100)
        plt.close(fig)
        out["images"][key] = name
    return out


# --------------------------------------------------------------------------- the report


def resolve_job(token: str, root: Path, runs: Sequence[Run]) -> Run:
    """A job named by its folder (absolute, relative to the cwd or to the sweep) or by a
    unique substring of its folder name."""
    for candidate in (Path(token), root / token):
        if (candidate / RESULTS).exists():
            candidate = candidate.resolve()
            for r in runs:
                if r.dir.resolve() == candidate:
                    return r
            return load_run(candidate, root)
    matches = [r for r in runs if token in r.rel and (r.dir / RESULTS).exists()]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise SystemExit(f"--compare: no job folder with results.json matches {token!r} under {root}")
    raise SystemExit(f"--compare: {token!r} matches {len(matches)} jobs: "
                     + ", ".join(r.rel for r in matches[:8]))


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _last_line(text: Any) -> str:
    text = str(text or "").strip()
    return text.splitlines()[-1][:200] if text else ""


def write_runs_csv(runs: Sequence[Run], metrics: Sequence[str], path: Path) -> Tuple[List[str], List[List[Any]]]:
    params = sorted({k for r in runs for k in r.params})
    header = ["job", "status", "algorithm"] + params + list(metrics) + ["wall_time_s", "peak_mem_mb", "error"]
    rows = [[r.rel, r.status, r.algorithm or ""] + [r.params.get(p, "") for p in params]
            + [r.metrics.get(m, "") for m in metrics]
            + [r.wall_time_s if r.wall_time_s is not None else "", r.peak_mem_mb if r.peak_mem_mb is not None else "",
               _last_line(r.error)] for r in runs]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return header, rows


def build_report(root: Path, compare: Optional[Sequence[str]] = None, bins: Optional[int] = None,
                 bin_mode: str = "quantile", out: Optional[Path] = None) -> Dict[str, Any]:
    """Write the report; returns the summary (also saved as summary.json)."""
    root = Path(root)
    if not root.is_dir():
        raise SystemExit(f"no such sweep folder: {root}")
    out = Path(out) if out else root / "report"
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob("metrics_vs_kl*.png"), *out.glob("compare_*.png")]:  # from an earlier report
        stale.unlink()
    runs, meta = load_sweep(root)
    pair = [resolve_job(t, root, runs) for t in compare] if compare else []
    name = meta.get("name") or next((r.config.get("name") for r in runs if r.config.get("name")), root.name)
    done = finished(runs)
    groups = group_runs(runs)
    metrics = metric_names(runs)
    counts = {s: sum(r.status == s for r in runs) for s in ("finished", "failed", "running", "no results", "pending")}
    other = len(runs) - sum(counts.values())
    wall = sum(float(r.wall_time_s) for r in runs if isinstance(r.wall_time_s, (int, float)))
    mems = [float(r.peak_mem_mb) for r in runs if isinstance(r.peak_mem_mb, (int, float))]
    md: List[str] = [f"# Sweep report: {name}", "", f"Sweep folder: `{root}`", ""]

    # progress & cost
    md += ["## Progress and cost", ""]
    md.append(f"{len(runs)} jobs: {counts['finished']} finished, {counts['failed']} failed, "
              f"{counts['running']} running, {counts['no results']} started without results, "
              f"{counts['pending']} not started" + (f", {other} other" if other else "") + ".")
    md.append("")
    md.append(f"Compute so far: {wall:.0f} s of job wall time ({wall / 3600:.2f} h) in total; "
              f"peak memory of the largest job {max(mems):.0f} MB." if mems else
              f"Compute so far: {wall:.0f} s of job wall time ({wall / 3600:.2f} h) in total.")
    md.append("")
    unfinished = [r for r in runs if r.status != "finished"]
    if unfinished:
        md += ["Jobs without finished results (ignored below):", ""]
        md.append(_md_table(["job", "status", "error"],
                            [[f"`{r.rel}`", r.status, _last_line(r.error)] for r in unfinished]))
        md.append("")
    if not done:
        md += ["No finished jobs yet.", ""]

    images: Dict[str, Path] = {}
    bins_out: List[KLBin] = []
    if done:
        # frontier
        plot_frontier(groups, runs, out / "frontier.png")
        images["frontier"] = out / "frontier.png"
        md += ["## Reward-KL frontier", "",
               "Test reward against KL to the reference, per configuration (params minus seed): mean "
               "and 95% t-interval over seeds on both axes; faint dots are single runs; the star is "
               "the reference policy at KL 0.", "", "![frontier](frontier.png)", ""]
        vary = [k for k in varying_params(runs) if k not in ("beta", "kl_target")]
        extra = any(g.runs[0].extra_overrides() for g in groups)
        rows = []
        for g in groups:
            p = g.runs[0].params
            rows.append([LABELS.get(g.algorithm, g.algorithm), g.label()] + [p.get(k, "") for k in vary]
                        + ([" ".join(g.runs[0].extra_overrides())] if extra else [])
                        + [len(g.runs), g.stat(REWARD).text(), g.stat(KL).text()])
        md.append(_md_table(["algorithm", "knob"] + vary + (["other overrides"] if extra else [])
                            + ["seeds", "reward", "KL (nats)"], rows))
        md.append("")
        # metrics vs KL
        pages = plot_metrics_vs_kl(groups, runs, metrics, out)
        for i, p in enumerate(pages):
            images[p.stem] = p
        md += ["## Every metric against achieved KL", "",
               "One panel per metric (eval/ then analysis/), DPO and PPO configurations at their "
               "achieved KL; mean and 95% interval over seeds.", ""]
        md += [f"![metrics vs KL]({p.name})" for p in pages] + [""]
        # matched KL
        n_bins = bins or auto_bins(len([r for r in finished(runs) if KL in r.metrics]))
        bins_out = matched_kl(runs, n_bins, bin_mode)
        md += ["## DPO vs PPO at matched KL", "",
               f"Runs binned by their own achieved KL ({bin_mode} bins, {n_bins} asked); only bins with "
               "runs of both algorithms are shown; each cell is the mean ± 95% interval over the runs "
               "in the bin (no interval with one run).", ""]
        if not bins_out:
            md += ["No KL bin holds runs of both algorithms yet.", ""]
        for b in bins_out:
            nd, npp = len(b.runs["dpo"]), len(b.runs["ppo"])
            md += [f"### KL {b.label()} (DPO: {nd} runs, PPO: {npp} runs)", ""]
            rows = []
            for m in [KL] + [m for m in metrics if m != KL]:
                sd, sp = b.stat("dpo", m), b.stat("ppo", m)
                if not (sd.n and sp.n):  # measured for one algorithm only: nothing to compare
                    continue
                ratio = f"{sp.mean / sd.mean:.3g}" if sd.n and sp.n and sd.mean != 0.0 else ""
                apart = "" if sd.n < 2 or sp.n < 2 else ("yes" if overlap(sd, sp) else "**no**")
                rows.append([m, sd.text(), sp.text(), ratio, apart])
            md.append(_md_table(["metric", "DPO", "PPO", "PPO / DPO", "intervals overlap"], rows))
            md.append("")
            sentences = notable_differences(b, metrics)
            md += [f"- {s}" for s in sentences] if sentences else \
                ["No metric differs beyond the 95% intervals in this bin" +
                 (" (intervals need at least two runs per algorithm)." if min(nd, npp) < 2 else ".")]
            md.append("")

    # compare
    compare_out: Dict[str, Any] = {}
    if pair:
        a, b = pair
        compare_out = plot_compare(a, b, out)
        md += ["## Two runs side by side", "", f"- A: `{a.rel}` ({a.label()}, {a.status})",
               f"- B: `{b.rel}` ({b.label()}, {b.status})", ""]
        for key, img in compare_out["images"].items():
            md += [f"### {key}", "", f"![{key}]({img})", ""]
            images[Path(img).stem] = out / img
        for note in compare_out["notes"]:
            md.append(f"- {note}")
        keys = sorted(set(a.metrics) | set(b.metrics), key=lambda k: (not k.startswith("eval/"), k))
        md += ["", _md_table(["metric", "A", "B", "B / A"],
                             [[k, f"{a.metrics.get(k, float('nan')):.4g}", f"{b.metrics.get(k, float('nan')):.4g}",
                               f"{b.metrics[k] / a.metrics[k]:.3g}" if k in a.metrics and k in b.metrics and a.metrics[k] else ""]
                              for k in keys]), ""]
        shared_images = sorted(set(a.images) | set(b.images))
        if shared_images:
            md += ["Analysis images of the two runs:", "", "| image | A | B |", "|---|---|---|"]
            for key in shared_images:
                cells = []
                for r in (a, b):
                    img = r.images.get(key)
                    cells.append(f"![{key}]({os.path.relpath(r.dir / img, out)})" if img else "–")
                md.append(f"| {key} | {cells[0]} | {cells[1]} |")
            md.append("")

    header, rows = write_runs_csv(runs, metrics, out / "runs.csv")
    md += ["## Files", "", "- `runs.csv`: one row per job (status, params, metrics)",
           "- `summary.json`: counts, cost, per-configuration means, matched-KL bins", ""]
    (out / "report.md").write_text("\n".join(md))

    summary = {
        "name": name, "sweep_dir": str(root), "counts": counts, "jobs": len(runs),
        "wall_time_s": wall, "peak_mem_mb": max(mems) if mems else None,
        "failed": [{"job": r.rel, "error": _last_line(r.error)} for r in runs if r.status == "failed"],
        "groups": [{"algorithm": g.algorithm, "params": {k: v for k, v in g.runs[0].params.items() if k != "seed"},
                    "overrides": g.runs[0].extra_overrides(), "seeds": [r.seed for r in g.runs],
                    "metrics": {m: vars(g.stat(m)) for m in metrics}} for g in groups],
        "matched_kl": [{"lo": b.lo, "hi": b.hi, "n": {a: len(b.runs[a]) for a in ALGORITHMS},
                        "metrics": {m: {a: vars(b.stat(a, m)) for a in ALGORITHMS} for m in metrics},
                        "notable": notable_differences(b, metrics)} for b in bins_out],
        "images": {k: p.name for k, p in images.items()},
        "compare": compare_out,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    summary["_runs_table"] = (header, rows)
    summary["_runs"] = runs
    return summary


def log_to_wandb(summary: Dict[str, Any], out: Path, mode: str = "offline") -> Optional[str]:
    """One sweep-level W&B run (job_type report, group = sweep name) with the plots and tables."""
    import wandb

    runs: List[Run] = summary["_runs"]
    logger = next((r.config.get("logger") for r in runs if isinstance(r.config.get("logger"), dict)), {}) or {}
    run = wandb.init(project=logger.get("project") or "dpo-ppo", entity=logger.get("entity"),
                     group=summary["name"], job_type="report", name=f"{summary['name']}-report",
                     dir=str(out), mode=mode,
                     config={"sweep_dir": summary["sweep_dir"], "jobs": summary["jobs"]})
    try:
        header, rows = summary["_runs_table"]
        data: Dict[str, Any] = {"runs": wandb.Table(columns=header, data=[[str(c) for c in r] for r in rows])}
        mk_rows = []
        for b in summary["matched_kl"]:
            for m, per in b["metrics"].items():
                mk_rows.append([f"{b['lo']:.3g}-{b['hi']:.3g}", m, per["dpo"]["mean"], per["dpo"]["half"],
                                per["ppo"]["mean"], per["ppo"]["half"]])
        data["matched_kl"] = wandb.Table(columns=["kl_bin", "metric", "dpo_mean", "dpo_ci95", "ppo_mean", "ppo_ci95"],
                                         data=mk_rows)
        for key, name in summary["images"].items():
            data[f"plots/{key}"] = wandb.Image(str(out / name))
        run.log(data)
        run.summary.update({f"jobs/{k.replace(' ', '_')}": v for k, v in summary["counts"].items()})
        run.summary["cost/wall_time_s"] = summary["wall_time_s"]
        if summary["peak_mem_mb"] is not None:
            run.summary["cost/peak_mem_mb"] = summary["peak_mem_mb"]
        return str(Path(run.dir).parent)
    finally:
        run.finish()


def _wandb_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("wandb") is not None


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="dpo-ppo-report", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path, help="sweep folder, e.g. multirun/confound")
    parser.add_argument("--compare", nargs=2, metavar=("JOB_A", "JOB_B"),
                        help="two job folders (path, or a unique part of the folder name) to compare "
                             "as in the paper: losses, divergence, per-head heat maps")
    parser.add_argument("--bins", type=int, default=None,
                        help="KL bins for the matched-KL table (default: about 4 runs a bin, 1-6 bins)")
    parser.add_argument("--bin-mode", choices=("quantile", "log"), default="quantile",
                        help="quantile bins (equal runs per bin) or log-spaced KL bins")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default PATH/report)")
    parser.add_argument("--wandb", action=argparse.BooleanOptionalAction, default=None,
                        help="log the report as a W&B run (default: when wandb is installed)")
    parser.add_argument("--wandb-mode", choices=("offline", "online"), default="offline")
    args = parser.parse_args(argv)
    if args.bins is not None and args.bins < 1:
        parser.error("--bins must be >= 1")
    summary = build_report(args.path, compare=args.compare, bins=args.bins, bin_mode=args.bin_mode, out=args.out)
    out = Path(args.out) if args.out else Path(args.path) / "report"
    c = summary["counts"]
    print(f"{summary['name']}: {summary['jobs']} jobs ({c['finished']} finished, {c['failed']} failed, "
          f"{c['running']} running, {c['no results']} without results, {c['pending']} not started)")
    use_wandb = _wandb_available() if args.wandb is None else args.wandb
    if use_wandb:
        try:
            run_dir = log_to_wandb(summary, out, args.wandb_mode)
            print(f"W&B {args.wandb_mode} run: {run_dir}")
        except Exception as err:  # the report itself is written; W&B is a copy of it
            print(f"W&B logging failed ({err!r}); the report is still in {out}", file=sys.stderr)
    print(f"report: {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
