"""Cluster behaviour of a job: W&B resume by id, the reproducibility record, the config-drift
guard, the per-job lock and the sweep-wide W&B sync. The stages are replaced by a stub where
they do not matter, so these tests take seconds."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from conftest import compose_cfg
from dpo_ppo import job as jobmod
from dpo_ppo import results as R
from dpo_ppo.results import config_diff, config_key as config_hash
from dpo_ppo.runtime.joblock import LOCK_FILE, JobLock
from dpo_ppo.runtime.wandb_sync import plan, sync
from fixtures import read_offline_run


def _cfg(tmp_path, *overrides):
    return compose_cfg([f"cache_dir={tmp_path / 'cache'}", "analysis=none", "name=clu", "sweep=smoke",
                        "logger=wandb_offline", *overrides])


class _Stub:
    """Job.run stand-in: logs training points from where the last attempt stopped, then fails
    (first attempt, like a preempted job) or finishes."""

    fail = True

    def __call__(self, job):
        start = len((job.job_dir / "train_log.jsonl").read_text().splitlines()) \
            if (job.job_dir / "train_log.jsonl").exists() else 0
        for i in range(start, start + 2):
            job.rec.log({"train/loss": 1.0 / (i + 1)}, step=8 * (i + 1))
        if _Stub.fail:
            raise RuntimeError("preempted")
        job.rec.metrics({"eval/policy/kl_to_ref": 2.5})
        return job.rec.record.metrics


@pytest.fixture
def stub_run(monkeypatch):
    _Stub.fail = True
    monkeypatch.setattr(jobmod.Job, "run", lambda self: _Stub()(self))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    return _Stub


def test_relaunch_resumes_the_same_wandb_run_by_id(tmp_path, stub_run):
    cfg = _cfg(tmp_path, "algorithm.beta=0.3")
    job_dir = tmp_path / "job"
    assert jobmod.run_job(cfg, job_dir, ["algorithm.beta=0.3"], raise_errors=False).status == "failed"
    first = json.loads((job_dir / "results.json").read_text())["wandb"]
    stub_run.fail = False
    assert jobmod.run_job(cfg, job_dir, ["algorithm.beta=0.3"]).status == "finished"
    res = json.loads((job_dir / "results.json").read_text())
    assert res["wandb"]["id"] == first["id"] and res["wandb"]["resumed"] and not first["resumed"]
    runs = sorted((job_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all((r / f"run-{first['id']}.wandb").exists() for r in runs)
    a, b = (read_offline_run(r) for r in runs)
    assert a["run"]["id"] == b["run"]["id"] == first["id"] and a["exit_code"] == 1 and b["exit_code"] == 0
    assert b["run"]["group"] == "clu/dpo/beta=0.3" and b["run"]["name"] == "job"
    assert set(b["run"]["tags"]) >= {"algorithm=dpo", "sweep=smoke", "model=tiny"}
    # training curves on an examples axis, eval scalars as summary values
    assert b["metrics"]["train/*"]["step_metric"] == "train/examples"
    assert "eval/*" not in b["metrics"]  # W&B's default summary (the last value), tables stay tables
    # one continuous history: the second attempt's steps go on after the first's
    steps = [r["_step"] for r in a["history"]] + [r["_step"] for r in b["history"]]
    assert steps == list(range(len(steps)))
    # the second attempt goes on from the examples the first reached
    assert [r["train/examples"] for r in a["history"] if "train/loss" in r] == [8, 16]
    assert [r["train/examples"] for r in b["history"] if "train/loss" in r] == [24, 32]
    assert b["summary"]["eval/policy/kl_to_ref"] == 2.5
    # the reproducibility record, in results.json and the W&B config
    prov = res["provenance"]
    assert prov["host"] == socket.gethostname() and prov["accelerator"]
    for name in ("torch", "transformers", "trl", "transformer-lens", "hydra-core"):
        assert prov["versions"][name], name
    assert len(prov["git"]["commit"]) == 40 and isinstance(prov["git"]["dirty"], bool)
    assert b["config"]["provenance"]["versions"]["trl"] == prov["versions"]["trl"]
    assert b["config"]["config_key"] == res["config_key"] == config_hash(res["config"])


def test_slurm_ids_are_recorded(tmp_path, stub_run, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "4200")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    stub_run.fail = False
    jobmod.run_job(_cfg(tmp_path, "logger=none"), tmp_path / "job")
    slurm = json.loads((tmp_path / "job" / "results.json").read_text())["provenance"]["slurm"]
    assert slurm["job_id"] == "4242" and slurm["array_job_id"] == "4200" and slurm["array_task_id"] == "7"


def test_environment_wins_over_logger_defaults(monkeypatch):
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    monkeypatch.setenv("WANDB_ENTITY", "lab")
    monkeypatch.setenv("WANDB_MODE", "online")
    cfg = compose_cfg(["logger=wandb_offline"])
    assert (cfg.logger.project, cfg.logger.entity, cfg.logger.mode) == ("from-env", "lab", "online")
    assert compose_cfg(["logger=wandb_offline", "logger.mode=offline"]).logger.mode == "offline"  # CLI wins
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_PROJECT")
    assert compose_cfg(["logger=wandb"]).logger.mode == "online"
    assert compose_cfg(["logger=wandb_offline"]).logger.project == "dpo-ppo"


# --------------------------------------------------------------------------- drift


def test_config_diff_names_the_keys():
    old = {"algorithm": {"lr": 1e-4, "beta": 0.1}, "seed": 0, "logger": {"mode": "offline"}, "name": "a"}
    new = {"algorithm": {"lr": 2e-4, "beta": 0.1, "epochs": 2}, "seed": 0, "logger": {"mode": "online"},
           "name": "b"}
    assert config_diff(old, new) == ["algorithm.epochs: (absent) -> 2", "algorithm.lr: 0.0001 -> 0.0002"]
    assert config_hash(old) != config_hash(new)
    assert config_hash(old) == config_hash({**old, "logger": {}, "name": "c", "device": "cuda"})


def test_drift_stops_a_finished_job_and_force_reruns_it(tmp_path, stub_run):
    job_dir = tmp_path / "job"
    stub_run.fail = False
    assert jobmod.run_job(_cfg(tmp_path, "logger=none"), job_dir).status == "finished"
    before = (job_dir / "results.json").read_text()
    # the same folder, relaunched after someone edited a default: algorithm.lr and eval.num_prompts
    edited = _cfg(tmp_path, "logger=none", "algorithm.lr=0.123", "eval.num_prompts=16")
    out = jobmod.run_job(edited, job_dir, raise_errors=False)
    assert out.status == "failed"
    assert "algorithm.lr: " in out.error and "-> 0.123" in out.error and "eval.num_prompts: 32 -> 16" in out.error
    assert "force=true" in out.error
    assert (job_dir / "results.json").read_text() == before  # the old results are left alone
    with pytest.raises(R.ConfigDrift, match="algorithm.lr"):
        jobmod.run_job(edited, job_dir)
    # unchanged config: skipped as before; only volatile keys changed: still the same job
    assert jobmod.run_job(_cfg(tmp_path, "logger=none", "threads=1", "device=cpu"), job_dir).status == "skipped"
    # force=true re-runs it from scratch under the new config (its old snapshots cleared)
    (job_dir / "snapshots" / "ex_0000016").mkdir(parents=True)
    forced = _cfg(tmp_path, "logger=none", "algorithm.lr=0.123", "eval.num_prompts=16", "force=true")
    assert jobmod.run_job(forced, job_dir).status == "finished"
    assert not (job_dir / "snapshots").exists()
    assert json.loads((job_dir / "results.json").read_text())["config"]["algorithm"]["lr"] == 0.123


def test_drift_also_guards_a_checkpoint_resume(tmp_path, stub_run):
    job_dir = tmp_path / "job"
    jobmod.run_job(_cfg(tmp_path, "logger=none"), job_dir, raise_errors=False)
    results = json.loads((job_dir / "results.json").read_text())
    (job_dir / "results.json").write_text(json.dumps({**results, "status": "running"}))  # killed mid-training
    out = jobmod.run_job(_cfg(tmp_path, "logger=none", "seed=5"), job_dir, raise_errors=False)
    assert out.status == "failed" and "seed: 0 -> 5" in out.error
    assert json.loads((job_dir / "results.json").read_text())["status"] == "running"


def test_a_failed_job_relaunched_with_a_fixed_config_starts_over(tmp_path, stub_run):
    job_dir = tmp_path / "job"
    jobmod.run_job(_cfg(tmp_path), job_dir, raise_errors=False)  # fails
    first = json.loads((job_dir / "results.json").read_text())
    (job_dir / "snapshots" / "ex_0000016").mkdir(parents=True)  # its training state
    stub_run.fail = False
    assert jobmod.run_job(_cfg(tmp_path, "eval.num_prompts=16"), job_dir).status == "finished"
    res = json.loads((job_dir / "results.json").read_text())
    assert res["attempts"] == 1 and res["wandb"]["id"] != first["wandb"]["id"]  # a fresh start
    assert not (job_dir / "snapshots").exists() and res["config"]["eval"]["num_prompts"] == 16


# --------------------------------------------------------------------------- lock

HOLD = """
import sys, time
from pathlib import Path
from dpo_ppo.runtime.joblock import JobLock
lock = JobLock(sys.argv[1], heartbeat_s=0.2)
assert lock.acquire()
Path(sys.argv[2]).write_text("held")
time.sleep(120)
"""


def test_two_launches_of_one_job_one_runs_the_other_skips(tmp_path, stub_run):
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    flag = tmp_path / "held"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(job_dir), str(flag)])
    try:
        deadline = time.time() + 60
        while not flag.exists() and holder.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert flag.exists(), "the first launch never took the lock"
        stub_run.fail = False
        out = jobmod.run_job(_cfg(tmp_path, "logger=none"), job_dir)
        assert out.status == "skipped" and f"pid {holder.pid}" in out.reason
        assert not (job_dir / "results.json").exists()  # the second launch wrote nothing
    finally:
        holder.kill()
        holder.wait()
    # the first launch died without cleaning up: its lock names a dead process on this host
    assert (job_dir / LOCK_FILE).exists()
    assert jobmod.run_job(_cfg(tmp_path, "logger=none"), job_dir).status == "finished"
    assert not (job_dir / LOCK_FILE).exists()  # released at the end


def _fake_lock(job_dir: Path, age_s: float, **fields):
    job_dir.mkdir(parents=True, exist_ok=True)
    path = job_dir / LOCK_FILE
    path.write_text(json.dumps({"token": "x", "host": "node-17", "pid": 1, "slurm": None, **fields}))
    os.utime(path, (time.time() - age_s, time.time() - age_s))


def test_lock_of_another_host_is_taken_over_only_after_its_heartbeat_stops(tmp_path):
    _fake_lock(tmp_path / "a", age_s=5)
    lock = JobLock(tmp_path / "a", stale_s=60)
    assert not lock.acquire() and lock.holder["host"] == "node-17"
    _fake_lock(tmp_path / "b", age_s=120)
    lock = JobLock(tmp_path / "b", stale_s=60, heartbeat_s=0.1)
    assert lock.acquire() and lock.owned()
    mtime = (tmp_path / "b" / LOCK_FILE).stat().st_mtime
    time.sleep(0.5)
    assert (tmp_path / "b" / LOCK_FILE).stat().st_mtime > mtime  # the heartbeat
    lock.release()
    assert not (tmp_path / "b" / LOCK_FILE).exists()


def test_requeued_slurm_job_takes_its_own_lock_back(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "99")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    _fake_lock(tmp_path / "a", age_s=1, slurm="99")  # written on another node before the requeue
    assert JobLock(tmp_path / "a", stale_s=600).acquire()
    _fake_lock(tmp_path / "b", age_s=1, slurm="98")
    assert not JobLock(tmp_path / "b", stale_s=600).acquire()


# --------------------------------------------------------------------------- sync


def _offline_job(folder: Path, run_ids, status="finished", synced=()):
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(
        {"status": status, "wandb": {"id": run_ids[0], "project": "p", "entity": None}}))
    for i, rid in enumerate(run_ids):
        run = folder / "wandb" / f"offline-run-2026010{i + 1}_000000-{rid}"
        run.mkdir(parents=True)
        (run / f"run-{rid}.wandb").write_bytes(b":W&B")
        if i in synced:
            (run / f"run-{rid}.wandb.synced").write_text("")


def test_sync_uploads_each_offline_run_of_a_sweep_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_ENTITY", "lab")
    sweep = tmp_path / "multirun" / "s"
    _offline_job(sweep / "a", ["aaa", "aaa"])  # requeued: two attempts, one run id
    _offline_job(sweep / "b", ["bbb"], synced=(0,))  # synced before
    _offline_job(sweep / "c", ["ccc"], status="running")  # still running: later
    _offline_job(sweep / "report", ["rep"], status="finished")
    calls = []

    def fake_wandb(cmd):
        calls.append(cmd)
        for path in cmd[2:]:
            for f in Path(path).glob("run-*.wandb"):
                f.with_suffix(".wandb.synced").write_text("")
        return SimpleNamespace(returncode=0)

    out = sync(sweep, runner=fake_wandb, wandb_cmd=["wandb"])
    assert len(calls) == 1 and calls[0][:2] == ["wandb", "sync"]
    names = [Path(p).name for p in calls[0][2:]]
    assert names == ["offline-run-20260101_000000-aaa", "offline-run-20260102_000000-aaa",
                     "offline-run-20260101_000000-rep"]  # both attempts of a, in start order
    assert out["synced"] == 1 and [p.name for p in out["running"]] == ["c"]
    # a's attempts predate wandb.next_step: their history steps may overlap, and the sync says so
    assert out["overlapping"] == [sweep / "a"] and "several attempts" in capsys.readouterr().err
    a = json.loads((sweep / "a" / "results.json").read_text())["wandb"]
    assert a["synced"] and a["url"] == "https://wandb.ai/lab/p/runs/aaa"
    # a second call finds nothing left but the running job
    calls.clear()
    again = sync(sweep, runner=fake_wandb, wandb_cmd=["wandb"])
    assert calls == [] and again["sync"] == [] and again["synced"] == 4
    assert [p.name for p in plan(sweep, include_running=True)["jobs"]] == ["c"]


def test_runs_csv_carries_wandb_ids_and_urls(tmp_path):
    import csv

    from dpo_ppo.report.load import load_run
    from dpo_ppo.report.build import write_runs_csv

    job = tmp_path / "algorithm=dpo"
    job.mkdir()
    (job / "results.json").write_text(json.dumps({
        "status": "finished", "algorithm": "dpo", "params": {"beta": 0.1}, "metrics": {"eval/policy/kl_to_ref": 1.0},
        "wandb": {"id": "abc123", "url": "https://wandb.ai/lab/p/runs/abc123"}}))
    write_runs_csv([load_run(job, tmp_path)], ["eval/policy/kl_to_ref"], tmp_path / "runs.csv")
    (row,) = csv.DictReader(open(tmp_path / "runs.csv"))
    assert row["wandb_id"] == "abc123" and row["wandb_url"] == "https://wandb.ai/lab/p/runs/abc123"


def test_slurm_sweeps_go_out_as_one_throttled_array_after_a_prepare_step():
    from hydra_plugins.dpo_ppo_sweeper.sweeper import DpoPpoSweeper

    slurm = {"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
             "array_parallelism": 64}
    joblib = {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 2}
    sweeper = DpoPpoSweeper()
    sweeper.config = OmegaConf.create({"hydra": {"launcher": slurm}})
    assert sweeper.batch_size() >= 10**6 and sweeper.prepare_enabled()  # one array, prepared first
    sweeper.config = OmegaConf.create({"hydra": {"launcher": joblib}})
    assert sweeper.batch_size() == 2 and not sweeper.prepare_enabled()
    assert DpoPpoSweeper(max_batch_size=50, prepare=False).batch_size() == 50
    packed = {**slurm, "_target_": "hydra_plugins.dpo_ppo_sweeper.launchers.PackedSlurmLauncher"}  # slurm_gpu
    sweeper.config = OmegaConf.create({"hydra": {"launcher": packed}})
    assert sweeper.batch_size() >= 10**6 and sweeper.prepare_enabled()


def test_a_killed_holder_not_yet_reaped_is_dead_to_the_lock(tmp_path):
    """A killed job whose process is still a zombie (its parent, a killed sweep's worker pool, has
    not reaped it: in a container PID 1 may take seconds) answers signal 0 like a live process; the
    lock reads its state and takes the folder over instead of skipping the job as running elsewhere
    (the smoke sweep's kill-and-relaunch test hit this)."""
    import signal
    import socket
    import subprocess
    import sys

    from dpo_ppo.runtime import joblock

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        os.kill(child.pid, signal.SIGKILL)
        deadline = time.time() + 10
        while time.time() < deadline:  # killed, not waited for: a zombie until we reap it
            with open(f"/proc/{child.pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
            time.sleep(0.05)
        os.kill(child.pid, 0)  # signal 0 still answers for it
        assert not joblock._pid_alive(child.pid)
        _fake_lock(tmp_path / "z", age_s=1, host=socket.gethostname(), pid=child.pid)
        lock = JobLock(tmp_path / "z", stale_s=600)
        assert lock.acquire() and lock.owned()
        lock.release()
    finally:
        child.wait()
    assert joblock._pid_alive(os.getpid())
