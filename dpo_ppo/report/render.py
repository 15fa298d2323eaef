"""The report's words: report.md's sections, the claims table's cells and the records of
summary.json, from what ``report.build`` computed. Formatting only: no statistics, no files read
or written, no figures drawn (``report.build`` does those and passes what it made)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from dpo_ppo import results as R
from dpo_ppo.report import arms
from dpo_ppo.report.claims import CLAIMS
from dpo_ppo.report.estimator import Comparison
from dpo_ppo.report.facets import Facet, facet_value, label
from dpo_ppo.report.load import DIVERGED, LABELS, NO_RESULTS, PENDING, Run, SeedGroup
from dpo_ppo.report.stats import Stat
from dpo_ppo.report.verdicts import ClaimRow, Margin

BODY_METRICS = (R.REWARD, R.policy_metric(R.GRADIENT_LOSS), R.policy_metric(R.BINARY_LOSS))
MATCHED_FRACS = (0.25, 0.5, 0.75)


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def last_line(text: Any) -> str:
    text = str(text or "").strip()
    return text.splitlines()[-1][:200] if text else ""


def fmt(x: float) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.3g}"


def span_text(a: float, b: float) -> str:
    return f"KL {a:.2g}-{b:.2g}"


# --------------------------------------------------------------------------- one comparison in words


def left_out_text(comp: Comparison) -> str:
    return "; ".join(", ".join(f"{n} {label(a)} run(s)" for a, n in per.items()) + f" left out: {reason}"
                     for reason, per in comp.left_out.items())


def diverged_text(comp: Comparison) -> str:
    """The diverged runs this comparison would have used, named (never dropped silently)."""
    parts = [f"{label(a)} {len(names)} (" + ", ".join(f"`{n}`" for n in names[:3])
             + (", ..." if len(names) > 3 else "") + ")" for a, names in comp.diverged.items() if names]
    return ("diverged runs left out: " + "; ".join(parts)) if parts else ""


def runs_text(comp: Comparison) -> str:
    return " / ".join(str(comp.n.get(a, 0)) for a in (comp.pair[1], comp.pair[0]))


def where_text(comp: Comparison) -> str:
    """Where along the common range the simultaneous band says what: "PPO > DPO at KL 2-8; no
    difference shown at KL 0.5-2"."""
    hi, lo = label(comp.pair[0]), label(comp.pair[1])
    words = {1: f"{hi} > {lo}", -1: f"{hi} < {lo}", 0: "no difference shown"}
    return "; ".join(f"{words[c]} at {span_text(a, b)}" for c, a, b in comp.sign_regions())


def varies_text(comp: Comparison) -> str:
    """pair[0] - pair[1] changing across the common range, when it does ('' otherwise)."""
    if not comp.varies:
        return ""
    (kl_lo, at_lo), (kl_hi, at_hi) = comp.ends
    return (f"{label(comp.pair[0])} - {label(comp.pair[1])} changes across the common KL range: "
            f"{fmt(at_lo)} at KL {kl_lo:.3g}, {fmt(at_hi)} at KL {kl_hi:.3g} (p = {comp.vary_p:.2g})")


# --------------------------------------------------------------------------- one claim's row in words


def effect_text(row: ClaimRow) -> str:
    c = row.comparison
    if c is None or not c.points:
        return "–"
    pt = c.points[0]
    if row.claim.kind == "zero":
        return "; ".join(f"{label(a)} {fmt(pt.fit[a])} [{fmt(pt.fit_ci[a][0])}, {fmt(pt.fit_ci[a][1])}]"
                         for a in row.claim.arms if a in pt.fit) + f" at KL {pt.kl:.3g}"
    second = c.pair[1]
    base = pt.fit.get(second)
    # a relative size only where it means something: not of a base at ~0 (a metric that is 0 up to
    # rounding, e.g. DPO's bias fluctuation, gave "-210875433931066432% of DPO")
    rel = (f" ({pt.effect / abs(base):+.0%} of {label(second)})"
           if base and abs(pt.effect) < 100 * abs(base) else "")
    return f"{fmt(pt.effect)} [{fmt(pt.ci[0])}, {fmt(pt.ci[1])}]{rel} at KL {pt.kl:.3g}"


