"""Recording a job: ``results.json`` in its folder and one W&B run.

``results.json`` is rewritten atomically at every stage (status ``running``), and at the end with
status ``finished`` or ``failed`` (with the error and traceback), so a sweep's report can read
finished and unfinished jobs alike.  The W&B run (docs/cluster.md, "What a sweep looks like in
W&B") gets:

- group ``<sweep>/<algorithm>/<overrides but the seed>`` (``run_group``): one group per arm
  configuration, so W&B's grouping averages the seeds; job type = the algorithm; tags
  ``algorithm=``, ``sweep=``, ``model=``;
- the resolved config as asked (plus ``params``, ``provenance``); what the run cost goes to the
  summary as ``compute/*``;
- training curves against ``train/examples`` (``define_metric``), every point at the examples seen
  by the policy it measured: the probe's ``train/kl`` and ``train/p_positive_mean`` (DPO's and
  PPO's alike, ``train.probe``), PPO's rollout statistics as ``train/rollout/*``, TRL's and the
  Trainer's own keys as ``trl/*`` (names and units: ``results.py``, "One vocabulary");
- eval and analysis values, measured once, in the summary only (no one-point history series),
  layer and head indices as integers;
- native tables: ``eval_rows`` (per prompt, joinable on ``prompt_id``), every analysis table,
  divergence per layer (with a bar chart), every per-head grid as (layer, head, value), and the
  analyses of the snapshots as ``over_training/*`` history against ``train/examples``;
- the policy as a model artifact, the shared artifacts as inputs by reference, and
  results.json, analysis.json and eval_rows.csv as run files.

A relaunched or requeued job resumes its run by the id stored in results.json, its history steps
continuing after the earlier attempts'.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from pathlib import Path

from typing import Any, Mapping

from dpo_ppo import results as R
from dpo_ppo.results import RESULTS_FILE, TRAIN_LOG_FILE, JobRecord

log = logging.getLogger(__name__)


def as_record(record: "JobRecord | Mapping[str, Any]") -> JobRecord:
    """A job's record, or one made from a results.json object (``JobRecord.from_json``)."""
    return record if isinstance(record, JobRecord) else JobRecord.from_json(record)


def run_tags(record: "JobRecord | Mapping[str, Any]", wandb_config: dict, extra=()) -> list[str]:
    """W&B tags to filter a project by: algorithm, sweep and model (plus logger.tags)."""
    tags = [f"algorithm={as_record(record).algorithm}"]
    if wandb_config.get("sweep"):
        tags.append(f"sweep={wandb_config['sweep']}")
    model = (wandb_config.get("model") or {}).get("name")
    if model:
        tags.append(f"model={model}")
    tags += [str(t) for t in extra or () if str(t) not in tags]
    return [t[:64] for t in tags]  # W&B's limit


GROUP_MAX = 128  # W&B's limit on a group name


def run_group(record: "JobRecord | Mapping[str, Any]") -> str:
    """The W&B group of a job: its arm configuration, ``<sweep>/<algorithm>/<overrides but the
    seed>`` (e.g. ``smoke/dpo/lr=2e-4``), so that a project grouped by it averages the seeds of one
    configuration.  ``algorithm.`` is dropped from the keys; a name past W&B's limit keeps its
    start and a hash of the whole."""
    record = as_record(record)
    knobs = [o[len("algorithm."):] if o.startswith("algorithm.") else o
             for o in R.seed_group_overrides(record.overrides or ())]
    group = "/".join(str(p) for p in (record.name or "job", record.algorithm or "?",
                                      ",".join(knobs)) if p)
    if len(group) > GROUP_MAX:
        digest = hashlib.sha1(group.encode()).hexdigest()[:10]
        group = group[:GROUP_MAX - 11] + "~" + digest
    return group


# the shared artifacts a job reads (results.json ``artifacts``): W&B artifact type of each
SHARED_INPUTS = {a.recorded_as: a.wandb_type for a in R.SHARED_ARTIFACTS}


