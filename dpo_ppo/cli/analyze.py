"""``dpo-ppo-analyze``: run the analysis suite on saved models, without training.

A Hydra app like ``dpo-ppo`` (config conf/analyze.yaml, schema ``config.AnalyzeConfig``: dpo-ppo's
``analysis`` and ``hardware`` groups, device and precision, plus the keys naming what to analyse),
taking Hydra overrides, loaded and checked by the same ``config.load``.  Re-analyse a finished job (reads
``JOB/results.json``: ``artifacts.reference``, ``artifacts.policy``, ``artifacts.classifier``,
``artifacts.corpus``; snapshots from ``JOB/snapshots/ex_*``; writes ``JOB/reanalysis-PRESET``)::

    dpo-ppo-analyze "job='multirun/smoke/algorithm=dpo'" analysis=fast

(a value holding ``=`` or ``,``, as job folders do, is quoted for Hydra) or name the pieces
(a list of policies is analysed one after the other, each into its own subfolder of ``out_dir``)::

    dpo-ppo-analyze reference=REF policy=POL scorer=CLS corpus=CORPUS|synthetic out_dir=DIR \\
        [analysis=full|fast] [analysis.heads=false] [device=cpu] [precision=fp32]
    dpo-ppo-analyze reference=REF 'policy=[POL1,POL2]' ...

Models are ``save_pretrained`` folders (with their tokenizer; a policy without one uses the
reference's); the scorer is a folder with a HF sequence classifier and its tokenizer (positive
label 1); the corpus is a ``save_to_disk`` folder whose ``test`` split has ``text`` and ``label``
columns, or ``synthetic`` for the embedded corpus.  Bad input ends in one line naming the key.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import hydra
from omegaconf import DictConfig, OmegaConf

from dpo_ppo.config import ConfigError, register_configs
from dpo_ppo.cli.exits import exit_with_one_line, run_cli
from dpo_ppo.main import CONF_DIR

log = logging.getLogger("dpo_ppo.analyze")

PROG = "dpo-ppo-analyze"


register_configs()  # the group schemas and analyze_schema (config.AnalyzeConfig, conf/analyze.yaml)


# --------------------------------------------------------------------------- config


def compose(overrides=()) -> DictConfig:
    """The config the command line ``dpo-ppo-analyze OVERRIDES`` composes (for tests and benchmarks)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose("analyze", overrides=list(overrides))


def analysis_config(cfg: DictConfig):
    """``cfg.analysis`` as an ``AnalysisConfig``."""
    return OmegaConf.to_object(cfg.analysis)


@dataclass
class Plan:
    """What to analyse, with the paths filled in from ``job`` and checked."""

    reference: str
    policies: list
    scorer: str
    corpus: str
    out_dir: Path
    snapshots: Optional[Path] = None
    names: list = field(default_factory=list)


def _keys() -> list[str]:
    """Every key of the app's schema, dotted (for the closest-key suggestion)."""
    from dpo_ppo.config.analyze import AnalyzeConfig
    from dpo_ppo.config.keys import schema_keys

    return schema_keys(AnalyzeConfig)