def margin_text(margin: Optional[Margin]) -> str:
    """What the margin's unit is ('' without a margin)."""
    if margin is None:
        return ""
    if margin.basis == "mean":
        return f"±{margin.fraction:.0%} of the two values' mean"
    if margin.basis == "scale":
        return f"±{margin.fraction:g} x {margin.unit:.3g} (`{margin.scale}`)"
    if margin.basis == "no scale":
        return f"±{margin.fraction:g} (no `{margin.scale}` in these runs: 1 as unit)"
    return f"±{margin.fraction:g}"


def verdict_where(row: ClaimRow) -> str:
    """Where along the common KL range the row's verdict holds, in words ('' without a verdict)."""
    if not row.regions:
        return ""
    kind, comp = row.claim.kind, row.comparison
    if kind in ("higher", "lower", "differ"):
        hi, lo = label(comp.pair[0]), label(comp.pair[1])
        words = {1: f"{hi} > {lo}", -1: f"{hi} < {lo}", 0: "no difference shown"}
    elif kind == "same":
        words = {1: f"{label(comp.pair[0])} ≈ {label(comp.pair[1])} (within the margin)",
                 -1: "beyond the margin", 0: "not shown either way"}
    else:  # zero: each arm's own value
        words = {1: "within the margin", -1: "beyond it", 0: "not shown either way"}
    return "; ".join(f"{label(arm) + ' ' if arm else ''}{words[c]} at {span_text(a, b)}"
                     for arm, c, a, b in row.regions)


def steps_text(steps: Optional[Dict[str, float]]) -> str:
    if not steps:
        return ""
    return (f"unequal optimizer steps (median " + ", ".join(f"{label(a)} {v:g}" for a, v in steps.items())
            + "); compare at compute=matched")


def caveat_text(row: ClaimRow) -> str:
    """The row's caveats: diverged runs, unequal optimizer steps, runs left out, an effect that
    varies along the range, the seed's run condition, a row outside the FDR family."""
    cond = (f"the seed states this of its {row.missing_condition}; this sweep has no run-condition "
            "facet (experiment=paper_run1/2)") if row.missing_condition else ""
    comp = row.comparison
    if comp is None:
        return cond
    left = left_out_text(comp)
    caveats = [diverged_text(comp), steps_text(row.unequal_steps),
               left if not comp.diverged else "; ".join(t for t in left.split("; ") if "diverged" not in t),
               varies_text(comp), cond,
               "" if row.claim.family else f"derived from / paraphrasing {row.claim.of}: outside the FDR family "
                                           "(its verdict reads its unadjusted p)"]
    return "; ".join(c for c in caveats if c)


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




def claims_markdown(rows: Sequence[ClaimRow], multi_facet: bool) -> List[str]:
    header = ["claim", "§", "metric", "at the middle: PPO - DPO [95%]", "runs DPO / PPO",
              "p / q", "verdict (where on the common KL range)"]
    if multi_facet:
        header.insert(2, "facet")
    out = []
    for r in rows:
        comp = r.comparison
        runs = runs_text(comp) if comp else "–"
        pooled = r.facet.pooled_text()
        verdict = f"**{r.verdict}**" if r.verdict != "inconclusive" else "inconclusive"
        where, margin, caveat = verdict_where(r), margin_text(r.margin), caveat_text(r)
        if where:
            verdict += f": {where}"
        if margin:
            verdict += f" (margin {margin})"
        if r.reason:
            verdict += f" ({r.reason})"
        if caveat:
            verdict += f"; caveat: {caveat}"
        if pooled:
            verdict += f"; pooled: {pooled}"
        quote = f" — “{r.claim.quote}”" if r.claim.quote else ""
        pq = "–" if not r.eligible else (f"{fmt(r.p)} / {fmt(r.q)}" if r.in_family
                                          else f"{fmt(r.p)} / outside the family")
        cells = [f"{r.claim.id}: {r.claim.text} ({r.claim.expectation()}){quote}", r.claim.section,
                 f"`{r.metric}`" if r.metric else "–", effect_text(r), runs, pq, verdict]
        if multi_facet:
            cells.insert(2, r.facet.label())
        out.append(cells)
    return [md_table(header, out)]


