"""The report's figures: frontier, training curves, one figure per claim, the all-metrics screen
and the --compare side-by-side plots. Saving goes through the analysis suite's helper."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from dpo_ppo import results as R
from dpo_ppo.analysis.plots import plt, save
from dpo_ppo.report import arms, stats
from dpo_ppo.report.facets import facet_value
from dpo_ppo.report.render import verdict_where
from dpo_ppo.report.verdicts import ClaimRow
from dpo_ppo.report.load import LABELS, SeedGroup, Run, finished

COLORS = {"dpo": "tab:blue", "ppo": "tab:orange", "rloo": "tab:green", "grpo": "tab:red"}  # arms: report.arms.ARM_COLORS
MARKERS = "osD^vP*X"


def _err(half: float) -> Optional[float]:
    return half if math.isfinite(half) else None


def _place_labels(fig, ax, items: Sequence[tuple]) -> None:
    """Annotate (x, y, text, color) points so that no two labels overlap: each label starts just
    above-right of its point and moves up until it clears the ones already placed."""
    from matplotlib.text import Text

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    placed = []
    for x, y, text, color in sorted(items, key=lambda t: (t[1], t[0])):
        ann = ax.annotate(text, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7, color=color,
                          bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.7),
                          arrowprops=dict(arrowstyle="-", color=color, lw=0.4, alpha=0.6, shrinkA=0, shrinkB=2))
        height = Text.get_window_extent(ann, renderer).height * 72.0 / fig.dpi + 1
        inside = ax.get_window_extent(renderer)
        # candidate offsets: just above-right, then alternately further down and up
        for k in range(16):
            dy = 3 + ((k + 1) // 2) * height * (1 if k % 2 == 0 else -1)
            ann.xyann = (4, dy)
            ann.update_positions(renderer)
            box = Text.get_window_extent(ann, renderer)  # the text alone, not its leader line
            if (box.y0 >= inside.y0 and box.y1 <= inside.y1
                    and not any(box.overlaps(other) for other in placed)):
                break
        placed.append(Text.get_window_extent(ann, renderer))


def facet_tag(config: SeedGroup, split: Sequence[str]) -> str:
    run = config.runs[0]
    return ", ".join(f"{k}={facet_value(run, k)}" for k in split if facet_value(run, k) is not None)


LOG_KL_SPAN = 20.0  # runs' KL spread wider than this (largest / smallest above 0): a log KL axis


def kl_axis(ax, xs: Sequence[float]) -> str:
    """The KL axis of a frontier: linear from 0, or, when the runs' KL spans more than
    ``LOG_KL_SPAN`` times (one arm far out, such as IPO's 77 nats beside DPO's 1-10, would squeeze
    every other run into the left edge), symmetric-log: linear below the power of ten under the
    smallest run's KL (the reference stays at 0), logarithmic above.  Sets the label and limits;
    returns the scale."""
    xs = [x for x in xs if math.isfinite(x)]
    positive = [x for x in xs if x > 0]
    if positive and max(positive) / min(positive) > LOG_KL_SPAN:
        low = 10.0 ** math.floor(math.log10(min(positive)))  # a power of ten: ticks 0, low, 10 low, ...
        ax.set_xscale("symlog", linthresh=low, linscale=1.0)
        ax.set_xlim(-0.3 * low, max(positive) * 1.6)
        ax.set_xlabel("KL(policy || reference) on test prefixes, nats (log scale above "
                      f"{low:g}, linear below)")
        return "symlog"
    if len(xs) > 1:
        dx = (max(xs) - min(xs)) or 1.0
        ax.set_xlim(min(xs) - 0.08 * dx, max(xs) + 0.15 * dx)
    ax.set_xlabel("KL(policy || reference) on test prefixes, nats")
    return "linear"


def plot_frontier(configs: Sequence[SeedGroup], runs: Sequence[Run], path: Path, split: Sequence[str] = ()) -> str:
    """Reward against KL per configuration (mean and 95% t-interval over seeds), faint single
    runs, the reference at KL 0; markers by facet when the sweep has several."""
    fig, ax = plt.subplots(figsize=(7.5, 5))
    tags = sorted({facet_tag(c, split) for c in configs})
    labels = []
    for algorithm in arms.arms_present(runs):  # every arm (report.arms): DPO, online DPO, PPO, RLOO, ...
        mine = [c for c in configs if arms.arm_of(c.runs[0]) == algorithm]
        if not mine:
            continue
        color = arms.ARM_COLORS.get(algorithm, "tab:gray")
        xs = [r.kl for c in mine for r in c.runs]
        ys = [r.metrics.get(R.REWARD, np.nan) for c in mine for r in c.runs]
        ax.scatter(xs, ys, s=10, alpha=0.25, color=color)
        for tag in tags:
            group = sorted((c for c in mine if facet_tag(c, split) == tag),
                           key=lambda c: stats.mean_ci(r.kl for r in c.runs).mean)
            if not group:
                continue
            marker = MARKERS[tags.index(tag) % len(MARKERS)]
            pts = [(stats.mean_ci(r.kl for r in c.runs), stats.mean_ci(c.values(R.REWARD)), c) for c in group]
            ax.plot([p[0].mean for p in pts], [p[1].mean for p in pts], "-", color=color, alpha=0.4, lw=1)
            for i, (x, y, c) in enumerate(pts):
                ax.errorbar(x.mean, y.mean, xerr=_err(x.half), yerr=_err(y.half), fmt=marker, capsize=3,
                            color=color, markersize=5,
                            label=(f"{arms.label(algorithm)}" + (f" {tag}" if tag else "")
                                   + f" ({len(group)} configs, {sum(len(g.runs) for g in group)} runs)")
                            if i == 0 else None)
                labels.append((x.mean, y.mean, c.label(), color))
    ref = stats.mean_ci(r.metrics.get(R.REF_REWARD, np.nan) for r in finished(runs))
    if ref.n:
        ax.errorbar(0.0, ref.mean, yerr=_err(ref.half), fmt="*", markersize=12, color="black", capsize=3,
                    label="reference (KL 0)")
    ax.set_ylabel("test reward (mean p positive)")
    ax.set_title("Reward-KL frontier (mean and 95% interval over seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    # limits from the runs themselves: a t-interval over two seeds (t = 12.7) must not shrink them
    xs = [r.kl for r in finished(runs) if math.isfinite(r.kl)] + [0.0]
    ys = [r.metrics[R.REWARD] for r in finished(runs) if R.REWARD in r.metrics] + ([ref.mean] if ref.n else [])
    kl_axis(ax, xs)
    if len(xs) > 1 and ys:
        dy = (max(ys) - min(ys)) or 0.1
        ax.set_ylim(min(ys) - 0.12 * dy, max(ys) + 0.15 * dy)
    _place_labels(fig, ax, labels)
    return save(fig, path)


def plot_gold(configs: Sequence[SeedGroup], runs: Sequence[Run], path: Path, split: Sequence[str] = ()
              ) -> Optional[str]:
    """Proxy (the classifier the policies were trained against) and gold reward (``eval.gold``,
    never optimised) against KL, one panel per arm: per configuration the mean and 95%
    t-interval over seeds, joined in order of KL (one line per facet of ``split``, e.g. PPO at native
    and at matched compute, with the runs that stand in every facet on each), the reference at KL 0.
    Over-optimisation shows as the gold curve falling while the proxy's rises (Gao et al. 2023).
    None when no finished run has a gold reward."""
    done = [r for r in finished(runs) if R.GOLD_REWARD in r.metrics]
    if not done:
        return None
    # one panel per arm (report.arms: offline DPO, online DPO and IPO apart, as on the frontier)
    arm_of = {id(c): arms.arm_of(c.runs[0]) for c in configs if c.runs}
    algorithms = [a for a in arms.arms_present(runs)
                  if any(R.GOLD_REWARD in r.metrics for c in configs if arm_of.get(id(c)) == a for r in c.runs)]
    fig, axes = plt.subplots(1, len(algorithms), figsize=(5.5 * len(algorithms), 4.2), squeeze=False, sharey=True)
    ref = {key: stats.mean_ci(r.metrics.get(key, np.nan) for r in done) for key in (R.REF_REWARD, R.REF_GOLD_REWARD)}
    for ax, algorithm in zip(axes[0], algorithms):
        color = arms.ARM_COLORS.get(algorithm, "tab:gray")
        mine = [c for c in configs if arm_of.get(id(c)) == algorithm]
        tags = sorted({facet_tag(c, split) for c in mine} - {""}) or [""]
        for t, tag in enumerate(tags):
            group = sorted((c for c in mine if facet_tag(c, split) in (tag, "")),
                           key=lambda c: stats.mean_ci(r.kl for r in c.runs).mean)
            for key, ref_key, style, name in ((R.REWARD, R.REF_REWARD, "-", "proxy (trained classifier)"),
                                              (R.GOLD_REWARD, R.REF_GOLD_REWARD, "--", "gold (never optimised)")):
                pts = [(stats.mean_ci(r.kl for r in c.runs), stats.mean_ci(c.values(key))) for c in group]
                pts = [(x, y) for x, y in pts if y.n and math.isfinite(x.mean)]
                if ref[ref_key].n:
                    pts = [(stats.Stat(0.0, float("nan"), ref[ref_key].n), ref[ref_key])] + pts
                if not pts:
                    continue
                marker = ("o", "s")[key == R.GOLD_REWARD] if len(tags) == 1 else MARKERS[t % len(MARKERS)]
                ax.plot([x.mean for x, _ in pts], [y.mean for _, y in pts], style + marker, color=color,
                        alpha=(1.0 if key == R.REWARD else 0.7) * (1.0 if t == 0 else 0.8), markersize=5,
                        label=name + (f", {tag}" if len(tags) > 1 else ""), **({"lw": 1.0} if t else {}))
                for x, y in pts:
                    ax.errorbar(x.mean, y.mean, xerr=_err(x.half), yerr=_err(y.half), fmt="none", color=color,
                                capsize=2, alpha=0.5)
        ax.set_title(f"{arms.label(algorithm)}: proxy and gold reward along KL", fontsize=10)
        ax.set_xlabel("KL(policy || reference) on test prefixes, nats")
        ax.set_ylabel("test reward (mean p positive)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save(fig, path)


# training curves: per algorithm, (panel title, candidate train_log keys or a params key); the first
# two panels are the probe's (train.probe): DPO and PPO on the same prefixes at the same cadence
_PROBE_PANELS = [("p positive (probe, 0-1)", (R.TRAIN_P_POSITIVE, "train/reward_mean")),
                 ("KL to the reference (probe, nats)", (R.TRAIN_KL,))]
TRAIN_PANELS = {
    "ppo": _PROBE_PANELS + [("KL coefficient", (R.KL_COEF,)), ("policy loss", (R.POLICY_LOSS,))],
    "dpo": _PROBE_PANELS + [("β (fixed)", ("param:beta",)), ("DPO loss (nats)", (R.TRL_LOSS, "train/loss"))],
    "rloo": _PROBE_PANELS + [("β (fixed)", ("param:beta",)), ("score on its samples (log-odds, nats)", (R.ROLLOUT_SCORE,))],
    "grpo": _PROBE_PANELS + [("β (fixed)", ("param:beta",)), ("score on its samples (log-odds, nats)", (R.ROLLOUT_SCORE,))],
}


def _aligned_rows(rows: Sequence[dict]):
    """(examples, row) of a train log, every row at the examples seen by the policy it measured.
    A PPO update row written before issue 34 (``train/kl_coef`` without ``train/rollout/kl``) sat
    at the count *after* its update: it is moved to the previous update's count (0 for the first)."""
    before = 0.0
    for row in rows:
        x = row.get(R.EXAMPLES, row.get("step"))
        if not isinstance(x, (int, float)):
            continue
        if R.KL_COEF in row and R.ROLLOUT_KL not in row:  # a legacy PPO row, measured before its update
            x, before = before, float(x)
        yield float(x), row


