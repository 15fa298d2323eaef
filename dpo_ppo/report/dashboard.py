"""The sweep's W&B workspace, scripted: every panel of the comparison from what the runs log.

    dpo-ppo-report multirun/smoke --dashboard            # after dpo-ppo-sync: saves the workspace
    dpo-ppo-report multirun/smoke --dashboard-spec out.json   # only writes the spec (offline)

Built with W&B's own ``wandb-workspaces`` (``pip install 'dpo-ppo[dashboard]'``).  One workspace
per sweep, its runs filtered by the tag ``sweep=<name>`` (every job and the report carry it) and
grouped by run group (``<sweep>/<algorithm>/<arm>``: the seeds of one configuration averaged,
DPO's groups in blues, PPO's in oranges, RLOO's in greens, GRPO's in reds).  Sections, top to bottom (docs/cluster.md):

(a) frontier   p positive against KL to the reference (nats), every run, coloured by its group;
(b) training   the probe's KL (nats) and p positive (DPO and PPO on the same prefixes, the same
               cadence, from examples 0), DPO's loss (trl/loss), PPO's own rollout statistics
               and penalised return against train/examples, seeds averaged with their range;
(c) divergence the per-layer weight divergence (bar chart of analysis/weights/msd_layer*), its
               table, divergence over training (over_training/* against train/examples), and the
               per-layer activation divergence (bar chart of the logit-lens KL per layer, and
               the activation plots);
(d) heads      heads over training (the largest change of each measure, against examples, and its
               plot), the head-ablation and head-change heat maps (the runs' images), and the
               ablation table;
(e) claims     the report run's claims and runs tables.

Heat maps are the analysis's own images (``plots/<name>``, logged by every job): W&B has no
heat-map panel, and a per-head table panel shows numbers, not a map.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence

from dpo_ppo import results as R

DPO_COLORS = ("#1f77b4", "#4a90d9", "#08519c", "#6baed6", "#2171b5", "#9ecae1")
PPO_COLORS = ("#ff7f0e", "#e6550d", "#fd8d3c", "#a63603", "#fdae6b", "#d94801")
RLOO_COLORS = ("#2ca02c", "#31a354", "#006d2c", "#74c476", "#238b45", "#a1d99b")
GRPO_COLORS = ("#d62728", "#cb181d", "#a50f15", "#fb6a4a", "#ef3b2c", "#fc9272")
# a colour family per trainer (online DPO and IPO are DPO's groups: their group name says the arm)
PALETTES = {"dpo": DPO_COLORS, "ppo": PPO_COLORS, "rloo": RLOO_COLORS, "grpo": GRPO_COLORS}


def _algorithm_of_group(group: str) -> Optional[str]:
    parts = group.split("/")
    return parts[1] if len(parts) > 1 and parts[1] in PALETTES else None


def group_colors(groups: Iterable[str]) -> Dict[str, str]:
    """A colour per run group, a colour family per trainer (DPO blues, PPO oranges, RLOO greens,
    GRPO reds), so a frontier reads by algorithm."""
    out: Dict[str, str] = {}
    seen = dict.fromkeys(PALETTES, 0)
    for g in sorted(set(groups)):
        algorithm = _algorithm_of_group(g)
        if algorithm is None:
            continue
        palette = PALETTES[algorithm]
        out[g] = palette[seen[algorithm] % len(palette)]
        seen[algorithm] += 1
    return out


# the analysis images the dashboard shows (``plots/<name>`` in every job's run; analysis/*.py)
ACTIVATION_IMAGES = ("activations_kl", "activations_cos", "logit_lens_kl")
HEAD_IMAGES = ("heads_over_training", "ablation_lm_loss_increase", "ablation_grad_loss_delta", "heads_change")
# over_training/heads_over_training/<measure>_max_abs_change: the measures (analysis.heads.HEAD_TYPES + one)
HEAD_MEASURES = ("previous_token", "duplicate_token", "induction", "sentiment_attention")


def build_workspace(name: str, entity: str, project: str, *, groups: Sequence[str] = (), layers: int = 0,
                    per_head: Sequence[str] = (), images: Optional[Sequence[str]] = None,
                    head_measures: Sequence[str] = HEAD_MEASURES):
    """The workspace (``wandb_workspaces.workspaces.Workspace``) for sweep ``name``; nothing is
    sent.  ``groups``: the jobs' run groups (for the colours); ``layers``: transformer blocks (one
    bar per layer); ``per_head``: the names of the per-head grids (kept for callers: their heat
    maps are the runs' images); ``images``: the analysis images the runs hold (default: all of
    ``ACTIVATION_IMAGES`` and ``HEAD_IMAGES``)."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    examples = R.EXAMPLES
    have = set(ACTIVATION_IMAGES + HEAD_IMAGES if images is None else images)

    def line(title: str, ys: List[str], **kw):
        return wr.LinePlot(title=title, x=examples, y=ys, title_x="examples seen by the policy",
                           groupby_aggfunc="mean", groupby_rangefunc="minmax", **kw)

    def media(title: str, names: Sequence[str]):
        keys = [f"plots/{n}" for n in names if n in have]
        return [wr.MediaBrowser(title=title, media_keys=keys, num_columns=len(keys))] if keys else []

    frontier = wr.ScatterPlot(title="(a) p positive (eval, 0-1) vs KL to the reference (eval, nats)",
                              x=wr.SummaryMetric(R.KL), y=wr.SummaryMetric(R.REWARD))
    training = [
        line("(b) KL to the reference (nats), probe: every algorithm", [R.TRAIN_KL]),
        line("(b) p positive (0-1), probe: every algorithm", [R.TRAIN_P_POSITIVE]),
        line("DPO loss (nats)", [R.TRL_LOSS]),
        line("DPO implicit reward margin (beta x log-ratio, nats)", [R.TRL_MARGINS]),
        line("PPO / RLOO / GRPO rollout: KL to the reference (nats; GRPO's k3)", [R.ROLLOUT_KL]),
        line("PPO / RLOO / GRPO rollout: p positive (0-1)", [R.ROLLOUT_P_POSITIVE]),
        line("PPO KL-penalised return (reward_kind's scale)", [R.ROLLOUT_RETURN]),
        line("PPO KL coefficient (reward per nat of KL)", [R.KL_COEF]),
    ]
    layer_metrics = [wr.SummaryMetric(f"{R.MSD_LAYER}{L}") for L in range(layers)]
    lens_metrics = [wr.SummaryMetric(f"{R.LOGIT_LENS_KL_LAYER}{L}") for L in range(layers)]
    divergence = [
        wr.BarPlot(title="(c) weight divergence per layer (mean square of policy - reference)", metrics=layer_metrics,
                   orientation="v"),
        wr.WeavePanelSummaryTable(table_name=R.WEIGHTS_PER_LAYER_TABLE),
        line("(c) weight divergence over training (mean square)",
             [f"{R.OVER_TRAINING}weights_over_training/msd_weights", f"{R.OVER_TRAINING}weights_over_training/msd_biases"]),
        line("(c) weight divergence per layer over training (mean square)",
             [f"{R.OVER_TRAINING}weights_over_training/msd_layer{L}" for L in range(layers)] or
             [f"{R.OVER_TRAINING}weights_over_training/msd_all"]),
        wr.BarPlot(title="(c) activation divergence per layer: logit-lens KL (nats per token)", metrics=lens_metrics,
                   orientation="v"),
        wr.WeavePanelSummaryTable(table_name=R.ACTIVATIONS_TABLE),
        *media("(c) activation divergence per layer (cosine, KL in nats)", ACTIVATION_IMAGES),
    ]
    heads = [
        line("(d) heads over training: largest change of a head from the reference",
             [f"{R.OVER_TRAINING}heads_over_training/{m}_max_abs_change" for m in head_measures]),
        *media("(d) heads over training", ("heads_over_training",)),
        *media("(d) head ablation heat maps (LM loss increase in nats; change in 1 - p positive)",
               ("ablation_lm_loss_increase", "ablation_grad_loss_delta")),
        *media("(d) head change heat map (policy - reference)", ("heads_change",)),
        wr.WeavePanelSummaryTable(table_name=R.ABLATION_TABLE),
    ]
    claims = [wr.WeavePanelSummaryTable(table_name="claims"), wr.WeavePanelSummaryTable(table_name="runs"),
              wr.WeavePanelSummaryTable(table_name="eval_rows")]
    sections = [
        ws.Section(name="(a) reward-KL frontier", panels=[frontier], is_open=True),
        ws.Section(name="(b) training curves", panels=training, is_open=True),
        ws.Section(name="(c) weight and activation divergence", panels=divergence, is_open=True),
        ws.Section(name="(d) heads: over training and ablation", panels=heads, is_open=True),
        ws.Section(name="(e) claims", panels=claims, is_open=True),
    ]
    return ws.Workspace(
        entity=entity, project=project, name=f"dpo-ppo: {name}", sections=sections,
        settings=ws.WorkspaceSettings(x_axis=examples),
        runset_settings=ws.RunsetSettings(filters=[ws.Tags().isin([f"sweep={name}"[:64]])],
                                          groupby=[ws.Metric("Group")], group_colors=group_colors(groups)),
    )