def matched_markdown(matched: Sequence[Tuple[Facet, List[Comparison]]]) -> List[str]:
    """The matched-KL section: per facet, BODY_METRICS at MATCHED_FRACS of the common range
    (``matched``: each facet with its comparisons; none where it lacks DPO or PPO runs)."""
    md: List[str] = []
    for facet, comps in matched:
        if not comps:
            only = [LABELS[a] for a in R.ALGORITHMS if facet.runs[a]]
            md += [f"- {facet.label()}: {' and '.join(only) or 'no'} runs only; nothing to compare.", ""]
            continue
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
                cells.append(f"{fmt(p.fit['dpo'])} / {fmt(p.fit['ppo'])}: {fmt(p.effect)} "
                             f"[{fmt(p.ci[0])}, {fmt(p.ci[1])}]")
            rows.append(cells)
        md += [md_table(["metric (DPO / PPO: PPO - DPO [95%])"] + [f"at KL {k:.3g}" for k in points], rows), ""]
        notes = [f"- `{c.metric}`: " + "; ".join(t for t in (varies_text(c), left_out_text(c)) if t)
                 for c in comps if c.varies or c.left_out]
        md += notes + ([""] if notes else [])
    return md


def progress_text(runs: Sequence[Run], counts: Dict[str, int]) -> str:
    other = len(runs) - sum(counts.values())
    return (f"{len(runs)} jobs: {counts[R.FINISHED]} finished, {counts[R.FAILED]} failed, "
            f"{counts[R.RUNNING]} running, " + (f"{counts[R.INTERRUPTED]} interrupted, " if counts[R.INTERRUPTED] else "")
            + (f"{counts[DIVERGED]} diverged, " if counts[DIVERGED] else "")
            + f"{counts[NO_RESULTS]} started without results, "
            f"{counts[PENDING]} not started" + (f", {other} other" if other else "") + ".")


def body_markdown(images: Dict[str, str], figures: bool) -> List[str]:
    """The frontier, the training curves and the analyses over training (``images``: the figures
    drawn, by name)."""
    md = ["## Reward-KL frontier", "", "![frontier](frontier.png)" if figures else "(figures left out)", "",
          "Test reward against KL to the reference per configuration (params minus seed): mean and 95% "
          "t-interval over seeds; faint dots are single runs; the star is the reference.", ""]
    if "gold" in images:  # the proxy reward beside the gold one (eval.gold), where the jobs had one
        md += ["## Proxy and gold reward", "", "![proxy and gold](gold.png)", "",
               "The reward the policies were trained against (proxy) and one no training step saw (gold, "
               "`eval.gold`) along KL, per configuration (mean and 95% t-interval over seeds); the "
               "reference at KL 0. Gold falling while the proxy rises is over-optimisation.", ""]
    if "training" in images:
        md += ["## Training curves", "", "![training curves](training.png)", "",
               "Per configuration, mean over seeds, against the examples seen by the policy each point measured "
               "(train_log.jsonl); the first two columns are the probe's, DPO and PPO on the same training prefixes "
               "from examples 0.", ""]
    if "over_training" in images:
        md += ["## Over training", "", "![over training](over_training.png)", "",
               "The analyses at every saved snapshot, per configuration (mean over seeds), against examples "
               "seen: mean-square divergence of weights and biases, and the largest change of any head's "
               "previous-token, duplicate-token and induction score and of its attention to the sentiment "
               "word (the seed's suggested next experiment, 3.4). Data: `summary.json` `over_training`.", ""]
    return md


