"""Making the report: read the sweep, compute every table, draw the figures, write the files.

``build_report`` is the steps in order; the words are ``report.render``'s, the numbers
``report.facets`` / ``report.estimator`` / ``report.verdicts``', the figures ``report.figures``'.
Bad input (no such folder, no jobs, a --compare job that names nothing or several) raises
``ReportError`` with one line; ``report.cli`` turns it into the command's exit.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from dpo_ppo import results as R
from dpo_ppo.report import arms, render, stats
from dpo_ppo.report.claims import CLAIMS, SAME_MARGIN
from dpo_ppo.report.estimator import ALPHA, N_BOOT, Comparison, compare
from dpo_ppo.report.facets import Facet, make_facets
from dpo_ppo.report.figures import (OVER_TRAINING_PANELS, plot_all_metrics, plot_claim, plot_compare, plot_frontier,
                                    plot_gold, plot_over_training, plot_training)
from dpo_ppo.report.load import (ALL_STATUSES, NO_RESULTS, Run, SeedGroup, configurations, finished, load_run,
                                 load_sweep, metric_names)
from dpo_ppo.report.verdicts import MIN_RUNS, MIN_SEEDS, ClaimRow, all_metrics_table, claims_table


class ReportError(ValueError):
    """Input the report cannot be made from, in one line naming what was wrong."""


@dataclass
class Report:
    """A written report: ``summary`` is what summary.json holds; the runs and the runs table it was
    made from go to W&B (``report.wandb_run``) and the dashboard as they are."""

    summary: Dict[str, Any]
    runs: List[Run]
    runs_table: Tuple[List[str], List[List[Any]]]  # runs.csv's header and rows
    out: Path  # the report folder


@dataclass
class Contents:
    """Everything report.md says, computed (``render.document`` puts it in words)."""

    root: Path
    out: Path
    name: str
    meta: Dict[str, Any]
    runs: List[Run]
    done: List[Run]
    configs: List[SeedGroup]
    metrics: List[str]
    counts: Dict[str, int]
    progress: str
    settings: Dict[str, Any]
    figures: bool
    facets: List[Facet] = field(default_factory=list)
    facet_notes: List[str] = field(default_factory=list)
    split: List[str] = field(default_factory=list)
    comparable: List[Facet] = field(default_factory=list)
    rows: List[ClaimRow] = field(default_factory=list)
    arms_present: Dict[str, int] = field(default_factory=dict)
    arm_sections: List[Tuple[str, str, str, List[ClaimRow]]] = field(default_factory=list)
    matched: List[Tuple[Facet, List[Comparison]]] = field(default_factory=list)
    all_metrics: List[Dict[str, Any]] = field(default_factory=list)
    config_spread: List[Tuple[stats.Stat, stats.Stat]] = field(default_factory=list)
    wall_time_s: float = 0.0
    peak_mem_mb: Optional[float] = None
    pair: List[Run] = field(default_factory=list)  # --compare JOB_A JOB_B
    drawn: Dict[str, Any] = field(default_factory=dict)  # plot_compare's
    images: Dict[str, str] = field(default_factory=dict)  # figure name -> file in ``out``
    alpha: float = ALPHA
    same_margin: float = SAME_MARGIN


def build_report(root: Path, compare: Optional[Sequence[str]] = None, out: Optional[Path] = None,
                 pool: Sequence[str] = (), min_runs: int = MIN_RUNS, min_seeds: int = MIN_SEEDS,
                 n_boot: int = N_BOOT, fdr: str = "bh", seed: int = 0, figures: bool = True,
                 compare_arms: Optional[Sequence[str]] = None) -> Report:
    """Write the report (report.md, runs.csv, matched_kl.csv, summary.json and the figures in
    ``out``, by default ROOT/report).  ``figures=False`` leaves the figures out (tables only, in a
    fraction of the time)."""
    root = Path(root)
    runs, meta = read_sweep(root)
    out = report_folder(root, out)
    settings = {"min_runs": min_runs, "min_seeds": min_seeds, "n_boot": n_boot, "fdr": fdr, "seed": seed,
                "pool": list(pool)}
    d = contents(root, out, runs, meta, settings, figures)
    d.pair = [resolve_job(t, root, runs) for t in compare] if compare else []
    claims_and_arms(d, tuple(compare_arms) if compare_arms else None)
    if d.done:
        draw_body(d)
        d.matched = matched(d.facets, n_boot, seed)
    if figures:
        draw_claims(d)
    d.all_metrics = all_metrics_table(runs, d.comparable, d.metrics, n_boot=min(n_boot, 400), seed=seed) \
        if d.comparable else []
    if d.all_metrics:
        write_csv_rows(out / "matched_kl.csv", list(d.all_metrics[0]), [list(r.values()) for r in d.all_metrics])
        if figures:
            draw(d, "all_metrics", plot_all_metrics(d.all_metrics, out / "all_metrics.png"))
    if d.pair:
        d.drawn = plot_compare(d.pair[0], d.pair[1], out)
        for img in d.drawn["images"].values():
            d.images[Path(img).stem] = img
    table = runs_table(runs, d.metrics)
    write_csv_rows(out / "runs.csv", *table)
    R.write_atomic(out / "report.md", render.document(d))
    summary = summary_of(d)
    R.write_atomic(out / "summary.json", json.dumps(summary, indent=1, default=str))
    return Report(summary, runs, table, out)


# --------------------------------------------------------------------------- the steps


def read_sweep(root: Path) -> Tuple[List[Run], Dict[str, Any]]:
    """The sweep's jobs and sweep.json (``load.load_sweep``); ReportError when there is none."""
    if root.is_file():
        raise ReportError(f"dpo-ppo-report: {root} is a file, not a sweep folder (give the folder a sweep "
                          f"wrote, e.g. multirun/NAME)")
    if not root.is_dir():
        raise ReportError(f"dpo-ppo-report: no such sweep folder: {root}")
    runs, meta = load_sweep(root)
    if not runs:  # nothing written, no W&B run: an empty report would look like a sweep with no results
        raise ReportError(f"dpo-ppo-report: {root} holds no jobs (no job folder with {R.RESULTS_FILE} or .hydra/, "
                          f"no {R.SWEEP_FILE}): nothing to report")
    return runs, meta


