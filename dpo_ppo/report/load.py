"""Reading a sweep folder: every job (finished or not) and the jobs sweep.json planned."""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from dpo_ppo import results as R

SKIP_DIRS = {"report", "wandb", ".submitit", ".hydra", "__pycache__"}
LABELS = {"dpo": "DPO", "ppo": "PPO", "rloo": "RLOO", "grpo": "GRPO"}
SYMBOLS = {"beta": "β", "kl_target": "KL*", "kl_coef": "c"}
NO_RESULTS = "no results"  # a started job without results.json (a planned one: R.PENDING)
PENDING = R.PENDING
DIVERGED = R.DIVERGED  # a job stopped for a non-finite loss or KL
ALL_STATUSES = (R.FINISHED, R.FAILED, R.RUNNING, R.INTERRUPTED, DIVERGED, NO_RESULTS, PENDING)


@dataclass
class Run(R.JobResults):
    """One job of the sweep as the report sees it: the job folder read back (``results.JobResults``:
    its status, params, metrics, ...; ``per_head`` as arrays), where it sits in the sweep, and its
    per-prompt rows on demand.  A planned job without a folder yet has status ``pending``, a started
    one without results.json ``no results``."""

    rel: str = ""  # folder relative to the sweep folder
    _rows: Any = None  # per-prompt eval rows, read on first use

    @property
    def seed(self) -> Any:
        return self.params.get("seed")

    @property
    def kl(self) -> float:
        return self.metrics.get(R.KL, float("nan"))

    def rows(self) -> Optional[Dict[str, np.ndarray]]:
        """Per-prompt evaluation rows (eval_rows.csv) keyed by column; None without them."""
        if self._rows is None:
            cols = R.read_eval_rows(self.dir)
            self._rows = False if cols is None else {
                c: (np.array(v, dtype=object) if c == "prompt_id" else np.array(v, dtype=float))
                for c, v in cols.items()}
        return self._rows or None

    def extra_overrides(self) -> List[str]:
        """Overrides that params do not already say (model=pythia70m, experiment=...), minus the
        seed and the keys that do not change a result (``results.seed_group_overrides``)."""
        return R.seed_group_overrides(self.overrides, self.params)

    def group_key(self) -> Tuple:
        """Everything that defines the configuration except the seed (``results.seed_group_key``)."""
        return R.seed_group_key(self.algorithm, self.params, self.overrides, R.recorded_version(self))

    def knob(self) -> str:
        key = R.KNOBS.get(self.algorithm or "")
        value = self.params.get(key) if key else None
        if value is None and self.params.get("kl_coef") is not None:  # PPO with a fixed coefficient
            key, value = "kl_coef", self.params["kl_coef"]
        return f"{SYMBOLS[key]}={value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else ""

    def label(self) -> str:
        seed = f" seed {self.seed}" if self.seed is not None else ""
        return f"{LABELS.get(self.algorithm or '', self.algorithm or '?')} {self.knob()}{seed}".replace("  ", " ")


def _per_head(per_head: Dict[str, Any]) -> Dict[str, np.ndarray]:
    out: Dict[str, np.ndarray] = {}
    for key, value in per_head.items():
        try:
            arr = np.array(value, dtype=float)
        except (TypeError, ValueError):
            continue
        if arr.ndim == 2 and arr.size:
            out[str(key)] = arr
    return out