def claim_figures_markdown(images: Dict[str, str]) -> List[str]:
    links = [f"![{claim.id}]({images[f'claim_{claim.id}']})" for claim in CLAIMS if f"claim_{claim.id}" in images]
    if not links:
        return []
    return ["## One figure per claim", "",
            "Top: the claim's metric against KL (log scale) per algorithm: runs, the joint fit's curve of "
            "each algorithm over the common range (shaded), the middle point with its 95% intervals. "
            "Bottom: PPO - DPO along the common range with its simultaneous 95% band (and the margin, "
            "dashed, for ≈ claims); the verdict holds where the band says so.",
            ""] + links + [""]


def cost_markdown(runs: Sequence[Run], progress: str, wall: float, peak_mem: Optional[float]) -> List[str]:
    md = ["## Progress and cost", "", progress, "",
          f"Compute so far: {wall:.0f} s of job wall time ({wall / 3600:.2f} h) in total"
          + (f"; peak memory of the largest job {peak_mem:.0f} MB." if peak_mem is not None else "."), ""]
    unfinished = [r for r in runs if r.status != R.FINISHED]
    if unfinished:
        md += ["Jobs without finished results (left out):", "",
               md_table(["job", "status", "error"], [[f"`{r.rel}`", r.status, last_line(r.error)] for r in unfinished]),
               ""]
    return md


def configurations_markdown(configs: Sequence[SeedGroup], split: Sequence[str],
                            spread: Sequence[Tuple[Stat, Stat]]) -> List[str]:
    """The configurations table; ``spread``: each configuration's reward and KL over its seeds
    that did not diverge."""
    if not configs:
        return []
    extra = any(c.runs[0].extra_overrides() for c in configs)
    table = []
    for c, (reward, kl) in zip(configs, spread):
        diverged = c.diverged()
        ok = [r for r in c.runs if r not in diverged]
        cells = [facet_value(c.runs[0], k) for k in split]  # None: stands in every facet of the key
        table.append([LABELS.get(c.algorithm, c.algorithm), c.label()] + ["every" if v is None else v for v in cells]
                     + ([" ".join(c.runs[0].extra_overrides())] if extra else [])
                     + [len(ok), len(diverged) if not diverged else f"**{len(diverged)}**", reward.text(), kl.text()])
    header = (["algorithm", "knob"] + list(split) + (["other overrides"] if extra else [])
              + ["seeds", "diverged", "reward", "KL (nats)"])
    per_algorithm = {a: sum(len(c.diverged()) for c in configs if c.algorithm == a)
                     for a in dict.fromkeys(c.algorithm for c in configs)}
    total = ", ".join(f"{LABELS.get(a, a)} {n}" for a, n in per_algorithm.items())
    return ["## Configurations", "", md_table(header, table), "",
            "Reward and KL: mean over the configuration's seeds that did not diverge ± the half-width of its "
            "95% t-interval (t with seeds - 1 degrees of freedom: 12.7 for 2 seeds, 4.3 for 3, so two seeds "
            "give wide intervals by construction). Diverged: runs with status diverged or a KL that is not "
            f"finite and positive, left out of every fit and named in the claims' caveats (in all: {total})."
            + (" A facet key's value \"every\": the key does not apply to the configuration (DPO has no value "
               "model; a job whose own schedule is compute=matched's is the same job under either compute), so it "
               "is compared within every facet of that key." if split else ""), ""]