def shared_inputs(artifacts: dict) -> list[dict]:
    """The job's shared artifacts as W&B inputs: name ``<kind>-<cache key>`` (the same for every
    job that shares it), type, and the folder it is read from."""
    out = []
    for kind, kind_type in SHARED_INPUTS.items():
        path = artifacts.get(kind)
        if isinstance(path, str) and path:
            path = Path(path).resolve()
            out.append({"name": f"{kind}-{path.name}", "type": kind_type, "path": str(path)})
    return out


def reference_artifact(spec: dict, **metadata):
    """A W&B artifact that points at a folder by reference (nothing uploaded): lineage only."""
    import wandb

    art = wandb.Artifact(spec["name"], type=spec["type"], metadata={"path": spec["path"], **metadata})
    art.add_reference(Path(spec["path"]).as_uri(), checksum=False)
    return art


# columns that name a row of a per-snapshot table rather than measure something
KEY_COLUMNS = ("model", "kind", "site", "subset", "metric", "measure", "type", "layer", "head", "tensor", "prompt",
               "rank")
OVER_TRAINING = R.OVER_TRAINING


def _key_part(column: str, value) -> str:
    """One key column's part of an over-training key: ``layer3`` / ``head1`` (integer indices),
    otherwise the value itself (``policy``, ``induction``)."""
    if column in ("layer", "head") and isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{column}{int(value)}"
    return str(value).replace("/", "_").replace("=", "_")


def over_training_rows(tables: dict) -> list[dict]:
    """History rows from every per-snapshot table of an analysis output: a table with an
    ``examples`` column (``weights_over_training``, ``heads_over_training``, its per-head long
    form, ...) gives, per snapshot, ``over_training/<table>/<key parts>/<column>`` for each numeric
    column, the row's key columns (``KEY_COLUMNS`` or text) as parts (``policy/layer0/head1``),
    and a column named ``value`` left out of the name (``.../induction/layer0/head1``); each row
    carries its ``train/examples``.  Sorted by examples."""
    by_examples: dict = {}
    for name, table in tables.items():
        columns = list(table.get("columns") or ())
        if "examples" not in columns:
            continue
        data = table.get("data") or []
        keys = [c for c in columns if c != "examples" and (c in KEY_COLUMNS or any(isinstance(r[columns.index(c)], str)
                                                                                 for r in data))]
        for r in data:
            row = dict(zip(columns, r))
            examples = row["examples"]
            if not isinstance(examples, (int, float)) or examples < 0:
                continue
            parts = [_key_part(k, row[k]) for k in keys]
            point = by_examples.setdefault(int(examples), {R.EXAMPLES: int(examples)})
            for c, v in row.items():
                if c == "examples" or c in keys or isinstance(v, bool) or not isinstance(v, (int, float)):
                    continue
                point["/".join([OVER_TRAINING + name] + parts + ([] if c == "value" else [c]))] = v
    return [by_examples[k] for k in sorted(by_examples)]


def per_head_rows(grid) -> list[list]:
    """A ``[layer][head]`` grid as rows ``[layer, head, value]`` (a W&B table a heat map reads)."""
    return [[layer, head, value] for layer, row in enumerate(grid or ()) for head, value in enumerate(row or ())]


def define_metrics(run) -> None:
    """Training curves against examples seen.  Eval and analysis values keep W&B's default summary
    (the last value): an explicit ``summary="last"`` would turn every table logged under them
    into a ``{"last": ...}`` dict in the summary instead of a table."""
    run.define_metric(R.EXAMPLES)
    run.define_metric(R.TRAIN + "*", step_metric=R.EXAMPLES)
    run.define_metric(R.TRL + "*", step_metric=R.EXAMPLES)  # TRL's and the Trainer's own keys
    run.define_metric(OVER_TRAINING + "*", step_metric=R.EXAMPLES)  # analyses of the snapshots


def _drop_replayed_rows(path: Path, examples, keys: set) -> None:
    """A resumed attempt logs again from ``examples`` on: drop what a killed attempt logged from
    there (rows past ``examples``, and the row at ``examples`` with the same metrics), and any line
    the kill cut short, so that ``train_log.jsonl`` holds each row once.  A row's place is its
    ``train/examples`` (its "step" where it has none: the same number, except in a DPO, RLOO or
    GRPO log written before issue 33, where "step" was the optimizer step)."""
    kept, same = [], {"step", R.OPTIMIZER_STEP}  # not what tells a replayed row
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        at = row.get(R.EXAMPLES, row.get("step"))
        if at is not None and (at > examples or (at == examples and set(row) - same == set(keys) - same)):
            continue
        kept.append(line + "\n")
    R.write_atomic(path, "".join(kept))