def find_job_dirs(root: Path, max_depth: int = 3) -> List[Path]:
    """Folders holding results.json or .hydra/ (a started job), not descending into a job."""
    found: List[Path] = []
    seen = {os.path.realpath(root)}  # folders walked, by real path: a link back to one is a loop

    def skip(path: str, why: str) -> None:
        print(f"warning: skipped {path}: {why}", file=sys.stderr)

    def walk(folder: Path, depth: int) -> None:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return
        names = {e.name for e in entries}
        if R.RESULTS_FILE in names or ".hydra" in names:
            if folder != root or R.RESULTS_FILE in names:
                found.append(folder)
            return
        if depth >= max_depth:
            return
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.name in SKIP_DIRS or entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()
            except OSError as e:  # a link to itself, or a loop of links (ELOOP)
                skip(entry.path, f"symlink loop ({e.strerror})")
                continue
            if not is_dir:
                continue
            real = os.path.realpath(entry.path)
            if real in seen:
                if entry.is_symlink():  # a link back to a folder this walk reached: no job twice
                    skip(entry.path, f"symlink loop (to {real}, already read)")
                continue
            seen.add(real)
            walk(Path(entry.path), depth + 1)

    walk(root, 0)
    return found


def load_run(folder: Path, root: Path) -> Run:
    rel = os.path.relpath(folder, root)
    job = R.read_job(folder)
    if job is None:
        error = f"unreadable {R.RESULTS_FILE}" if (folder / R.RESULTS_FILE).exists() else None
        return Run(dir=folder, rel=rel, status=NO_RESULTS, error=error)
    run = Run(**{**vars(job), "per_head": _per_head(job.per_head)}, rel=rel)
    drift = R.version_drift(run.algorithm, run.algorithm_version) if run.status == R.FINISHED else None
    if drift:  # made by another version of its algorithm: counted failed, as the sweeper's drift verdict is
        run.status, run.error = R.FAILED, f"{R.CONFIG_DRIFT}: {drift}"
    add_derived(run)
    return run


# Derived per-run metrics the seed's claims need and results.json does not hold as one number.
POS_NEG_REL = "derived/activations/resid_kl_pos_minus_neg_rel"
# heads whose attention to the sentiment word rose by more than RECRUIT_THRESHOLD (attention weight,
# a fraction of the query's attention) from the reference: the seed's "additional heads for
# attending to the sentiment token" (3.4; L4H7 in its PPO model), counted
HEADS_RECRUITED = "derived/sentiment_attention/heads_recruited"
RECRUIT_THRESHOLD = 0.1
SENTIMENT_CHANGE = "sentiment_attention/change"  # per_head grid: policy - reference attention to the word
# how much the bias divergence moved back and forth over training (3.2: "the DPO divergence was
# stable over both training runs, whereas the PPO divergence fluctuated"): the path length of
# msd_biases over the snapshots beyond its net change, over its largest value (0: monotone)
BIAS_FLUCTUATION = "derived/over_training/msd_biases_fluctuation"
# the seed's hypothesis (4): DPO's updates are more efficient, less divergence for the same gain:
# the reward gain over the reference per unit of mean-square weight divergence
EFFICIENCY = "derived/efficiency/reward_gain_per_msd"


def fluctuation(values: Sequence[float]) -> Optional[float]:
    v = np.array([x for x in values if isinstance(x, (int, float)) and math.isfinite(x)], dtype=float)
    if v.size < 3 or not np.max(np.abs(v)) > 0:
        return None
    path, net = float(np.sum(np.abs(np.diff(v)))), abs(float(v[-1] - v[0]))
    # a monotone path is 0, not its rounding: path - net of a monotone series came out ~1e-17, and
    # a sweep whose runs all sat there gave a "PPO > DPO" band 4e-20 wide (answer sweep, C17)
    beyond = path - net if path - net > 1e-9 * path else 0.0
    return beyond / float(np.max(np.abs(v)))


