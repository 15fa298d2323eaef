"""The results contract and a job's identity: what a job folder holds, how to read it back, and
which config it belongs to.  Torch-free (the sweeper and the report import it without torch).

Every module that writes or reads a job's results imports its names from here (the recorder and
``run_job`` write; the report, ``dpo-ppo-analyze --job`` and the sweeper read), so the file names,
statuses, metric names, params keys and the keys that do not name a job live in one place.

A job folder holds:

- ``results.json`` (``RESULTS_FILE``): a JSON object, rewritten atomically at every stage::

      status      "running" | "finished" | "failed" | "interrupted" | "diverged" (STATUSES;
                  interrupted: stopped by SIGTERM/SIGINT, resumed by a relaunch like a running
                  job; diverged: a non-finite loss, KL or reward ended it, ``error`` says where)
      algorithm   "dpo" | "ppo" | "rloo" | "grpo"              (TRAINERS; params "arm": ARMS)
      name        the sweep / experiment name (the W&B group)
      overrides   the job's command-line overrides (its folder: ``folder_key``)
      params      the swept hyperparameters, flat (PARAM_KEYS)
      config      the full resolved config
      metrics     {metric name: float} (METRIC names below)
      compute     what the run cost (COST_KEYS), when the trainer reports it: the measured cost,
                  read in code as ``JobResults.cost`` (not the config group ``compute``, the
                  schedule mode, which is ``config.compute`` and ``params.compute``)
      analysis    {"per_head": {name: layer x head grid}, "images": {name: path in the folder},
                   "over_training": {table: {"columns": [...], "data": [[...], ...]}}}
                  (OVER_TRAINING_TABLES: one row per snapshot, "examples" first)
      artifacts   paths of the shared artifacts (SHARED_ARTIFACTS' ``recorded_as``) and the
                  reference's analyses;
                  the job's own files (``policy``) relative to the job folder (``job_path``), so
                  a copied or moved folder reads its own
      replaces    after force=true (or a relaunch after a failure or a divergence): what the
                  cleared attempt was (status, attempts, its W&B run id, the files cleared)
      snapshots   the ``ex_*`` folders training wrote in ``snapshots/`` (``missing_snapshots``)
      non_finite  where the writer found a NaN or infinity and wrote null instead (``json_text``)
      prompts     {"train": N, "train_distinct": reviews they come from, "eval": N,
                  "eval_distinct": = eval (evaluation never reuses a review)}      (PROMPT_KEYS)
      wandb       the job's W&B run: id (the same across attempts), project, entity, mode, url
                  (online, or after dpo-ppo-sync), synced
      provenance  git commit + dirty flag, library versions, SLURM ids, host, accelerator
      config_key  hash of the config without the keys that do not change results, and of the
                  algorithm's version (``config_key``)
      algorithm_version  the version of what the algorithm's trainer computes (ALGORITHM_VERSIONS;
                  absent in folders made before versions were recorded: UNRECORDED_VERSION)
      wall_time_s, peak_mem_mb, stage_seconds, error, traceback, attempts, ...
      compute_attempts  one entry per attempt: {attempt, status, wall_s, train_s, accelerator_s}
                  (``compute``'s seconds are their sums; its steps and tokens are the trained
                  policy's, carried across attempts by the checkpoint it resumed from)

- ``train_log.jsonl`` (``TRAIN_LOG_FILE``): one JSON object per logged training row,
  ``{"step": examples seen, "train/...": value, "train/examples": examples seen}``, with
  ``"train/optimizer_step"`` in the TRL trainers' rows (DPO, RLOO, GRPO; before issue 33 their
  "step" was that optimizer step: readers use ``train/examples``);
- ``eval_rows.csv`` (``EVAL_ROWS_FILE``): one row per evaluation prompt (``EVAL_ROW_COLUMNS``);
  the reference's rows are ``<artifacts.ref_eval>/rows.csv`` (``REF_ROWS_FILE``), same columns.
  Rows pair across jobs by ``prompt_id``.

results.json's content is one typed record, ``JobRecord`` (``to_json`` / ``from_json``,
``write_record`` / ``read_record``): the job fills it, the recorder writes it, every reader reads
it, keeping the file byte for byte what the job wrote when it was a plain dict.  ``run_job``
returns a ``JobOutcome`` (status, folder, metrics, error), ``SKIPPED`` for a job finished before
(never written to a file).  ``sweep.json`` (``SWEEP_FILE``) holds the ``SWEEP_*`` keys and one
``SweepEntry`` per planned job.

Identity, in two parts.  A job's *folder* is named by its command-line overrides without the keys
that say where or how it runs (``EXCLUDED_KEYS``; ``folder_key``).  The folder name alone would
let an edited sweep file or default find the same folder again and reuse its results under
another config, so results.json also records the *config key* (``config_key``: a hash of the full
resolved config without the ``VOLATILE`` keys), and ``config_drift`` names the keys that differ
between the config a folder's results were made with and the config asked for now.  What the
config cannot say, a change to what an algorithm's trainer computes, is its *version*
(``ALGORITHM_VERSIONS``), recorded in results.json and part of the config key: a folder made by
another version is config drift, never resumed as done nor pooled by the report.

"The same job" is ``same_job`` (equal config keys), a configuration's seeds are one *seed group*
(``seed_group_key``), and the artifacts jobs share are ``SHARED_ARTIFACTS``: each defined here once.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

# --------------------------------------------------------------------------- files

RESULTS_FILE = "results.json"
TRAIN_LOG_FILE = "train_log.jsonl"
EVAL_ROWS_FILE = "eval_rows.csv"
REF_ROWS_FILE = "rows.csv"  # in the reference evaluation artifact (results["artifacts"]["ref_eval"])
TRACEBACK_FILE = "traceback.txt"
SWEEP_FILE = "sweep.json"
POLICY_DIR, SNAPSHOTS_DIR = "policy", "snapshots"  # the trained policy and its snapshots, in the job folder
JOB_OWN_FILES = (POLICY_DIR, SNAPSHOTS_DIR)  # written by the sweeper in the sweep folder
# analysis tables with one row per snapshot (column "examples" first) that results.json carries, so
# that a report draws them over training without reading analysis.json
OVER_TRAINING_TABLES = ("weights_over_training", "heads_over_training")

# The artifacts jobs share (built once in the cache, dpo_ppo.data.cache): the cache kind
# (``artifact_specs``' key), the results.json ``artifacts`` key it is recorded under, its W&B
# artifact type, and the algorithms that read it (None: all).  The prepare step builds these, the
# recorder declares them as the W&B run's inputs.  (The reference's analyses, ``ref_analysis``, are
# shared too, but built per analysis by the jobs themselves.)


@dataclass(frozen=True)
class SharedArtifact:
    kind: str
    recorded_as: str
    wandb_type: str
    algorithms: Optional[Tuple[str, ...]] = None
    offline_only: bool = False  # read only by an offline job (DPO's pairs: online DPO samples its own)


SHARED_ARTIFACTS = (
    SharedArtifact("corpus", "corpus", "dataset"),
    SharedArtifact("base", "reference", "model"),
    SharedArtifact("classifier", "classifier", "model"),
    SharedArtifact("prefs", "prefs", "dataset", algorithms=("dpo",), offline_only=True),
    SharedArtifact("ref_eval", "ref_eval", "evaluation"),
)


def online_dpo(algorithm: Optional[str], rounds: Optional[int] = 1) -> bool:
    """Whether a job is online DPO: DPO whose pairs the policy resamples, ``algorithm.rounds`` > 1.
    The one definition (``config.schedule.is_online_dpo`` reads it off a typed config for the
    arm, the job's train stage, the prepare step and the sweeper's prepare cover)."""
    return algorithm == "dpo" and (rounds or 1) > 1


def shared_artifacts(algorithm: Optional[str] = None, rounds: int = 1) -> Tuple[SharedArtifact, ...]:
    """The shared artifacts a job of ``algorithm`` reads (None: every one of any algorithm); for
    online DPO (``online_dpo``) none that only an offline job reads."""
    return tuple(a for a in SHARED_ARTIFACTS
                 if (algorithm is None or a.algorithms is None or algorithm in a.algorithms)
                 and not (a.offline_only and online_dpo(algorithm, rounds)))


# --------------------------------------------------------------------------- statuses

RUNNING, FINISHED, FAILED = "running", "finished", "failed"
DIVERGED = "diverged"  # stopped for a non-finite loss or KL: counted and named by the report, never fitted
# stopped by SIGTERM/SIGINT (a scheduler, Ctrl-C): unfinished, resumed by a relaunch like a running one
INTERRUPTED = "interrupted"
STATUSES = (RUNNING, FINISHED, FAILED, INTERRUPTED, DIVERGED)
SKIPPED = "skipped"  # run_job's answer for a job finished before (never in results.json)
# the sweeper's (sweep.json; never in results.json): a planned job not launched yet, and what a
# prepare=true job answers once the shared artifacts are built
PENDING = "pending"
PREPARED = "prepared"

ALGORITHMS = ("dpo", "ppo")
# every trainer a job can run (conf/algorithm/); ALGORITHMS is the headline pair the claims compare
TRAINERS = ("dpo", "ppo", "rloo", "grpo")
# the arms of a sweep (params "arm", ``config.schedule.arm``): a trainer, and for DPO its data
# (online: rounds > 1) and its loss (ipo)
ARMS = ("dpo", "online_dpo", "ipo", "online_ipo", "ppo", "rloo", "grpo")

# --------------------------------------------------------------------------- what an algorithm computes

# The version of what each algorithm's trainer computes, a part of every job's identity (results.json
# ``algorithm_version``, and ``config_key``): a change to what a trainer computes that the config
# cannot say (a new default behaviour, a fixed loss, another trust-region statistic) bumps it, so
# folders made before show as config drift instead of being resumed as done or pooled with newer
# ones.  The rule is test-enforced (tests/test_identity.py): ALGORITHM_FINGERPRINTS holds a hash of
# the trainer's code (ALGORITHM_CODE, ``code_fingerprint``: its syntax tree without docstrings, so
# comments and formatting do not count); when the code changes, either bump the version (behaviour
# changed) or update the fingerprint (it did not).
#   dpo 1: as before versions were recorded.
#   ppo 2: the trust region shrinks a crossing step by default (folders made before versions ran
#          with stop, also those without an ``algorithm.trust_region`` key) and reads max(k3,
#          Bernoulli KL) per prompt.
#   ppo 3: fused AdamW (torch.optim.AdamW(fused=True) where the device has the kernel, CPU included;
#          the for-loop AdamW before: the same update up to float rounding, so not the same numbers),
#          the policy's and value model's gradients clipped in one pass (clip_apart: the same
#          numbers as two clip_grad_norm_ calls), and the trust region's line search bisecting over
#          1/2 ... 1/64 of a step (the same fraction as halving in turn where the statistic grows
#          along the step; not where it does not).
# An algorithm without an entry (a new one) is at version UNRECORDED_VERSION: nothing older can be
# mistaken for it; the test asks for its entry, code and fingerprint all the same.
ALGORITHM_VERSION = "algorithm_version"  # results.json's key
#   rloo 1, grpo 1: TRL's RLOOTrainer / GRPOTrainer (train/rl), as first recorded.
ALGORITHM_VERSIONS = {"dpo": 1, "ppo": 3, "rloo": 1, "grpo": 1}
# what a results.json without ``algorithm_version`` was made by: the code before versions existed
UNRECORDED_VERSION = 1
# the trainer modules (under dpo_ppo/, without ``.py``; a package's every module) whose code is
# what the algorithm computes
ALGORITHM_CODE = {"dpo": ("train/dpo", "train/online_dpo", "data/prefs"), "ppo": ("train/ppo", "train/sampling"),
                  "rloo": ("train/rl",), "grpo": ("train/rl",)}
ALGORITHM_FINGERPRINTS = {"dpo": "82562c3bcc3fe7fe", "ppo": "e92c432b303eba58", "rloo": "dcd212c1edf74ad0",
                          "grpo": "dcd212c1edf74ad0"}


def algorithm_version(algorithm: Optional[str]) -> int:
    """The version of what ``algorithm``'s trainer computes in this code (ALGORITHM_VERSIONS;
    UNRECORDED_VERSION for an algorithm without an entry)."""
    return ALGORITHM_VERSIONS.get(str(algorithm), UNRECORDED_VERSION)


def recorded_version(record: Any) -> int:
    """The algorithm version a results.json object (or ``JobResults``) was made by:
    UNRECORDED_VERSION when it recorded none."""
    value = record.get(ALGORITHM_VERSION) if isinstance(record, Mapping) else getattr(record, ALGORITHM_VERSION, None)
    return UNRECORDED_VERSION if value is None else int(value)


def version_drift(algorithm: Optional[str], recorded: Optional[int]) -> Optional[str]:
    """``algorithm_version (ppo): 1 (not recorded) -> 2`` when results made by version ``recorded``
    (None: not recorded) are not what this code computes; None when they are."""
    now = algorithm_version(algorithm)
    then = UNRECORDED_VERSION if recorded is None else int(recorded)
    if then == now:
        return None
    why = " (not recorded: made before algorithm versions were)" if recorded is None else ""
    return f"{ALGORITHM_VERSION} ({algorithm}): {then}{why} -> {now}"


def _without_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return tree


def _normal(node: Any) -> Any:
    """A syntax tree as nested tuples, empty and None fields left out: the same on every Python
    the project supports (``ast.dump`` omits them from 3.13 on, and 3.12 added empty fields;
    ``code_fingerprint`` of both trainers measured equal on 3.11.7, 3.12.1 and 3.13.0)."""
    if isinstance(node, ast.AST):
        fields = [(name, _normal(value)) for name, value in ast.iter_fields(node)
                  if value is not None and value != []]
        return (type(node).__name__, tuple(fields))
    if isinstance(node, list):
        return tuple(_normal(n) for n in node)
    return node


def code_fingerprint(algorithm: str, root: Optional[Path] = None) -> str:
    """A hash of the code that says what ``algorithm`` computes (ALGORITHM_CODE, under ``root``:
    the dpo_ppo package by default): each module's syntax tree without docstrings, so comments,
    formatting and docs leave it alone. Reads the source files (no import: torch-free)."""
    root = Path(root) if root is not None else Path(__file__).resolve().parent
    files: List[Path] = []
    for entry in ALGORITHM_CODE[algorithm]:
        folder, module = root / entry, root / f"{entry}.py"
        files += sorted(folder.rglob("*.py")) if folder.is_dir() else [module]
    digest = hashlib.sha256()
    for path in files:
        tree = _without_docstrings(ast.parse(path.read_text(), filename=str(path)))
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(repr(_normal(tree)).encode() + b"\0")
    return digest.hexdigest()[:16]

# --------------------------------------------------------------------------- metrics

# One vocabulary for what a job logs (results.json, train_log.jsonl, its W&B run) and what every
# reader (the report, the dashboard, dpo-ppo-analyze) looks up: the names are defined here once.
# Units:
#   p_positive  the classifier's probability of the positive class, in [0, 1];
#   score       its log-odds, log p(pos) - log p(neg), in nats (PPO's reward at reward_kind=logit);
#   KL          nats per completion: the sum over its tokens, mean over completions;
#   examples    training prefixes (PPO) or preference pairs (DPO) the measured policy had seen.
POLICY, REFERENCE, IMPROVEMENT = "eval/policy/", "eval/reference/", "eval/improvement/"
P_POSITIVE_MEAN, P_POSITIVE_STD, SCORE_MEAN = "p_positive_mean", "p_positive_std", "score_mean"
# the gold reward's (eval.gold: a scorer no training step saw), where the job has one
GOLD_P_POSITIVE_MEAN, GOLD_P_POSITIVE_STD = "gold_" + P_POSITIVE_MEAN, "gold_" + P_POSITIVE_STD
GOLD_SCORE_MEAN, GOLD_BINARY_LOSS = "gold_" + SCORE_MEAN, "gold_binary_loss"
GOLD_GRADIENT_LOSS = "gold_gradient_loss"  # 1 - gold p_positive, the seed's gradient loss on the gold scorer
EVAL_METRICS = (P_POSITIVE_MEAN, P_POSITIVE_STD, SCORE_MEAN, "gradient_loss", "binary_loss",
                "completion_len", "distinct_1", "distinct_2", "kl_to_ref", "kl_to_ref_std", "kl_to_ref_k1",
                GOLD_P_POSITIVE_MEAN, GOLD_P_POSITIVE_STD, GOLD_SCORE_MEAN, GOLD_BINARY_LOSS, GOLD_GRADIENT_LOSS)
# evaluation names before issue 34 (results.json files written then still read: ``scalar_metrics``)
LEGACY_EVAL_NAMES = {"reward_mean": P_POSITIVE_MEAN, "reward_std": P_POSITIVE_STD, "score_logit_mean": SCORE_MEAN}
ANALYSIS = "analysis/"

# training curves: every row at EXAMPLES, the examples seen by the policy it measured (the x-axis of
# every trainer's rows, and train_log.jsonl's "step"); the TRL trainers' rows also carry
# OPTIMIZER_STEP, the optimizer steps that policy had taken (PPO's rows carry instead
# "train/optimizer_steps", the steps of one update)
TRAIN = "train/"
EXAMPLES = TRAIN + "examples"
OPTIMIZER_STEP = TRAIN + "optimizer_step"
# the probe (``train.probe``): both algorithms, the same fixed training prefixes, the same cadence
# (before training, every logger.probe_every examples and at the end)
TRAIN_KL = TRAIN + "kl"                         # nats, k1 on the policy's own samples
TRAIN_KL_EXACT = TRAIN + "kl_exact"             # nats, full next-token distributions
TRAIN_P_POSITIVE = TRAIN + P_POSITIVE_MEAN      # p_positive of prefix + sampled completion
TRAIN_SCORE = TRAIN + SCORE_MEAN                # the classifier's log-odds (nats)
PROBE_S = TRAIN + "probe_s"                     # seconds the probe took
PROBE_KEYS = (TRAIN_KL, TRAIN_KL_EXACT, TRAIN_P_POSITIVE, TRAIN_SCORE, PROBE_S)
# PPO's own statistics of each rollout batch (its training prefixes, the policy before the update)
ROLLOUT = TRAIN + "rollout/"
ROLLOUT_KL = ROLLOUT + "kl"
ROLLOUT_P_POSITIVE = ROLLOUT + P_POSITIVE_MEAN
ROLLOUT_SCORE = ROLLOUT + SCORE_MEAN            # the reward before the KL penalty (reward_kind's scale)
ROLLOUT_RETURN = ROLLOUT + "penalized_return_mean"
KL_COEF = TRAIN + "kl_coef"
POLICY_LOSS = TRAIN + "policy_loss"
# TRL's and the Trainer's own log keys, under their own prefix and names: trl/loss (DPO's loss),
# trl/rewards/{chosen,rejected,margins,accuracies} (DPO's implicit rewards, beta * log-ratios in
# nats: not the classifier's), trl/logps/*, trl/grad_norm, trl/learning_rate, trl/epoch
TRL = "trl/"
TRL_LOSS = TRL + "loss"
TRL_MARGINS = TRL + "rewards/margins"
# the analyses of the policy snapshots, against EXAMPLES: over_training/<table>/<key values>/<column>
OVER_TRAINING = "over_training/"

PROMPTS = "prompts"  # results.json: how many prefixes and how many distinct reviews they come from
PROMPT_KEYS = ("train", "train_distinct", "eval", "eval_distinct")


def policy_metric(name: str) -> str:
    return POLICY + name


def reference_metric(name: str) -> str:
    return REFERENCE + name


KL = policy_metric("kl_to_ref")
REWARD = policy_metric(P_POSITIVE_MEAN)
REF_REWARD = reference_metric(P_POSITIVE_MEAN)
# the gold reward (eval.gold), present where the job had one: the proxy is REWARD, the classifier
# the policy was trained against; gold is a reward no training step saw
GOLD_REWARD = policy_metric(GOLD_P_POSITIVE_MEAN)
REF_GOLD_REWARD = reference_metric(GOLD_P_POSITIVE_MEAN)
# analysis scalars that are layer or head indices: integers in results.json and W&B
INDEX_SUFFIXES = ("top_layer", "top_head", "plotted_layer", "top_change_layer", "top_change_head")


def current_name(metric: str) -> str:
    """A metric's name in this vocabulary: evaluation names written before issue 34
    (``eval/*/reward_mean``, ``reward_std``, ``score_logit_mean``) renamed, others as they are."""
    if metric.startswith(("eval/",)):
        head, _, last = metric.rpartition("/")
        if last in LEGACY_EVAL_NAMES:
            return f"{head}/{LEGACY_EVAL_NAMES[last]}"
    return metric


def typed_value(metric: str, value: Any) -> Any:
    """A value as it is recorded: a layer or head index (``INDEX_SUFFIXES``) as an int."""
    if (metric.endswith(INDEX_SUFFIXES) and isinstance(value, float) and math.isfinite(value)
            and value == int(value)):
        return int(value)
    return value

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

PARAM_KEYS = ("algorithm", "arm", "rounds", "loss_type", "beta", "kl_target", "kl_coef", "kl_controller", "seed", "examples", "lr",
              "num_completions", "prefix_len", "prefix_len_max", "completion_len", "value_model",
              "compute", "optimizer_steps", "model", "data", "classifier")
KNOBS = {"dpo": "beta", "ppo": "kl_target", "rloo": "beta", "grpo": "beta"}  # what places a run along KL, per algorithm
# shared axes: runs that differ in one of these are never pooled silently by the report
FACET_KEYS = ("completion_len", "prefix_len", "prefix_len_max", "examples", "value_model", "compute",
              "model", "data", "classifier")


def schedule_is_matched(config: Dict[str, Any]) -> bool:
    """Whether a job's recorded ``config`` (results.json) took the schedule ``compute=matched``
    gives in any case: one optimizer step per ``compute.prefixes_per_step`` training prefixes, one
    pass (``config.schedule.apply_compute``).  Then its compute mode changes nothing it did: the
    default DPO job (batch_size 16, epochs 1) is a matched-compute job under either name, and the
    report lets it stand for both (``report.facets``)."""
    algo, compute = config.get("algorithm") or {}, config.get("compute") or {}
    n, name = compute.get("prefixes_per_step", 16), algo.get("name")
    if name == "dpo":
        return algo.get("batch_size") == n and algo.get("epochs", 1.0) == 1
    if name in ("rloo", "grpo"):
        return algo.get("batch_size") == n and algo.get("num_iterations", 1) == 1
    if name == "ppo":
        return (algo.get("ppo_epochs") == 1 and isinstance(algo.get("rollout_prefixes"), int)
                and algo.get("num_minibatches") == algo["rollout_prefixes"] // n)
    return False


# results.json ``compute``: what training cost (the measured cost; ``params``' "compute" is the mode)
COST_KEYS = ("optimizer_steps", "examples_seen", "trained_tokens", "generated_tokens", "train_s",
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


def _algorithm_of(config: Mapping) -> Optional[str]:
    algorithm = config.get("algorithm") if isinstance(config, Mapping) else None
    name = algorithm.get("name") if isinstance(algorithm, Mapping) else None
    return None if name is None else str(name)


def config_key(config: dict, version: Optional[int] = None) -> str:
    """results.json's ``config_key``: one per distinct job (volatile keys left out).  The
    algorithm's version (``version``, else this code's: ``algorithm_version``) is part of it,
    left out at UNRECORDED_VERSION like a late key at its default, so the keys of folders made
    before versions were recorded stay what they were."""
    identity = config_identity(config)
    algorithm = _algorithm_of(config)
    version = algorithm_version(algorithm) if version is None else version
    if algorithm is not None and version != UNRECORDED_VERSION:
        identity = {**identity, ALGORITHM_VERSION: version}
    blob = json.dumps(identity, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def job_identity(config: dict) -> Dict[str, Any]:
    """What results.json records of a job's identity when ``config`` (``as_dict``) runs in this
    code: its ``config_key`` and its algorithm's version."""
    return {"config_key": config_key(config), ALGORITHM_VERSION: algorithm_version(_algorithm_of(config))}


def same_job(a: dict, b: dict) -> bool:
    """Whether two configs (``as_dict``) are one job in this code: the same config key.  The
    sweeper merges grid points by it (after ``sweep.grid.job_signature``'s cheap guess on the
    overrides), and the report counts folders with one recorded ``config_key`` once."""
    return config_key(a) == config_key(b)


# --------------------------------------------------------------------------- seed groups


def seed_group_overrides(overrides: Iterable[str], params: Optional[Mapping[str, Any]] = None) -> List[str]:
    """The overrides that set a job's configuration apart from its seeds: those that can change
    results (``changes_results``: not the seed, not where or how it runs), without the algorithm
    and without any whose key ``params`` already holds (``lr`` or ``algorithm.lr``), ``+``
    dropped, sorted.  The W&B group's name (runtime.record.run_group) and ``seed_group_key``."""
    params = params or {}
    out = []
    for o in map(str, overrides):
        key = override_key(o)
        if not changes_results(key) or key == "algorithm" or key in params:
            continue
        if key.startswith("algorithm.") and key[len("algorithm."):] in params:
            continue
        out.append(o.lstrip("+"))
    return sorted(out)


def seed_group_key(algorithm: Optional[str], params: Mapping[str, Any], overrides: Iterable[str],
                   version: int = UNRECORDED_VERSION) -> Tuple:
    """A configuration, the same for all of its seeds (the report's ``SeedGroup``): the algorithm,
    its params but the seed, the overrides params do not say (``seed_group_overrides``), and the
    algorithm's version when it is not UNRECORDED_VERSION (results of two versions never pool)."""
    items = [(k, v) for k, v in params.items() if k != "seed"]
    items += [("override", o) for o in seed_group_overrides(overrides, params)]
    if version != UNRECORDED_VERSION:
        items.append((ALGORITHM_VERSION, version))
    return (algorithm,) + tuple(sorted((str(k), json.dumps(v, sort_keys=True, default=str)) for k, v in items))


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


CONFIG_DRIFT = "config drift"  # how a drift message starts (ConfigDrift; the sweeper's sweep.json error)


class ConfigDrift(RuntimeError):
    """A job folder holds results (or a checkpoint) made under another config."""

    def __init__(self, job_dir, diff: list[str]):
        self.diff = diff
        shown = "; ".join(diff[:12]) + (f"; ... and {len(diff) - 12} more" if len(diff) > 12 else "")
        super().__init__(f"{CONFIG_DRIFT}: {job_dir} holds results made with another config "
                         f"({len(diff)} key{'s' if len(diff) != 1 else ''} differ: {shown}). "
                         f"force=true re-runs the job from scratch under the new config")


def config_drift(job_dir, recorded: "Optional[JobRecord | Mapping[str, Any]]", config: dict) -> Optional[ConfigDrift]:
    """The drift between the results a folder holds (``recorded``, its ``JobRecord`` or a
    results.json object) and ``config`` (``as_dict`` of the config asked for now), the algorithm's
    version first (``version_drift``); None when they agree or nothing with a config is recorded."""
    if isinstance(recorded, JobRecord):
        recorded = recorded.to_json()
    if not recorded or not recorded.get("config"):
        return None
    diff = config_diff(dict(recorded["config"]), config)
    algorithm = _algorithm_of(config)
    if algorithm is not None and algorithm == _algorithm_of(recorded["config"]):
        version = version_drift(algorithm, recorded.get(ALGORITHM_VERSION))
        diff = ([version] if version else []) + diff
    return ConfigDrift(job_dir, diff) if diff else None


# --------------------------------------------------------------------------- reading and writing


def write_atomic(path: Path, data: "str | bytes") -> Path:
    """Write ``path`` so that a reader sees the old file or the new one, never half of one: the
    text goes to a temporary file beside it (named by this process), then ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        (tmp.write_bytes if isinstance(data, bytes) else tmp.write_text)(data)
        os.replace(tmp, path)
    except BaseException:  # cut short (a full disk, a kill): the old file stays, no half-written one beside it
        tmp.unlink(missing_ok=True)
        raise
    return path


def finite_json(data: Any, where: str = "", found: Optional[List[str]] = None) -> Any:
    """``data`` with every NaN or infinity replaced by None, recording ``path: value`` in ``found``
    (JSON has no NaN: Python writes a bare ``NaN`` most readers refuse)."""
    if isinstance(data, float) and not math.isfinite(data):
        if found is not None:
            found.append(f"{where or '.'}: {data}")
        return None
    if isinstance(data, dict):
        return {k: finite_json(v, f"{where}.{k}" if where else str(k), found) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_json(v, f"{where}[{i}]", found) for i, v in enumerate(data)]
    return data


def json_text(data: Any, indent: Optional[int] = 1) -> str:
    """``data`` as strict JSON (``allow_nan=False``): a NaN or infinity becomes null and, in a
    top-level object, the key ``non_finite`` lists where each was and what it was."""
    found: List[str] = []
    clean = finite_json(data, "", found)
    if found and isinstance(clean, dict):
        clean["non_finite"] = sorted(set(clean.get("non_finite") or []) | set(found))
    return json.dumps(clean, indent=indent, default=str, allow_nan=False)


def write_json(path: Path, data: Any) -> Path:
    """``data`` as indented strict JSON at ``path`` (``json_text``: never a bare NaN),
    atomically (``write_atomic``); the folder is made."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, json_text(data))


def job_path(job_dir: Path, path: Any) -> Any:
    """A path a job records to one of its own files: relative to ``job_dir`` when inside it (a
    copied or moved folder then reads its own), else as given."""
    if not isinstance(path, (str, Path)) or not str(path):
        return path
    try:
        return str(Path(path).resolve().relative_to(Path(job_dir).resolve()))
    except ValueError:
        return str(path)


def resolve_job_path(job_dir: Path, path: Any) -> Optional[Path]:
    """A path from a job's results.json, read from the folder it was found in: relative paths
    resolve in ``job_dir``; an absolute one into another job folder whose own copy is here
    (``<job_dir>/<its name>``, a folder copied from a results.json written before paths were
    relative) is read here."""
    if not isinstance(path, (str, Path)) or not str(path):
        return None
    p = Path(path)
    if not p.is_absolute():
        return Path(job_dir) / p
    local = Path(job_dir) / p.name
    if p.name in JOB_OWN_FILES and local.exists():
        return local
    return p


# --------------------------------------------------------------------------- the job record

# results.json keys written from a job's start on, in this order (a fresh job's file begins so)
RECORD_START = ("status", "algorithm", "name", "overrides", "params", "config", "metrics", "artifacts", "error",
                "traceback", "trained", "attempts", "config_key", ALGORITHM_VERSION, "provenance")


@dataclass(eq=False)
class JobRecord:
    """A job's record: what results.json holds (the module docstring says each key), typed.

    ``run_job`` fills it, ``runtime.record.Recorder`` writes it (``write_record``), and every
    reader (the next attempt, the sweeper's triage, dpo-ppo-sync, the report) reads it back with
    ``read_record`` / ``from_json``.  The file is the one the job wrote before the record was
    typed, byte for byte: ``to_json`` gives the keys in the order they were first set (a fresh
    record starts with ``RECORD_START``; one read back keeps its file's order), a key no one set
    is left out, and keys this code does not name (an older or newer writer's) are kept in
    ``extra``, in their place.  Nested values (config, metrics, compute, wandb, ...) are the
    JSON objects themselves, as written."""

    status: str = RUNNING  # STATUSES
    algorithm: Optional[str] = None  # TRAINERS
    name: Optional[str] = None  # the sweep / experiment name
    overrides: List[str] = field(default_factory=list)  # the job's command-line overrides
    params: Dict[str, Any] = field(default_factory=dict)  # the swept hyperparameters (PARAM_KEYS)
    config: Dict[str, Any] = field(default_factory=dict)  # the full resolved config
    metrics: Dict[str, Any] = field(default_factory=dict)  # {metric name: value}
    artifacts: Dict[str, Any] = field(default_factory=dict)  # shared artifacts' folders, the job's own files
    error: Optional[str] = None
    traceback: Optional[str] = None
    trained: bool = False  # the final policy is saved in the folder (a relaunch evaluates it)
    attempts: int = 0
    config_key: Optional[str] = None  # ``config_key``
    algorithm_version: Optional[int] = None  # ALGORITHM_VERSIONS; None: not recorded
    provenance: Dict[str, Any] = field(default_factory=dict)
    # set as the job goes: absent from the file until set
    replaces: Optional[Dict[str, Any]] = None  # the attempt a start from scratch cleared
    train_summary: Optional[Dict[str, Any]] = None  # what the trainer returned
    # results.json ``compute``, named as the file names it: what training cost (COST_KEYS), the
    # measured cost, not the config group ``compute`` (the schedule mode); readers say ``cost``
    compute: Optional[Dict[str, Any]] = None
    wandb: Optional[Dict[str, Any]] = None  # the W&B run: id, project, entity, mode, url, next_step, ...
    hardware: Optional[Dict[str, Any]] = None  # precision and batch sizes on the device
    stage_seconds: Optional[Dict[str, float]] = None  # timings per stage
    classifier_accuracy: Optional[float] = None
    prompts: Optional[Dict[str, int]] = None  # PROMPT_KEYS
    snapshots: Optional[List[str]] = None  # the ex_* folders training wrote
    analysis: Optional[Dict[str, Any]] = None  # per_head, images, over_training
    compute_attempts: Optional[List[Dict[str, Any]]] = None  # one entry per attempt
    wall_time_s: Optional[float] = None  # timings of this attempt
    peak_mem_mb: Optional[float] = None
    peak_gpu_mem_mb: Optional[float] = None
    non_finite: Optional[List[str]] = None  # where json_text wrote null for a NaN or infinity
    partial: Optional[bool] = None  # a short record written in place on a full disk
    extra: Dict[str, Any] = field(default_factory=dict)  # keys this code does not name, as read

    def __post_init__(self) -> None:
        # the keys the file holds, in order: RECORD_START, then any other field given a value
        present = list(RECORD_START) + [f for f in _OPTIONAL_FIELDS if getattr(self, f) is not None]
        object.__setattr__(self, "_keys", present + [k for k in self.extra if k not in present])

    def __setattr__(self, key: str, value: Any) -> None:
        object.__setattr__(self, key, value)
        keys = self.__dict__.get("_keys")
        if keys is not None and key in _RECORD_FIELDS and key not in keys:
            keys.append(key)

    def has(self, key: str) -> bool:
        """Whether results.json holds ``key`` (set, or read from the file)."""
        return key in self._keys

    def update(self, **values: Any) -> None:
        """Set several keys at once; a name the record does not have is a bug, refused."""
        unknown = sorted(set(values) - set(_RECORD_FIELDS))
        if unknown:
            raise TypeError(f"JobRecord has no key {', '.join(unknown)} (results.py: JobRecord)")
        for key, value in values.items():
            setattr(self, key, value)

    def to_json(self) -> Dict[str, Any]:
        """The results.json object: every key set, in the order it was first set."""
        return {k: (self.extra[k] if k not in _RECORD_FIELDS else getattr(self, k)) for k in self._keys
                if k in _RECORD_FIELDS or k in self.extra}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "JobRecord":
        """A results.json object read back (any writer's: keys this code does not name go to
        ``extra``); ``to_json`` gives it back unchanged."""
        known = {k: v for k, v in data.items() if k in _RECORD_FIELDS}
        record = cls(**known, extra={k: v for k, v in data.items() if k not in _RECORD_FIELDS})
        object.__setattr__(record, "_keys", [str(k) for k in data])
        return record

    def text(self) -> str:
        """results.json's text (``json_text``: strict JSON, never a bare NaN)."""
        return json_text(self.to_json())


_RECORD_FIELDS = tuple(f for f in JobRecord.__dataclass_fields__ if f != "extra")
_OPTIONAL_FIELDS = tuple(f for f in _RECORD_FIELDS if f not in RECORD_START)


def write_record(folder: Path, record: JobRecord) -> Path:
    """Write ``folder/results.json`` atomically (``write_json``): the one writer of a job's record."""
    return write_json(Path(folder) / RESULTS_FILE, record.to_json())


def read_record(path: Path) -> Optional[JobRecord]:
    """A job's record (``path`` is the job folder or its results.json); None when missing,
    half-written, not a JSON object or without a status (every writer sets one)."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return JobRecord.from_json(data) if isinstance(data, dict) and isinstance(data.get("status"), str) else None


@dataclass
class JobOutcome:
    """What ``run_job`` returns (the Hydra task's return value, the sweeper's ``outcome`` reads it):
    the job's status (STATUSES, or SKIPPED; PREPARED for a ``prepare=true`` job), its folder, the
    metrics it recorded and, when it failed or diverged, the error."""

    status: str
    job_dir: Optional[str] = None
    metrics: Dict[str, Any] = field(default_factory=dict)
    error: Optional[str] = None
    reason: Optional[str] = None  # SKIPPED: why (finished before, or running elsewhere)
    artifacts: List[str] = field(default_factory=list)  # PREPARED: the shared artifacts built

    @classmethod
    def of(cls, value: Any) -> Optional["JobOutcome"]:
        """A task function's return value as an outcome: a JobOutcome, or a mapping with a
        ``status`` (another task function's); None for anything else."""
        if isinstance(value, JobOutcome):
            return value
        if isinstance(value, Mapping) and isinstance(value.get("status"), str):
            names = set(cls.__dataclass_fields__)
            return cls(**{k: v for k, v in value.items() if k in names})
        return None


# sweep.json (SWEEP_FILE): where a sweep stands, written by ``sweep.state.write_sweep_json``, read
# by the report; its top-level keys, then one ``SweepEntry`` per planned job under SWEEP_JOBS
SWEEP_NAME, SWEEP_STATE, SWEEP_ERROR, SWEEP_STARTED = "name", "state", "error", "started"
SWEEP_ELAPSED_S, SWEEP_LAUNCHER, SWEEP_ARGUMENTS = "elapsed_s", "launcher", "arguments"
SWEEP_COUNTS, SWEEP_MERGED, SWEEP_JOBS = "counts", "merged", "jobs"


@dataclass
class SweepEntry:
    """One planned job in sweep.json's SWEEP_JOBS: its index, arm, overrides, folder (relative to
    the sweep folder when inside it), status (STATUSES, SKIPPED or PENDING), error and note."""

    idx: Optional[int] = None
    arm: Optional[str] = None
    overrides: List[str] = field(default_factory=list)
    dir: Optional[str] = None
    status: Optional[str] = None
    error: Optional[str] = None
    note: Optional[str] = None

    def to_json(self) -> Dict[str, Any]:
        return {"idx": self.idx, "arm": self.arm, "overrides": self.overrides, "dir": self.dir,
                "status": self.status, "error": self.error, "note": self.note}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "SweepEntry":
        """An entry read back; keys this code does not name are ignored, missing ones are None."""
        return cls(idx=data.get("idx"), arm=data.get("arm"), overrides=list(data.get("overrides") or []),
                   dir=data.get("dir"), status=data.get("status"), error=data.get("error"), note=data.get("note"))


def write_results(folder: Path, results: "JobRecord | Dict[str, Any]") -> Path:
    """Write ``folder/results.json`` atomically (a record, or a results.json object)."""
    return write_record(folder, results if isinstance(results, JobRecord) else JobRecord.from_json(results))


def read_results(path: Path) -> Optional[Dict[str, Any]]:
    """A job's results as a JSON object (``read_record``'s ``to_json``); None when ``read_record``
    finds none."""
    record = read_record(path)
    return None if record is None else record.to_json()


def unreadable(path: Path) -> bool:
    """``path`` (a job folder or its results.json) holds a results.json that ``read_results``
    cannot use: cut short, not JSON, not an object, no status."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    return path.is_file() and read_results(path) is None


def scalar_metrics(metrics: Any) -> Dict[str, float]:
    """The finite numbers of a metrics dict (booleans and non-numbers dropped), under their current
    names (``current_name``)."""
    out: Dict[str, float] = {}
    for key, value in (metrics or {}).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(float(value)):
            out[current_name(str(key))] = float(value)
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
    cost: Dict[str, Any] = field(default_factory=dict)  # results.json ``compute``: what training cost (COST_KEYS)
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
    algorithm_version: Optional[int] = None  # ALGORITHM_VERSIONS; None: not recorded (``recorded_version``)

    @classmethod
    def from_record(cls, folder: Path, record: JobRecord) -> "JobResults":
        """The job in ``folder`` as its ``record`` says, metrics under their current names
        (``scalar_metrics``), analysis tables as columns."""
        params = dict(record.params or {})
        algorithm = record.algorithm or params.get("algorithm")
        analysis = record.analysis or {}
        return cls(
            dir=Path(folder), status=str(record.status or RUNNING),
            algorithm=str(algorithm).lower() if algorithm else None, name=record.name,
            params=params, overrides=[str(o) for o in record.overrides or []],
            metrics=scalar_metrics(record.metrics), cost=dict(record.compute or {}),
            per_head=dict(analysis.get("per_head") or {}),
            images={str(k): str(v) for k, v in (analysis.get("images") or {}).items()},
            artifacts=dict(record.artifacts or {}), config=dict(record.config or {}),
            wall_time_s=record.wall_time_s, peak_mem_mb=record.peak_mem_mb, error=record.error,
            wandb=dict(record.wandb or {}), config_key=record.config_key,
            algorithm_version=record.algorithm_version,
            over_training={str(k): _columns(v) for k, v in (analysis.get("over_training") or {}).items()},
        )


def _columns(table: Any) -> Dict[str, List[Any]]:
    """{"columns": [...], "data": [[...], ...]} -> {column: values}; {} when malformed."""
    try:
        cols, data = list(table["columns"]), list(table["data"])
        return {str(c): [row[i] for row in data] for i, c in enumerate(cols)}
    except (KeyError, TypeError, IndexError):
        return {}


def read_job(folder: Path) -> Optional[JobResults]:
    """The job in ``folder``; None when it holds no readable results.json (``read_record``)."""
    record = read_record(folder)
    return None if record is None else JobResults.from_record(folder, record)


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


def snapshot_names(job_dir: Path) -> List[str]:
    """The ``ex_*`` snapshot folders in ``job_dir/snapshots``, by examples."""
    root = Path(job_dir) / SNAPSHOTS_DIR
    try:
        names = [p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("ex_") and p.name[3:].isdigit()]
    except OSError:
        return []
    return sorted(names, key=lambda n: int(n[3:]))


def missing_snapshots(job_dir: Path, results: "JobRecord | Dict[str, Any]") -> List[str]:
    """Snapshots the job's training wrote (results.json ``snapshots``) that its folder no longer
    holds; for a results.json without that list, the gaps in the ``snapshot_every`` cadence
    (``ex_*`` between two present ones, or before the first) named by the examples where one was
    due.  A missing snapshot turns the next one's step divergence into a longer step (or, for the
    first, a distance from the reference), so the analyses name it.  ``results``: the job's
    ``JobRecord`` or its results.json object."""
    if isinstance(results, JobRecord):
        results = results.to_json()
    present = snapshot_names(job_dir)
    recorded = results.get("snapshots")
    if isinstance(recorded, list) and recorded:
        return [str(n) for n in recorded if str(n) not in present]
    every = ((results.get("config") or {}).get("algorithm") or {}).get("snapshot_every")
    if not isinstance(every, int) or every <= 0 or not present:
        return []
    gaps, last = [], 0
    for name in present:
        examples = int(name[3:])
        for k in range(last // every + 1, examples // every):
            gaps.append(f"the snapshot due after {k * every} examples")
        last = examples
    return gaps



# --------------------------------------------------------------------------- evaluation's per-completion definitions
#
# The names of ``EVAL_METRICS`` that had no constant, and what evaluation (``evaluate.py``) computes
# per completion for the metrics that are a mean over completions. The report recomputes those
# metrics from eval_rows.csv (``EVAL_ROW_STATISTICS``: to resample the prompts) with the same
# functions, so the two never disagree on what "gradient loss" is. The functions take a numpy array
# or a torch tensor of p_positive alike.
GRADIENT_LOSS, BINARY_LOSS, COMPLETION_LEN = "gradient_loss", "binary_loss", "completion_len"
KL_TO_REF, KL_TO_REF_STD, KL_TO_REF_K1 = "kl_to_ref", "kl_to_ref_std", "kl_to_ref_k1"
DISTINCT_1, DISTINCT_2 = "distinct_1", "distinct_2"


def gradient_loss(p_positive: Any) -> Any:
    """The seed's gradient loss of each completion: 1 - p_positive (``gradient_loss`` is its mean)."""
    return 1 - p_positive


def binary_loss(p_positive: Any) -> Any:
    """1.0 where the classifier calls the completion negative (p_positive < 0.5), else 0.0
    (``binary_loss`` is its mean: the fraction classified negative)."""
    return (p_positive < 0.5) * 1.0


# eval/policy/<name> recomputed from eval_rows.csv: name -> (statistic over completions, the row
# column, what evaluation takes of each row before the statistic; None: the column as it is)
EVAL_ROW_STATISTICS = {
    REWARD: ("mean", "p_positive", None),
    policy_metric(GRADIENT_LOSS): ("mean", "p_positive", gradient_loss),
    policy_metric(BINARY_LOSS): ("mean", "p_positive", binary_loss),
    policy_metric(P_POSITIVE_STD): ("std", "p_positive", None),
    policy_metric(COMPLETION_LEN): ("mean", "completion_len", None),
    KL: ("mean", "kl", None),
    policy_metric(KL_TO_REF_K1): ("mean", "kl_k1", None),
}

# the analyses' scalars that the report and the dashboard read by name (the suite puts ANALYSIS in
# front of what each analysis's ``Output.scalar`` names: analysis/weights.py, analysis/activations.py)
MSD_ALL = ANALYSIS + "weights/msd_all"  # mean-square divergence from the reference, every parameter
MSD_WEIGHTS = ANALYSIS + "weights/msd_weights"
MSD_BIASES = ANALYSIS + "weights/msd_biases"
BIAS_WEIGHT_RATIO = ANALYSIS + "weights/bias_weight_ratio"
MSD_LAYER = ANALYSIS + "weights/msd_layer"  # + the block's index: msd_layer0, msd_layer1, ...
LOGIT_LENS_KL_LAYER = ANALYSIS + "activations/logit_lens_kl_layer"  # + the layer's index
RESID_KL_MEAN = ANALYSIS + "activations/resid/kl_{}_mean"  # .format(subset): pos, neg, all
# the analysis tables logged to W&B (runtime/record.py), as the dashboard's panels name them
WEIGHTS_PER_LAYER_TABLE = ANALYSIS + "weights_per_layer"
ACTIVATIONS_TABLE = ANALYSIS + "activations"
ABLATION_TABLE = ANALYSIS + "ablation"
EVAL = "eval/"  # every evaluation metric's prefix (POLICY, REFERENCE, IMPROVEMENT)