def _curve(config: SeedGroup, keys: Sequence[str]) -> Optional[tuple]:
    """Mean over the configuration's seeds of the first key logged, against examples."""
    per_x: Dict[float, List[float]] = {}
    for run in config.runs:
        for x, row in _aligned_rows(R.read_train_log(run.dir)):
            if keys[0].startswith("param:"):
                value = run.params.get(keys[0][6:])
            else:
                value = next((row[k] for k in keys if isinstance(row.get(k), (int, float))), None)
            if isinstance(value, (int, float)) and math.isfinite(value):
                per_x.setdefault(x, []).append(float(value))
    if not per_x:
        return None
    xs = sorted(per_x)
    return np.array(xs), np.array([np.mean(per_x[x]) for x in xs])


def plot_training(configs: Sequence[SeedGroup], path: Path, split: Sequence[str] = ()) -> Optional[str]:
    """Training curves per configuration (mean over seeds) against examples seen: one row of
    panels per algorithm. None when no job logged anything."""
    algorithms = [a for a in R.TRAINERS if any(c.algorithm == a for c in configs)]
    curves = {a: [(c, [_curve(c, keys) for _, keys in TRAIN_PANELS[a]]) for c in configs if c.algorithm == a]
              for a in algorithms}
    if not any(cv for a in algorithms for _, cvs in curves[a] for cv in cvs):
        return None
    fig, axes = plt.subplots(len(algorithms), 4, figsize=(13, 2.7 * len(algorithms)), squeeze=False)
    for row, a in enumerate(algorithms):
        cmap = plt.get_cmap(arms.ARM_CMAPS.get(a, "Greys"))
        n = len(curves[a])
        for i, (config, cvs) in enumerate(curves[a]):
            color = cmap(0.45 + 0.5 * i / max(1, n - 1))
            tag = facet_tag(config, split)
            for col, cv in enumerate(cvs):
                if cv is not None:
                    axes[row, col].plot(cv[0], cv[1], color=color, lw=1.2,
                                        label=f"{config.label()} {tag}".strip() + f" (n={len(config.runs)})")
        for col, (title, keys) in enumerate(TRAIN_PANELS[a]):
            ax = axes[row, col]
            ax.set_title(f"{LABELS[a]}: {title}", fontsize=9)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            if not ax.lines:
                ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="grey")
            if row == len(algorithms) - 1:
                ax.set_xlabel("examples seen by the measured policy", fontsize=8)
        handles, labels = axes[row, 0].get_legend_handles_labels()
        if not handles:
            handles, labels = axes[row, 3].get_legend_handles_labels()
        if handles:
            axes[row, 3].legend(handles, labels, fontsize=6, loc="best")
    fig.tight_layout()
    return save(fig, path)