def add_derived(run: Run) -> None:
    m = run.metrics
    pos, neg = m.get(R.RESID_KL_MEAN.format("pos")), m.get(R.RESID_KL_MEAN.format("neg"))
    both = m.get(R.RESID_KL_MEAN.format("all"))
    if pos is not None and neg is not None and both:
        m[POS_NEG_REL] = (pos - neg) / both
    change = run.per_head.get(SENTIMENT_CHANGE)
    if change is not None and np.all(np.isfinite(change)):
        m[HEADS_RECRUITED] = float(np.sum(np.asarray(change) > RECRUIT_THRESHOLD))
    weights = run.over_training.get("weights_over_training", {}) if isinstance(run.over_training, dict) else {}
    f = fluctuation(weights.get("msd_biases", []))
    if f is not None:
        m[BIAS_FLUCTUATION] = f
    gain, msd = m.get(R.REWARD), m.get(R.MSD_ALL)
    if gain is not None and R.REF_REWARD in m and msd:
        m[EFFICIENCY] = (gain - m[R.REF_REWARD]) / msd


def is_diverged(run: Run) -> bool:
    """A run the comparison cannot place: status diverged, or a KL that is not finite and positive
    (results.json keeps finite numbers only, so a NaN KL is a missing one)."""
    if run.status == DIVERGED:
        return True
    return run.status == R.FINISHED and not (math.isfinite(run.kl) and run.kl > 0)


def load_sweep(root: Path) -> Tuple[List[Run], Dict[str, Any]]:
    """Every job of the sweep: folders found on disk plus planned jobs from sweep.json."""
    root = Path(root)
    runs = [load_run(folder, root) for folder in find_job_dirs(root)]
    meta: Dict[str, Any] = {}
    sweep_file = root / R.SWEEP_FILE
    if sweep_file.exists():
        try:
            meta = json.loads(sweep_file.read_text())
        except ValueError:
            meta = {}
        by_rel = {os.path.normpath(r.rel): r for r in runs}
        known = set(by_rel)
        for job in (R.SweepEntry.from_json(j) for j in meta.get(R.SWEEP_JOBS, []) if isinstance(j, dict)):
            rel = job.dir
            if not rel:
                continue
            if os.path.isabs(rel):
                try:
                    rel = os.path.relpath(rel, root)
                except ValueError:
                    continue
                if rel.startswith(".."):
                    continue
            run = by_rel.get(os.path.normpath(rel))
            if run is not None and run.status == NO_RESULTS and job.status == R.FAILED:
                # e.g. a config error raised before the job could write results.json
                run.status, run.error = R.FAILED, job.error
            elif run is not None and _drift_verdict(job, run, sweep_file):
                # the sweeper refused the job's results for config drift (an edited sweep file or
                # default): they answer another config, so the report does not count them finished
                run.status, run.error = R.FAILED, job.error
            if os.path.normpath(rel) in known:
                continue
            known.add(os.path.normpath(rel))
            algorithm = next((o.split("=", 1)[1] for o in job.overrides
                              if R.override_key(o) == "algorithm"), None)
            runs.append(Run(dir=root / rel, rel=rel, status=PENDING, algorithm=algorithm,
                            overrides=list(job.overrides)))
    runs, duplicates = drop_duplicates(runs)
    if duplicates:
        meta = {**meta, "duplicates": duplicates}
    return runs, meta


def _drift_verdict(job: R.SweepEntry, run: Run, sweep_file: Path) -> bool:
    """sweep.json says the sweeper refused this job for config drift (``sweep.triage.CONFIG_DRIFT``),
    and its results.json is not newer than that verdict (a later force=true re-run is)."""
    if job.status != R.FAILED or not str(job.error or "").startswith(R.CONFIG_DRIFT):
        return False
    try:
        return (run.dir / R.RESULTS_FILE).stat().st_mtime <= sweep_file.stat().st_mtime
    except OSError:
        return False


def drop_duplicates(runs: Sequence[Run]) -> Tuple[List[Run], List[Dict[str, str]]]:
    """Finished runs whose results.json has the config key of an earlier one (the same job in two
    folders: ``beta=1`` and ``beta=1.0`` before the sweeper merged them) count once: counted twice
    they are two "seeds" with a zero interval."""
    kept: List[Run] = []
    first: Dict[str, Run] = {}
    dropped: List[Dict[str, str]] = []
    for run in runs:
        key = run.config_key if run.status == R.FINISHED else None
        if key and key in first:
            dropped.append({"job": run.rel, "kept": first[key].rel})
            continue
        if key:
            first[key] = run
        kept.append(run)
    return kept, dropped


