"""One job of a sweep, stage by stage (docs/architecture.md):

    corpus -> base -> scorer -> prompts -> prefs (DPO) -> train -> evaluate -> analyze -> record

Corpus, base model, classifier, preference data and the reference model's evaluation are cached
artifacts shared by every job with the same config (``dpo_ppo.data.cache``).  The job's own folder
holds ``results.json``, ``train_log.jsonl``, ``snapshots/``, the final ``policy/``, plots and the
W&B run.  A job whose folder already holds finished results is skipped (``force=true`` re-runs
it); an unfinished one resumes: from its saved final policy if training had ended, else from the
trainer's last checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
import json
import logging
import resource
import signal
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from dpo_ppo.data.cache import artifact, artifact_specs, load_dataset_artifact
from dpo_ppo.config import Config, ConfigError, as_dict, load
from dpo_ppo.config.schedule import artifacts_read, is_online_dpo, swept_params
from dpo_ppo.runtime import attempts, gpus, hardware, progress
from dpo_ppo.runtime.divergence import Diverged, check_finite, lr_knob
from dpo_ppo.runtime.joblock import JobLock
from dpo_ppo.runtime.provenance import provenance
from dpo_ppo import results as R
from dpo_ppo.results import write_json
from dpo_ppo.runtime.record import Recorder
from dpo_ppo.data.snapshots import save_model_dir

log = logging.getLogger("dpo_ppo")

EVAL_PROMPT_SEED = 1234  # the same unseen test prefixes for every job, whatever its seed


@dataclass
class Setup:
    """What every job (and the sweeper's prepare step) has once the shared stages ran
    (``Job.setup``): the reviews, the reference and its tokenizer, the scorer and the prefixes."""

    corpus: Any  # DatasetDict with train / test splits
    base_path: Path  # the reference's save_pretrained folder (a cached artifact)
    scorer: Any  # data.scorer.Scorer
    ref_model: Any  # the frozen reference policy
    tokenizer: Any
    train_prompts: list  # token-id prefixes for training (algorithm.examples of them)
    test_prompts: list  # token-id prefixes for evaluation (eval.num_prompts, one review each)
    gold: Any = None  # the gold reward evaluation scores beside the scorer (eval.gold; None: none)


class Job:
    """One job's stages, each a method that no other stage calls (``run`` strings them together)."""

    def __init__(self, cfg: Config | DictConfig, job_dir: Path, overrides: list[str] | None = None):
        self.cfg = cfg = cfg if isinstance(cfg, Config) else load(cfg)
        self.job_dir = Path(job_dir)
        self.overrides = list(overrides or [])
        self.device = gpus.resolve_device(cfg.device, hardware.jobs_per_gpu(cfg))
        self.hw = hardware.resolve(cfg, self.device)  # precision and batch sizes on this device
        self.cache = Path(cfg.cache_dir).expanduser().resolve()
        self.specs = artifact_specs(cfg, self.hw.precision)
        self.stage_times: dict[str, float] = {}
        self.rec: Recorder | None = None

    @contextlib.contextmanager
    def stage(self, name: str):
        log.info("stage %s ...", name)
        t0 = time.time()
        try:
            yield
        except BaseException:  # a stage cut short still took its seconds (an interrupted attempt's cost)
            self.stage_times[name] = round(time.time() - t0, 2)
            raise
        self.stage_times[name] = round(time.time() - t0, 2)
        log.info("stage %s done in %.1f s", name, self.stage_times[name])
        if self.rec is not None:
            self.rec.record.stage_seconds = self.stage_times
            self.rec.save()

    # ------------------------------------------------------------------ stages

    def corpus(self):
        from dpo_ppo.data.corpus import build_corpus

        path = artifact(self.cache, "corpus", self.specs["corpus"], lambda p: build_corpus(self.cfg.data, p))
        return path, load_dataset_artifact(path)

    def base(self, corpus):
        from dpo_ppo.data.models import build_base

        def build(p):
            info = build_base(self.cfg.model, corpus, p, seed=0, bf16=self.hw.bf16)
            (p / "base.json").write_text(json.dumps(info, indent=1))

        return artifact(self.cache, "base", self.specs["base"], build)

    def classifier(self, corpus, base_path):
        from dpo_ppo.data.scorer import build_classifier

        return artifact(self.cache, "classifier", self.specs["classifier"],
                        lambda p: build_classifier(self.cfg.classifier, corpus, base_path, p, seed=0,
                                                   device=self.device, hw=self.hw))

    def prefs(self, prompts, model, tokenizer, scorer):
        from dpo_ppo.data.prefs import build_prefs

        path = artifact(self.cache, "prefs", self.specs["prefs"],
                        lambda p: build_prefs(self.cfg.algorithm, prompts, model, tokenizer, scorer, p,
                                              batch_size=self.hw.gen_batch_size, seed=self.cfg.seed,
                                              autocast=self.hw.autocast, static_cache=self.hw.static_for(
                                                  len(prompts) * self.cfg.algorithm.num_completions,
                                                  self.cfg.algorithm.completion_len)))
        return path, load_dataset_artifact(path)

    def reference_eval(self, ref_model, tokenizer, scorer, prompts, gold=None):
        """The reference's eval metrics; its per-prompt rows sit beside them in ``rows.csv``."""
        from dpo_ppo.evaluate import evaluate_model

        def build(p):
            metrics, rows = evaluate_model(ref_model, tokenizer, scorer, prompts, self.cfg.eval, desc="eval reference",
                                           hw=self.hw, gold=gold)
            write_json(p / "metrics.json", metrics)
            write_json(p / "samples.json", {"rows": rows[: self.cfg.eval.num_samples_logged]})
            R.write_eval_rows(p / R.REF_ROWS_FILE, rows)

        path = artifact(self.cache, "ref_eval", self.specs["ref_eval"], build)
        self.rec.record.artifacts["ref_eval"] = str(path)
        # a cache entry written before issue 34 names p_positive_mean reward_mean (R.LEGACY_EVAL_NAMES)
        return {R.LEGACY_EVAL_NAMES.get(k, k): v for k, v in json.loads((path / "metrics.json").read_text()).items()}

    def reference_cache(self, what: str, compute):
        """The reference's side of analysis ``what`` (``analysis.context.Context``), from the shared
        cache: the first job of a sweep to need it computes it (the others wait on its lock), every
        later one reads it.  A computed value is returned as read back, so a job gets the same
        numbers whether it computed them or not."""
        path = artifact(self.cache, "ref_analysis", {**self.specs["ref_analysis"], "what": what},
                        lambda p: torch.save(compute(), p / "value.pt"))
        if self.rec is not None:  # results.json artifacts.ref_analysis: {what: folder}
            self.rec.record.artifacts.setdefault("ref_analysis", {})[what] = str(path)
        return torch.load(path / "value.pt", map_location="cpu", weights_only=True)

    def training_probe(self, ref_model, tokenizer, scorer, train_prompts):
        """train/kl and train/p_positive_mean during training, DPO's and PPO's alike
        (``train.probe``), on the first ``logger.probe_prompts`` training prefixes; None when 0."""
        from dpo_ppo.train.probe import make_probe

        return make_probe(self.cfg, ref_model, tokenizer, scorer, train_prompts, hw=self.hw)

    def train_log(self, metrics: dict, step=None) -> None:
        """What a trainer logs (its ``log_fn(metrics, examples seen)``): recorded (train_log.jsonl,
        W&B), then checked: a NaN or infinite loss, KL or reward ends the job as ``diverged`` naming
        the examples seen, the quantity and the learning rate (``runtime.divergence``).  A new trainer gets both by
        logging through this."""
        self.rec.log(metrics, step)
        check_finite(metrics, step, knob=lr_knob(self.cfg.algorithm))

    def record_cost(self, summary: dict) -> None:
        """What training cost (the measured cost: results.json ``compute``, the trainer summary's
        ``compute``), for comparisons at matched cost; not the config group ``compute``."""
        cost = dict(summary.get("compute") or {})
        if self.cfg.algorithm.name == "dpo" and "generated_tokens" not in cost:  # the reference's pairs
            prefs_json = Path(self.rec.record.artifacts.get("prefs") or "") / "prefs.json"
            cost["generated_tokens"] = (json.loads(prefs_json.read_text()).get("generated_tokens")
                                        if prefs_json.is_file() else None)
        cost["train_s"] = self.stage_times.get("train")
        self.rec.record.compute = cost

    # ------------------------------------------------------------------ the job

    def setup(self) -> Setup:
        """The stages every job (and the sweeper's prepare step) shares: corpus, base model,
        scorer, the frozen reference and the train/test prefixes."""
        from dpo_ppo.data.models import load_policy
        from dpo_ppo.data.scorer import Scorer, load_gold

        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        hardware.set_matmul_precision(cfg.precision, self.device)
        self.rec.record.hardware = self.hw.as_dict()
        log.info("device %s (%s), precision %s, batches: generate %d, forward %d, train %d, analysis %d",
                 self.hw.device, self.hw.device_name, self.hw.precision, self.hw.gen_batch_size,
                 self.hw.forward_batch_size, self.hw.train_micro_batch, self.hw.analysis_batch_size)
        with self.stage("corpus"):
            corpus_path, corpus = self.corpus()
        with self.stage("base"):
            base_path = self.base(corpus)
        self.check_base(base_path)
        # the prompts before the scorer: a prefix no review reaches, or too few test reviews for
        # eval.num_prompts distinct prompts, is refused before the classifier is trained (the
        # tokenizer alone is loaded here; the prefixes do not depend on when they are made)
        with self.stage("prompts"):
            train_prompts, test_prompts = self.prompts(corpus, base_path)
        with self.stage("scorer"):
            cls_path = self.classifier(corpus, base_path)
            scorer = Scorer.load(cls_path, self.device, batch_size=self.hw.forward_batch_size,
                                 autocast=self.hw.autocast)
            gold = load_gold(cfg.eval, cfg.data.source, self.device, self.hw)  # before training: a bad one fails now
        self.rec.record.artifacts = {"corpus": str(corpus_path), "reference": str(base_path),
                                    "classifier": str(cls_path), "prefs": None}
        self.rec.record.classifier_accuracy = json.loads((cls_path / "scorer.json").read_text()).get("test_accuracy")
        ref_model, tokenizer = load_policy(base_path, self.device)
        ref_model.eval().requires_grad_(False)
        return Setup(corpus, base_path, scorer, ref_model, tokenizer, train_prompts, test_prompts, gold)

    def check_base(self, base_path: Path) -> None:
        """The reference's own context (its config.json, a hub model's too) holds prefix +
        completion, and its tokenizer has a pad or EOS token; the config check read a local folder
        (or compared the ``model.context_length`` key of a hub id)."""
        from dpo_ppo.inputs import check_model_folder

        if self.cfg.model.source != "embedded":  # a hub model's, read after the base stage saved it
            check_model_folder(self.cfg, "model.source", base_path)

    def prompts(self, corpus, base_path: Path):
        """Training and evaluation prefixes, tokenized by the reference's tokenizer.  Evaluation
        never reuses a test review (refused: eval.num_prompts / eval.prefix_len); training may
        reuse reviews across passes (a small corpus still gives algorithm.examples), which the log
        and results.json ``prompts`` say."""
        from transformers import AutoTokenizer

        from dpo_ppo.data.models import ensure_pad
        from dpo_ppo.data.prompts import eval_shortfall, make_prefixes

        cfg, algo, ev = self.cfg, self.cfg.algorithm, self.cfg.eval
        tokenizer = AutoTokenizer.from_pretrained(str(base_path))
        ensure_pad(tokenizer)
        test_texts = corpus["test"]["text"]
        test_stats: dict = {}
        test_prompts = make_prefixes(test_texts, tokenizer, ev.num_prompts, ev.prefix_len,
                                     seed=EVAL_PROMPT_SEED, stats=test_stats, key="eval.prefix_len")
        if test_stats["distinct"] < ev.num_prompts:
            raise eval_shortfall(ev.num_prompts, len(test_texts), test_stats["distinct"], ev.prefix_len,
                                 cfg.data.source)
        train_stats: dict = {}
        train_prompts = make_prefixes(corpus["train"]["text"], tokenizer, algo.examples, algo.prefix_len,
                                      algo.prefix_len_max, seed=cfg.seed, stats=train_stats,
                                      key="algorithm.prefix_len")
        reused = len(train_prompts) - train_stats["distinct"]
        if reused:
            log.info("prompts: the %d training prefixes come from %d distinct reviews (%d reused across passes over "
                     "the %d train reviews)", len(train_prompts), train_stats["distinct"], reused,
                     len(corpus["train"]))
        self.rec.record.prompts = {"train": len(train_prompts), "train_distinct": train_stats["distinct"],
                                  "eval": len(test_prompts), "eval_distinct": test_stats["distinct"]}
        return train_prompts, test_prompts

    def run(self) -> dict:
        from dpo_ppo.data.models import load_policy

        cfg, algo = self.cfg, self.cfg.algorithm
        s = self.setup()
        corpus, base_path, scorer, ref_model, tokenizer = s.corpus, s.base_path, s.scorer, s.ref_model, s.tokenizer
        train_prompts, test_prompts = s.train_prompts, s.test_prompts
        policy_dir = self.job_dir / R.POLICY_DIR
        self.rec.record.artifacts["policy"] = R.POLICY_DIR  # relative: a copied folder reads its own
        trained = (policy_dir / "config.json").exists() and self.rec.record.trained
        if trained:
            log.info("train: already done, loading %s", policy_dir)
            policy, _ = load_policy(policy_dir, self.device)
        else:
            policy, _ = load_policy(base_path, self.device)
            if is_online_dpo(algo):  # the prefs stage inside every round
                with self.stage("train"):
                    from dpo_ppo.train.online_dpo import train_online_dpo

                    summary = train_online_dpo(algo, policy, ref_model, tokenizer, scorer, train_prompts,
                                               self.job_dir, seed=cfg.seed, log_fn=self.train_log, hw=self.hw,
                                               probe=self.training_probe(ref_model, tokenizer, scorer, train_prompts),
                                               probe_every=cfg.logger.probe_every)
            elif algo.name == "dpo":
                with self.stage("prefs"):
                    prefs_path, prefs = self.prefs(train_prompts, ref_model, tokenizer, scorer)
                    self.rec.record.artifacts["prefs"] = str(prefs_path)
                with self.stage("train"):
                    from dpo_ppo.train.dpo import train_dpo

                    summary = train_dpo(algo, policy, ref_model, tokenizer, prefs, self.job_dir,
                                        seed=cfg.seed, log_fn=self.train_log, hw=self.hw,
                                        probe=self.training_probe(ref_model, tokenizer, scorer, train_prompts),
                                        probe_every=cfg.logger.probe_every)
            elif algo.name in ("rloo", "grpo"):
                with self.stage("train"):
                    from dpo_ppo.train.rl import train_rl

                    summary = train_rl(algo, policy, ref_model, tokenizer, train_prompts, scorer.p_positive,
                                       self.job_dir, seed=cfg.seed, log_fn=self.train_log, hw=self.hw,
                                       probe=self.training_probe(ref_model, tokenizer, scorer, train_prompts),
                                       probe_every=cfg.logger.probe_every)
            else:
                with self.stage("train"):
                    from dpo_ppo.train.ppo import train_ppo

                    summary = train_ppo(algo, policy, ref_model, tokenizer, train_prompts,
                                        scorer.p_positive, self.job_dir, seed=cfg.seed, log_fn=self.train_log,
                                        hw=self.hw,
                                        probe=self.training_probe(ref_model, tokenizer, scorer, train_prompts),
                                        probe_every=cfg.logger.probe_every)
            # replaces a policy/ left by an attempt killed before it recorded "trained"
            save_model_dir(policy, tokenizer, policy_dir)
            if summary.get("snapshot_dir"):  # the job's own folder: relative to it
                summary["snapshot_dir"] = R.job_path(self.job_dir, summary["snapshot_dir"])
            self.rec.record.update(trained=True, train_summary=summary, snapshots=R.snapshot_names(self.job_dir))
            self.record_cost(summary)
            self.rec.save()
            self.rec.model(policy_dir, cfg.logger.policy_artifact, algorithm=algo.name,
                           params=self.rec.record.params, compute=self.rec.record.compute)
        policy.eval()
        with self.stage("evaluate"):
            from dpo_ppo.evaluate import evaluate_model

            ref_metrics = self.reference_eval(ref_model, tokenizer, scorer, test_prompts, gold=s.gold)
            pol_metrics, rows = evaluate_model(policy, tokenizer, scorer, test_prompts, cfg.eval,
                                               ref_model=ref_model, desc="eval policy", hw=self.hw,
                                               gold=s.gold)
            metrics = {f"eval/policy/{k}": v for k, v in pol_metrics.items()}
            # a policy that diverged in its last steps can still reach evaluation: its NaN KL is
            # no measurement (recorded as null, the job ends diverged)
            bad = {k: v for k, v in metrics.items() if k in (R.KL, R.REWARD, R.policy_metric("kl_to_ref_k1"))}
            try:
                check_finite(bad, (self.rec.record.train_summary or {}).get("examples", "end"),
                             where="evaluation", knob=lr_knob(algo))
            except Diverged:
                self.rec.metrics(metrics)
                raise
            metrics.update({f"eval/reference/{k}": v for k, v in ref_metrics.items()})
            for k in ("gradient_loss", "binary_loss"):
                metrics[f"eval/improvement/{k}"] = ref_metrics[k] - pol_metrics[k]
            metrics[R.IMPROVEMENT + R.P_POSITIVE_MEAN] = pol_metrics[R.P_POSITIVE_MEAN] - ref_metrics[R.P_POSITIVE_MEAN]
            if R.GOLD_P_POSITIVE_MEAN in pol_metrics and R.GOLD_P_POSITIVE_MEAN in ref_metrics:  # eval.gold
                metrics[R.IMPROVEMENT + R.GOLD_P_POSITIVE_MEAN] = (pol_metrics[R.GOLD_P_POSITIVE_MEAN]
                                                                   - ref_metrics[R.GOLD_P_POSITIVE_MEAN])
            self.rec.metrics(metrics)
            n = cfg.eval.num_samples_logged
            self.rec.table("samples", ["prompt", "completion", "p_positive"],
                           [[r["prompt"], r["completion"], r["p_positive"]] for r in rows[:n]])
            write_json(self.job_dir / "samples.json", {"rows": rows[:n]})
            R.write_eval_rows(self.job_dir / R.EVAL_ROWS_FILE, rows)
            # every prompt's row, joinable across runs by prompt_id (the same prompts in every job)
            columns = list(R.EVAL_ROW_COLUMNS) + [c for c in R.EVAL_ROW_OPTIONAL if c in rows[0]] + [
                "prompt", "completion"]
            self.rec.table("eval_rows", columns, [[r[c] for c in columns] for r in rows])
            self.rec.files(self.job_dir / R.EVAL_ROWS_FILE)
            self.rec.inputs(self.rec.record.artifacts)
            log.info("eval: p_positive %.3f (reference %.3f), binary loss %.3f (reference %.3f), "
                     "gradient loss %.3f (reference %.3f), KL %.3f nats",
                     pol_metrics[R.P_POSITIVE_MEAN], ref_metrics[R.P_POSITIVE_MEAN], pol_metrics["binary_loss"],
                     ref_metrics["binary_loss"], pol_metrics["gradient_loss"], ref_metrics["gradient_loss"],
                     pol_metrics["kl_to_ref"])
            if R.GOLD_P_POSITIVE_MEAN in pol_metrics:
                log.info("eval: gold p_positive %.3f (reference %.3f) beside the proxy's %.3f (%.3f)",
                         pol_metrics[R.GOLD_P_POSITIVE_MEAN], ref_metrics.get(R.GOLD_P_POSITIVE_MEAN, float("nan")),
                         pol_metrics[R.P_POSITIVE_MEAN], ref_metrics[R.P_POSITIVE_MEAN])
        if cfg.analysis is not None and cfg.analysis.enabled:
            with self.stage("analyze"):
                self.analyze(ref_model, policy, tokenizer, scorer, corpus)
        return self.rec.record.metrics

    def analyze(self, ref_model, policy, tokenizer, scorer, corpus):
        from dpo_ppo.analysis.suite import run_analysis

        snapshots = sorted((self.job_dir / "snapshots").glob("ex_*[0-9]"))
        missing = R.missing_snapshots(self.job_dir, self.rec.record)
        if missing:
            log.warning("analyze: %s missing from %s: the next snapshot's step divergence spans the gap",
                        ", ".join(missing), self.job_dir / "snapshots")
        test = corpus["test"]
        acfg = self.cfg.analysis
        if acfg.batch_size is None:
            acfg = dataclasses.replace(acfg, batch_size=self.hw.analysis_batch_size)
        with self.hw.autocast():
            out = run_analysis(acfg, ref_model, policy, tokenizer, texts=test["text"],
                               labels=test["label"], scorer=scorer, out_dir=self.job_dir,
                               snapshots=snapshots, device=self.device, reference_cache=self.reference_cache)
        self.rec.metrics(out.get("scalars", {}))
        images = {k: str(Path(v).relative_to(self.job_dir)) if Path(v).is_absolute() else str(v)
                  for k, v in out.get("images", {}).items()}
        tables = out.get("tables", {})
        self.rec.record.analysis = {"per_head": out.get("per_head", {}), "images": images,
                                   "over_training": {k: tables[k] for k in R.OVER_TRAINING_TABLES if k in tables}}
        self.rec.save()
        self.rec.files(self.job_dir / "analysis.json")
        self.rec.analysis(out)
        self.rec.images({k: self.job_dir / v for k, v in images.items()})


class _Scratch:
    """Stands in for the Recorder where a stage is run outside a job (``Job.prepare``)."""

    def __init__(self):
        self.record = R.JobRecord()
        self.run = None

    def save(self) -> None:
        pass


def _prepare(job: Job) -> list[str]:
    """Build the shared artifacts of ``job``'s config through the same stage methods a job uses
    (corpus, base, classifier, the reference's evaluation and, for DPO, the preference data)."""
    job.rec = _Scratch()
    s = job.setup()
    job.reference_eval(s.ref_model, s.tokenizer, s.scorer, s.test_prompts, gold=s.gold)
    # which artifacts the job reads is results.shared_artifacts' rule (online DPO reads no pairs)
    kinds = [a.kind for a in artifacts_read(job.cfg.algorithm)]
    if "prefs" in kinds:
        job.prefs(s.train_prompts, s.ref_model, s.tokenizer, s.scorer)
    return kinds


def prepare_job(cfg: Config) -> R.JobOutcome:
    """``prepare=true``: build the shared artifacts this job's config needs and stop (the
    sweeper's prepare step, before the GPU jobs start); writes nothing in a job folder."""
    cfg = load(cfg)
    t0 = time.time()
    built = _prepare(Job(cfg, Path(cfg.cache_dir)))
    log.info("prepared %s in %.1f s", ", ".join(built), time.time() - t0)
    return R.JobOutcome(R.PREPARED, artifacts=built)


def _config_key(cfg: Config) -> str:
    """The config key results.json records for the loaded ``cfg``."""
    return R.job_identity(as_dict(cfg))["config_key"]


class BusyFolder(ConfigError):
    """A job pointed at a folder where another job (another config) runs now: bad input, one line
    naming hydra.run.dir (exit 2), nothing written in that folder."""


def run_job(cfg: Config | DictConfig, job_dir: Path, overrides: list[str] | None = None,
            raise_errors: bool = True) -> R.JobOutcome:
    """Run (or skip, or resume) the job under its folder's lock; returns its outcome (status,
    folder, metrics, error: ``results.JobOutcome``).

    ``cfg``: the composed DictConfig or a Config, loaded here (``dpo_ppo.config.load``: checked,
    its schedule set; a Config the entrypoint loaded comes back equal).  What it names on this
    machine (``dpo_ppo.inputs``) the entrypoint checked, and the stages that read it check again.
    A folder locked by a live process (another launch of the same job) is left alone: the call
    returns status "skipped" with where the job runs (see dpo_ppo.runtime.joblock)."""
    progress.configure()  # plain progress lines in a log (SLURM, files), bars on a terminal
    cfg = load(cfg)  # a loaded Config comes back equal (a copy)
    if cfg.prepare:
        return prepare_job(cfg)
    Path(job_dir).mkdir(parents=True, exist_ok=True)
    lock = JobLock(job_dir)
    if not lock.acquire():
        busy = R.read_record(job_dir) or R.JobRecord()
        ours = _config_key(cfg)
        if busy.config_key and busy.config_key != ours:  # not this job: one line, non-zero exit
            show = lambda o: " ".join(R.folder_key(o or [])) or "the defaults"  # noqa: E731
            raise BusyFolder("hydra.run.dir",
                             f"{job_dir} is busy with another job ({show(busy.overrides)}, config key "
                             f"{busy.config_key}; {lock.describe()}); this job ({show(overrides)}, config key "
                             f"{ours}) was not started: give it its own folder")
        reason = f"running elsewhere ({lock.describe()})"
        log.warning("job %s is %s; not starting it twice", job_dir, reason)
        return R.JobOutcome(R.SKIPPED, str(job_dir), reason=reason)
    try:
        return _run_job(cfg, job_dir, overrides, raise_errors)
    finally:
        lock.release()


def _start_record(cfg: Config, job: Job, previous: R.JobRecord | None, replaced: dict | None) -> R.JobRecord:
    """This attempt's record as it starts (status running): what the job is, and what an earlier
    attempt whose policy is trained hands on (its training summary and cost)."""
    config = as_dict(cfg)
    record = R.JobRecord(
        status=R.RUNNING, algorithm=cfg.algorithm.name, name=cfg.name, overrides=job.overrides,
        params=swept_params(cfg), config=config,
        trained=bool(previous is not None and previous.trained) and not cfg.force,
        attempts=((previous.attempts or 0) if previous is not None else 0) + 1, **R.job_identity(config),
        provenance=provenance(),
    )
    if replaced:
        record.replaces = replaced
    if previous is not None and previous.train_summary and record.trained:
        record.train_summary = previous.train_summary
        record.compute = previous.compute if previous.has("compute") else {}
    return record


def _run_job(cfg: Config, job_dir: Path, overrides: list[str] | None = None,
             raise_errors: bool = True) -> R.JobOutcome:
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    previous = attempts.previous_results(job_dir)
    stop, replaced = attempts.check_drift(cfg, job_dir, previous, raise_errors)
    if stop is not None:
        return stop
    if replaced:  # drift after a failure (or with force=true): started over
        previous = None
    if cfg.force and previous is not None:  # re-run means from scratch: no checkpoint, snapshot or old curve is reused
        replaced, previous = attempts.start_over(job_dir, previous, "force=true"), None
    if previous is not None and previous.status == R.FINISHED and not cfg.force:
        log.info("job already finished, skipping (force=true re-runs it): %s", job_dir)
        return R.JobOutcome(R.SKIPPED, str(job_dir), previous.metrics or {})
    job = Job(cfg, job_dir, overrides)
    record = _start_record(cfg, job, previous, replaced)
    logger = cfg.logger
    wandb_config = {**record.config, "params": record.params, "overrides": job.overrides,
                    "provenance": record.provenance, "config_key": record.config_key}
    earlier_run = (previous.wandb if previous is not None else None) or {}
    resume_id = None if cfg.force else earlier_run.get("id")
    resume_step = earlier_run.get("next_step", 0) if resume_id else 0
    try:
        job.rec = Recorder(job_dir, record, logger, wandb_config, run_name=job_dir.name, resume_id=resume_id,
                           resume_step=resume_step)
    except Exception as e:  # W&B could not start: results.json says failed, not running
        record.update(status=R.FAILED, error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        with contextlib.suppress(OSError):
            R.write_record(job_dir, record)
        raise
    earlier = attempts.attempt_costs(previous, cfg.force)
    t0 = time.time()
    stopped: BaseException | None = None
    try:
        with attempts.stop_signals():
            job.run()
        status, error, tb = R.FINISHED, None, None
    except Diverged as e:  # not a bug: the run's own numbers; one line, no traceback file
        status, error, tb = R.DIVERGED, str(e), None
        log.error("job %s: %s", job_dir, error)
    except Exception as e:  # recorded, then re-raised or returned (multirun goes on)
        status, error, tb = R.FAILED, f"{type(e).__name__}: {e}", traceback.format_exc()
        log.error("job failed: %s", error)
        with contextlib.suppress(OSError):  # a full disk: results.json still gets the status (Recorder.finish)
            (job_dir / R.TRACEBACK_FILE).write_text(tb)
        exc = e
    except BaseException as e:  # SIGTERM / SIGINT: recorded as interrupted, then re-raised
        signum = attempts.interruption(e)
        if signum is None:
            raise
        stopped, status, tb = e, R.INTERRUPTED, None
        error = f"interrupted by {signal.Signals(signum).name}"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    fields = {"wall_time_s": round(time.time() - t0, 2), "peak_mem_mb": round(peak, 1),
              "stage_seconds": job.stage_times, "error": error, "traceback": tb}
    if torch.cuda.is_available():
        fields["peak_gpu_mem_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    # what every attempt of this run cost; the seconds in the cost (results.json compute) are their sums
    this = {"attempt": record.attempts, "status": status, "wall_s": fields["wall_time_s"],
            "train_s": job.stage_times.get("train"),
            # seconds this job held an accelerator (its stages ran on it); 0 on CPU
            "accelerator_s": round(sum(job.stage_times.values()), 2) if job.device.type != "cpu" else 0.0}
    costs = earlier + [this]
    record.compute_attempts = costs
    if not record.has("compute"):
        record.compute = {}
    cost = record.compute
    total = lambda key: round(sum(a.get(key) or 0.0 for a in costs), 2)  # noqa: E731
    cost["wall_s"], cost["accelerator_s"] = total("wall_s"), total("accelerator_s")
    if "train_s" in cost or any(a.get("train_s") is not None for a in costs):
        cost["train_s"] = total("train_s")
    job.rec.measured("compute", cost)  # W&B summary compute/*
    job.rec.finish(status, **fields)
    if stopped is not None:
        log.warning("job %s: %s; relaunch the same command to resume it", job_dir, error)
        raise stopped
    if status == R.FAILED and raise_errors:
        raise exc
    return R.JobOutcome(status, str(job_dir), record.metrics, error)