# seconds an online wandb.init may wait for the server before the job goes on offline (W&B's own
# default is 90 s, + 10 s of grace, paid by every job of a sweep without a network); the
# environment variable WANDB_INIT_TIMEOUT (W&B's own name for it) sets another
ONLINE_INIT_TIMEOUT_S = 20.0


def init_online(kwargs: dict):
    """``wandb.init`` online within ``WANDB_INIT_TIMEOUT`` seconds (default
    ``ONLINE_INIT_TIMEOUT_S``); when the server cannot be reached (no network, a firewall, a wrong
    WANDB_BASE_URL), one warning and the run goes on offline under the same id (``dpo-ppo-sync``
    uploads it later).  Returns the run and the mode it runs in."""
    import os

    import wandb

    timeout = float(os.environ.get("WANDB_INIT_TIMEOUT") or ONLINE_INIT_TIMEOUT_S)
    try:
        return wandb.init(mode="online", settings=wandb.Settings(init_timeout=timeout), **kwargs), "online"
    except Exception as e:  # CommError, timeouts, auth failures reaching the server
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        log.warning("W&B online could not reach its server (%s: %s; waited at most %.0f s, WANDB_INIT_TIMEOUT sets "
                    "it); logging offline instead, dpo-ppo-sync uploads the run later", type(e).__name__, first,
                    timeout)
        with contextlib.suppress(Exception):  # the failed run still holds its id in W&B's service process
            wandb.teardown(exit_code=1)
        return wandb.init(mode="offline", **kwargs), "offline"