def finished(runs: Sequence[Run]) -> List[Run]:
    return [r for r in runs if r.status == R.FINISHED and r.algorithm in R.TRAINERS]


def metric_names(runs: Sequence[Run]) -> List[str]:
    """The findings (``results.is_finding``) any finished run holds: eval/ first, then analysis/."""
    names = {k for r in finished(runs) for k in r.metrics if R.is_finding(k)}
    return sorted(names, key=lambda k: (not k.startswith(R.EVAL), k))


@dataclass
class SeedGroup:
    """One configuration: the runs whose params differ only in the seed."""

    algorithm: str
    runs: List[Run]
    vary: List[str] = field(default_factory=list)  # other params that differ between this algorithm's configs

    def diverged(self) -> List[Run]:
        """Its runs that diverged (status diverged, or KL not finite and positive)."""
        return [r for r in self.runs if is_diverged(r)]

    def label(self) -> str:
        """The knob, plus whatever else tells it apart from the algorithm's other configurations
        (e.g. the learning rate when a sweep places DPO runs by lr)."""
        params = self.runs[0].params
        extra = [f"{k}={params[k]:g}" if isinstance(params[k], (int, float)) and not isinstance(params[k], bool)
                 else f"{k}={params[k]}" for k in self.vary if k in params]
        return " ".join([self.runs[0].knob()] + extra).strip()

    def values(self, metric: str) -> List[float]:
        return [r.metrics[metric] for r in self.runs if metric in r.metrics]

    def over_training(self, table: str, column: str) -> Optional[Dict[str, Any]]:
        """Mean over the seeds of one over-training column (results.OVER_TRAINING_TABLES) at each
        number of examples: {"examples", "mean", "n"} (n: seeds at that point); None if no run has it."""
        per_x: Dict[float, List[float]] = {}
        for run in self.runs:
            cols = run.over_training.get(table, {})
            for x, v in zip(cols.get("examples", []), cols.get(column, [])):
                if isinstance(x, (int, float)) and isinstance(v, (int, float)) and np.isfinite(v):
                    per_x.setdefault(float(x), []).append(float(v))
        if not per_x:
            return None
        xs = sorted(per_x)
        return {"examples": xs, "mean": [float(np.mean(per_x[x])) for x in xs], "n": [len(per_x[x]) for x in xs]}


def configurations(runs: Sequence[Run]) -> List[SeedGroup]:
    """The finished and diverged runs grouped by configuration (``Run.group_key``), each
    algorithm's sorted by KL (``SeedGroup.diverged``: the runs that diverged)."""
    groups: Dict[Tuple, SeedGroup] = {}
    for run in finished(runs) + [r for r in runs if r.status == DIVERGED and r.algorithm in R.ALGORITHMS]:
        groups.setdefault(run.group_key(), SeedGroup(run.algorithm or "", [])).runs.append(run)
    for algorithm in R.TRAINERS:
        mine = [g for g in groups.values() if g.algorithm == algorithm]
        skip = {"seed", "algorithm", "arm", "optimizer_steps", R.KNOBS[algorithm], "kl_coef"}
        keys = sorted({k for g in mine for k in g.runs[0].params} - skip)
        vary = [k for k in keys if len({json.dumps(g.runs[0].params.get(k), default=str) for g in mine}) > 1]
        for g in mine:
            g.vary = vary
    def mean_kl(g: SeedGroup) -> float:
        kls = [r.kl for r in g.runs if math.isfinite(r.kl)]
        return float(np.mean(kls)) if kls else math.inf

    return sorted(groups.values(), key=lambda g: (g.algorithm, mean_kl(g)))
