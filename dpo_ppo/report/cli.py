"""``dpo-ppo-report PATH``: the command line."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import Optional, Sequence, Tuple

from dpo_ppo import results as R
from dpo_ppo.report.build import ReportError, build_report
from dpo_ppo.report.estimator import N_BOOT
from dpo_ppo.report.facets import FACETS
from dpo_ppo.report.verdicts import MIN_RUNS, MIN_SEEDS
from dpo_ppo.report.wandb_run import log_to_wandb


def parse_pair(text: str) -> Tuple[str, str]:
    """``--compare A,B`` -> (A, B), two different arms of ``results.ARMS``; SystemExit naming what
    was wrong otherwise."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or parts[0] == parts[1] or not all(p in R.ARMS for p in parts):
        raise SystemExit(f"dpo-ppo-report: --compare A,B takes two different arms of {', '.join(R.ARMS)}, "
                         f"got {text!r}")
    return parts[0], parts[1]


def main(argv: Optional[Sequence[str]] = None) -> int:
    from dpo_ppo import report

    parser = argparse.ArgumentParser(prog="dpo-ppo-report", description=report.__doc__.split("\n\n")[0],
                                     epilog=report.__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path, help="sweep folder, e.g. multirun/confound")
    parser.add_argument("--compare", nargs="+", metavar="A,B | JOB_A JOB_B",
                        help="A,B: two arms (dpo, online_dpo, ipo, online_ipo, ppo, rloo, grpo) put in a claims "
                             "table of their own at matched KL (B - A), e.g. --compare rloo,ppo; JOB_A JOB_B: two "
                             "job folders (path, or a unique part of the folder name) compared as in the paper: "
                             "losses, divergence, per-head heat maps")
    parser.add_argument("--pool", action="append", default=[], choices=list(FACETS), metavar="KEY",
                        help="pool runs over this shared axis instead of comparing within each value "
                             f"(the table says so); one of {', '.join(FACETS)}; repeatable")
    parser.add_argument("--min-runs", type=int, default=MIN_RUNS,
                        help="runs per algorithm a claim needs for a verdict (default %(default)s, at least 2)")
    parser.add_argument("--min-seeds", type=int, default=MIN_SEEDS,
                        help="distinct seeds per algorithm a claim needs for a verdict (default %(default)s)")
    parser.add_argument("--bootstrap", type=int, default=N_BOOT, help="bootstrap draws (default %(default)s)")
    parser.add_argument("--fdr", choices=("bh", "holm"), default="bh",
                        help="multiple-testing control over the claims table: Benjamini-Hochberg or Holm")
    parser.add_argument("--seed", type=int, default=0, help="the bootstrap's random seed")
    parser.add_argument("--no-figures", dest="figures", action="store_false",
                        help="tables only: no PNGs (seconds instead of a minute on a large sweep)")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default PATH/report)")
    parser.add_argument("--wandb", action=argparse.BooleanOptionalAction, default=None,
                        help="log the report as a W&B run (default: when wandb is installed)")
    parser.add_argument("--wandb-mode", choices=("offline", "online"), default="offline")
    parser.add_argument("--dashboard", action="store_true",
                        help="create (or replace) the sweep's W&B workspace with every panel of the comparison "
                             "(needs the runs uploaded: dpo-ppo-sync; pip install 'dpo-ppo[dashboard]')")
    parser.add_argument("--dashboard-spec", type=Path, metavar="FILE",
                        help="write the workspace's spec (sections, panels, filters, grouping) as JSON; offline")
    args = parser.parse_args(argv)
    if args.min_runs < 2:
        parser.error("--min-runs must be >= 2: one run per side never gives a verdict")
    if args.min_seeds < 1:
        parser.error("--min-seeds must be >= 1")
    if args.bootstrap < 100:
        parser.error("--bootstrap must be >= 100")
    jobs, pair = args.compare, None
    if args.compare and len(args.compare) == 1:  # A,B: two arms
        jobs, pair = None, parse_pair(args.compare[0])
    elif args.compare and len(args.compare) != 2:
        parser.error("--compare takes A,B (two arms) or JOB_A JOB_B (two job folders)")
    try:
        built = build_report(args.path, compare=jobs, compare_arms=pair, out=args.out, pool=args.pool,
                             min_runs=args.min_runs, min_seeds=args.min_seeds, n_boot=args.bootstrap, fdr=args.fdr,
                             seed=args.seed, figures=args.figures)
    except ReportError as err:  # bad input: its one line, exit 1 (as SystemExit(message) exits)
        raise SystemExit(str(err)) from None
    summary, out = built.summary, built.out
    c = summary["counts"]
    print(f"{summary['name']}: {summary['jobs']} jobs ({c[R.FINISHED]} finished, {c[R.FAILED]} failed, "
          f"{c[R.RUNNING]} running, " + (f"{c[R.INTERRUPTED]} interrupted, " if c.get(R.INTERRUPTED) else "")
          + f"{c['no results']} without results, {c['pending']} not started)")
    if summary.get("unreadable"):
        shown = ", ".join(summary["unreadable"][:5]) + (", ..." if len(summary["unreadable"]) > 5 else "")
        print(f"unreadable {R.RESULTS_FILE} (cut short, or not a results object; a relaunch redoes the job): "
              f"{len(summary['unreadable'])} ({shown})")
    for dup in summary.get("duplicates", []):
        print(f"duplicate job (same config key as {dup['kept']}), counted once: {dup['job']}")
    verdicts = [v["verdict"] for v in summary["claims"]]
    if verdicts:
        print("claims: " + ", ".join(f"{verdicts.count(v)} {v}" for v in ("supported", "contradicted", "inconclusive"))
              + (f", {verdicts.count('mixed')} mixed" if "mixed" in verdicts else ""))
    use_wandb = importlib.util.find_spec("wandb") is not None if args.wandb is None else args.wandb
    if use_wandb:
        try:
            run_dir = log_to_wandb(built, args.wandb_mode)
            print(f"W&B {args.wandb_mode} run: {run_dir}")
        except Exception as err:  # the report itself is written; W&B is a copy of it
            print(f"W&B logging failed ({err!r}); the report is still in {out}", file=sys.stderr)
    status = 0
    if args.dashboard or args.dashboard_spec:
        problem = dashboard(built, args.dashboard_spec, save=args.dashboard)
        if problem:  # the report itself is written: say what the workspace needs, then the report
            print(f"dashboard: {problem}", file=sys.stderr)
            status = 2
    print(f"report: {out / 'report.md'}")
    return status