def check(cfg) -> Plan:
    """Every check that needs no torch: the config (``config.load``: keys, the groups' and dpo-ppo's
    checks), the devices on this machine, the job folder, the paths.  Raises ``ConfigError``
    naming the first bad key."""
    from dpo_ppo.config import AnalyzeConfig, load
    from dpo_ppo.inputs import check_device
    from dpo_ppo.data.sources import check_dataset_folder, check_pretrained_folder
    from dpo_ppo import results as R
    from dpo_ppo.results import FAILED, FINISHED, RESULTS_FILE, read_results

    cfg = cfg if isinstance(cfg, AnalyzeConfig) else load(cfg)
    check_device("device", cfg.device)
    if cfg.analysis.device is not None:
        check_device("analysis.device", cfg.analysis.device)
    policy = cfg.policy
    policies = [str(p) for p in policy] if isinstance(policy, (list, tuple)) else ([str(policy)] if policy else [])
    reference, scorer, corpus = cfg.reference, cfg.scorer, cfg.corpus
    snapshots, out_dir = cfg.snapshots, cfg.out_dir
    if cfg.job is not None:
        job = Path(cfg.job)
        if not job.is_dir():
            raise ConfigError("job", f"no such folder: {job}")
        results = read_results(job)
        if results is None:
            raise ConfigError("job", f"no readable {RESULTS_FILE} in {job}")
        status = results.get("status")
        if status != FINISHED and not results.get("trained") and not policies:
            # without a trained policy there is nothing of the job's to analyse: say why
            error = " ".join(str(results.get("error") or "").split())
            why = (f"the job failed before its policy was trained ({error[:300]}); fix it and relaunch it"
                   if status == FAILED else
                   f"the job has not finished training (status {status}); relaunch it to resume")
            raise ConfigError("job", f"{job}: {why}")
        if status == FAILED:  # trained, then failed (e.g. in its own analysis): re-analysis is the remedy
            log.warning("%s: the job failed after training (%s); analysing its trained policy", job,
                        " ".join(str(results.get("error") or "").split())[:300])
        art = results.get("artifacts", {})
        reference = reference or art.get("reference")
        if not policies and art.get("policy"):
            # the job's own policy, read in this folder: a path recorded relative to it (or an older
            # absolute one into the folder this one was copied from) resolves here
            own = R.resolve_job_path(job, art["policy"])
            if str(own) != str(art["policy"]) and Path(str(art["policy"])).is_absolute():
                log.warning("%s: results.json names the policy %s, outside this folder; reading this folder's own %s",
                            job, art["policy"], own)
            policies = [str(own)]
            log.info("%s: analysing the policy in %s", job, own)
        scorer = scorer or art.get("classifier")
        corpus = corpus or art.get("corpus")
        if not snapshots:
            missing = R.missing_snapshots(job, results)
            if missing:  # the step divergence after a gap would silently span it (the first: from the reference)
                log.warning("%s: %s missing from %s: the next snapshot's step divergence spans the gap "
                            "(the first's is then a distance from the reference)", job, ", ".join(missing),
                            job / R.SNAPSHOTS_DIR)
        snapshots = snapshots or str(job)
        out_dir = out_dir or str(job / f"reanalysis-{cfg.analysis.name}")
    for key, value in (("reference", reference), ("policy", policies), ("scorer", scorer), ("corpus", corpus),
                       ("out_dir", out_dir)):
        if not value:
            raise ConfigError(key, f"missing: give {key}=... (or job=JOB_DIR, a job folder with {RESULTS_FILE})")
    # a policy without a tokenizer uses the reference's
    check_pretrained_folder("reference", reference, tokenizer=False)
    for i, p in enumerate(policies):
        check_pretrained_folder("policy" if len(policies) == 1 else f"policy[{i}]", p, tokenizer=False)
    check_pretrained_folder("scorer", scorer, classifier=True, finetune=False)
    if corpus != "synthetic":
        path = Path(corpus)
        if not path.exists():
            raise ConfigError("corpus", f"no such folder: {path} (or corpus=synthetic)")
        if (path / "dataset_dict.json").is_file():
            check_dataset_folder("corpus", corpus, splits=("test",))
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError("out_dir", f"{out} is a file; it must be a folder")
    names = [Path(x).name or f"policy{i}" for i, x in enumerate(policies)]
    names = [n if names.count(n) == 1 else f"{n}-{i}" for i, n in enumerate(names)]
    return Plan(reference=str(reference), policies=policies, scorer=str(scorer), corpus=str(corpus), out_dir=out,
                snapshots=Path(snapshots) if snapshots else None, names=names)


# --------------------------------------------------------------------------- loading


def load_lm(path, device):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).to(device).eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError):
        tokenizer = None
    return model, tokenizer


def load_test_split(corpus: str) -> tuple[list[str], list[int]]:
    if corpus == "synthetic":
        from dpo_ppo.config import DataConfig
        from dpo_ppo.data.corpus import make_synthetic

        d = DataConfig()
        ds = make_synthetic(d.num_reviews, d.test_fraction, d.seed)["test"]
    else:
        from datasets import DatasetDict, load_from_disk

        ds = load_from_disk(str(corpus))
        if isinstance(ds, DatasetDict):
            if "test" not in ds:
                raise ConfigError("corpus", f"{corpus} has no 'test' split (found {list(ds)})")
            ds = ds["test"]
    return list(ds["text"]), [int(y) for y in ds["label"]]


# --------------------------------------------------------------------------- the app