def all_metrics_markdown(n_rows: int, images: Dict[str, str]) -> List[str]:
    """Every metric at matched KL: matched_kl.csv (``n_rows`` rows) and its screening figure."""
    if not n_rows:
        return []
    md = ["## Every metric at matched KL", "",
          f"`matched_kl.csv`: {n_rows} rows (facet, metric, fits, PPO - DPO, 95% interval, p, BH q over the "
          "whole table). A screen for what to look at next, not evidence: the claims above are the tests.", ""]
    if "all_metrics" in images:
        md += ["![all metrics](all_metrics.png)", ""]
    return md


def compare_markdown(a: Run, b: Run, drawn: Dict[str, Any], out: Path) -> List[str]:
    """--compare A B: the seed paper's side-by-side plots (``drawn``: ``figures.plot_compare``'s) and
    every metric of the two runs."""
    md = ["## Two runs side by side", "", f"- A: `{a.rel}` ({a.label()}, {a.status})",
          f"- B: `{b.rel}` ({b.label()}, {b.status})", ""]
    for key, img in drawn["images"].items():
        md += [f"### {key}", "", f"![{key}]({img})", ""]
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
    return md


# --------------------------------------------------------------------------- "Data or loss?"


def _relabel(table: List[str], a: str, b: str) -> List[str]:
    """The headline's claims table markdown with the pair's names in its header."""
    la, lb = arms.label(a), arms.label(b)
    return [t.replace("DPO vs PPO at matched KL: PPO - DPO [95%]", f"{la} vs {lb} at matched KL: {lb} - {la} [95%]")
             .replace("runs DPO / PPO", f"runs {la} / {lb}").replace("% of DPO)", f"% of {la})") for t in table]


def pair_markdown(a: str, b: str, what: str, rows: Sequence[ClaimRow]) -> List[str]:
    """One pair's subsection."""
    la, lb = arms.label(a), arms.label(b)
    md = [f"### {lb} vs {la}: {what}", ""]
    if not rows:
        return md + [f"No facet holds finished runs of both {la} and {lb}: nothing to compare.", ""]
    md += _relabel(claims_markdown(rows, len({r.facet.label() for r in rows}) > 1), a, b)
    md += ["", f"Each claim's DPO is {la} here, its PPO {lb}: every effect reads {lb} - "
               f"{la}, a claim that PPO exceeds DPO is the claim that {lb} exceeds {la}.", ""]
    return md


def arms_markdown(present: Dict[str, int], sections: Sequence[Tuple[str, str, str, List[ClaimRow]]]) -> List[str]:
    """The "Data or loss?" section (``arms.sections``): empty when there is no pair to compare;
    ``present``: each arm with finished runs and how many."""
    if not sections:
        return []
    md = ["## Data or loss?", "",
          "Arms present: " + ", ".join(f"{arms.label(a)} ({n} runs)" for a, n in present.items()) + ". "
          "Each pair below is compared as the headline compares DPO and PPO (matched KL, the same intervals and "
          "verdict rules): offline vs online DPO isolates the data, online DPO vs RLOO / PPO the loss, RLOO vs PPO "
          "the implementation.", ""]
    for a, b, what, rows in sections:
        md += pair_markdown(a, b, what, rows)
    return md


# --------------------------------------------------------------------------- summary.json's records


def claim_record(r: ClaimRow) -> Dict[str, Any]:
    comp = r.comparison
    pt = comp.points[0] if comp and comp.points else None
    curve = comp.curve if comp is not None else None
    return {"claim": r.claim.id, "section": r.claim.section, "text": r.claim.text, "expect": r.claim.expectation(),
            "quote": r.claim.quote, "condition": r.claim.condition, "in_family": r.in_family,
            "where": verdict_where(r), "margin": margin_text(r.margin),
            "curve": None if curve is None else {"kl": curve.kl.tolist(), "effect": curve.est.tolist(),
                                                 "lo": curve.lo.tolist(), "hi": curve.hi.tolist()},
            "diverged": comp.diverged if comp is not None else {},
            "facet": r.facet.label(), "pooled": r.facet.pooled_text(), "metric": r.metric,
            "n": comp.n if comp else None, "seeds": comp.seeds if comp else None,
            "kl": pt.kl if pt else None, "dpo": pt.fit["dpo"] if pt else None, "ppo": pt.fit["ppo"] if pt else None,
            "effect": pt.effect if pt else None, "ci": list(pt.ci) if pt else None,
            "prompts": comp.prompts if comp else 0,
            "p": None if not math.isfinite(r.p) else r.p, "q": None if not math.isfinite(r.q) else r.q,
            "eligible": r.eligible, "verdict": r.verdict, "reason": r.reason, "caveat": caveat_text(r)}