# the report's over-training panels: title -> (results.OVER_TRAINING_TABLES table, column)
OVER_TRAINING_PANELS = {
    "weights: MSD from reference": ("weights_over_training", "msd_weights"),
    "biases: MSD from reference": ("weights_over_training", "msd_biases"),
    "previous-token heads: max |change|": ("heads_over_training", "previous_token_max_abs_change"),
    "duplicate-token heads: max |change|": ("heads_over_training", "duplicate_token_max_abs_change"),
    "induction heads: max |change|": ("heads_over_training", "induction_max_abs_change"),
    "attention to the sentiment word: max |change|": ("heads_over_training", "sentiment_attention_max_abs_change"),
}


def plot_over_training(configs: Sequence[SeedGroup], path: Path) -> Optional[str]:
    """The analyses at every snapshot (weights, head scores, attention to the sentiment word),
    per configuration (mean over seeds) against examples seen, both algorithms in each panel.
    None when no run has an over-training table."""
    curves = {title: [(c, c.over_training(*where)) for c in configs] for title, where in OVER_TRAINING_PANELS.items()}
    if not any(cv for per in curves.values() for _, cv in per):
        return None
    present = arms.arms_present([r for c in configs for r in c.runs])
    fig, axes = plt.subplots(2, 3, figsize=(13, 6), squeeze=False)
    for ax, (title, per) in zip(axes.flat, curves.items()):
        for a in present:  # every arm (report.arms)
            mine = [(c, cv) for c, cv in per if arms.arm_of(c.runs[0]) == a and cv]
            cmap = plt.get_cmap(arms.ARM_CMAPS.get(a, "Greys"))
            for i, (c, cv) in enumerate(mine):
                shade = 0.45 + 0.5 * (i + 1) / (len(mine) + 1)
                ax.plot(cv["examples"], cv["mean"], marker="o", ms=3, lw=1.2, color=cmap(shade),
                        label=f"{arms.label(a)} {c.label()}".strip())
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.set_xlabel("examples seen", fontsize=8)
        if not ax.lines:
            ax.text(0.5, 0.5, "not analysed", ha="center", va="center", transform=ax.transAxes, color="grey")
    handles, labels = next(((h, l) for h, l in (ax.get_legend_handles_labels() for ax in axes.flat) if h), ([], []))
    if handles:
        axes[0, 0].legend(handles, labels, fontsize=6, loc="best")
    fig.suptitle("Over training: each snapshot against the reference (0 examples)", fontsize=10)
    fig.tight_layout()
    return save(fig, path)


