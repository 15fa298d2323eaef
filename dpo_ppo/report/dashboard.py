"""The sweep's W&B workspace, scripted: every panel of the comparison from what the runs log.

    dpo-ppo-report multirun/smoke --dashboard            # after dpo-ppo-sync: saves the workspace
    dpo-ppo-report multirun/smoke --dashboard-spec out.json   # only writes the spec (offline)

Built with W&B's own ``wandb-workspaces`` (``pip install 'dpo-ppo[dashboard]'``).  One workspace
per sweep, its runs filtered by the tag ``sweep=<name>`` (every job and the report carry it) and
grouped by run group (``<sweep>/<algorithm>/<arm>``: the seeds of one configuration averaged,
DPO's groups in blues, PPO's in oranges).  Sections, top to bottom (docs/cluster.md):

(a) frontier   reward against KL to the reference, every run, coloured by its group;
(b) training   train/kl, train/reward_mean, DPO's loss and PPO's penalised return against
               train/examples, seeds averaged with their range;
(c) divergence the per-layer divergence (bar chart of analysis/weights/msd_layer*), its table, and
               divergence over training (over_training/* against train/examples);
(d) heads      the per-head tables (layer, head, value) and the ablation table;
(e) claims     the report run's claims and runs tables.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence

from dpo_ppo import results as R

DPO_COLORS = ("#1f77b4", "#4a90d9", "#08519c", "#6baed6", "#2171b5", "#9ecae1")
PPO_COLORS = ("#ff7f0e", "#e6550d", "#fd8d3c", "#a63603", "#fdae6b", "#d94801")


def _algorithm_of_group(group: str) -> Optional[str]:
    parts = group.split("/")
    return parts[1] if len(parts) > 1 and parts[1] in R.ALGORITHMS else None


def group_colors(groups: Iterable[str]) -> Dict[str, str]:
    """A colour per run group: blues for DPO's, oranges for PPO's, so a frontier reads by algorithm."""
    out, seen = {}, {"dpo": 0, "ppo": 0}
    for g in sorted(set(groups)):
        algorithm = _algorithm_of_group(g)
        if algorithm is None:
            continue
        palette = DPO_COLORS if algorithm == "dpo" else PPO_COLORS
        out[g] = palette[seen[algorithm] % len(palette)]
        seen[algorithm] += 1
    return out


def build_workspace(name: str, entity: str, project: str, *, groups: Sequence[str] = (), layers: int = 0,
                    per_head: Sequence[str] = ()):
    """The workspace (``wandb_workspaces.workspaces.Workspace``) for sweep ``name``; nothing is
    sent.  ``groups``: the jobs' run groups (for the colours); ``layers``: transformer blocks (one
    bar per ``analysis/weights/msd_layer{L}``); ``per_head``: the names of the per-head grids."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    examples = "train/examples"

    def line(title: str, ys: List[str], **kw):
        return wr.LinePlot(title=title, x=examples, y=ys, title_x="examples seen", groupby_aggfunc="mean",
                           groupby_rangefunc="minmax", **kw)

    frontier = wr.ScatterPlot(title="(a) reward vs KL to the reference", x=wr.SummaryMetric(R.KL), y=wr.SummaryMetric(R.REWARD))
    training = [
        line("(b) KL to the reference (nats): DPO and PPO", ["train/kl"]),
        line("(b) reward (classifier p positive)", ["train/reward_mean"]),
        line("DPO loss", ["train/loss"]),
        line("PPO KL-penalised return", ["train/penalized_return_mean"]),
    ]
    layer_metrics = [wr.SummaryMetric(f"analysis/weights/msd_layer{L}") for L in range(layers)]
    divergence = [
        wr.BarPlot(title="(c) mean-square divergence per layer", metrics=layer_metrics, orientation="v"),
        wr.WeavePanelSummaryTable(table_name="analysis/weights_per_layer"),
        line("(c) divergence over training", ["over_training/weights_over_training/msd_weights",
                                              "over_training/weights_over_training/msd_biases"]),
        line("(c) divergence per layer over training",
             [f"over_training/weights_over_training/msd_layer{L}" for L in range(layers)] or
             ["over_training/weights_over_training/msd_all"]),
    ]
    heads = [wr.WeavePanelSummaryTable(table_name=f"analysis/per_head/{n}") for n in per_head]
    heads.append(wr.WeavePanelSummaryTable(table_name="analysis/ablation"))
    claims = [wr.WeavePanelSummaryTable(table_name="claims"), wr.WeavePanelSummaryTable(table_name="runs"),
              wr.WeavePanelSummaryTable(table_name="eval_rows")]
    sections = [
        ws.Section(name="(a) reward-KL frontier", panels=[frontier], is_open=True),
        ws.Section(name="(b) training curves", panels=training, is_open=True),
        ws.Section(name="(c) weight and bias divergence", panels=divergence, is_open=True),
        ws.Section(name="(d) head ablation", panels=heads, is_open=True),
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
    layers = 1 + max((int(k.rsplit("msd_layer", 1)[1]) for r in runs for k in r.metrics
                      if k.startswith("analysis/weights/msd_layer") and k.rsplit("msd_layer", 1)[1].isdigit()),
                     default=-1)
    per_head = sorted({k for r in runs for k in r.per_head})
    return build_workspace(name, entity, project, groups=groups, layers=layers, per_head=per_head)


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
            for field in ("title", "x", "y", "metrics", "table_name"):
                value = getattr(p, field, None)
                if value not in (None, [], ""):
                    d[field] = [str(v) for v in value] if isinstance(value, list) else str(value)
            panels.append(d)
        out["sections"].append({"name": section.name, "panels": panels})
    return out