def from_report(report, entity: str, project: str):
    """The workspace of a report's sweep, sized from its runs (groups, layers, per-head grids)."""
    from dpo_ppo.runtime.record import run_group

    runs, name = report.runs, report.summary["name"]
    groups = [run_group({"name": name, "algorithm": r.algorithm, "overrides": r.overrides})
              for r in runs if r.algorithm]
    layers = 1 + max((int(k[len(R.MSD_LAYER):]) for r in runs for k in r.metrics
                      if k.startswith(R.MSD_LAYER) and k[len(R.MSD_LAYER):].isdigit()),
                     default=-1)
    per_head = sorted({k for r in runs for k in r.per_head})
    images = sorted({k for r in runs for k in r.images}) or None
    return build_workspace(name, entity, project, groups=groups, layers=layers, per_head=per_head, images=images)


def spec(workspace) -> Dict[str, Any]:
    """What a workspace holds, as plain data (sections, panels, filters, grouping): what the tests
    check and ``--dashboard-spec`` writes."""
    out = {"name": workspace.name, "entity": workspace.entity, "project": workspace.project,
           "x_axis": workspace.settings.x_axis,
           "filters": str(workspace.runset_settings.filters),
           "groupby": [str(g) for g in workspace.runset_settings.groupby],
           "group_colors": dict(workspace.runset_settings.group_colors), "sections": []}
    for section in workspace.sections:
        panels = []
        for p in section.panels:
            d = {"type": type(p).__name__}
            for field in ("title", "x", "y", "metrics", "table_name", "media_keys"):
                value = getattr(p, field, None)
                if value not in (None, [], ""):
                    d[field] = [str(v) for v in value] if isinstance(value, list) else str(value)
            panels.append(d)
        out["sections"].append({"name": section.name, "panels": panels})
    return out
