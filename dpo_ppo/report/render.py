"""Putting the report together: report.md, runs.csv, matched_kl.csv, summary.json and the figures
(the W&B run of it: ``report.wandb_run``)."""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from dpo_ppo import results as R
from dpo_ppo.report import compare as C
from dpo_ppo.report import arms, plots, stats
from dpo_ppo.report.claims import CLAIMS, SAME_MARGIN
from dpo_ppo.report.load import (ALL_STATUSES, DIVERGED, LABELS, NO_RESULTS, PENDING, SeedGroup, Run,
                                 configurations, finished, load_run, load_sweep, metric_names)

BODY_METRICS = (R.REWARD, R.policy_metric("gradient_loss"), R.policy_metric("binary_loss"))
MATCHED_FRACS = (0.25, 0.5, 0.75)


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def last_line(text: Any) -> str:
    text = str(text or "").strip()
    return text.splitlines()[-1][:200] if text else ""


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
        raise SystemExit(f"--compare: no job folder with results.json matches {token!r} under {root}")
    raise SystemExit(f"--compare: {token!r} matches {len(matches)} jobs: " + ", ".join(r.rel for r in matches[:8]))


def write_runs_csv(runs: Sequence[Run], metrics: Sequence[str], path: Path) -> Tuple[List[str], List[List[Any]]]:
    """One row per job; params once each (the algorithm is its own column, not repeated)."""
    params = sorted({k for r in runs for k in r.params} - {"algorithm"})
    compute = sorted({k for r in runs for k in r.compute})
    header = (["job", "status", "algorithm"] + params + list(metrics) + [f"compute/{k}" for k in compute]
              + ["wall_time_s", "peak_mem_mb", "error", "wandb_id", "wandb_url"])
    rows = [[r.rel, r.status, r.algorithm or ""] + [r.params.get(p, "") for p in params]
            + [r.metrics.get(m, "") for m in metrics] + [r.compute.get(k, "") for k in compute]
            + [r.wall_time_s if r.wall_time_s is not None else "", r.peak_mem_mb if r.peak_mem_mb is not None else "",
               last_line(r.error), r.wandb.get("id") or "", r.wandb.get("url") or ""] for r in runs]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return header, rows


RULE = (
    "How to read it. Each row quotes the seed's sentence and tests it on one facet's runs. The "
    "comparison: one fit of both algorithms' runs against log KL, metric = f(log KL) ± g(log KL) / 2, "
    "f shared by the two (a polynomial whose degree, up to 3, predicts left-out configurations best, "
    "leaving two configurations beyond the coefficients), g = PPO - DPO a line (a constant when an "
    "algorithm has one configuration), over the runs inside the KL range both algorithms cover and "
    "a margin beyond its ends. Because f is shared, curves the two have in common cancel wherever "
    "each algorithm's runs sit. The noise: each configuration's mean sits off its algorithm's curve "
    "by its own offset plus its seeds' noise, and that scatter (the configuration means' residual "
    "variance, configurations - coefficients degrees of freedom) gives the standard errors, with the "
    "evaluation prompts bootstrapped ({n_boot} draws, paired across runs) where every run has "
    "per-prompt rows; with too few configurations to see their scatter, each algorithm's seeds are "
    "bootstrapped instead and the caveat says the verdict is about these configurations. Every "
    "interval adds the distance the estimate moves when f or g gets one degree more (a bound on the "
    "smoothing bias). PPO - DPO is drawn along the whole common range with a simultaneous 95% band "
    "(sup-t: it covers the whole curve at once in 95% of sweeps), and the verdict says where the "
    "band lies above, below or across 0 (`where`). p: for PPO > DPO, PPO < DPO and PPO ≠ DPO, of "
    "\"no difference anywhere on the range\" (the band's sup-t test); for PPO ≈ DPO and |x| < m, of "
    "\"beyond the margin somewhere on the range\" (two one-sided tests at every point, the largest p: "
    "an intersection-union test). q: p adjusted ({fdr}) over the rows that can give a verdict and "
    "belong to the family; rows derived from or paraphrasing another are shown with their "
    "unadjusted p and kept out of it. Verdicts: for > and <, supported when q < {alpha} and the "
    "band leaves 0 only in the claimed direction, contradicted when only the other way, mixed when "
    "both; for ≠, supported when q < {alpha}, contradicted when the two are equivalent within "
    "±{margin:.0%} of their mean everywhere; for ≈ and |x| < m, supported when q < {alpha} "
    "(equivalent everywhere), contradicted when the band lies wholly beyond the margin somewhere. "
    "Everything else: inconclusive. A row gives a verdict only with at least {min_runs} runs and "
    "{min_seeds} seeds per algorithm inside one facet and overlapping KL ranges; one run per side "
    "never gives one. Runs that diverged (status diverged, a metric or KL not finite, KL not "
    "positive) are counted per configuration below and named in the caveat of every row they would "
    "have entered; runs whose metric is missing or whose per-prompt rows are not finite are left "
    "out and named too. Facets: runs that differ in {facets} are compared only within one value "
    "(a `pooled:` note says where that was impossible or asked for); the seed's two rounds "
    "(experiment=paper_run1/2) are a facet, and a claim the seed made of one round is compared only "
    "there (a caveat says so when the sweep has no such facet). docs/analyses.md maps every "
    "sentence to its row."
)