def matched_record(facet: Facet, comp: Comparison) -> Dict[str, Any]:
    return {"facet": facet.label(), "metric": comp.metric, "points": [
        {"kl": p.kl, "dpo": p.fit["dpo"], "ppo": p.fit["ppo"], "effect": p.effect, "ci": list(p.ci), "p": p.p}
        for p in comp.points]}


# --------------------------------------------------------------------------- report.md


def document(d: Any) -> str:
    """report.md from what ``report.build`` computed and drew (``d``: a ``build.Contents``)."""
    md: List[str] = [f"# Sweep report: {d.name}", "", f"Sweep folder: `{d.root}`. {d.progress}", ""]
    duplicates = d.meta.get("duplicates")
    if duplicates:
        md += [f"Counted once: {len(duplicates)} job folder(s) with the config key of another ("
               + "; ".join(f"`{x['job']}` = `{x['kept']}`" for x in duplicates[:10])
               + (", ..." if len(duplicates) > 10 else "") + ").", ""]
    if d.facet_notes or len(d.facets) > 1:
        md += ["Facets: " + "; ".join([f"{len(d.facets)} ({', '.join(f.label() for f in d.facets)})"] + d.facet_notes)
               + ".", ""]
    # the body: claims, frontier, training curves, matched KL
    md += ["## The seed paper's claims, DPO vs PPO at matched KL", ""]
    if not d.done:
        md += ["No finished jobs yet.", ""]
    elif not d.rows:
        md += ["No facet holds finished runs of both algorithms yet: nothing to compare.", ""]
    else:
        s = d.settings
        md += claims_markdown(d.rows, len(d.comparable) > 1)
        md += ["", RULE.format(n_boot=s["n_boot"], fdr="Benjamini-Hochberg" if s["fdr"] == "bh" else "Holm",
                               min_runs=max(2, s["min_runs"]), min_seeds=s["min_seeds"], alpha=d.alpha,
                               margin=d.same_margin, facets=", ".join(R.FACET_KEYS)), ""]
    md += arms_markdown(d.arms_present, d.arm_sections)
    if d.done:
        md += body_markdown(d.images, d.figures)
        md += ["## Matched KL", "",
               "Fits of each algorithm at three KL points inside the common range (its quartiles in log KL), "
               "per facet: DPO / PPO, then PPO - DPO with its 95% t-interval (bootstrap standard error). Every metric: "
               "appendix.", ""]
        md += matched_markdown(d.matched)
    # the appendix
    md += ["---", "", "# Appendix", ""]
    md += claim_figures_markdown(d.images)
    md += cost_markdown(d.runs, d.progress, d.wall_time_s, d.peak_mem_mb)
    md += configurations_markdown(d.configs, d.split, d.config_spread)
    md += all_metrics_markdown(len(d.all_metrics), d.images)
    if d.pair:
        md += compare_markdown(d.pair[0], d.pair[1], d.drawn, d.out)
    md += ["## Files", "", "- `runs.csv`: one row per job (status, params, metrics, compute)",
           "- `matched_kl.csv`: every metric at matched KL, per facet",
           "- `summary.json`: counts, cost, configurations, facets, the claims table, matched-KL fits", ""]
    return "\n".join(md)