class Recorder:
    """One job's results.json (its ``JobRecord``, ``record``: the job fills it, ``save`` writes
    it) plus (optionally) its W&B run.

    ``resume_id``: the W&B run id of an earlier attempt of this job (from its results.json); the
    run is resumed under that id (``resume="allow"``), so a relaunched or requeued job adds to one
    run instead of leaving a second one with the same name.  Offline, each attempt writes its own
    ``offline-run-*`` folder with that id; ``resume_step`` (results.json ``wandb.next_step``) is
    where the earlier attempts' history ended, so this attempt's rows continue after it and
    ``dpo-ppo-sync`` uploads the folders in order as one continuous run.
    """

    def __init__(self, job_dir: Path, record: "JobRecord | Mapping[str, Any]", logger_cfg, wandb_config: dict,
                 run_name: str, resume_id: str | None = None, resume_step: int = 0):
        self.job_dir = Path(job_dir)
        self.record = record = as_record(record)
        self.run = None
        if logger_cfg.enabled and logger_cfg.mode != "disabled":
            import wandb

            group = run_group(record)
            run_id = resume_id
            if run_id is None:
                # the id is chosen and recorded before wandb.init: a job killed during init (it can
                # wait on the server) is resumed under this id by its relaunch, not left as a stray
                # empty run beside a second one
                import secrets

                run_id = secrets.token_hex(4)  # 8 characters of [0-9a-f], as W&B's own ids
                record.wandb = {"id": run_id, "mode": logger_cfg.mode, "next_step": 0, "starting": True}
                self.save()
            kwargs = dict(
                project=logger_cfg.project, entity=logger_cfg.entity,
                dir=str(Path(logger_cfg.dir or self.job_dir).resolve()), group=group,
                job_type=record.algorithm, name=run_name, config=wandb_config,
                tags=run_tags(record, wandb_config, logger_cfg.tags), reinit="finish_previous",
                id=run_id, resume="allow" if resume_id else None,
            )
            mode = logger_cfg.mode
            if mode == "online":
                self.run, mode = init_online(kwargs)
            else:
                self.run = wandb.init(mode=mode, **kwargs)
            define_metrics(self.run)
            # History steps continue across attempts: offline, a resumed run starts again at step 0
            # in its new folder, and W&B keeps only rising steps of a run, so the attempts of a
            # requeued job would overwrite (or lose) each other's rows.  The next step is kept in
            # results.json (wandb.next_step) and every row is logged at an explicit step.
            self.step = max(int(self.run.step or 0), int(resume_step or 0) if resume_id else 0)
            record.wandb = {
                "id": self.run.id, "project": self.run.project or logger_cfg.project,
                "entity": self.run.entity or logger_cfg.entity, "mode": mode,
                "url": self.run.url, "group": group, "resumed": bool(resume_id),
                "dir": R.job_path(self.job_dir, Path(self.run.dir).parent), "next_step": self.step,
            }
        self.save()
        self.files(self.job_dir / RESULTS_FILE, at_end=True)  # as it is when the run finishes

    def _log(self, row: dict) -> None:
        """One W&B history row at the next step (see ``step`` above)."""
        self.run.log(row, step=self.step)
        self.step += 1
        self.record.wandb["next_step"] = self.step

    def save(self) -> None:
        R.write_record(self.job_dir, self.record)

    def _save_in_place(self, err: OSError) -> None:
        """results.json's status and error written over the old file in place, padded with spaces
        to its length: rewriting the allocated bytes of a file needs no free space, where the atomic
        writer's new file does (a full disk left results.json ``running``)."""
        path = self.job_dir / RESULTS_FILE
        record = self.record.to_json()
        error = f"{record.get('error') or ''} (results.json could not be rewritten: {err})".strip()
        keep = ("status", "algorithm", "name", "overrides", "params", "config_key", R.ALGORITHM_VERSION, "attempts",
                "trained")
        for short in (dict({k: record.get(k) for k in keep}, error=error, partial=True),
                      {"status": record.get("status"), "error": error[:200], "partial": True}):
            text = R.json_text(short, indent=None).encode()
            try:
                size = path.stat().st_size
                if len(text) <= size:
                    with open(path, "r+b") as f:
                        f.write(text.ljust(size))
                    log.error("%s: %s", path, error)
                    return
            except OSError:
                break
        log.error("%s could not be updated to status %s: %s", path, self.record.status, error)

    def log(self, metrics: dict, step: int | None = None) -> None:
        """A training-curve point (W&B history and ``train_log.jsonl``); ``step`` is the examples
        seen by the policy the row measured (every trainer passes them; ``train/examples`` in
        ``metrics`` wins where a row carries it), written as the row's "step"."""
        path = self.job_dir / TRAIN_LOG_FILE
        if not getattr(self, "_train_log_started", False):  # this attempt's first row
            self._train_log_started = True
            if step is not None and path.exists():
                _drop_replayed_rows(path, metrics.get(R.EXAMPLES, step), set(metrics))
        with open(path, "a") as f:  # strict JSON: a NaN is written as null (the job then ends diverged)
            f.write(json.dumps(R.finite_json({"step": step, **metrics}), allow_nan=False) + "\n")
        if self.run is not None:
            row = dict(metrics)
            if step is not None:  # the examples axis of every train/* curve (define_metrics)
                row.setdefault(R.EXAMPLES, step)
            self._log(row)
            self.save()  # wandb.next_step, for an attempt that resumes after a kill

    def metrics(self, metrics: dict) -> None:
        """Values measured once (evaluation, analysis): kept in results.json and put in the W&B
        summary, not in history (one point is not a curve); layer and head indices as integers
        (``results.typed_value``)."""
        metrics = {k: R.typed_value(k, v) for k, v in metrics.items()}
        if not self.record.has("metrics") or self.record.metrics is None:
            self.record.metrics = {}
        self.record.metrics.update(metrics)
        self.save()
        if self.run is not None:
            self.run.summary.update(metrics)

    def measured(self, prefix: str, values: dict) -> None:
        """Measurements (seconds, tokens, ...) into the W&B summary as ``prefix/key``: the run's
        config stays what was asked (``config.compute`` is the Hydra group, not what it cost)."""
        if self.run is not None:
            self.run.summary.update({f"{prefix}/{k}": v for k, v in values.items()})

    @property
    def offline(self) -> bool:
        return self.run is not None and bool(self.run.settings._offline)

    def inputs(self, artifacts: dict) -> None:
        """Declare the shared artifacts (corpus, reference, classifier, prefs, the reference's
        evaluation) as the run's inputs, by reference.  W&B refuses ``use_artifact`` offline: there
        they are kept in results.json ``wandb.inputs`` and ``dpo-ppo-sync`` declares them once the
        run is uploaded."""
        if self.run is None:
            return
        specs = shared_inputs(artifacts)
        self.record.wandb["inputs"] = specs
        if not self.offline:
            for spec in specs:
                self.run.use_artifact(reference_artifact(spec))
            self.record.wandb["inputs_declared"] = True
        self.save()

    def model(self, folder: Path, how: str = "upload", **metadata) -> None:
        """The trained policy as a W&B model artifact ``policy-<run id>`` (aliases ``latest``,
        ``final``): its files uploaded, or its folder by reference, or nothing (``how``)."""
        if self.run is None or how == "none":
            return
        import wandb

        name = f"policy-{self.run.id}"
        if how == "reference":
            art = reference_artifact({"name": name, "type": "model", "path": str(Path(folder).resolve())}, **metadata)
        else:
            art = wandb.Artifact(name, type="model", metadata={"path": str(Path(folder).resolve()), **metadata})
            art.add_dir(str(folder))
        self.run.log_artifact(art, aliases=["latest", "final"])

    def files(self, *paths: Path, at_end: bool = False) -> None:
        """Files of the job folder saved with the run (results.json, analysis.json, ...): now, or
        (``at_end``) as they are when the run finishes."""
        if self.run is None:
            return
        for path in paths:
            if Path(path).exists():
                self.run.save(str(Path(path).resolve()), base_path=str(self.job_dir.resolve()),
                              policy="end" if at_end else "now")

    def analysis(self, out: dict) -> None:
        """An analysis output (``analysis.suite.run_analysis``) as native W&B panels, beside its
        scalars (``metrics``) and images: every table as ``analysis/<name>``; the divergence per
        layer as a table (layer, weights, biases, all) with a ``wandb.plot.bar``; every per-head
        grid as a table (layer, head, value) under ``analysis/per_head/<name>`` (W&B has no heat-map
        plot: a table panel or custom chart draws it); and every per-snapshot table
        (``over_training_rows``) as history against ``train/examples``."""
        if self.run is None:
            return
        import wandb

        for name, table in (out.get("tables") or {}).items():
            self.table(f"analysis/{name}", table["columns"], table["data"])
        per_layer = (out.get("details") or {}).get("weights_per_layer") or {}
        if per_layer:
            rows = [[int(L), v.get("weight"), v.get("bias"), v.get("all")]
                    for L, v in sorted(per_layer.items(), key=lambda kv: int(kv[0]))]
            t = wandb.Table(columns=["layer", "weights", "biases", "all"], data=rows)
            self._log({"analysis/weights_per_layer": t,
                       "analysis/charts/weights_per_layer": wandb.plot.bar(
                           t, "layer", "all",
                           title="Divergence from the reference per layer (mean of (policy - reference)^2)")})
        for name, grid in (out.get("per_head") or {}).items():
            self.table(f"analysis/per_head/{name}", ["layer", "head", "value"], per_head_rows(grid))
        for row in over_training_rows(out.get("tables") or {}):
            self._log(row)
        self.save()

    def table(self, name: str, columns: list[str], rows: list[list]) -> None:
        if self.run is not None:
            import wandb

            self._log({name: wandb.Table(columns=columns, data=rows)})

    def images(self, images: dict) -> None:
        if self.run is not None and images:
            import wandb

            self._log({f"plots/{k}": wandb.Image(str(v)) for k, v in images.items() if Path(v).exists()})

    def finish(self, status: str, **fields) -> None:
        """The attempt's end: its status and ``fields`` (JobRecord keys: timings, error,
        traceback) recorded, results.json written (in place on a full disk), the run finished."""
        self.record.update(status=status, **fields)
        try:
            self.save()
        except OSError as e:  # a full disk: the status and the error still reach results.json
            self._save_in_place(e)
        if self.run is not None:
            self.run.summary["status"] = status
            if fields.get("error"):
                self.run.summary["error"] = fields["error"]
            self.run.finish(exit_code=0 if status == "finished" else 1)
            self.run = None