def claims_markdown(rows: Sequence[C.ClaimRow], multi_facet: bool) -> List[str]:
    header = ["claim", "§", "metric", "at the middle: PPO - DPO [95%]", "runs DPO / PPO",
              "p / q", "verdict (where on the common KL range)"]
    if multi_facet:
        header.insert(2, "facet")
    out = []
    for r in rows:
        comp = r.comparison
        runs = comp.runs_text() if comp else "–"
        pooled = r.facet.pooled_text()
        verdict = f"**{r.verdict}**" if r.verdict != "inconclusive" else "inconclusive"
        if r.where:
            verdict += f": {r.where}"
        if r.margin_note:
            verdict += f" (margin {r.margin_note})"
        if r.reason:
            verdict += f" ({r.reason})"
        if r.caveat:
            verdict += f"; caveat: {r.caveat}"
        if pooled:
            verdict += f"; pooled: {pooled}"
        quote = f" — “{r.claim.quote}”" if r.claim.quote else ""
        pq = "–" if not r.eligible else (f"{C.fmt(r.p)} / {C.fmt(r.q)}" if r.in_family
                                          else f"{C.fmt(r.p)} / outside the family")
        cells = [f"{r.claim.id}: {r.claim.text} ({r.claim.expectation()}){quote}", r.claim.section,
                 f"`{r.metric}`" if r.metric else "–", r.effect_text(), runs, pq, verdict]
        if multi_facet:
            cells.insert(2, r.facet.label())
        out.append(cells)
    return [md_table(header, out)]


