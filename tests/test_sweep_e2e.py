"""The dpo_ppo sweeper end to end, through Hydra's basic launcher, joblib and submitit_local.

The real job takes minutes, so these run a throwaway Hydra app written into a temporary folder:
its own conf/ (an algorithm group with dpo/ppo options, like the project's), a sweep file found
through DPO_PPO_SWEEPS, and a task function that writes results.json the way dpo_ppo.main does
(status finished / failed, skip when already finished). Each run is a subprocess, as on the
command line; the slow end-to-end test with the real job belongs to the integrator.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

CONFIG = """\
defaults:
  - algorithm: dpo
  - _self_
  - sweep: null
name: default
sweep: null
seed: 0
fail: none      # none | return (job writes status failed) | raise (job raises)
force: false
hydra:
  job:
    config:
      override_dirname:
        exclude_keys: [sweep, name, fail, force]
  sweep:
    dir: multirun/${name}
    subdir: ${hydra:job.override_dirname}
"""

SWEEP = """\
# @package _global_
defaults:
  - override /hydra/sweeper: dpo_ppo
name: tiny
sweep: tiny
hydra:
  sweeper:
    arms:
      dpo: {algorithm: dpo, algorithm.beta: [0.01, 0.1, 1]}
      ppo: {algorithm: ppo, algorithm.kl_target: [3, 12]}
    params:
      seed: [0, 1]
"""

APP = """\
import json
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig


@hydra.main(config_path="conf", config_name="config", version_base=None)
def main(cfg):
    out = Path(HydraConfig.get().runtime.output_dir)
    with open(out / "runs.txt", "a") as f:  # how often the job really ran
        f.write("run\\n")
    path = out / "results.json"
    if path.exists() and json.loads(path.read_text())["status"] == "finished" and not cfg.force:
        return {"status": "skipped", "job_dir": str(out)}
    algorithm = cfg.algorithm.name
    knob = cfg.algorithm.beta if algorithm == "dpo" else cfg.algorithm.kl_target
    bad = cfg.fail != "none" and algorithm == "ppo" and cfg.seed == 1
    if bad and cfg.fail == "raise":
        raise RuntimeError("tiny job raised")
    results = {
        "status": "failed" if bad else "finished", "algorithm": algorithm, "name": cfg.name,
        "overrides": list(HydraConfig.get().overrides.task),
        "params": {"algorithm": algorithm, "beta": cfg.algorithm.get("beta"),
                   "kl_target": cfg.algorithm.get("kl_target"), "seed": cfg.seed},
        "metrics": {"eval/policy/reward_mean": float(knob), "eval/policy/kl_to_ref": 2.0 * knob},
        "error": "tiny job failed" if bad else None, "wall_time_s": 0.5, "peak_mem_mb": 10.0,
    }
    path.write_text(json.dumps(results))
    return {"status": results["status"], "job_dir": str(out), "error": results["error"],
            "metrics": results["metrics"]}


if __name__ == "__main__":
    main()
