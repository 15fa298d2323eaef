"""Upload every offline W&B run of a sweep, once (the ``dpo-ppo-sync`` command: ``dpo_ppo.cli.sync``).

    dpo-ppo-sync multirun/confound             # every job folder (and report/) below it
    dpo-ppo-sync multirun/confound --dry-run   # list what would be uploaded

Jobs log offline by default (compute nodes often have no internet).  This finds the
``wandb/offline-run-*`` folders of every job below the given folder, leaves out runs W&B already
marked synced (``run-*.wandb.synced``) and jobs still running (their runs are incomplete; they
are synced by the next call), and hands the rest to one ``wandb sync`` call.  A requeued or
relaunched job wrote one folder per attempt under the same run id (``Recorder`` resumes by id,
its history steps continuing after the earlier attempts', results.json ``wandb.next_step``);
``wandb sync`` uploads those in order of start time into that one run, whose history is then
continuous (W&B keeps only rising steps: attempts whose steps overlap, from before that, get a
warning).  After the upload each new run's shared artifacts are declared as its inputs
(``declare_inputs``; W&B refuses ``use_artifact`` offline).  Afterwards each job's
``results.json`` gets ``wandb.synced`` and the run's ``wandb.url``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

from dpo_ppo.results import FAILED, RUNNING, JobRecord, read_record, write_record

SKIP = {".submitit", ".hydra", "__pycache__"}


def job_folders(root: Path) -> list[Path]:
    """Folders below ``root`` (itself included) that hold a ``wandb/`` folder."""
    out = []
    for dirpath, dirnames, _ in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP and d != "wandb")
        if (Path(dirpath) / "wandb").is_dir():
            out.append(Path(dirpath))
    return out


def offline_runs(folder: Path) -> list[Path]:
    """The job's offline runs in order of start time (the folder names start with it)."""
    return sorted(p for p in (folder / "wandb").glob("offline-run-*") if p.is_dir())


def is_synced(run_dir: Path) -> bool:
    files = list(run_dir.glob("run-*.wandb"))
    return bool(files) and all(f.with_suffix(".wandb.synced").exists() for f in files)


def default_entity() -> str | None:
    """Your W&B default entity (asks the server; None when it cannot be reached)."""
    try:
        import wandb

        return wandb.Api().default_entity
    except Exception:
        return None


def run_url(info: dict, fallback_entity: str | None = None) -> str | None:
    """The W&B page of a run, when its entity is known (results.json, WANDB_ENTITY, or yours)."""
    entity = info.get("entity") or os.environ.get("WANDB_ENTITY") or fallback_entity
    if not (entity and info.get("project") and info.get("id")):
        return None
    base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").rstrip("/")
    app = "https://wandb.ai" if base == "https://api.wandb.ai" else base
    return f"{app}/{entity}/{info['project']}/runs/{info['id']}"


def plan(root: Path, include_running: bool = False) -> dict:
    """What a sync of ``root`` would upload: {"sync": [run dirs], "jobs": [job folders],
    "synced": n already synced, "running": [job folders left for later], "overlapping": [job
    folders whose attempts were recorded before the recorder continued history steps across
    attempts (their steps restart at 0 in each folder)]}."""
    todo, jobs, synced, running, overlapping = [], [], 0, [], []
    for folder in job_folders(root):
        runs = offline_runs(folder)
        pending = [r for r in runs if not is_synced(r)]
        synced += len(runs) - len(pending)
        if not pending:
            continue
        record = read_record(folder)
        if record is not None and record.status == RUNNING and not include_running:
            running.append(folder)
            continue
        todo += pending
        jobs.append(folder)
        if len(runs) > 1 and record is not None and "next_step" not in (record.wandb or {}):
            overlapping.append(folder)
    return {"sync": todo, "jobs": jobs, "synced": synced, "running": running, "overlapping": overlapping}


def declare_inputs(info: dict, status: str | None) -> None:
    """Declare a synced run's shared artifacts (results.json ``wandb.inputs``) as its inputs, by
    reference: W&B refuses ``use_artifact`` offline, so the job could only note them.  Re-attaches
    to the uploaded run (``resume="must"``) and leaves it with the job's own exit code."""
    import wandb

    from dpo_ppo.runtime.record import reference_artifact

    run = wandb.init(project=info.get("project"), entity=info.get("entity"), id=info["id"], resume="must",
                     mode="online", reinit="finish_previous")
    try:
        for spec in info.get("inputs") or ():
            run.use_artifact(reference_artifact(spec))
    finally:
        run.finish(exit_code=1 if status == FAILED else 0)


def sync(root: Path, *, dry_run: bool = False, include_running: bool = False, project: str | None = None,
         entity: str | None = None, runner: Callable = subprocess.run, wandb_cmd: Sequence[str] | None = None,
         lineage: bool = True, declare: Callable = declare_inputs) -> dict:
    root = Path(root)
    todo = plan(root, include_running)
    print(f"{root}: {len(todo['sync'])} offline run folder(s) of {len(todo['jobs'])} job(s) to sync, "
          f"{todo['synced']} already synced, {len(todo['running'])} job(s) still running (left for later)")
    for folder in todo["overlapping"]:
        print(f"  warning: {folder} has several attempts recorded before their history steps continued "
              "across attempts (no wandb.next_step in results.json): W&B may keep only the later attempt's "
              "rows where their steps overlap", file=sys.stderr)
    if dry_run or not todo["sync"]:
        for path in todo["sync"]:
            print(f"  {path}")
        return todo
    cmd = list(wandb_cmd or [shutil.which("wandb") or "wandb"]) + ["sync"]
    if project:
        cmd += ["--project", project]
    if entity:
        cmd += ["--entity", entity]
    cmd += [str(p) for p in todo["sync"]]
    done = runner(cmd)
    todo["returncode"] = done.returncode
    fallback = None
    if done.returncode == 0 and not (entity or os.environ.get("WANDB_ENTITY")):
        fallback = default_entity()  # the runs went to the user's default entity
    for folder in todo["jobs"]:
        record: JobRecord | None = read_record(folder)
        if record is None or not isinstance(record.wandb, dict):
            continue
        info = record.wandb
        if project:
            info["project"] = project
        if entity:
            info["entity"] = entity
        info["synced"] = all(is_synced(r) for r in offline_runs(folder))
        info["url"] = info.get("url") or run_url(info, fallback)
        if lineage and info["synced"] and info.get("inputs") and not info.get("inputs_declared"):
            try:
                declare(info, record.status)
                info["inputs_declared"] = True
            except Exception as err:  # the run is uploaded; its lineage waits for the next sync
                print(f"{folder}: could not declare the shared artifacts as inputs ({err!r}); "
                      "the next dpo-ppo-sync tries again", file=sys.stderr)
        write_record(folder, record)  # the job's own writer: atomic, strict JSON
    if done.returncode != 0:
        print(f"wandb sync exited with {done.returncode}; re-run to retry what was not synced", file=sys.stderr)
    return todo