class ReferenceMemo:
    """The reference's side of the per-model analyses (``Context.for_model``), kept in memory for
    the policies of one invocation: analysing a list of policies against one reference computes
    the reference's ablation, head scores and attention once, not once per policy.  It is keyed
    by the tokenizer's vocabulary and special tokens too (each policy may bring its own), and each
    policy gets its own copy of a value."""

    def __init__(self):
        self.values: dict = {}

    @staticmethod
    def tokenizer_key(tokenizer) -> str:
        import hashlib
        import json

        spec = {"vocab": sorted(tokenizer.get_vocab().items()), "special": tokenizer.special_tokens_map,
                "padding_side": tokenizer.padding_side}
        return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()

    def bind(self, tokenizer):
        """``reference_cache(what, compute)`` for analyses run with ``tokenizer``."""
        import copy

        key = self.tokenizer_key(tokenizer)

        def cached(what: str, compute):
            if (what, key) not in self.values:
                self.values[what, key] = compute()
            return copy.deepcopy(self.values[what, key])

        return cached


def analyze(cfg: DictConfig) -> dict:
    """Check ``cfg``, then analyse every policy against the reference; {policy name: result}."""
    import dataclasses

    from dpo_ppo.config import load

    cfg = load(cfg)
    plan = check(cfg)  # before torch is imported: bad input fails in about a second
    from dpo_ppo.runtime import gpus, hardware
    from dpo_ppo.analysis.suite import run_analysis
    from dpo_ppo.analysis.weights import find_snapshots
    from dpo_ppo.data.scorer import Scorer

    device = gpus.resolve_device(cfg.device)
    hw = hardware.resolve(cfg, device)
    hardware.set_matmul_precision(cfg.precision, device)
    acfg = cfg.analysis
    if acfg.batch_size is None:  # a new config, the loaded one is left as it was
        acfg = dataclasses.replace(acfg, batch_size=hw.analysis_batch_size)
    log.info("%s: device %s (%s), precision %s, analysis batch %d", PROG, hw.device, hw.device_name,
             hw.precision, acfg.batch_size)
    texts, labels = load_test_split(plan.corpus)
    ref_model, ref_tok = load_lm(plan.reference, device)
    scorer = Scorer.load(plan.scorer, device, batch_size=hw.forward_batch_size, autocast=hw.autocast)
    snapshots = find_snapshots(plan.snapshots) if plan.snapshots is not None else []
    results = {}
    reference_side = ReferenceMemo()
    for name, path in zip(plan.names, plan.policies):
        policy, pol_tok = load_lm(path, device)
        tokenizer = pol_tok or ref_tok
        if tokenizer is None:
            raise ConfigError("policy", f"no tokenizer in {path} or in the reference {plan.reference}")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        target = plan.out_dir if len(plan.policies) == 1 else plan.out_dir / name
        with hw.autocast():
            res = run_analysis(acfg, ref_model, policy, tokenizer, texts=texts, labels=labels, scorer=scorer,
                               out_dir=target, snapshots=snapshots if len(plan.policies) == 1 else (),
                               device=device, reference_cache=reference_side.bind(tokenizer))
        if not cfg.quiet:
            for key, value in res["scalars"].items():
                print(f"{key}\t{value:.6g}")
        for part, err in res["errors"].items():
            print(f"{PROG}: {part} failed: {err}", file=sys.stderr)
        print(f"{PROG}: {name}: {len(res['scalars'])} scalars, {len(res['images'])} plots -> "
              f"{target / 'analysis.json'}", file=sys.stderr)
        results[name] = res
        del policy
    return results


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="analyze")
def app(cfg: DictConfig) -> None:
    try:
        analyze(cfg)
    except Exception as e:
        exit_with_one_line(e, keys=_keys())


def main() -> None:
    """``dpo-ppo-analyze``: bad input, Hydra's composition errors included, ends in one line.
    ``--help`` prints Hydra's listing, then every key's default and help (``config.keys.help_text``
    of ``AnalyzeConfig``: its own keys, the analysis and hardware groups)."""
    if not any(a in ("--help", "-h") for a in sys.argv[1:]):
        run_cli(app, lambda e: exit_with_one_line(e, keys=_keys()))
        return
    try:
        run_cli(app, lambda e: exit_with_one_line(e, keys=_keys()))
    except SystemExit as e:  # Hydra exits after its help
        if e.code not in (0, None):
            raise
    from dpo_ppo.config import AnalyzeConfig
    from dpo_ppo.config.keys import help_text

    print(help_text(schema=AnalyzeConfig))


if __name__ == "__main__":  # pragma: no cover
    main()