def report_folder(root: Path, out: Optional[Path]) -> Path:
    """The report folder, made, without the figures of an earlier report."""
    out = Path(out) if out else root / "report"
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.png"):  # from an earlier report
        stale.unlink()
    return out


def resolve_job(token: str, root: Path, runs: Sequence[Run]) -> Run:
    """A job named by its folder (absolute, relative to the cwd or to the sweep) or by a
    unique substring of its folder name."""
    for candidate in (Path(token), root / token):
        if (candidate / R.RESULTS_FILE).exists():
            candidate = candidate.resolve()
            for r in runs:
                if r.dir.resolve() == candidate:
                    return r
            return load_run(candidate, root)
    matches = [r for r in runs if token in r.rel and (r.dir / R.RESULTS_FILE).exists()]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ReportError(f"--compare: no job folder with results.json matches {token!r} under {root}")
    raise ReportError(f"--compare: {token!r} matches {len(matches)} jobs: " + ", ".join(r.rel for r in matches[:8]))


def sweep_name(root: Path, runs: Sequence[Run], meta: Dict[str, Any]) -> str:
    """The sweep's name: sweep.json's, else the jobs' config ``name``, else the folder's."""
    return meta.get("name") or next((r.config.get("name") for r in runs if r.config.get("name")), Path(root).name)


def contents(root: Path, out: Path, runs: List[Run], meta: Dict[str, Any], settings: Dict[str, Any],
             figures: bool) -> Contents:
    """What the sweep holds: its jobs, configurations, metrics, progress and cost."""
    counts = {s: sum(r.status == s for r in runs) for s in ALL_STATUSES}
    configs = configurations(runs)
    mems = [float(r.peak_mem_mb) for r in runs if isinstance(r.peak_mem_mb, (int, float))]
    spread = []
    for c in configs:
        ok = [r for r in c.runs if r not in c.diverged()]
        spread.append((stats.mean_ci(r.metrics.get(R.REWARD) for r in ok), stats.mean_ci(r.kl for r in ok)))
    return Contents(root=root, out=out, name=sweep_name(root, runs, meta), meta=meta, runs=runs, done=finished(runs),
                    configs=configs, metrics=metric_names(runs), counts=counts,
                    progress=render.progress_text(runs, counts), settings=settings, figures=figures,
                    config_spread=spread,
                    wall_time_s=sum(float(r.wall_time_s) for r in runs if isinstance(r.wall_time_s, (int, float))),
                    peak_mem_mb=max(mems) if mems else None)


def claims_and_arms(d: Contents, extra: Optional[Tuple[str, str]]) -> None:
    """The headline's facets and claims table (the dpo and ppo arms only: ``arms.headline_runs``;
    online DPO is never pooled into DPO), then the "Data or loss?" pairs."""
    s = d.settings
    d.facets, d.facet_notes = make_facets(arms.headline_runs(d.runs), s["pool"])
    d.split = list(d.facets[0].values) if d.facets else []
    d.comparable = [f for f in d.facets if f.runs["dpo"] and f.runs["ppo"]]
    d.rows = claims_table(arms.headline_runs(d.runs), d.facets, CLAIMS, min_runs=s["min_runs"],
                          min_seeds=s["min_seeds"], n_boot=s["n_boot"], fdr=s["fdr"], seed=s["seed"])
    d.arms_present = arms.present_counts(d.runs)
    d.arm_sections = arms.sections(d.runs, extra, pool=s["pool"], min_runs=s["min_runs"], min_seeds=s["min_seeds"],
                                   n_boot=s["n_boot"], fdr=s["fdr"], seed=s["seed"])