def plot_claim(rows: Sequence[ClaimRow], path: Path) -> Optional[str]:
    """One claim, a column per facet: top, its metric against KL per algorithm (runs; the joint
    fit's curve of each algorithm over the common KL range, shaded; the middle point with its
    intervals); bottom, PPO - DPO along the common range with its simultaneous 95% band (the
    margin dashed for "same"; each algorithm's band against its margin for "zero")."""
    rows = [r for r in rows if r.comparison is not None][:3]
    if not rows:
        return None
    fig, axes = plt.subplots(2, len(rows), figsize=(4.3 * len(rows), 5.6), squeeze=False)
    for col, row in enumerate(rows):
        ax, bx = axes[0][col], axes[1][col]
        comp, metric = row.comparison, row.metric
        pair = comp.pair
        for a in (pair[1], pair[0]):
            side = [r for r in row.facet.side(a) if metric in r.metrics and r.kl > 0]
            if not side:
                continue
            x = np.log([r.kl for r in side])
            y = np.array([r.metrics[metric] for r in side])
            ax.scatter(np.exp(x), y, s=14, alpha=0.6, color=COLORS.get(a), label=f"{LABELS.get(a, a)} ({len(side)} runs)")
        if comp.common:
            ax.axvspan(*comp.common, color="grey", alpha=0.12, lw=0)
        if comp.model is not None:  # the joint fit, over the common range where it compares
            grid = np.linspace(math.log(comp.common[0]), math.log(comp.common[1]), 40)
            curves = comp.curves(grid)
            for a in (pair[1], pair[0]):
                ax.plot(np.exp(grid), curves[a], color=COLORS.get(a), lw=1.5)
        for pt in comp.points:
            for a, dx in ((pair[1], 0.985), (pair[0], 1.015)):
                lo, hi = pt.fit_ci[a]
                if math.isfinite(lo):
                    ax.errorbar(pt.kl * dx, pt.fit[a], yerr=[[pt.fit[a] - lo], [hi - pt.fit[a]]], fmt="s",
                                color=COLORS.get(a), markersize=4, capsize=3, markeredgecolor="black")
        ax.set_ylabel(metric.split("/", 1)[-1], fontsize=7)
        ax.set_title(f"{row.facet.label()}: {row.verdict}", fontsize=8)
        ax.legend(fontsize=6)
        curve = comp.curve
        if curve is not None and len(curve.kl) > 1:
            if row.claim.kind == "zero":
                for a in row.claim.arms:
                    c = comp.arm_curves.get(a)
                    if c is not None:
                        bx.fill_between(c.kl, c.lo, c.hi, color=COLORS.get(a), alpha=0.25, lw=0)
                        bx.plot(c.kl, c.est, color=COLORS.get(a), lw=1.5, label=f"{LABELS.get(a, a)} (95% band)")
                bx.set_ylabel("value (0 = as the reference)", fontsize=7)
            else:
                bx.fill_between(curve.kl, curve.lo, curve.hi, color="purple", alpha=0.2, lw=0,
                                label="simultaneous 95% band")
                bx.plot(curve.kl, curve.est, color="purple", lw=1.5,
                        label=f"{LABELS.get(pair[0], pair[0])} - {LABELS.get(pair[1], pair[1])}")
                bx.set_ylabel("PPO - DPO" if tuple(pair) == ("ppo", "dpo") else "difference", fontsize=7)
            if row.margin is not None:
                bx.plot(curve.kl, row.margin.values, "k--", lw=0.8, label="margin")
                bx.plot(curve.kl, -np.asarray(row.margin.values), "k--", lw=0.8)
            bx.axhline(0.0, color="black", lw=0.6)
            bx.legend(fontsize=6)
            where = verdict_where(row)
            if where:
                bx.set_title(where[:110] + ("..." if len(where) > 110 else ""), fontsize=6)
        for a_ in (ax, bx):
            a_.set_xscale("log")
            a_.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            a_.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            a_.xaxis.set_minor_formatter(NullFormatter())
            a_.set_xlabel("KL to reference (nats, log scale)", fontsize=8)
            a_.tick_params(labelsize=7)
            a_.grid(alpha=0.3)
    fig.suptitle(f"{rows[0].claim.id} ({rows[0].claim.expectation()}): {rows[0].claim.text}"[:160], fontsize=8)
    fig.tight_layout()
    return save(fig, path)