def matched_markdown(facets: Sequence[C.Facet], n_boot: int, seed: int) -> Tuple[List[str], List[Dict]]:
    md: List[str] = []
    out: List[Dict] = []
    for facet in facets:
        if not (facet.runs["dpo"] and facet.runs["ppo"]):
            only = [LABELS[a] for a in R.ALGORITHMS if facet.runs[a]]
            md += [f"- {facet.label()}: {' and '.join(only) or 'no'} runs only; nothing to compare.", ""]
            continue
        comps = [C.compare(facet, m, MATCHED_FRACS, n_boot=n_boot, seed=seed) for m in BODY_METRICS]
        base = comps[0]
        ranges = ", ".join(f"{LABELS[a]} {base.n[a]} runs at KL {base.kl_range[a][0]:.3g}-{base.kl_range[a][1]:.3g}"
                           for a in R.ALGORITHMS)
        pooled = facet.pooled_text()
        head = f"**{facet.label()}**: {ranges}" + (f"; pooled: {pooled}" if pooled else "")
        if base.common is None:
            md += [head + f". {base.note}: no matched-KL comparison.", ""]
            continue
        md += [head + f"; common range {base.common[0]:.3g}-{base.common[1]:.3g} nats"
               + (f"; {base.prompts} paired prompts resampled" if base.prompts else "; seeds resampled (no per-prompt rows)")
               + ".", ""]
        points = [p.kl for p in base.points]
        rows = []
        for comp in comps:
            if not comp.points:
                continue
            cells = [f"`{comp.metric}`"]
            for p in comp.points:
                cells.append(f"{C.fmt(p.fit['dpo'])} / {C.fmt(p.fit['ppo'])}: {C.fmt(p.effect)} "
                             f"[{C.fmt(p.ci[0])}, {C.fmt(p.ci[1])}]")
            rows.append(cells)
            out.append({"facet": facet.label(), "metric": comp.metric, "points": [
                {"kl": p.kl, "dpo": p.fit["dpo"], "ppo": p.fit["ppo"], "effect": p.effect, "ci": list(p.ci), "p": p.p}
                for p in comp.points]})
        md += [md_table(["metric (DPO / PPO: PPO - DPO [95%])"] + [f"at KL {k:.3g}" for k in points], rows), ""]
        notes = [f"- `{c.metric}`: " + "; ".join(t for t in (c.varies, c.left_out_text()) if t)
                 for c in comps if c.varies or c.left_out]
        md += notes + ([""] if notes else [])
    return md, out


def sweep_name(root: Path, runs: Sequence[Run], meta: Dict[str, Any]) -> str:
    """The sweep's name: sweep.json's, else the jobs' config ``name``, else the folder's."""
    return meta.get("name") or next((r.config.get("name") for r in runs if r.config.get("name")), Path(root).name)


def progress_line(runs: Sequence[Run]) -> Tuple[str, Dict[str, int]]:
    counts = {s: sum(r.status == s for r in runs) for s in ALL_STATUSES}
    other = len(runs) - sum(counts.values())
    text = (f"{len(runs)} jobs: {counts[R.FINISHED]} finished, {counts[R.FAILED]} failed, "
            f"{counts[R.RUNNING]} running, " + (f"{counts[R.INTERRUPTED]} interrupted, " if counts[R.INTERRUPTED] else "")
            + (f"{counts[DIVERGED]} diverged, " if counts[DIVERGED] else "")
            + f"{counts[NO_RESULTS]} started without results, "
            f"{counts[PENDING]} not started" + (f", {other} other" if other else "") + ".")
    return text, counts


def body_figures(configs: Sequence[SeedGroup], runs: Sequence[Run], out: Path, split: Sequence[str], figures: bool,
                 images: Dict[str, str]) -> List[str]:
    """The frontier, the training curves and the analyses over training."""
    if figures:
        images["frontier"] = Path(plots.plot_frontier(configs, runs, out / "frontier.png", split)).name
    md = ["## Reward-KL frontier", "", "![frontier](frontier.png)" if figures else "(figures left out)", "",
          "Test reward against KL to the reference per configuration (params minus seed): mean and 95% "
          "t-interval over seeds; faint dots are single runs; the star is the reference.", ""]
    gold = plots.plot_gold(configs, runs, out / "gold.png") if figures else None
    if gold:  # the proxy reward beside the gold one (eval.gold), where the jobs had one
        images["gold"] = Path(gold).name
        md += ["## Proxy and gold reward", "", "![proxy and gold](gold.png)", "",
               "The reward the policies were trained against (proxy) and one no training step saw (gold, "
               "`eval.gold`) along KL, per configuration (mean and 95% t-interval over seeds); the "
               "reference at KL 0. Gold falling while the proxy rises is over-optimisation.", ""]
    training = plots.plot_training(configs, out / "training.png", split) if figures else None
    if training:
        images["training"] = Path(training).name
        md += ["## Training curves", "", "![training curves](training.png)", "",
               "Per configuration, mean over seeds, against the examples seen by the policy each point measured "
               "(train_log.jsonl); the first two columns are the probe's, DPO and PPO on the same training prefixes "
               "from examples 0.", ""]
    over = plots.plot_over_training(configs, out / "over_training.png") if figures else None
    if over:
        images["over_training"] = Path(over).name
        md += ["## Over training", "", "![over training](over_training.png)", "",
               "The analyses at every saved snapshot, per configuration (mean over seeds), against examples "
               "seen: mean-square divergence of weights and biases, and the largest change of any head's "
               "previous-token, duplicate-token and induction score and of its attention to the sentiment "
               "word (the seed's suggested next experiment, 3.4). Data: `summary.json` `over_training`.", ""]
    return md


