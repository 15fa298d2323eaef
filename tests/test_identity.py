"""A job's identity knows the code: the algorithm version (bumped by the fingerprint rule), older
folders shown as config drift by the sweeper and the report, and the seed group, "the same job"
and the shared artifacts each defined once in dpo_ppo/results.py."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from sweepfab import write_job

from dpo_ppo import results as R

ROOT = Path(__file__).resolve().parents[1]
PPO_NOW = {"name": "s", "seed": 0, "algorithm": {"name": "ppo", "kl_target": 1.0, "lr": 1e-4, "trust_region": "shrink"}}
DPO_NOW = {"name": "s", "seed": 0, "algorithm": {"name": "dpo", "beta": 0.1, "lr": 1e-4}}


# --------------------------------------------------------------------------- the version rule


def test_every_algorithm_has_a_version_and_its_code_the_fingerprint_recorded_beside_it():
    for algorithm in R.ALGORITHMS:
        for table in ("ALGORITHM_VERSIONS", "ALGORITHM_CODE", "ALGORITHM_FINGERPRINTS"):
            assert algorithm in getattr(R, table), (
                f"dpo_ppo/results.py {table} has no entry for algorithm {algorithm!r}: give it a version "
                f"(1 for a new one), its trainer modules and their fingerprint (results.code_fingerprint)")
        now = R.code_fingerprint(algorithm)
        assert now == R.ALGORITHM_FINGERPRINTS[algorithm], (
            f"{algorithm}'s trainer code ({', '.join(R.ALGORITHM_CODE[algorithm])}) changed: bump "
            f"ALGORITHM_VERSIONS[{algorithm!r}] (now {R.ALGORITHM_VERSIONS[algorithm]}) in dpo_ppo/results.py "
            f"and set ALGORITHM_FINGERPRINTS[{algorithm!r}] = {now!r} (or, if behaviour is unchanged, only "
            f"update the fingerprint)")


MODULE = '''"""Doc."""
import torch


def loss(x, clip=0.2):
    """What it computes."""
    return torch.clamp(x, 1 - clip, 1 + clip)  # the clipped ratio
'''
REFORMATTED = '''"""Another docstring, longer."""

import torch

# a comment


def loss(x,
         clip=0.2):
    """Said otherwise."""
    return torch.clamp(x,
                       1 - clip, 1 + clip)
'''
CHANGED = MODULE.replace("clip=0.2", "clip=0.3")


@pytest.mark.parametrize("layout", ["module", "package"])
def test_the_fingerprint_ignores_comments_formatting_and_docstrings_but_not_code(tmp_path, monkeypatch, layout):
    def fingerprint(text: str) -> str:
        train = tmp_path / "train"
        if layout == "module":
            train.mkdir(exist_ok=True)
            (train / "algo.py").write_text(text)
        else:
            (train / "algo").mkdir(parents=True, exist_ok=True)
            (train / "algo" / "__init__.py").write_text("")
            (train / "algo" / "loss.py").write_text(text)
        return R.code_fingerprint("algo", root=tmp_path)

    monkeypatch.setitem(R.ALGORITHM_CODE, "algo", ("train/algo",))
    first = fingerprint(MODULE)
    assert fingerprint(REFORMATTED) == first
    assert fingerprint(CHANGED) != first


def test_a_missing_version_is_version_1_and_the_key_of_version_1_is_the_key_before_versions():
    assert R.algorithm_version("rloo") == R.UNRECORDED_VERSION == 1  # a new algorithm: nothing older to confuse
    assert R.recorded_version({"status": R.FINISHED}) == 1 and R.recorded_version({R.ALGORITHM_VERSION: 2}) == 2
    # DPO is at 1: its folders' recorded keys are unchanged; PPO at 2: its key moves
    assert R.config_key(DPO_NOW) == R.config_key(DPO_NOW, version=1)
    assert R.config_key(PPO_NOW) != R.config_key(PPO_NOW, version=1)
    assert R.job_identity(PPO_NOW) == {"config_key": R.config_key(PPO_NOW), R.ALGORITHM_VERSION: R.ALGORITHM_VERSIONS["ppo"]}


# --------------------------------------------------------------------------- older folders are drift


def _finished(algorithm: str, config: dict, **extra) -> dict:
    return {"status": R.FINISHED, "algorithm": algorithm, "overrides": [f"algorithm={algorithm}", "seed=0"],
            "config": config, **extra}


@pytest.mark.parametrize("recorded_algo", [
    {"name": "ppo", "kl_target": 1.0, "lr": 1e-4},                          # before algorithm.trust_region existed: stop
    {"name": "ppo", "kl_target": 1.0, "lr": 1e-4, "trust_region": "stop"},  # its late default was stop
])
def test_the_sweeper_fails_an_older_ppo_folder_for_drift_naming_the_version(tmp_path, recorded_algo):
    from dpo_ppo.sweep.grid import SweepJob
    from dpo_ppo.sweep.triage import triage

    R.write_results(tmp_path, _finished("ppo", {**PPO_NOW, "algorithm": recorded_algo}))
    job = SweepJob(arm="ppo", overrides=["algorithm=ppo", "seed=0"], dir=str(tmp_path))
    assert not triage(job, config=lambda: PPO_NOW)
    assert job.status == R.FAILED and job.error.startswith("config drift"), (job.status, job.note, job.error)
    now = R.ALGORITHM_VERSIONS["ppo"]
    assert f"algorithm_version (ppo): 1 (not recorded: made before algorithm versions were) -> {now}" in job.error
    # the job itself (runtime.attempts.check_drift) reads the same function
    assert "algorithm_version (ppo)" in str(R.config_drift(tmp_path, R.read_results(tmp_path), PPO_NOW))


def test_a_relaunched_job_refuses_its_older_ppo_results_and_force_reruns_them(tmp_path, monkeypatch):
    from conftest import compose_cfg

    from dpo_ppo import job as jobmod

    monkeypatch.setattr(jobmod.Job, "run", lambda self: {})  # what training computes is not the point here
    cfg = lambda *extra: compose_cfg([f"cache_dir={tmp_path / 'cache'}", "analysis=none", "logger=none",  # noqa: E731
                                      "algorithm=ppo", *extra])
    job_dir = tmp_path / "job"
    assert jobmod.run_job(cfg(), job_dir).status == R.FINISHED
    made = R.read_results(job_dir)
    assert made[R.ALGORITHM_VERSION] == R.ALGORITHM_VERSIONS["ppo"]
    assert made["config_key"] == R.config_key(made["config"]) != R.config_key(made["config"], version=1)
    assert jobmod.run_job(cfg(), job_dir).status == R.SKIPPED  # this version's results: done
    # the same folder as the code before versions left it: no version, the trust region's key absent
    older = {**made, "config": {**made["config"], "algorithm": {
        k: v for k, v in made["config"]["algorithm"].items() if k != "trust_region"}}}
    del older[R.ALGORITHM_VERSION]
    R.write_results(job_dir, older)
    out = jobmod.run_job(cfg(), job_dir, raise_errors=False)
    assert out.status == R.FAILED and "algorithm_version (ppo): 1 (not recorded" in out.error, out
    assert jobmod.run_job(cfg("force=true"), job_dir).status == R.FINISHED
    assert R.read_results(job_dir)[R.ALGORITHM_VERSION] == R.ALGORITHM_VERSIONS["ppo"]


def test_folders_of_this_version_and_older_dpo_folders_are_still_finished_before(tmp_path):
    from dpo_ppo.sweep.grid import SweepJob
    from dpo_ppo.sweep.triage import FINISHED_BEFORE, triage

    cases = [("ppo", PPO_NOW, R.job_identity(PPO_NOW)), ("dpo", DPO_NOW, {}), ("dpo", DPO_NOW, R.job_identity(DPO_NOW))]
    for i, (algorithm, config, identity) in enumerate(cases):
        folder = tmp_path / str(i)
        R.write_results(folder, _finished(algorithm, config, **identity))
        job = SweepJob(arm=algorithm, overrides=[f"algorithm={algorithm}", "seed=0"], dir=str(folder))
        assert not triage(job, config=lambda: config)
        assert (job.status, job.note, job.error) == (R.SKIPPED, FINISHED_BEFORE, None)
    # a folder recorded by a later version than this code is drift too
    now = R.ALGORITHM_VERSIONS["ppo"]
    later = _finished("ppo", PPO_NOW, algorithm_version=now + 1)
    assert f"algorithm_version (ppo): {now + 1} -> {now}" in str(R.config_drift(tmp_path, later, PPO_NOW))


def test_the_report_shows_older_ppo_results_as_drift_instead_of_pooling_them(tmp_path):
    from dpo_ppo.report.load import configurations, load_sweep

    metrics = {R.KL: 2.0, R.REWARD: 0.6, R.REF_REWARD: 0.4}
    for seed in range(3):
        write_job(tmp_path, "dpo", 0.1, seed, metrics)
        write_job(tmp_path, "ppo", 6, seed, metrics)  # this code's version
    # the same configuration made before versions were recorded (trust region stop): two more "seeds";
    # they count as failed with the reason, as results the sweeper refused for drift do
    old = [write_job(tmp_path, "ppo", 6, seed, {**metrics, R.REWARD: 0.9}, version=None) for seed in (3, 4)]
    runs, _ = load_sweep(tmp_path)
    ppo = [g for g in configurations(runs) if g.algorithm == "ppo"]
    assert [sorted(r.seed for r in g.runs) for g in ppo] == [[0, 1, 2]]
    drifted = sorted((r for r in runs if r.status == R.FAILED), key=lambda r: r.seed)
    assert [r.dir for r in drifted] == old
    assert all(r.error == "config drift: algorithm_version (ppo): 1 (not recorded: made before algorithm versions "
                          f"were) -> {R.ALGORITHM_VERSIONS['ppo']}" for r in drifted)
    # DPO folders without a version are DPO 1, this code's: still pooled
    write_job(tmp_path, "dpo", 0.1, 3, metrics, version=None)
    runs, _ = load_sweep(tmp_path)
    assert [len(g.runs) for g in configurations(runs) if g.algorithm == "dpo"] == [4]


# --------------------------------------------------------------------------- defined once


def test_a_configurations_seeds_are_one_group_in_wandb_and_in_the_report():
    from dpo_ppo.report.load import Run
    from dpo_ppo.runtime.record import run_group

    base = ["algorithm=ppo", "algorithm.lr=2e-4", "seed=0"]
    params = {"algorithm": "ppo", "lr": 2e-4, "seed": 0}
    # logger.* changes no result: neither the W&B group nor the report's seed group tells them apart
    same = [base, base[:2] + ["seed=1", "logger.probe_every=64"], ["+algorithm.lr=2e-4", "algorithm=ppo", "seed=2"]]
    groups = {run_group({"name": "s", "algorithm": "ppo", "overrides": o}) for o in same}
    assert groups == {"s/ppo/lr=2e-4"}
    keys = {Run(dir=Path("."), status=R.FINISHED, algorithm="ppo", params={**params, "seed": i}, overrides=o,
                algorithm_version=2).group_key() for i, o in enumerate(same)}
    assert len(keys) == 1
    other = Run(dir=Path("."), status=R.FINISHED, algorithm="ppo", params=params, overrides=base + ["model=m"])
    assert other.group_key() not in keys and run_group({"name": "s", "algorithm": "ppo", "overrides": other.overrides}) \
        == "s/ppo/lr=2e-4,model=m"
    # two versions of one configuration are two groups
    assert R.seed_group_key("ppo", params, base, 1) != R.seed_group_key("ppo", params, base, 2)


def test_same_job_is_one_config_key():
    assert R.same_job(PPO_NOW, {**PPO_NOW, "logger": {"mode": "online"}, "device": "cuda"})
    assert not R.same_job(PPO_NOW, {**PPO_NOW, "seed": 1})


def test_the_shared_artifacts_are_the_cache_kinds_each_algorithm_reads():
    from dpo_ppo.runtime.record import shared_inputs

    kinds = lambda algorithm: [a.kind for a in R.shared_artifacts(algorithm)]  # noqa: E731
    assert kinds("dpo") == ["corpus", "base", "classifier", "prefs", "ref_eval"]
    assert kinds("ppo") == kinds("rloo") == ["corpus", "base", "classifier", "ref_eval"]
    recorded = {a.recorded_as: f"/cache/{a.kind}/k" for a in R.SHARED_ARTIFACTS}
    assert [(i["name"], i["type"]) for i in shared_inputs(recorded)] == [
        ("corpus-k", "dataset"), ("reference-k", "model"), ("classifier-k", "model"), ("prefs-k", "dataset"),
        ("ref_eval-k", "evaluation")]


def _sources():
    for path in sorted([*ROOT.joinpath("dpo_ppo").rglob("*.py"), *ROOT.joinpath("hydra_plugins").rglob("*.py")]):
        if path.name != "results.py" or path.parent.name != "dpo_ppo":
            yield path, ast.parse(path.read_text())


def test_identity_is_computed_only_in_results_py():
    """Outside results.py nobody hashes a config, decides which override keys change a result, or
    lists the shared artifacts: they import results' one definition."""
    found = []
    artifact_kinds = {"corpus", "classifier", "prefs", "ref_eval"}
    for path, tree in _sources():
        rel = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr in ("config_key", "changes_results")
                    and isinstance(node.value, ast.Name) and node.value.id in ("R", "results")):
                found.append(f"{rel}:{node.lineno} uses results.{node.attr}")
            if isinstance(node, ast.ImportFrom) and any(a.name in ("config_key", "changes_results") for a in node.names):
                found.append(f"{rel}:{node.lineno} imports config_key / changes_results")
            # a literal list of them, or a table keyed by them (a dict of constants; data/cache.py's
            # artifact_specs is where each kind's key is made, the job fills in their paths)
            table = isinstance(node, ast.Dict) and all(isinstance(v, ast.Constant) for v in node.values)
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)) or table:
                items = node.keys if isinstance(node, ast.Dict) else node.elts
                strings = {n.value for n in items if isinstance(n, ast.Constant)}
                if len(strings & artifact_kinds) >= 3:
                    found.append(f"{rel}:{node.lineno} lists shared artifacts")
    assert not found, "; ".join(found)