def matched(facets: Sequence[Facet], n_boot: int, seed: int) -> List[Tuple[Facet, List[Comparison]]]:
    """The matched-KL section's comparisons: every facet holding DPO and PPO runs, BODY_METRICS
    at MATCHED_FRACS of its common range (no comparisons for the others)."""
    return [(f, [compare(f, m, render.MATCHED_FRACS, n_boot=n_boot, seed=seed) for m in render.BODY_METRICS]
             if f.runs["dpo"] and f.runs["ppo"] else []) for f in facets]


def draw(d: Contents, name: str, path: Optional[str]) -> None:
    """A figure drawn (``path``; None: nothing to draw) under ``name`` in ``d.images``."""
    if path:
        d.images[name] = Path(path).name


def draw_body(d: Contents) -> None:
    """The frontier, proxy and gold reward, training curves and analyses over training."""
    if not d.figures:
        return
    draw(d, "frontier", plot_frontier(d.configs, d.runs, d.out / "frontier.png", d.split))
    draw(d, "gold", plot_gold(d.configs, d.runs, d.out / "gold.png", d.split))
    draw(d, "training", plot_training(d.configs, d.out / "training.png", d.split))
    draw(d, "over_training", plot_over_training(d.configs, d.out / "over_training.png"))


def draw_claims(d: Contents) -> None:
    """One figure per claim."""
    for claim in CLAIMS:
        draw(d, f"claim_{claim.id}", plot_claim([r for r in d.rows if r.claim.id == claim.id],
                                                      d.out / f"claim_{claim.id}.png"))


def runs_table(runs: Sequence[Run], metrics: Sequence[str]) -> Tuple[List[str], List[List[Any]]]:
    """runs.csv: one row per job; params once each (the algorithm is its own column, not repeated)."""
    params = sorted({k for r in runs for k in r.params} - {"algorithm"})
    cost = sorted({k for r in runs for k in r.cost})  # results.json compute: columns compute/<key>
    header = (["job", "status", "algorithm"] + params + list(metrics) + [f"compute/{k}" for k in cost]
              + ["wall_time_s", "peak_mem_mb", "error", "wandb_id", "wandb_url"])
    rows = [[r.rel, r.status, r.algorithm or ""] + [r.params.get(p, "") for p in params]
            + [r.metrics.get(m, "") for m in metrics] + [r.cost.get(k, "") for k in cost]
            + [r.wall_time_s if r.wall_time_s is not None else "", r.peak_mem_mb if r.peak_mem_mb is not None else "",
               render.last_line(r.error), r.wandb.get("id") or "", r.wandb.get("url") or ""] for r in runs]
    return header, rows


def write_runs_csv(runs: Sequence[Run], metrics: Sequence[str], path: Path) -> Tuple[List[str], List[List[Any]]]:
    """runs.csv at ``path`` (``runs_table``), and its header and rows."""
    header, rows = runs_table(runs, metrics)
    write_csv_rows(path, header, rows)
    return header, rows


def write_csv_rows(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(header)
    writer.writerows(rows)
    R.write_atomic(path, text.getvalue())


def over_training_summary(configs: Sequence[SeedGroup]) -> List[Dict[str, Any]]:
    """Every configuration's over-training curves (mean over seeds), for summary.json."""
    out = []
    for c in configs:
        for table, column in OVER_TRAINING_PANELS.values():
            curve = c.over_training(table, column)
            if curve:
                out.append({"algorithm": c.algorithm, "configuration": c.label(), "measure": f"{table}/{column}",
                            **curve})
    return out


def summary_of(d: Contents) -> Dict[str, Any]:
    """summary.json: everything report.md says, as data."""
    runs, metrics = d.runs, d.metrics
    return {
        "name": d.name, "sweep_dir": str(d.root), "counts": d.counts, "jobs": len(runs),
        "wall_time_s": d.wall_time_s, "peak_mem_mb": d.peak_mem_mb,
        "failed": [{"job": r.rel, "error": render.last_line(r.error)} for r in runs if r.status == R.FAILED],
        "unreadable": [r.rel for r in runs if r.status == NO_RESULTS and (r.error or "").startswith("unreadable")],
        "duplicates": d.meta.get("duplicates", []),
        "configurations": [{"algorithm": c.algorithm, "params": {k: v for k, v in c.runs[0].params.items() if k != "seed"},
                            "overrides": c.runs[0].extra_overrides(), "seeds": [r.seed for r in c.runs],
                            "diverged": [r.rel for r in c.diverged()],
                            "metrics": {m: vars(stats.mean_ci(c.values(m))) for m in metrics}} for c in d.configs],
        "facets": [{"label": f.label(), "values": f.values, "pooled": f.pooled_text(),
                    "runs": {a: len(f.runs[a]) for a in R.ALGORITHMS}} for f in d.facets],
        "facet_notes": d.facet_notes, "claims": [render.claim_record(r) for r in d.rows],
        "matched_kl": [render.matched_record(f, c) for f, comps in d.matched
                       if comps and comps[0].common is not None for c in comps if c.points],
        "arms": [{"a": a, "b": b, **render.claim_record(r)} for a, b, _, rows in d.arm_sections for r in rows],
        "over_training": over_training_summary(d.configs),
        "images": d.images, "compare": d.drawn,
        "settings": d.settings,
    }