def over_training_summary(configs: Sequence[SeedGroup]) -> List[Dict[str, Any]]:
    """Every configuration's over-training curves (mean over seeds), for summary.json."""
    out = []
    for c in configs:
        for table, column in plots.OVER_TRAINING_PANELS.values():
            curve = c.over_training(table, column)
            if curve:
                out.append({"algorithm": c.algorithm, "configuration": c.label(), "measure": f"{table}/{column}",
                            **curve})
    return out


def claim_figures(rows: Sequence[C.ClaimRow], out: Path, figures: bool, images: Dict[str, str]) -> List[str]:
    links = []
    for claim in CLAIMS:
        path = plots.plot_claim([r for r in rows if r.claim.id == claim.id], out / f"claim_{claim.id}.png") \
            if figures else None
        if path:
            images[f"claim_{claim.id}"] = Path(path).name
            links.append(f"![{claim.id}]({Path(path).name})")
    if not links:
        return []
    return ["## One figure per claim", "",
            "Top: the claim's metric against KL (log scale) per algorithm: runs, the joint fit's curve of "
            "each algorithm over the common range (shaded), the middle point with its 95% intervals. "
            "Bottom: PPO - DPO along the common range with its simultaneous 95% band (and the margin, "
            "dashed, for ≈ claims); the verdict holds where the band says so.",
            ""] + links + [""]


def cost_markdown(runs: Sequence[Run], progress: str) -> List[str]:
    wall = sum(float(r.wall_time_s) for r in runs if isinstance(r.wall_time_s, (int, float)))
    mems = [float(r.peak_mem_mb) for r in runs if isinstance(r.peak_mem_mb, (int, float))]
    md = ["## Progress and cost", "", progress, "",
          f"Compute so far: {wall:.0f} s of job wall time ({wall / 3600:.2f} h) in total"
          + (f"; peak memory of the largest job {max(mems):.0f} MB." if mems else "."), ""]
    unfinished = [r for r in runs if r.status != R.FINISHED]
    if unfinished:
        md += ["Jobs without finished results (left out):", "",
               md_table(["job", "status", "error"], [[f"`{r.rel}`", r.status, last_line(r.error)] for r in unfinished]),
               ""]
    return md


def configurations_markdown(configs: Sequence[SeedGroup], split: Sequence[str]) -> List[str]:
    if not configs:
        return []
    extra = any(c.runs[0].extra_overrides() for c in configs)
    table = []
    for c in configs:
        p = c.runs[0].params
        diverged = c.diverged()
        ok = [r for r in c.runs if r not in diverged]
        table.append([LABELS.get(c.algorithm, c.algorithm), c.label()] + [p.get(k, "") for k in split]
                     + ([" ".join(c.runs[0].extra_overrides())] if extra else [])
                     + [len(ok), len(diverged) if not diverged else f"**{len(diverged)}**",
                        stats.mean_ci(r.metrics.get(R.REWARD) for r in ok).text(),
                        stats.mean_ci(r.kl for r in ok).text()])
    header = (["algorithm", "knob"] + list(split) + (["other overrides"] if extra else [])
              + ["seeds", "diverged", "reward", "KL (nats)"])
    per_algorithm = {a: sum(len(c.diverged()) for c in configs if c.algorithm == a)
                     for a in dict.fromkeys(c.algorithm for c in configs)}
    total = ", ".join(f"{LABELS.get(a, a)} {n}" for a, n in per_algorithm.items())
    return ["## Configurations", "", md_table(header, table), "",
            "Reward and KL: mean over the configuration's seeds that did not diverge ± the half-width of its "
            "95% t-interval (t with seeds - 1 degrees of freedom: 12.7 for 2 seeds, 4.3 for 3, so two seeds "
            "give wide intervals by construction). Diverged: runs with status diverged or a KL that is not "
            f"finite and positive, left out of every fit and named in the claims' caveats (in all: {total}).", ""]


