"""The sweep's report as a W&B run: the claims and runs tables as W&B Tables, the figures, and the
counts in its summary; one run per sweep (``report_run_id``), re-made in place."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from dpo_ppo import results as R
from dpo_ppo.report.load import Run, load_sweep
from dpo_ppo.report.build import Report, sweep_name


def report_run_id(root: Path, name: Optional[str] = None, runs: Optional[Sequence[Run]] = None) -> str:
    """The W&B run id of a sweep's report, from what the sweep is, not where it lies: its name and
    its jobs' identities (their overrides without the keys that do not name a job, as in the
    folder names).  A re-made, copied or moved report is the same run."""
    if runs is None:
        runs, meta = load_sweep(Path(root))
        name = name or sweep_name(root, runs, meta)
    jobs = sorted({",".join(R.folder_key(r.overrides)) for r in runs})
    return "report-" + hashlib.sha1(json.dumps([name, jobs]).encode()).hexdigest()[:16]


def report_group(name: str) -> str:
    """The report's own W&B group (beside the jobs' ``<sweep>/<algorithm>/...`` groups)."""
    return f"{name}/report"


def table_cell(value: Any) -> Any:
    """A value for a W&B table: numbers stay numbers, missing ones (None, "", NaN) become None,
    the rest text."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return None if isinstance(value, float) and not math.isfinite(value) else value
    return str(value)


CLAIM_COLUMNS = ["claim", "section", "text", "expect", "facet", "pooled", "metric", "kl", "dpo", "ppo", "effect",
                 "ci_lo", "ci_hi", "n_dpo", "n_ppo", "p", "q", "verdict", "reason"]


def claims_table_rows(summary: Dict[str, Any]) -> List[List[Any]]:
    out = []
    for c in summary["claims"]:
        ci = c["ci"] or [None, None]
        n = c["n"] or {}
        out.append([c["claim"], c["section"], c["text"], c["expect"], c["facet"], c["pooled"], c["metric"] or "",
                    c["kl"], c["dpo"], c["ppo"], c["effect"], ci[0], ci[1], n.get("dpo"), n.get("ppo"), c["p"], c["q"],
                    c["verdict"], c["reason"]])
    return out


REPORT_STATE = "wandb_run.json"  # in the report folder: the report run's id and next history step


def log_to_wandb(report: Report, mode: str = "offline") -> Optional[str]:
    """The sweep's report run: job type ``report`` in its own group (``<sweep>/report``, tagged
    ``report`` and ``sweep=<name>``), the same run every time the report is re-made (id from the
    sweep's name and jobs, resume allowed), with the claims and runs tables as W&B Tables (typed
    columns) and the plots.  A re-made report logs at history steps after the last one
    (``REPORT_STATE``): offline, each re-make is a new folder starting at step 0, and W&B keeps
    only rising steps of one run."""
    import wandb

    summary, runs, out = report.summary, report.runs, report.out
    logger = next((r.config.get("logger") for r in runs if isinstance(r.config.get("logger"), dict)), {}) or {}
    run_id = report_run_id(Path(summary["sweep_dir"]), summary["name"], runs)
    state_path = Path(out) / REPORT_STATE
    try:
        state = json.loads(state_path.read_text())
    except (OSError, ValueError):
        state = {}
    run = wandb.init(project=logger.get("project") or "dpo-ppo", entity=logger.get("entity"),
                     group=report_group(summary["name"]), job_type="report", name=f"{summary['name']}-report",
                     tags=["report", f"sweep={summary['name']}"[:64]],
                     id=run_id, resume="allow", dir=str(out), mode=mode, reinit="finish_previous",
                     config={"sweep": summary["name"], "sweep_dir": summary["sweep_dir"], "jobs": summary["jobs"],
                             **summary["settings"]})
    try:
        step = max(int(run.step or 0), int(state.get("next_step") or 0) if state.get("id") == run_id else 0)
        header, rows = report.runs_table
        data: Dict[str, Any] = {
            "claims": wandb.Table(columns=CLAIM_COLUMNS, data=[[table_cell(c) for c in r]
                                                               for r in claims_table_rows(summary)]),
            "runs": wandb.Table(columns=header, data=[[table_cell(c) for c in r] for r in rows]),
        }
        for key, name in summary["images"].items():
            data[f"plots/{key}"] = wandb.Image(str(out / name))
        run.log(data, step=step)
        state_path.write_text(json.dumps({"id": run_id, "next_step": step + 1}))
        run.summary.update({f"jobs/{k.replace(' ', '_')}": v for k, v in summary["counts"].items()})
        for verdict in ("supported", "contradicted", "inconclusive"):
            run.summary[f"claims/{verdict}"] = sum(c["verdict"] == verdict for c in summary["claims"])
        run.summary["cost/wall_time_s"] = summary["wall_time_s"]
        if summary["peak_mem_mb"] is not None:
            run.summary["cost/peak_mem_mb"] = summary["peak_mem_mb"]
        return str(Path(run.dir).parent)
    finally:
        run.finish()
