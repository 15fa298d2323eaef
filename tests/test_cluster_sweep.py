"""The real dpo-ppo sweep through the sweeper's cluster features (slow: it runs two real jobs):
the prepare step builds the shared artifacts once before the jobs start; a relaunch leaves a job
that runs elsewhere alone, skips unchanged finished jobs (no false drift between the sweeper's
composition and the job's) and refuses to skip a job whose sweep file changed under it."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(tmp_path, sweeps, *extra):
    env = dict(os.environ, DPO_PPO_SWEEPS=str(sweeps), WANDB_MODE="disabled")
    # the smoke sweep's DPO arm at one seed: two learning rates, one set of shared artifacts
    args = [sys.executable, "-m", "dpo_ppo.main", "-m", "sweep=smoke", "algorithm=dpo", "seed=0", *TINY, "threads=1",
            f"cache_dir={tmp_path / 'cache'}", "analysis=none", "logger=none", f"hydra.sweep.dir={tmp_path / 's'}",
            *extra]
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    proc.output = proc.stdout + proc.stderr  # type: ignore[attr-defined]
    return proc


def test_prepare_step_then_relaunch_with_a_running_and_a_drifted_job(tmp_path):
    sweeps = tmp_path / "sweeps"
    sweeps.mkdir()
    text = (REPO / "sweeps" / "smoke.yaml").read_text()
    (sweeps / "smoke.yaml").write_text(text)
    proc = _run(tmp_path, sweeps, "hydra.sweeper.prepare=true")
    assert proc.returncode == 0, proc.output[-4000:]
    assert "1 prepare jobs ran first" in proc.output  # two DPO jobs, one seed: one set of artifacts
    sweep = tmp_path / "s"
    assert not list((sweep / ".prepare").glob("*/results.json"))
    jobs = sorted(p.parent for p in sweep.glob("*/results.json"))
    assert len(jobs) == 2
    for kind in ("corpus", "base", "classifier", "prefs", "ref_eval"):
        assert len([p for p in (tmp_path / "cache" / kind).iterdir() if p.is_dir()]) == 1, kind
    prepare_log = next((sweep / ".prepare").glob("*/main.log")).read_text()
    assert "prefs: built" in prepare_log and "ref_eval: built" in prepare_log
    for job in jobs:  # the jobs found every artifact ready
        log = (job / "main.log").read_text()
        assert "built in" not in log and "prefs: cached" in log, log[-2000:]

    # relaunch unchanged: both skipped, the sweeper's composed config equals the jobs' own
    proc = _run(tmp_path, sweeps)
    assert proc.returncode == 0 and "2 already finished, 0 to run" in proc.output, proc.output[-3000:]

    # one job is running elsewhere (a live process holds its lock); the sweep file changed
    (jobs[0] / ".job.lock").write_text(json.dumps({"token": "t", "host": socket.gethostname(),
                                                   "pid": os.getpid(), "slurm": None}))
    (sweeps / "smoke.yaml").write_text(text.replace("eval:\n", "eval:\n  temperature: 0.9\n"))
    proc = _run(tmp_path, sweeps)
    assert proc.returncode == 1, proc.output[-3000:]
    assert "1 running elsewhere" in proc.output and "1 not launched for config drift" in proc.output
    status = {Path(j["dir"]).name: j for j in json.loads((sweep / "sweep.json").read_text())["jobs"]}
    assert status[jobs[0].name]["status"] == "skipped" and "running elsewhere" in status[jobs[0].name]["note"]
    assert status[jobs[1].name]["status"] == "failed"
    assert "eval.temperature: 1.0 -> 0.9" in status[jobs[1].name]["error"]
    assert json.loads((jobs[1] / "results.json").read_text())["status"] == "finished"  # left alone


def test_preempted_job_is_requeued_and_resumes_its_checkpoint_and_wandb_run(tmp_path):
    """submitit_local with a real SIGUSR2 (what SLURM sends before preemption or the time
    limit): submitit checkpoints the Hydra job, requeues it, and the new attempt resumes the
    Trainer checkpoint and the same W&B run. The prepare step (on by default with submitit)
    goes through the same launcher first."""
    import signal
    import time

    env = dict(os.environ, WANDB_MODE="offline")
    sweep = tmp_path / "s"
    args = [sys.executable, "-m", "dpo_ppo.main", "-m", "sweep=smoke", "algorithm=dpo", "algorithm.beta=0.02",
            "algorithm.lr=5e-4", "seed=0",
            *TINY, "algorithm.examples=256", "algorithm.snapshot_every=16", "threads=1",
            f"cache_dir={tmp_path / 'cache'}", "analysis=none", "logger=wandb_offline",
            f"hydra.sweep.dir={sweep}", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=30"]
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 900
        lock = None
        while time.time() < deadline and proc.poll() is None:
            found = list(sweep.glob("*/snapshots/ex_0000032"))
            if found:
                lock = json.loads((found[0].parent.parent / ".job.lock").read_text())
                break
            time.sleep(0.1)
        assert lock is not None, "the job never reached its second snapshot"
        os.kill(lock["pid"], signal.SIGUSR2)  # preemption notice
        out, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-4000:]
    (job,) = [p.parent for p in sweep.glob("*/results.json")]
    res = json.loads((job / "results.json").read_text())
    assert res["status"] == "finished" and res["attempts"] == 2
    assert "checkpoint-" in res["train_summary"]["resumed_from"]
    logs = "".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.*"))
    assert "Caught signal SIGUSR2" in logs and "Requeued" in logs
    assert "\r" not in "".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.err"))  # plain progress
    runs = sorted((job / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith(res["wandb"]["id"]) for r in runs)
    assert not (job / ".job.lock").exists()
    assert "1 prepare jobs ran first" in out
    assert "prefs: built" in next((sweep / ".prepare").glob("*/main.log")).read_text()
    assert "prefs: cached" in (job / "main.log").read_text()


def test_two_real_jobs_share_one_array_task_with_jobs_per_gpu_2(tmp_path):
    """The real sweep through the packed launcher (submitit_local standing in for SLURM):
    hardware.jobs_per_gpu=2 once on the command line puts the two DPO jobs into one array task,
    run at once, each with its own folder, finished results and batch sizes for half a GPU."""
    proc = _run(tmp_path, REPO / "sweeps", "hydra/launcher=packed_local", "hardware.jobs_per_gpu=2",
                "hydra.launcher.timeout_min=30")
    assert proc.returncode == 0, proc.output[-4000:]
    assert "1 prepare jobs ran first" in proc.output and "2 jobs in 1 array task(s) of up to 2" in proc.output
    sweep = tmp_path / "s"
    jobs = sorted(p.parent for p in sweep.glob("*/results.json"))
    assert len(jobs) == 2
    for job in jobs:
        res = json.loads((job / "results.json").read_text())
        assert res["status"] == "finished" and res["hardware"]["jobs_per_gpu"] == 2
        assert "prefs: cached" in (job / "main.log").read_text()
    tasks = [p for p in (sweep / ".submitit").iterdir() if list(p.glob("*_job1_log.out"))]
    assert len(tasks) == 1  # the two jobs' own processes, in one task