NO_LOGIN = ("no W&B API key (the workspace is saved through W&B's API): run `wandb login`, or set WANDB_API_KEY "
            "(and WANDB_BASE_URL for a private server); --dashboard-spec FILE writes the spec without one")
NO_ENTITY = ("no W&B entity to save the workspace in: set WANDB_ENTITY=<user or team> (or logger.entity in the "
             "sweep's config), or log in so that your default entity is known")


def _entity_and_login(entity: Optional[str]):
    """(entity, problem): the default entity of the login when none was given; a one-line problem
    when there is no API key or no entity."""
    import wandb

    try:
        api = wandb.Api()
    except wandb.errors.UsageError:
        return entity, NO_LOGIN
    except Exception as err:  # a key W&B refuses, or a server (WANDB_BASE_URL) it cannot reach
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        return entity, (f"W&B could not verify the login ({type(err).__name__}: {first}): check WANDB_API_KEY "
                        "(`wandb login`) and WANDB_BASE_URL; --dashboard-spec FILE writes the spec without one")
    if entity:
        return entity, None
    try:
        entity = api.default_entity
    except Exception as err:  # the server cannot be reached, or refuses the key
        return None, f"{NO_ENTITY} (asking W&B for your default entity failed: {str(err).splitlines()[0][:200]})"
    return (entity, None) if entity else (None, NO_ENTITY)


def dashboard(built, spec_file: Optional[Path], save: bool) -> Optional[str]:
    """The sweep's W&B workspace (``report.dashboard``): its spec written to ``spec_file``, and
    with ``save`` the workspace created through W&B's API.  Returns None, or one line saying what
    the save lacked (no API key, no entity, W&B refusing it) and how to set it."""
    import json
    import os

    from dpo_ppo.report import dashboard as D

    runs = built.runs
    logger = next((r.config.get("logger") for r in runs if isinstance(r.config.get("logger"), dict)), {}) or {}
    entity = (os.environ.get("WANDB_ENTITY") or logger.get("entity")
              or next((r.wandb.get("entity") for r in runs if r.wandb.get("entity")), None))
    project = os.environ.get("WANDB_PROJECT") or logger.get("project") or "dpo-ppo"
    problem = None
    if save:
        if importlib.util.find_spec("wandb_workspaces") is None:
            problem = "W&B's wandb-workspaces is not installed: pip install 'dpo-ppo[dashboard]'"
        else:
            entity, problem = _entity_and_login(entity)
    workspace = D.from_report(built, entity or "<your entity>", project)
    if spec_file:
        Path(spec_file).write_text(json.dumps(D.spec(workspace), indent=1))
        print(f"dashboard spec: {spec_file}")
    if save and not problem:
        try:
            workspace.save()
        except Exception as err:  # refused (no such entity or project, no permission) or unreachable
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            return (f"W&B did not save the workspace in {entity}/{project} ({type(err).__name__}: {first}): "
                    "check WANDB_ENTITY / WANDB_PROJECT and that the runs are uploaded (dpo-ppo-sync)")
        print(f"W&B workspace: {workspace.url}")
    return problem