def all_metrics_markdown(runs: Sequence[Run], facets: Sequence[C.Facet], metrics: Sequence[str], out: Path,
                         n_boot: int, seed: int, figures: bool, images: Dict[str, str]) -> List[str]:
    """Every metric at matched KL: matched_kl.csv and one screening figure."""
    all_rows = C.all_metrics_table(runs, facets, metrics, n_boot=min(n_boot, 400), seed=seed) if facets else []
    if not all_rows:
        return []
    with open(out / "matched_kl.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(all_rows[0]))
        writer.writeheader()
        writer.writerows(all_rows)
    md = ["## Every metric at matched KL", "",
          f"`matched_kl.csv`: {len(all_rows)} rows (facet, metric, fits, PPO - DPO, 95% interval, p, BH q over the "
          "whole table). A screen for what to look at next, not evidence: the claims above are the tests.", ""]
    fig = plots.plot_all_metrics(all_rows, out / "all_metrics.png") if figures else None
    if fig:
        images["all_metrics"] = Path(fig).name
        md += ["![all metrics](all_metrics.png)", ""]
    return md


def compare_markdown(a: Run, b: Run, out: Path, images: Dict[str, str]) -> Tuple[List[str], Dict[str, Any]]:
    """--compare A B: the seed paper's side-by-side plots and every metric of the two runs."""
    drawn = plots.plot_compare(a, b, out)
    md = ["## Two runs side by side", "", f"- A: `{a.rel}` ({a.label()}, {a.status})",
          f"- B: `{b.rel}` ({b.label()}, {b.status})", ""]
    for key, img in drawn["images"].items():
        md += [f"### {key}", "", f"![{key}]({img})", ""]
        images[Path(img).stem] = img
    md += [f"- {note}" for note in drawn["notes"]]
    keys = sorted(set(a.metrics) | set(b.metrics), key=lambda k: (not k.startswith("eval/"), k))
    md += ["", md_table(["metric", "A", "B", "B / A"], [
        [k, f"{a.metrics.get(k, float('nan')):.4g}", f"{b.metrics.get(k, float('nan')):.4g}",
         f"{b.metrics[k] / a.metrics[k]:.3g}" if k in a.metrics and k in b.metrics and a.metrics[k] else ""]
        for k in keys]), ""]
    shared_images = sorted(set(a.images) | set(b.images))
    if shared_images:
        md += ["Analysis images of the two runs:", "", "| image | A | B |", "|---|---|---|"]
        for key in shared_images:
            cells = [f"![{key}]({os.path.relpath(r.dir / r.images[key], out)})" if key in r.images else "–"
                     for r in (a, b)]
            md.append(f"| {key} | {cells[0]} | {cells[1]} |")
        md.append("")
    return md, drawn


def claim_record(r: C.ClaimRow) -> Dict[str, Any]:
    comp = r.comparison
    pt = comp.points[0] if comp and comp.points else None
    curve = comp.curve if comp is not None else None
    return {"claim": r.claim.id, "section": r.claim.section, "text": r.claim.text, "expect": r.claim.expectation(),
            "quote": r.claim.quote, "condition": r.claim.condition, "in_family": r.in_family,
            "where": r.where, "margin": r.margin_note,
            "curve": None if curve is None else {"kl": curve.kl.tolist(), "effect": curve.est.tolist(),
                                                 "lo": curve.lo.tolist(), "hi": curve.hi.tolist()},
            "diverged": comp.diverged if comp is not None else {},
            "facet": r.facet.label(), "pooled": r.facet.pooled_text(), "metric": r.metric,
            "n": comp.n if comp else None, "seeds": comp.seeds if comp else None,
            "kl": pt.kl if pt else None, "dpo": pt.fit["dpo"] if pt else None, "ppo": pt.fit["ppo"] if pt else None,
            "effect": pt.effect if pt else None, "ci": list(pt.ci) if pt else None,
            "prompts": comp.prompts if comp else 0,
            "p": None if not math.isfinite(r.p) else r.p, "q": None if not math.isfinite(r.q) else r.q,
            "eligible": r.eligible, "verdict": r.verdict, "reason": r.reason, "caveat": r.caveat}


@dataclass
class Report:
    """A written report: ``summary`` is what summary.json holds; the runs and the runs table it was
    made from go to W&B (``report.wandb_run``) and the dashboard as they are."""

    summary: Dict[str, Any]
    runs: List[Run]
    runs_table: Tuple[List[str], List[List[Any]]]  # runs.csv's header and rows
    out: Path  # the report folder


def build_report(root: Path, compare: Optional[Sequence[str]] = None, out: Optional[Path] = None,
                 pool: Sequence[str] = (), min_runs: int = C.MIN_RUNS, min_seeds: int = C.MIN_SEEDS,
                 n_boot: int = C.N_BOOT, fdr: str = "bh", seed: int = 0, figures: bool = True,
                 compare_arms: Optional[Sequence[str]] = None) -> Report:
    """Write the report (report.md, runs.csv, matched_kl.csv, summary.json and the figures in
    ``out``, by default ROOT/report).  ``figures=False`` leaves the figures out (tables only, in a
    fraction of the time)."""
    root = Path(root)
    if root.is_file():
        raise SystemExit(f"dpo-ppo-report: {root} is a file, not a sweep folder (give the folder a sweep "
                         f"wrote, e.g. multirun/NAME)")
    if not root.is_dir():
        raise SystemExit(f"dpo-ppo-report: no such sweep folder: {root}")
    runs, meta = load_sweep(root)
    if not runs:  # nothing written, no W&B run: an empty report would look like a sweep with no results
        raise SystemExit(f"dpo-ppo-report: {root} holds no jobs (no job folder with {R.RESULTS_FILE} or .hydra/, "
                         f"no {R.SWEEP_FILE}): nothing to report")
    out = Path(out) if out else root / "report"
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.png"):  # from an earlier report
        stale.unlink()
    pair = [resolve_job(t, root, runs) for t in compare] if compare else []
    name = sweep_name(root, runs, meta)
    done, configs, metrics = finished(runs), configurations(runs), metric_names(runs)
    progress, counts = progress_line(runs)
    # the headline compares the dpo and ppo arms only (report.arms: online DPO is never pooled into DPO)
    headline = arms.headline_runs(runs)
    facets, facet_notes = C.make_facets(headline, pool)
    split = list(facets[0].values) if facets else []
    comparable = [f for f in facets if f.runs["dpo"] and f.runs["ppo"]]
    rows = C.claims_table(headline, facets, CLAIMS, min_runs=min_runs, min_seeds=min_seeds, n_boot=n_boot,
                          fdr=fdr, seed=seed)
    images: Dict[str, str] = {}

    md: List[str] = [f"# Sweep report: {name}", "", f"Sweep folder: `{root}`. {progress}", ""]
    if meta.get("duplicates"):
        md += [f"Counted once: {len(meta['duplicates'])} job folder(s) with the config key of another ("
               + "; ".join(f"`{d['job']}` = `{d['kept']}`" for d in meta["duplicates"][:10])
               + (", ..." if len(meta["duplicates"]) > 10 else "") + ").", ""]
    if facet_notes or len(facets) > 1:
        md += ["Facets: " + "; ".join([f"{len(facets)} ({', '.join(f.label() for f in facets)})"] + facet_notes)
               + ".", ""]
    # the body: claims, frontier, training curves, matched KL
    md += ["## The seed paper's claims, DPO vs PPO at matched KL", ""]
    if not done:
        md += ["No finished jobs yet.", ""]
    elif not rows:
        md += ["No facet holds finished runs of both algorithms yet: nothing to compare.", ""]
    else:
        md += claims_markdown(rows, len(comparable) > 1)
        md += ["", RULE.format(n_boot=n_boot, fdr="Benjamini-Hochberg" if fdr == "bh" else "Holm",
                               min_runs=max(2, min_runs), min_seeds=min_seeds, alpha=C.ALPHA,
                               margin=SAME_MARGIN, facets=", ".join(R.FACET_KEYS)), ""]
    arm_md, arm_rows = arms.arms_markdown(runs, claims_markdown, tuple(compare_arms) if compare_arms else None,
                                          pool=pool, min_runs=min_runs, min_seeds=min_seeds, n_boot=n_boot,
                                          fdr=fdr, seed=seed)
    md += arm_md
    matched: List[Dict] = []
    if done:
        md += body_figures(configs, runs, out, split, figures, images)
        md += ["## Matched KL", "",
               "Fits of each algorithm at three KL points inside the common range (its quartiles in log KL), "
               "per facet: DPO / PPO, then PPO - DPO with its 95% t-interval (bootstrap standard error). Every metric: "
               "appendix.", ""]
        section, matched = matched_markdown(facets, n_boot, seed)
        md += section
    # the appendix
    md += ["---", "", "# Appendix", ""]
    md += claim_figures(rows, out, figures, images)
    md += cost_markdown(runs, progress)
    md += configurations_markdown(configs, split)
    md += all_metrics_markdown(runs, comparable, metrics, out, n_boot, seed, figures, images)
    compare_out: Dict[str, Any] = {}
    if pair:
        section, compare_out = compare_markdown(pair[0], pair[1], out, images)
        md += section
    header, table_rows = write_runs_csv(runs, metrics, out / "runs.csv")
    md += ["## Files", "", "- `runs.csv`: one row per job (status, params, metrics, compute)",
           "- `matched_kl.csv`: every metric at matched KL, per facet",
           "- `summary.json`: counts, cost, configurations, facets, the claims table, matched-KL fits", ""]
    (out / "report.md").write_text("\n".join(md))

    mems = [float(r.peak_mem_mb) for r in runs if isinstance(r.peak_mem_mb, (int, float))]
    summary = {
        "name": name, "sweep_dir": str(root), "counts": counts, "jobs": len(runs),
        "wall_time_s": sum(float(r.wall_time_s) for r in runs if isinstance(r.wall_time_s, (int, float))),
        "peak_mem_mb": max(mems) if mems else None,
        "failed": [{"job": r.rel, "error": last_line(r.error)} for r in runs if r.status == R.FAILED],
        "unreadable": [r.rel for r in runs if r.status == NO_RESULTS and (r.error or "").startswith("unreadable")],
        "duplicates": meta.get("duplicates", []),
        "configurations": [{"algorithm": c.algorithm, "params": {k: v for k, v in c.runs[0].params.items() if k != "seed"},
                            "overrides": c.runs[0].extra_overrides(), "seeds": [r.seed for r in c.runs],
                            "diverged": [r.rel for r in c.diverged()],
                            "metrics": {m: vars(stats.mean_ci(c.values(m))) for m in metrics}} for c in configs],
        "facets": [{"label": f.label(), "values": f.values, "pooled": f.pooled_text(),
                    "runs": {a: len(f.runs[a]) for a in R.ALGORITHMS}} for f in facets],
        "facet_notes": facet_notes, "claims": [claim_record(r) for r in rows], "matched_kl": matched,
        "arms": [{"a": x["a"], "b": x["b"], **claim_record(x["row"])} for x in arm_rows],
        "over_training": over_training_summary(configs),
        "images": images, "compare": compare_out,
        "settings": {"min_runs": min_runs, "min_seeds": min_seeds, "n_boot": n_boot, "fdr": fdr, "seed": seed,
                     "pool": list(pool)},
    }
    R.write_atomic(out / "summary.json", json.dumps(summary, indent=1, default=str))
    return Report(summary, runs, (header, table_rows), out)