def plot_all_metrics(table: Sequence[Dict[str, Any]], path: Path) -> Optional[str]:
    """Every metric's PPO - DPO at the middle of the common KL range, relative to the mean of the
    two fits, with its 95% interval; filled where BH q < 0.05."""
    rows = [r for r in table if r["effect"] is not None]
    if not rows:
        return None
    rows.sort(key=lambda r: (r["facet"], r["metric"]))
    scale = [0.5 * (abs(r["dpo"]) + abs(r["ppo"])) or 1.0 for r in rows]
    eff = np.array([r["effect"] / s for r, s in zip(rows, scale)])
    lo = np.array([(r["ci_lo"] if r["ci_lo"] is not None else np.nan) / s for r, s in zip(rows, scale)])
    hi = np.array([(r["ci_hi"] if r["ci_hi"] is not None else np.nan) / s for r, s in zip(rows, scale)])
    y = np.arange(len(rows))[::-1]
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.11 * len(rows)))
    ax.hlines(y, np.nan_to_num(lo, nan=0.0), np.nan_to_num(hi, nan=0.0), color="grey", lw=0.8)
    sig = np.array([r["q"] is not None and r["q"] < 0.05 for r in rows])
    ax.scatter(eff[sig], y[sig], s=10, color="black", zorder=3, label="BH q < 0.05")
    ax.scatter(eff[~sig], y[~sig], s=10, facecolors="white", edgecolors="black", zorder=3, label="q ≥ 0.05 or n < 2")
    ax.axvline(0, color="red", lw=0.6)
    multi = len({r["facet"] for r in rows}) > 1
    ax.set_yticks(y)
    ax.set_yticklabels([(f"[{r['facet']}] " if multi else "") + r["metric"] for r in rows], fontsize=4.5)
    ax.set_xlabel("(PPO - DPO) / mean of the two, at the middle of the common KL range", fontsize=8)
    ax.set_xlim(max(-3, np.nanmin(lo) - 0.1) if np.isfinite(lo).any() else -1,
                min(3, np.nanmax(hi) + 0.1) if np.isfinite(hi).any() else 1)
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=6, loc="lower right")
    ax.set_title("All metrics at matched KL (a screen, not a test: see the claims table)", fontsize=9)
    fig.tight_layout()
    return save(fig, path)


