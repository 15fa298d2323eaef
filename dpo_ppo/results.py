"""The results contract and a job's identity: what a job folder holds, how to read it back, and
which config it belongs to.  Torch-free (the sweeper and the report import it without torch).

Every module that writes or reads a job's results imports its names from here (the recorder and
``run_job`` write; the report, ``dpo-ppo-analyze --job`` and the sweeper read), so the file names,
statuses, metric names, params keys and the keys that do not name a job live in one place.

A job folder holds:

- ``results.json`` (``RESULTS_FILE``): a JSON object, rewritten atomically at every stage::

      status      "running" | "finished" | "failed" | "interrupted" (STATUSES; interrupted:
                  stopped by SIGTERM/SIGINT, resumed by a relaunch like a running job)
      algorithm   "dpo" | "ppo"                                (ALGORITHMS)
      name        the sweep / experiment name (the W&B group)
      overrides   the job's command-line overrides (its folder: ``folder_key``)
      params      the swept hyperparameters, flat (PARAM_KEYS)
      config      the full resolved config
      metrics     {metric name: float} (METRIC names below)
      compute     what the run cost (COMPUTE_KEYS), when the trainer reports it
      analysis    {"per_head": {name: layer x head grid}, "images": {name: path in the folder},
                   "over_training": {table: {"columns": [...], "data": [[...], ...]}}}
                  (OVER_TRAINING_TABLES: one row per snapshot, "examples" first)
      artifacts   paths of the shared artifacts (reference, classifier, corpus, ref_eval, ...)
      prompts     {"train": N, "train_distinct": reviews they come from, "eval": N,
                  "eval_distinct": = eval (evaluation never reuses a review)}      (PROMPT_KEYS)
      wandb       the job's W&B run: id (the same across attempts), project, entity, mode, url
                  (online, or after dpo-ppo-sync), synced
      provenance  git commit + dirty flag, library versions, SLURM ids, host, accelerator
      config_key  hash of the config without the keys that do not change results (``config_key``)
      wall_time_s, peak_mem_mb, stage_seconds, error, traceback, attempts, ...
      compute_attempts  one entry per attempt: {attempt, status, wall_s, train_s, accelerator_s}
                  (``compute``'s seconds are their sums; its steps and tokens are the trained
                  policy's, carried across attempts by the checkpoint it resumed from)

- ``train_log.jsonl`` (``TRAIN_LOG_FILE``): one JSON object per logged training step,
  ``{"step": N, "train/...": value, "train/examples": examples seen}``;
- ``eval_rows.csv`` (``EVAL_ROWS_FILE``): one row per evaluation prompt (``EVAL_ROW_COLUMNS``);
  the reference's rows are ``<artifacts.ref_eval>/rows.csv`` (``REF_ROWS_FILE``), same columns.
  Rows pair across jobs by ``prompt_id``.

``run_job`` returns ``SKIPPED`` for a job finished before; it is never written to a file.

Identity, in two parts.  A job's *folder* is named by its command-line overrides without the keys
that say where or how it runs (``EXCLUDED_KEYS``; ``folder_key``).  The folder name alone would
let an edited sweep file or default find the same folder again and reuse its results under
another config, so results.json also records the *config key* (``config_key``: a hash of the full
resolved config without the ``VOLATILE`` keys), and ``config_drift`` names the keys that differ
between the config a folder's results were made with and the config asked for now.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

# --------------------------------------------------------------------------- files

RESULTS_FILE = "results.json"
TRAIN_LOG_FILE = "train_log.jsonl"
EVAL_ROWS_FILE = "eval_rows.csv"
REF_ROWS_FILE = "rows.csv"  # in the reference evaluation artifact (results["artifacts"]["ref_eval"])
TRACEBACK_FILE = "traceback.txt"
SWEEP_FILE = "sweep.json"  # written by the sweeper in the sweep folder
# analysis tables with one row per snapshot (column "examples" first) that results.json carries, so
# that a report draws them over training without reading analysis.json
OVER_TRAINING_TABLES = ("weights_over_training", "heads_over_training")

# --------------------------------------------------------------------------- statuses

RUNNING, FINISHED, FAILED = "running", "finished", "failed"
# stopped by SIGTERM/SIGINT (a scheduler, Ctrl-C): unfinished, resumed by a relaunch like a running one
INTERRUPTED = "interrupted"
STATUSES = (RUNNING, FINISHED, FAILED, INTERRUPTED)
UNFINISHED = (RUNNING, INTERRUPTED)
SKIPPED = "skipped"  # run_job's answer for a job finished before (never in results.json)
# the sweeper's (sweep.json; never in results.json): a planned job not launched yet, and what a
# prepare=true job answers once the shared artifacts are built
PENDING = "pending"
PREPARED = "prepared"

ALGORITHMS = ("dpo", "ppo")

# --------------------------------------------------------------------------- metrics

POLICY, REFERENCE, IMPROVEMENT = "eval/policy/", "eval/reference/", "eval/improvement/"
EVAL_METRICS = ("reward_mean", "reward_std", "score_logit_mean", "gradient_loss", "binary_loss",
                "completion_len", "distinct_1", "distinct_2", "kl_to_ref", "kl_to_ref_std", "kl_to_ref_k1",
                "gold_reward_mean", "gold_reward_std", "gold_score_logit_mean", "gold_binary_loss")
ANALYSIS = "analysis/"

PROMPTS = "prompts"  # results.json: how many prefixes and how many distinct reviews they come from
PROMPT_KEYS = ("train", "train_distinct", "eval", "eval_distinct")


def policy_metric(name: str) -> str:
    return POLICY + name


def reference_metric(name: str) -> str:
    return REFERENCE + name


KL = policy_metric("kl_to_ref")
REWARD = policy_metric("reward_mean")
REF_REWARD = reference_metric("reward_mean")
# the gold reward (eval.gold), present where the job had one: the proxy is REWARD, the classifier
# the policy was trained against; gold is a reward no training step saw
GOLD_REWARD = policy_metric("gold_reward_mean")
REF_GOLD_REWARD = reference_metric("gold_reward_mean")

# analysis scalars that are indices, counts or timings: cost and bookkeeping, not findings
_NOT_FINDINGS = ("time_s", "num_", "_top_layer", "_top_head", "top_layer", "top_head", "plotted_layer",
                 "top_change_layer", "top_change_head")


def is_finding(metric: str) -> bool:
    """A metric that says something about the trained policy: eval/policy/* and analysis/*
    except the reference model's own numbers, timings, counts and layer/head indices."""
    if metric.startswith(POLICY):
        return True
    if not metric.startswith(ANALYSIS):
        return False
    if any(part in metric for part in _NOT_FINDINGS):
        return False
    return "/reference/" not in metric


# --------------------------------------------------------------------------- params

PARAM_KEYS = ("algorithm", "beta", "kl_target", "kl_coef", "kl_controller", "seed", "examples", "lr",
              "num_completions", "prefix_len", "prefix_len_max", "completion_len", "value_model",
              "compute", "optimizer_steps", "model", "data", "classifier")
KNOBS = {"dpo": "beta", "ppo": "kl_target"}  # what places a run along KL, per algorithm
# shared axes: runs that differ in one of these are never pooled silently by the report
FACET_KEYS = ("completion_len", "prefix_len", "prefix_len_max", "examples", "value_model", "compute",
              "model", "data", "classifier")
COMPUTE_KEYS = ("optimizer_steps", "examples_seen", "trained_tokens", "generated_tokens", "train_s",
                "wall_s", "accelerator_s")
EVAL_ROW_COLUMNS = ("prompt_id", "p_positive", "completion_len", "kl", "kl_k1")
EVAL_ROW_OPTIONAL = ("gold_p_positive",)  # written and read where present (a job with a gold reward)

# Override keys that say where or how a job runs, not what it computes: left out of the job's
# folder name and identity. Must equal conf/config.yaml's
# hydra.job.config.override_dirname.exclude_keys (a test checks).
# batch sizes and jobs per GPU change speed, never results (sampling is keyed): a sweep started on
# CPUs keeps its folders on a GPU
HARDWARE_KEYS = ("hardware", "hardware.gen_batch_size", "hardware.forward_batch_size", "hardware.train_micro_batch",
                 "hardware.analysis_batch_size", "hardware.jobs_per_gpu", "hardware.static_cache",
                 "hardware.static_cache_min_tokens",
                 "eval.batch_size", "analysis.batch_size")
EXCLUDED_KEYS = ("logger", "logger.mode", "logger.project", "logger.entity", "device", "threads", "force",
                 "cache_dir", "sweep", "name", *HARDWARE_KEYS)


def override_key(override: str) -> str:
    """``+algorithm.lr=1`` -> ``algorithm.lr``."""
    return str(override).split("=", 1)[0].lstrip("+~")


def folder_key(overrides: Iterable[str], exclude: Iterable[str] = EXCLUDED_KEYS) -> List[str]:
    """What names a job's folder: its overrides without the excluded keys (exact key match, as
    Hydra's override_dirname does), sorted."""
    exclude = set(exclude)
    return sorted(o for o in map(str, overrides) if override_key(o) not in exclude)


def changes_results(key: str) -> bool:
    """Whether an override key can change a job's results: not the seed (a repeat), not an
    excluded key or anything under one (``logger.dir``), not Hydra's own settings."""
    top = key.split(".")[0]
    return not (key in EXCLUDED_KEYS or top in EXCLUDED_KEYS or top in ("seed", "hydra"))


# --------------------------------------------------------------------------- the config's identity
# top-level keys that do not change a job's results: those left out of the job folder names
# (EXCLUDED_KEYS, = hydra.job.config.override_dirname.exclude_keys), and prepare
# (a dotted key stays dotted unless its whole group is excluded: eval.batch_size, not eval)
VOLATILE = tuple(dict.fromkeys([k.split(".")[0] if k.split(".")[0] in EXCLUDED_KEYS else k
                                for k in EXCLUDED_KEYS] + ["prepare"]))


# keys added after jobs had recorded their configs, with the default that keeps the older
# behaviour: at that default they are left out of a job's identity (and of the artifact keys,
# ``without_late_defaults``), so a folder or cache made before them is still the same job
LATE_DEFAULTS = {"classifier": {"negative_label": None}, "algorithm": {"trust_region": "shrink"},
                 # the gold reward only adds eval metrics: a job finished before it trained and
                 # scored the same (it lacks the gold_* metrics, which readers treat as absent)
                 "eval": {"gold": "auto", "gold_positive_label": 1, "gold_negative_label": None}}


def without_late_defaults(group: str, values: dict) -> dict:
    """``values`` of config group ``group`` without the LATE_DEFAULTS keys at their default."""
    late = LATE_DEFAULTS.get(group, {})
    return {k: v for k, v in values.items() if not (k in late and v == late[k])}


def config_identity(config: dict, volatile: Iterable[str] = VOLATILE) -> dict:
    """``config`` without the volatile keys (top-level like ``logger`` or dotted like
    ``eval.batch_size``) and without late keys at their default (LATE_DEFAULTS)."""
    volatile = set(volatile)
    out = {}
    for k, v in config.items():
        if k in volatile:
            continue
        nested = {key.split(".", 1)[1] for key in volatile if key.startswith(f"{k}.")}
        out[k] = {ck: cv for ck, cv in v.items() if ck not in nested} if nested and isinstance(v, dict) else v
        if isinstance(out[k], dict):
            out[k] = without_late_defaults(k, out[k])
    return out


def config_key(config: dict) -> str:
    """results.json's ``config_key``: one per distinct job (volatile keys left out)."""
    blob = json.dumps(config_identity(config), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _leaves(node: Any, prefix: str = "") -> dict:
    if isinstance(node, dict):
        out: dict = {}
        for k, v in node.items():
            out.update(_leaves(v, f"{prefix}{k}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: node}


_MISSING = object()


def config_diff(old: dict, new: dict) -> list[str]:
    """``key: old -> new`` for every leaf that differs (volatile keys left out), sorted."""
    a, b = _leaves(config_identity(old)), _leaves(config_identity(new))
    lines = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key, _MISSING), b.get(key, _MISSING)
        if x != y:
            show = lambda v: "(absent)" if v is _MISSING else json.dumps(v, default=str)  # noqa: E731
            lines.append(f"{key}: {show(x)} -> {show(y)}")
    return lines


class ConfigDrift(RuntimeError):
    """A job folder holds results (or a checkpoint) made under another config."""

    def __init__(self, job_dir, diff: list[str]):
        self.diff = diff
        shown = "; ".join(diff[:12]) + (f"; ... and {len(diff) - 12} more" if len(diff) > 12 else "")
        super().__init__(f"config drift: {job_dir} holds results made with another config "
                         f"({len(diff)} key{'s' if len(diff) != 1 else ''} differ: {shown}). "
                         f"force=true re-runs the job from scratch under the new config")


def config_drift(job_dir, recorded: Optional[Dict[str, Any]], config: dict) -> Optional[ConfigDrift]:
    """The drift between the results a folder holds (``recorded``, a results.json object) and
    ``config`` (``as_dict`` of the config asked for now); None when they agree or nothing with a
    config is recorded."""
    if not recorded or not recorded.get("config"):
        return None
    diff = config_diff(dict(recorded["config"]), config)
    return ConfigDrift(job_dir, diff) if diff else None


# --------------------------------------------------------------------------- reading and writing


def write_atomic(path: Path, data: "str | bytes") -> Path:
    """Write ``path`` so that a reader sees the old file or the new one, never half of one: the
    text goes to a temporary file beside it (named by this process), then ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    (tmp.write_bytes if isinstance(data, bytes) else tmp.write_text)(data)
    os.replace(tmp, path)
    return path


def write_json(path: Path, data: Any) -> Path:
    """``data`` as indented JSON at ``path``, atomically (``write_atomic``); the folder is made."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, json.dumps(data, indent=1, default=str))


def write_results(folder: Path, results: Dict[str, Any]) -> Path:
    """Write ``folder/results.json`` atomically."""
    return write_json(Path(folder) / RESULTS_FILE, results)


def read_results(path: Path) -> Optional[Dict[str, Any]]:
    """A job's results (``path`` is the job folder or its results.json); None when missing,
    half-written, not a JSON object or without a status (``{}``: every writer sets one)."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("status"), str) else None


def unreadable(path: Path) -> bool:
    """``path`` (a job folder or its results.json) holds a results.json that ``read_results``
    cannot use: cut short, not JSON, not an object, no status."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    return path.is_file() and read_results(path) is None


def scalar_metrics(metrics: Any) -> Dict[str, float]:
    """The finite numbers of a metrics dict (booleans and non-numbers dropped)."""
    out: Dict[str, float] = {}
    for key, value in (metrics or {}).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(float(value)):
            out[str(key)] = float(value)
    return out


@dataclass
class JobResults:
    """One job folder read back (see the module docstring)."""

    dir: Path
    status: str
    algorithm: Optional[str] = None
    name: Optional[str] = None
    params: Dict[str, Any] = field(default_factory=dict)
    overrides: List[str] = field(default_factory=list)
    metrics: Dict[str, float] = field(default_factory=dict)
    compute: Dict[str, Any] = field(default_factory=dict)
    per_head: Dict[str, Any] = field(default_factory=dict)
    images: Dict[str, str] = field(default_factory=dict)
    artifacts: Dict[str, Any] = field(default_factory=dict)
    config: Dict[str, Any] = field(default_factory=dict)
    wall_time_s: Optional[float] = None
    peak_mem_mb: Optional[float] = None
    error: Optional[str] = None
    wandb: Dict[str, Any] = field(default_factory=dict)  # id, project, entity, mode, url, synced
    over_training: Dict[str, Dict[str, List[Any]]] = field(default_factory=dict)  # table -> column -> values
    config_key: Optional[str] = None  # hash of the config (``config_key``): one per distinct job


def _columns(table: Any) -> Dict[str, List[Any]]:
    """{"columns": [...], "data": [[...], ...]} -> {column: values}; {} when malformed."""
    try:
        cols, data = list(table["columns"]), list(table["data"])
        return {str(c): [row[i] for row in data] for i, c in enumerate(cols)}
    except (KeyError, TypeError, IndexError):
        return {}


def read_job(folder: Path) -> Optional[JobResults]:
    """The job in ``folder``; None when it holds no readable results.json."""
    folder = Path(folder)
    data = read_results(folder)
    if data is None:
        return None
    params = dict(data.get("params") or {})
    algorithm = data.get("algorithm") or params.get("algorithm")
    analysis = data.get("analysis") or {}
    return JobResults(
        dir=folder, status=str(data.get("status") or RUNNING),
        algorithm=str(algorithm).lower() if algorithm else None, name=data.get("name"),
        params=params, overrides=[str(o) for o in data.get("overrides") or []],
        metrics=scalar_metrics(data.get("metrics")), compute=dict(data.get("compute") or {}),
        per_head=dict(analysis.get("per_head") or {}),
        images={str(k): str(v) for k, v in (analysis.get("images") or {}).items()},
        artifacts=dict(data.get("artifacts") or {}), config=dict(data.get("config") or {}),
        wall_time_s=data.get("wall_time_s"), peak_mem_mb=data.get("peak_mem_mb"), error=data.get("error"),
        wandb=dict(data.get("wandb") or {}), config_key=data.get("config_key"),
        over_training={str(k): _columns(v) for k, v in (analysis.get("over_training") or {}).items()},
    )


def read_eval_rows(path: Path) -> Optional[Dict[str, List[float]]]:
    """Per-prompt evaluation rows as columns (``EVAL_ROW_COLUMNS``, and the ``EVAL_ROW_OPTIONAL``
    ones the file has), from a job folder's eval_rows.csv or a rows.csv file; None when missing or
    lacking a column."""
    path = Path(path)
    if path.is_dir():
        path = path / EVAL_ROWS_FILE
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if not set(EVAL_ROW_COLUMNS) <= set(reader.fieldnames or ()):
                return None
            present = list(EVAL_ROW_COLUMNS) + [c for c in EVAL_ROW_OPTIONAL if c in reader.fieldnames]
            cols: Dict[str, List[float]] = {c: [] for c in present}
            for row in reader:
                for c in present:
                    value = row[c]
                    cols[c].append(value if c == "prompt_id" else float(value))
    except (OSError, ValueError):
        return None
    return cols if cols["prompt_id"] else None


def write_eval_rows(path: Path, rows: Sequence[Dict[str, Any]]) -> None:
    """Write per-prompt rows (dicts with ``EVAL_ROW_COLUMNS``, and the ``EVAL_ROW_OPTIONAL`` ones
    the first row has) to a CSV file, atomically."""
    import io

    text = io.StringIO(newline="")
    optional = [c for c in EVAL_ROW_OPTIONAL if rows and c in rows[0]]
    writer = csv.DictWriter(text, fieldnames=list(EVAL_ROW_COLUMNS) + optional, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, text.getvalue())


def read_train_log(folder: Path) -> List[Dict[str, Any]]:
    """The job's training-curve rows, one per step, in order. Rows logged at the same step are
    merged, later values winning: DPO logs its probe (``train/kl``) and the Trainer's loss as two
    rows at one step, and an attempt that was killed and resumed logs a step again. Unreadable
    lines are skipped."""
    path = Path(folder) / TRAIN_LOG_FILE
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    rows: Dict[Any, Dict[str, Any]] = {}
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            key = row.get("train/examples", row.get("step"))
            rows.setdefault(("i", i) if key is None else key, {}).update(row)
    return list(rows.values())