"""

ALL_JOBS = {f"algorithm.beta={b},algorithm=dpo,seed={s}" for b in ("0.01", "0.1", "1") for s in (0, 1)} | {
    f"algorithm.kl_target={t},algorithm=ppo,seed={s}" for t in (3, 12) for s in (0, 1)}


@pytest.fixture
def app(tmp_path):
    (tmp_path / "conf" / "algorithm").mkdir(parents=True)
    (tmp_path / "conf" / "config.yaml").write_text(CONFIG)
    (tmp_path / "conf" / "algorithm" / "dpo.yaml").write_text("name: dpo\nbeta: 0.1\n")
    (tmp_path / "conf" / "algorithm" / "ppo.yaml").write_text("name: ppo\nkl_target: 6.0\n")
    (tmp_path / "sweeps").mkdir()
    (tmp_path / "sweeps" / "tiny.yaml").write_text(SWEEP)
    (tmp_path / "app.py").write_text(APP)
    return tmp_path


def run(app: Path, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               DPO_PPO_SWEEPS=str(app / "sweeps"))
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run([sys.executable, "app.py", "-m", "sweep=tiny", *args], cwd=app, env=env,
                          capture_output=True, text=True, timeout=timeout)
    proc.output = proc.stdout + proc.stderr  # type: ignore[attr-defined]
    return proc


def job_folders(app: Path, name: str = "tiny"):
    root = app / "multirun" / name
    return {p.parent.name: json.loads(p.read_text()) for p in root.glob("*/results.json")}


def runs_of(app: Path, folder: str, name: str = "tiny") -> int:
    return len((app / "multirun" / name / folder / "runs.txt").read_text().splitlines())


def test_basic_launcher_failures_then_relaunch(app):
    proc = run(app, "fail=return")
    assert proc.returncode == 1, proc.output
    results = job_folders(app)
    assert set(results) == ALL_JOBS
    failed = {k for k, v in results.items() if v["status"] == "failed"}
    assert failed == {"algorithm.kl_target=3,algorithm=ppo,seed=1", "algorithm.kl_target=12,algorithm=ppo,seed=1"}
    # progress after every job (basic launcher: batches of one), failures named at the end
    assert "1/10 done" in proc.output and "10/10 done: 8 finished, 0 skipped, 2 failed, 0 left" in proc.output
    assert "2 of 10 jobs failed" in proc.output and "tiny job failed" in proc.output
    status = json.loads((app / "multirun" / "tiny" / "sweep.json").read_text())
    assert status["counts"] == {"finished": 8, "skipped": 0, "failed": 2, "pending": 0}
    assert {j["dir"] for j in status["jobs"] if j["status"] == "failed"} == failed

    # the same sweep again, the bug fixed: finished jobs are not even launched
    proc = run(app)
    assert proc.returncode == 0, proc.output
    assert "8 already finished, 2 to run" in proc.output
    assert all(v["status"] == "finished" for v in job_folders(app).values())
    assert {f: runs_of(app, f) for f in ALL_JOBS} == {f: (2 if f in failed else 1) for f in ALL_JOBS}

    # and once more: nothing to do
    proc = run(app)
    assert proc.returncode == 0 and "10 already finished, 0 to run" in proc.output
    assert "0 finished, 10 skipped, 0 failed" in proc.output
    # force=true runs them all again
    proc = run(app, "force=true", "algorithm=dpo", "seed=0")
    assert proc.returncode == 0 and "3 jobs (dpo: 3)" in proc.output and "0 already finished" in proc.output


def test_a_raising_job_does_not_stop_the_sweep(app):
    proc = run(app, "fail=raise", "name=raising")
    assert proc.returncode == 1, proc.output
    results = job_folders(app, "raising")
    assert len(results) == 8 and all(v["status"] == "finished" for v in results.values())
    status = json.loads((app / "multirun" / "raising" / "sweep.json").read_text())
    errors = [j["error"] for j in status["jobs"] if j["status"] == "failed"]
    assert len(errors) == 2 and all("tiny job raised" in e for e in errors)


def test_joblib_launcher(app):
    proc = run(app, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    assert proc.returncode == 0, proc.output
    assert set(job_folders(app)) == ALL_JOBS
    # batches of n_jobs: progress every 2 jobs
    assert "2/10 done" in proc.output and "4/10 done" in proc.output and "10/10 done: 10 finished" in proc.output


def test_submitit_local_launcher(app):
    proc = run(app, "hydra/launcher=submitit_local", "seed=0", "fail=return", "hydra.sweeper.max_batch_size=5")
    assert proc.returncode == 0, proc.output  # seed 0 only: no failing job
    results = job_folders(app)
    assert set(results) == {f for f in ALL_JOBS if f.endswith("seed=0")}
    assert all(v["status"] == "finished" for v in results.values())
    assert (app / "multirun" / "tiny" / ".submitit").is_dir()
    assert "5/5 done: 5 finished" in proc.output


def test_unknown_key_fails_before_anything_runs(app):
    proc = run(app, "algorithm.nonsense=1")
    assert proc.returncode == 1
    assert "nonsense" in proc.output
    assert not job_folders(app)
