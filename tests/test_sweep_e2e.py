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
wait_for: null  # a file to wait for before finishing (the packed preemption test)
hardware:
  jobs_per_gpu: 1
hydra:
  job:
    config:
      override_dirname:
        exclude_keys: [sweep, name, fail, force, wait_for, hardware.jobs_per_gpu]
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
import os
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig


@hydra.main(config_path="conf", config_name="config", version_base=None)
def main(cfg):
    out = Path(HydraConfig.get().runtime.output_dir)
    with open(out / "runs.txt", "a") as f:  # how often the job really ran
        f.write("run\\n")
    (out / "process.json").write_text(json.dumps({  # where it ran
        "pid": os.getpid(), "parent": os.getppid(), "task": HydraConfig.get().job.id,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}))
    if cfg.wait_for:
        try:
            while not Path(cfg.wait_for).exists():
                time.sleep(0.1)
        except SystemExit:  # stopped by the packed launcher (SIGTERM): record it
            with open(out / "runs.txt", "a") as f:
                f.write("stopped\\n")
            raise
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


def _tasks(app: Path, name: str = "tiny"):
    """The array tasks submitit ran: one folder each under .submitit (local job ids)."""
    return sorted(p for p in (app / "multirun" / name / ".submitit").iterdir() if p.is_dir() and p.name != "%j")


def test_packed_local_runs_jobs_per_gpu_jobs_at_once_per_array_task(app):
    """hardware.jobs_per_gpu=2 given once: 4 PPO jobs go out as 2 array tasks of 2 jobs, each job
    in its own process at the same time, with its own folder and results; the raising job of
    each pair does not take its sibling's results along. Relaunched with the default (1 job per
    task, run in the task's own process like the stock launcher), the 2 failed jobs run again."""
    from hydra_plugins.dpo_ppo_sweeper.launchers import task_cores

    proc = run(app, "hydra/launcher=packed_local", "hardware.jobs_per_gpu=2", "algorithm=ppo", "fail=raise",
               "hydra.sweeper.max_batch_size=0")
    assert proc.returncode == 1, proc.output  # seed 1 raises in each pair
    results = job_folders(app)
    ppo = {f for f in ALL_JOBS if "ppo" in f}
    assert set(results) == {f for f in ppo if f.endswith("seed=0")}
    assert all(v["status"] == "finished" for v in results.values())
    assert "4 jobs in 2 array task(s) of up to 2" in proc.output and "2 of 4 jobs failed" in proc.output
    status = json.loads((app / "multirun" / "tiny" / "sweep.json").read_text())
    assert status["counts"] == {"finished": 2, "skipped": 0, "failed": 2, "pending": 0}
    errors = [j["error"] for j in status["jobs"] if j["status"] == "failed"]
    assert len(errors) == 2 and all("tiny job raised" in e for e in errors)
    tasks = _tasks(app)
    assert len(tasks) == 2
    where = [json.loads((app / "multirun" / "tiny" / f / "process.json").read_text()) for f in ppo]
    by_task = {}
    for w in where:
        by_task.setdefault(w["task"], []).append(w)
    assert sorted(len(v) for v in by_task.values()) == [2, 2]
    for pair in by_task.values():  # two processes of one array task, the cores split between them
        assert pair[0]["pid"] != pair[1]["pid"] and pair[0]["parent"] == pair[1]["parent"]
        assert all(w["omp_num_threads"] == str(max(1, task_cores() // 2)) for w in pair)
    for task in tasks:
        assert len(list(task.glob("*_job*_log.out"))) == 2
        log = "".join(p.read_text() for p in task.glob("*_0_log.err"))
        assert "running 2 jobs at once" in log and ": completed" in log and ": failed" in log, log

    # fixed, relaunched with one job per task: the 2 failed jobs go out as 2 tasks
    proc = run(app, "hydra/launcher=packed_local", "algorithm=ppo", "hydra.sweeper.max_batch_size=0")
    assert proc.returncode == 0, proc.output
    assert "2 already finished, 2 to run" in proc.output and "2 jobs in 2 array task(s) of up to 1" in proc.output
    assert set(job_folders(app)) == ppo and all(v["status"] == "finished" for v in job_folders(app).values())
    for f in ppo:
        if f.endswith("seed=1"):  # in the task's own process this time
            w = json.loads((app / "multirun" / "tiny" / f / "process.json").read_text())
            assert w["task"] not in by_task and not list((app / "multirun" / "tiny" / ".submitit" / w["task"]).glob("*_job*"))


@pytest.mark.slow
def test_packed_local_preemption_stops_and_requeues_every_job_of_the_task(app):
    """SIGUSR2 (the preemption notice) to an array task running 2 jobs: the jobs' own processes
    ignore it; the task's process stops both (SIGTERM: they unwind), submitit requeues the task,
    and both jobs run again and finish."""
    import signal
    import time

    go = app / "go"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               DPO_PPO_SWEEPS=str(app / "sweeps"))
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.Popen([sys.executable, "app.py", "-m", "sweep=tiny", "hydra/launcher=packed_local",
                             "hardware.jobs_per_gpu=2", "algorithm=ppo", "seed=0", f"wait_for={go}"],
                            cwd=app, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    root = app / "multirun" / "tiny"
    folders = [root / f"algorithm.kl_target={t},algorithm=ppo,seed=0" for t in (3, 12)]
    first = []
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not all((f / "process.json").exists() for f in folders):
            time.sleep(0.2)
        first = [json.loads((f / "process.json").read_text()) for f in folders]
        assert first[0]["parent"] == first[1]["parent"]
        os.kill(first[0]["pid"], signal.SIGUSR2)  # a job's process: ignored
        time.sleep(1)
        os.kill(first[0]["pid"], 0)  # still alive
        os.kill(first[0]["parent"], signal.SIGUSR2)  # the task's process: stop, requeue
        while time.time() < deadline and not all(
                (f / "runs.txt").read_text().splitlines() == ["run", "stopped", "run"] for f in folders):
            time.sleep(0.2)
        go.write_text("")
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:  # a failed test leaves no array task behind
            proc.kill()
            for pid in {w["parent"] for w in first}:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    assert proc.returncode == 0, out
    for f in folders:
        assert (f / "runs.txt").read_text().splitlines() == ["run", "stopped", "run"]
        assert json.loads((f / "results.json").read_text())["status"] == "finished"
    log = "".join(p.read_text() for p in root.joinpath(".submitit").rglob("*_0_log.*"))
    assert "stopping 2 job(s) before the requeue" in log and "Requeued" in log


def test_joblib_gpu_preset_runs_jobs_per_gpu_jobs_at_once_with_the_cores_split(app):
    """hydra/launcher=joblib_gpu with hardware.jobs_per_gpu=2 on a machine without a GPU: 2 jobs
    at once (one "GPU": the CPU), each worker with cpu_count // 2 torch threads."""
    from joblib import cpu_count

    proc = run(app, "hydra/launcher=joblib_gpu", f"hydra.searchpath=[file://{REPO / 'conf'}]",
               "hardware.jobs_per_gpu=2", "algorithm=ppo")
    assert proc.returncode == 0, proc.output
    assert "n_jobs=2" in proc.output and "2/4 done" in proc.output and "4/4 done: 4 finished" in proc.output
    where = [json.loads(p.read_text()) for p in (app / "multirun" / "tiny").glob("*/process.json")]
    assert len(where) == 4 and len({w["pid"] for w in where}) <= 2  # run by the 2 workers
    expected = os.environ.get("OMP_NUM_THREADS") or str(max(1, cpu_count() // 2))
    assert {w["omp_num_threads"] for w in where} == {expected}