# --------------------------------------------------------------------------- --compare A B


def _is_divergence(key: str) -> bool:
    """A weight/bias divergence scalar: analysis/weights/*, or any analysis key naming a mean
    squared difference (msd) or a divergence; counts, timings and ratios are not."""
    k = key.lower()
    if not k.startswith(R.ANALYSIS) or any(x in k for x in ("time_s", "num_", "ratio")):
        return False
    return k.startswith(R.ANALYSIS + "weights/") or "msd" in k or "diverg" in k


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
    la, lb = f"A: {a.label()}", f"B: {b.label()}"
    colors = {la: "tab:green", lb: "tab:purple", "reference": "grey"}
    out: Dict[str, Any] = {"images": {}, "notes": []}

    losses = [R.GRADIENT_LOSS, R.BINARY_LOSS]
    if any(R.policy_metric(l) in r.metrics for r in (a, b) for l in losses):
        fig, ax = plt.subplots(figsize=(6, 4))
        _bars(ax, [l.replace("_", " ") for l in losses], {
            "reference": [a.metrics.get(R.reference_metric(l), b.metrics.get(R.reference_metric(l), np.nan)) for l in losses],
            la: [a.metrics.get(R.policy_metric(l), np.nan) for l in losses],
            lb: [b.metrics.get(R.policy_metric(l), np.nan) for l in losses],
        }, colors)
        ax.set_title("Test losses (lower is better)")
        save(fig, folder / "compare_losses.png")
        out["images"]["losses"] = "compare_losses.png"
    else:
        out["notes"].append("no gradient/binary loss metrics in either run")

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
            _bars(ax, short, {la: [a.metrics.get(k, np.nan) for k in ks], lb: [b.metrics.get(k, np.nan) for k in ks]},
                  colors)
            ax.set_title(f"divergence from reference: {title}", fontsize=9)
        save(fig, folder / "compare_divergence.png")
        out["images"]["divergence"] = "compare_divergence.png"
    else:
        out["notes"].append("no divergence metrics (analysis/weights/*, *msd*, *diverg*) in either run")

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
        name = "compare_" + "".join(c if c.isalnum() else "_" for c in key).strip("_") + ".png"
        save(fig, folder / name)
        out["images"][key] = name
    return out
