"""Recording a job: ``results.json`` in its folder and one W&B run.

``results.json`` is rewritten atomically at every stage (status ``running``), and at the end with
status ``finished`` or ``failed`` (with the error and traceback), so a sweep's report can read
finished and unfinished jobs alike.  The W&B run gets the resolved config (plus the swept
hyperparameters at top level as ``params`` and the ``provenance`` record), training curves as
``train/*`` against ``train/examples`` (``define_metric``), evaluation and analysis scalars under
their stable names (summary: last value), tags ``algorithm=``, ``sweep=``, ``model=``, a table of
sample completions and the analysis plots.  A relaunched or requeued job resumes its run by the id
stored in results.json.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from dpo_ppo import results as R
from dpo_ppo.results import RESULTS_FILE, TRAIN_LOG_FILE

log = logging.getLogger(__name__)


def write_json(path: Path, data: dict) -> None:
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def run_tags(results: dict, wandb_config: dict, extra=()) -> list[str]:
    """W&B tags to filter a project by: algorithm, sweep and model (plus logger.tags)."""
    tags = [f"algorithm={results.get('algorithm')}"]
    if wandb_config.get("sweep"):
        tags.append(f"sweep={wandb_config['sweep']}")
    model = (wandb_config.get("model") or {}).get("name")
    if model:
        tags.append(f"model={model}")
    tags += [str(t) for t in extra or () if str(t) not in tags]
    return [t[:64] for t in tags]  # W&B's limit


GROUP_MAX = 128  # W&B's limit on a group name


def run_group(results: dict) -> str:
    """The W&B group of a job: its arm configuration, ``<sweep>/<algorithm>/<overrides but the
    seed>`` (e.g. ``smoke/dpo/lr=2e-4``), so that a project grouped by it averages the seeds of one
    configuration.  ``algorithm.`` is dropped from the keys; a name past W&B's limit keeps its
    start and a hash of the whole."""
    knobs = []
    for o in R.identity(results.get("overrides") or ()):
        key = R.override_key(o)
        if key in ("seed", "algorithm"):
            continue
        o = o.lstrip("+~")
        knobs.append(o[len("algorithm."):] if o.startswith("algorithm.") else o)
    group = "/".join(str(p) for p in (results.get("name") or "job", results.get("algorithm") or "?",
                                      ",".join(knobs)) if p)
    if len(group) > GROUP_MAX:
        digest = hashlib.sha1(group.encode()).hexdigest()[:10]
        group = group[:GROUP_MAX - 11] + "~" + digest
    return group


def define_metrics(run) -> None:
    """Training curves against examples seen.  Eval and analysis values keep W&B's default summary
    (the last value): an explicit ``summary="last"`` would turn every table logged under them
    into a ``{"last": ...}`` dict in the summary instead of a table."""
    run.define_metric("train/examples")
    run.define_metric("train/*", step_metric="train/examples")


def _drop_replayed_rows(path: Path, step, keys: set) -> None:
    """A resumed attempt logs again from ``step`` on: drop what a killed attempt logged from there
    (rows past ``step``, and the row at ``step`` with the same metrics), and any line the kill cut
    short, so that ``train_log.jsonl`` holds each step once."""
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        at = row.get("step")
        if at is not None and (at > step or (at == step and set(row) - {"step"} == keys)):
            continue
        kept.append(line + "\n")
    tmp = Path(str(path) + ".tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)


class Recorder:
    """One job's results.json plus (optionally) its W&B run.

    ``resume_id``: the W&B run id of an earlier attempt of this job (from its results.json); the
    run is resumed under that id (``resume="allow"``), so a relaunched or requeued job adds to one
    run instead of leaving a second one with the same name.  Offline, each attempt writes its own
    ``offline-run-*`` folder with that id; ``resume_step`` (results.json ``wandb.next_step``) is
    where the earlier attempts' history ended, so this attempt's rows continue after it and
    ``dpo-ppo-sync`` uploads the folders in order as one continuous run.
    """

    def __init__(self, job_dir: Path, results: dict, logger_cfg, wandb_config: dict, run_name: str,
                 resume_id: str | None = None, resume_step: int = 0):
        self.job_dir = Path(job_dir)
        self.results = results
        self.run = None
        if logger_cfg.enabled and logger_cfg.mode != "disabled":
            import wandb

            group = run_group(results)
            self.run = wandb.init(
                project=logger_cfg.project, entity=logger_cfg.entity, mode=logger_cfg.mode,
                dir=str(Path(logger_cfg.dir or self.job_dir).resolve()), group=group,
                job_type=results["algorithm"], name=run_name, config=wandb_config,
                tags=run_tags(results, wandb_config, logger_cfg.tags), reinit="finish_previous",
                id=resume_id, resume="allow" if resume_id else None,
            )
            define_metrics(self.run)
            # History steps continue across attempts: offline, a resumed run starts again at step 0
            # in its new folder, and W&B keeps only rising steps of a run, so the attempts of a
            # requeued job would overwrite (or lose) each other's rows.  The next step is kept in
            # results.json (wandb.next_step) and every row is logged at an explicit step.
            self.step = max(int(self.run.step or 0), int(resume_step or 0) if resume_id else 0)
            results["wandb"] = {
                "id": self.run.id, "project": self.run.project or logger_cfg.project,
                "entity": self.run.entity or logger_cfg.entity, "mode": logger_cfg.mode,
                "url": self.run.url, "group": group, "resumed": bool(resume_id),
                "dir": str(Path(self.run.dir).parent), "next_step": self.step,
            }
        self.save()

    def _log(self, row: dict) -> None:
        """One W&B history row at the next step (see ``step`` above)."""
        self.run.log(row, step=self.step)
        self.step += 1
        self.results["wandb"]["next_step"] = self.step

    def save(self) -> None:
        write_json(self.job_dir / RESULTS_FILE, self.results)

    def log(self, metrics: dict, step: int | None = None) -> None:
        """A training-curve point (W&B history and ``train_log.jsonl``); ``step`` is the examples
        seen, unless ``metrics`` carries ``train/examples`` itself."""
        path = self.job_dir / TRAIN_LOG_FILE
        if not getattr(self, "_train_log_started", False):  # this attempt's first row
            self._train_log_started = True
            if step is not None and path.exists():
                _drop_replayed_rows(path, step, set(metrics))
        with open(path, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.run is not None:
            row = dict(metrics)
            if step is not None:  # the examples axis of every train/* curve (define_metrics)
                row.setdefault("train/examples", step)
            self._log(row)
            self.save()  # wandb.next_step, for an attempt that resumes after a kill

    def metrics(self, metrics: dict) -> None:
        """Final scalars: kept in results.json, logged once and put in the W&B summary."""
        self.results.setdefault("metrics", {}).update(metrics)
        self.save()
        if self.run is not None:
            self._log(dict(metrics))
            for k, v in metrics.items():
                self.run.summary[k] = v

    def measured(self, prefix: str, values: dict) -> None:
        """Measurements (seconds, tokens, ...) into the W&B summary as ``prefix/key``: the run's
        config stays what was asked (``config.compute`` is the Hydra group, not what it cost)."""
        if self.run is not None:
            self.run.summary.update({f"{prefix}/{k}": v for k, v in values.items()})

    def table(self, name: str, columns: list[str], rows: list[list]) -> None:
        if self.run is not None:
            import wandb

            self._log({name: wandb.Table(columns=columns, data=rows)})

    def images(self, images: dict) -> None:
        if self.run is not None and images:
            import wandb

            self._log({f"plots/{k}": wandb.Image(str(v)) for k, v in images.items() if Path(v).exists()})

    def finish(self, status: str, **fields) -> None:
        self.results.update(status=status, **fields)
        self.save()
        if self.run is not None:
            self.run.summary["status"] = status
            if fields.get("error"):
                self.run.summary["error"] = fields["error"]
            self.run.finish(exit_code=0 if status == "finished" else 1)
            self.run = None
