"""Nothing silently wrong, nothing executed (issue 30): a diverged run ends as ``diverged`` with
valid JSON, a crafted resume state is refused and not run, force=true re-runs from scratch, a
copied job folder reads its own files, and the confusing cases end in one clear line."""

import json
import math
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import compose_cfg
from dpo_ppo import results as R
from dpo_ppo.job import run_job

PPO = ["algorithm=ppo", "algorithm.examples=16", "algorithm.rollout_prefixes=8", "algorithm.snapshot_every=8",
       "eval.num_prompts=8"]
DPO = ["algorithm.examples=16", "algorithm.snapshot_every=8", "eval.num_prompts=8"]


def _cfg(cache, *overrides):
    return compose_cfg([f"cache_dir={cache}", "analysis=none", "logger=none", "threads=1", *overrides])


def _strict(path: Path) -> dict:
    """results.json read as strict JSON (no bare NaN / Infinity)."""
    def refuse(token):
        raise ValueError(f"bare {token} in {path}")
    return json.loads(path.read_text(), parse_constant=refuse)


# --------------------------------------------------------------------------- 1. divergence is a status


@pytest.mark.parametrize("algo", [PPO, DPO], ids=["ppo", "dpo"])
def test_a_diverged_run_ends_diverged_naming_step_quantity_and_lr(algo, shared_cache, tmp_path, caplog):
    out = run_job(_cfg(shared_cache, *algo, "algorithm.lr=1e6"), tmp_path, raise_errors=False)
    assert out.status == R.DIVERGED, out
    assert "algorithm.lr=1e+06" in out.error and re.search(r" after \d+ examples", out.error), out.error
    assert "probability tensor" not in out.error
    res = _strict(tmp_path / R.RESULTS_FILE)
    assert res["status"] == R.DIVERGED and res["error"] == out.error and res["traceback"] is None
    for line in (tmp_path / R.TRAIN_LOG_FILE).read_text().splitlines():  # strict JSON lines
        json.loads(line, parse_constant=lambda t: pytest.fail(f"bare {t} in train_log.jsonl"))


def test_the_one_writer_writes_no_bare_nan_and_says_where_it_was(tmp_path):
    R.write_json(tmp_path / "r.json", {"status": "finished", "metrics": {"eval/policy/kl_to_ref": math.nan,
                                                                         "ok": 1.0, "rows": [math.inf]}})
    data = _strict(tmp_path / "r.json")
    assert data["metrics"] == {"eval/policy/kl_to_ref": None, "ok": 1.0, "rows": [None]}
    assert data["non_finite"] == ["metrics.eval/policy/kl_to_ref: nan", "metrics.rows[0]: inf"]


def test_check_finite_is_what_any_trainer_calls_on_its_logged_values():
    from dpo_ppo.runtime.divergence import Diverged, check_finite

    check_finite({"train/loss": 0.7, "train/examples": 8, "flag": True, "name": "x"}, 8)
    with pytest.raises(Diverged, match=r"train/kl = nan in training after 24 examples; .*algorithm.lr=0.1"):
        check_finite({"train/loss": 0.7, "train/kl": float("nan")}, 24, knob="algorithm.lr=0.1")


def test_an_update_whose_trust_region_cuts_back_every_step_says_so(shared_cache, tmp_path, caplog):
    # a bound no step keeps: every step of every update is cut back
    out = run_job(_cfg(shared_cache, *PPO, "algorithm.early_stop_kl=1e-9"), tmp_path, raise_errors=False)
    assert out.status == R.FINISHED
    assert "cut back all" in caplog.text and "algorithm.lr" in caplog.text
    res = _strict(tmp_path / R.RESULTS_FILE)
    assert res["train_summary"]["updates_all_cut_back"] == 2
    rows = R.read_train_log(tmp_path)
    # the probe's rows (at 0 and after the last update) carry no update statistics
    assert [r["train/updates_all_cut_back"] for r in rows if "train/updates_all_cut_back" in r] == [1, 2]


# --------------------------------------------------------------------------- 2. nothing read back is unpickled


class _Payload:
    """Unpickled, it would run ``touch <marker>``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_ppo_state_is_refused_not_executed(shared_cache, tmp_path):
    import torch

    marker = tmp_path / "payload-ran"
    job = tmp_path / "job"
    (job / "ppo_state").mkdir(parents=True)
    torch.save({"layout": {}, "rng": _Payload(marker)}, job / "ppo_state" / "state.pt")
    out = run_job(_cfg(shared_cache, *PPO), job, raise_errors=False)
    assert not marker.exists(), "the planted state file ran its payload"
    assert out.status == R.FAILED
    assert "ppo_state/state.pt" in out.error and "refused" in out.error and "force=true" in out.error


def test_ppo_state_round_trips_its_rng_states_through_weights_only(tmp_path):
    import random

    import numpy as np
    import torch

    from dpo_ppo.train import ppo

    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    ppo.save_state(tmp_path, {"rng": ppo.rng_state(), "generator": torch.Generator().manual_seed(1).get_state()})
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    state = ppo.load_state(tmp_path)  # weights_only=True: only tensors and plain values
    ppo.set_rng_state(state["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


def test_no_reader_of_a_job_folder_unpickles():
    """Every torch.load in the package reads weights only, and nothing calls pickle or
    np.load(allow_pickle=True) on what a job, the sweeper or the report reads back (submitit's and
    the packed launcher's cloudpickle within one launch are the documented exception)."""
    import re

    root = Path(__file__).resolve().parents[1]
    for path in list((root / "dpo_ppo").rglob("*.py")) + list((root / "hydra_plugins").rglob("*.py")):
        text = path.read_text()
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{path}: {call}"
        assert "allow_pickle=True" not in text, path
        if path.name != "launchers.py":
            assert not re.search(r"\bpickle\.loads?\(", text), path


# --------------------------------------------------------------------------- 3. force=true re-runs from scratch


@pytest.mark.parametrize("algo", [PPO, DPO], ids=["ppo", "dpo"])
def test_force_reruns_a_finished_job_from_scratch(algo, shared_cache, tmp_path, caplog):
    first = run_job(_cfg(shared_cache, *algo), tmp_path)
    assert first.status == R.FINISHED
    before = _strict(tmp_path / R.RESULTS_FILE)
    rows_before = R.read_train_log(tmp_path)
    caplog.clear()
    again = run_job(_cfg(shared_cache, *algo, "force=true"), tmp_path)
    assert again.status == R.FINISHED
    res = _strict(tmp_path / R.RESULTS_FILE)
    summary = res["train_summary"]
    assert summary["resumed_from"] is None  # no checkpoint or state of the first run was read
    assert res["attempts"] == 1 and res["replaces"]["status"] == R.FINISHED
    assert "force=true: running" in caplog.text and "from scratch" in caplog.text
    if "train_loss" in summary:  # DPO: trained again, to the same loss (same seed)
        assert summary["train_loss"] == pytest.approx(before["train_summary"]["train_loss"], rel=1e-4)
        assert summary["train_loss"] > 0.1
    # the training log holds this run's rows once, not the old ones appended
    assert len(R.read_train_log(tmp_path)) == len(rows_before)
    assert res["metrics"][R.KL] == pytest.approx(before["metrics"][R.KL], rel=1e-4, abs=1e-6)


# --------------------------------------------------------------------------- 4. a job folder is self-contained


def test_a_copied_job_folder_analyses_its_own_policy(shared_cache, tmp_path, caplog):
    import shutil

    from dpo_ppo.cli.analyze import check, compose

    original, copy = tmp_path / "sweep" / "job", tmp_path / "copy" / "job"
    assert run_job(_cfg(shared_cache, *DPO), original).status == R.FINISHED
    res = _strict(original / R.RESULTS_FILE)
    assert res["artifacts"]["policy"] == "policy"  # relative to the job folder
    assert not Path(res["train_summary"].get("snapshot_dir", "snapshots")).is_absolute()
    shutil.copytree(original, copy)
    shutil.rmtree(original.parent)  # the original is gone: the copy still has all it needs
    caplog.clear()
    caplog.set_level("INFO")
    plan = check(compose([f"job={copy}"]))
    assert plan.policies == [str(copy / "policy")] and plan.snapshots == copy
    assert f"analysing the policy in {copy / 'policy'}" in caplog.text
    # a results.json written before paths were relative names the original's policy: the copy reads its own
    res["artifacts"]["policy"] = str(original / "policy")
    R.write_results(copy, res)
    plan = check(compose([f"job={copy}"]))
    assert plan.policies == [str(copy / "policy")]
    assert f"names the policy {original / 'policy'}, outside this folder" in caplog.text



def test_a_deleted_snapshot_is_named(shared_cache, tmp_path, caplog):
    import shutil

    from dpo_ppo.cli.analyze import check, compose

    assert run_job(_cfg(shared_cache, *DPO), tmp_path).status == R.FINISHED
    assert _strict(tmp_path / R.RESULTS_FILE)["snapshots"] == ["ex_0000008", "ex_0000016"]
    shutil.rmtree(tmp_path / "snapshots" / "ex_0000008")
    check(compose([f"job={tmp_path}"]))
    assert f"ex_0000008 missing from {tmp_path / 'snapshots'}" in caplog.text
    # a results.json from before the list: the gap in the snapshot_every cadence is named
    res = _strict(tmp_path / R.RESULTS_FILE)
    del res["snapshots"]
    assert R.missing_snapshots(tmp_path, res) == ["the snapshot due after 8 examples"]


# --------------------------------------------------------------------------- 5. confusing cases: one clear line


DPO_PPO = str(Path(sys.executable).with_name("dpo-ppo"))


def _env(**extra) -> dict:
    env = {**os.environ, "WANDB_MODE": "disabled", **extra}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def test_a_different_job_on_a_busy_folder_exits_non_zero_naming_both(shared_cache, tmp_path):
    from dpo_ppo.runtime.joblock import JobLock

    job = tmp_path / "job"
    job.mkdir()
    R.write_results(job, {"status": "running", "overrides": ["algorithm.beta=0.3"], "config_key": "0123456789abcdef"})
    lock = JobLock(job)
    assert lock.acquire()  # held by this (live) process: "running elsewhere" for the launch below
    try:
        proc = subprocess.run([DPO_PPO, f"cache_dir={shared_cache}", f"hydra.run.dir={job}", "logger=none",
                               "algorithm.beta=0.7"], capture_output=True, text=True, timeout=300, env=_env())
    finally:
        lock.release()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert not (job / R.TRACEBACK_FILE).exists()  # nothing written in the other job's folder
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr
    assert any("busy with another job (algorithm.beta=0.3, config key 0123456789abcdef" in line
               and "this job (algorithm.beta=0.7" in line for line in lines), proc.stderr[-2000:]


def _finished(folder: Path, **extra) -> Path:
    folder.mkdir(parents=True)
    R.write_results(folder, {"status": "finished", "algorithm": "dpo", "params": {"beta": 0.1, "seed": 0},
                             "metrics": {R.KL: 1.0, R.REWARD: 0.6}, **extra})
    return folder


def test_symlink_loops_in_a_sweep_folder_are_skipped_with_a_warning(tmp_path, capsys):
    from dpo_ppo.report.load import load_sweep

    _finished(tmp_path / "a" / "job")
    (tmp_path / "loop").symlink_to("loop")  # a link to itself
    (tmp_path / "a" / "up").symlink_to("..")  # a link back up the tree
    runs, _ = load_sweep(tmp_path)
    assert [r.rel for r in runs] == [os.path.join("a", "job")]
    err = capsys.readouterr().err
    assert f"warning: skipped {tmp_path / 'loop'}: symlink loop" in err
    assert f"warning: skipped {tmp_path / 'a' / 'up'}: symlink loop" in err


def test_the_report_honours_the_sweepers_drift_verdict(tmp_path):
    import time

    from dpo_ppo.report.load import finished, load_sweep

    _finished(tmp_path / "beta=0.1,seed=0")
    time.sleep(0.05)
    verdict = "config drift: ... holds results made with another config (1 key differs: eval.temperature: 1.0 -> 0.9)"
    R.write_json(tmp_path / R.SWEEP_FILE, {"jobs": [{"dir": "beta=0.1,seed=0", "status": "failed", "error": verdict,
                                                     "overrides": ["algorithm=dpo", "seed=0"]}]})
    runs, _ = load_sweep(tmp_path)
    assert [(r.status, r.error) for r in runs] == [("failed", verdict)] and not finished(runs)
    time.sleep(0.05)  # a later re-run (force=true) of the job is newer than the verdict: counted again
    _finished(tmp_path / "again")
    os.replace(tmp_path / "again" / R.RESULTS_FILE, tmp_path / "beta=0.1,seed=0" / R.RESULTS_FILE)
    runs, _ = load_sweep(tmp_path)
    assert [r.status for r in runs if r.rel == "beta=0.1,seed=0"] == ["finished"]


def test_wandb_online_without_a_server_falls_back_to_offline_with_one_warning(tmp_path, monkeypatch, caplog, request):
    import time
    from types import SimpleNamespace

    from dpo_ppo.runtime.record import Recorder

    import wandb

    # W&B keeps the key and base URL of the process's setup in a singleton: reset it afterwards, or
    # every later test in this process talks to 127.0.0.1:9 with the fake key
    request.addfinalizer(wandb.teardown)
    monkeypatch.setenv("WANDB_API_KEY", "a" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "5")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = SimpleNamespace(enabled=True, mode="online", project="p", entity=None, dir=None, tags=[])
    t0 = time.time()
    rec = Recorder(tmp_path, {"algorithm": "dpo", "name": "t", "overrides": []}, cfg, {}, run_name="job")
    assert time.time() - t0 < 60
    assert rec.offline and _strict(tmp_path / R.RESULTS_FILE)["wandb"]["mode"] == "offline"
    warnings = [r.getMessage() for r in caplog.records if "W&B online could not reach" in r.getMessage()]
    assert len(warnings) == 1 and "logging offline instead" in warnings[0] and "WANDB_INIT_TIMEOUT" in warnings[0]
    rec.finish("finished")
    assert list((tmp_path / "wandb").glob("offline-run-*"))


def test_a_missing_sweeps_folder_is_named(tmp_path):
    missing = tmp_path / "no-such-folder"
    proc = subprocess.run([DPO_PPO, "-m", "sweep=mine", f"hydra.sweep.dir={tmp_path}/multirun", "logger=none"],
                          capture_output=True, text=True, timeout=120, env=_env(DPO_PPO_SWEEPS=str(missing)))
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert f"DPO_PPO_SWEEPS names {missing}, which is not a folder" in lines[0] and "sweep=mine" in lines[0]


def test_a_sweep_stopped_by_sigterm_says_interrupted_in_sweep_json(shared_cache, tmp_path):
    import signal
    import time

    from conftest import TINY

    (tmp_path / "sweeps").mkdir()
    (tmp_path / "sweeps" / "stopme.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /hydra/sweeper: dpo_ppo\nname: stopme\nhydra:\n  sweeper:\n"
        "    arms:\n      ppo:\n        algorithm: ppo\n    params:\n      seed: [0, 1, 2]\n")
    sweep_dir = tmp_path / "multirun"
    proc = subprocess.Popen([DPO_PPO, "-m", "sweep=stopme", f"hydra.sweep.dir={sweep_dir}", f"cache_dir={shared_cache}",
                             *TINY, *PPO, "analysis=none", "logger=none", "threads=1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(DPO_PPO_SWEEPS=str(tmp_path / "sweeps")))
    deadline = time.time() + 240
    while not list(sweep_dir.glob("*/results.json")):  # a job has started
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    sweep = _strict(sweep_dir / R.SWEEP_FILE)
    assert sweep["state"] == R.INTERRUPTED and sweep["error"] == "interrupted by SIGTERM", err[-3000:]
    assert "Traceback" not in err, err[-3000:]


def test_a_job_failing_on_a_full_disk_still_leaves_results_json_failed(tmp_path, monkeypatch):
    import errno
    from types import SimpleNamespace

    from dpo_ppo.runtime.record import Recorder

    cfg = SimpleNamespace(enabled=False, mode="disabled")
    rec = Recorder(tmp_path, {"status": "running", "algorithm": "ppo", "metrics": {}, "config": {"big": "x" * 500}},
                   cfg, {}, run_name="job")

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(R, "write_atomic", full)
    rec.finish(R.FAILED, error="OSError: [Errno 28] No space left on device")
    res = _strict(tmp_path / R.RESULTS_FILE)
    assert res["status"] == R.FAILED and res["partial"] is True
    assert res["error"].startswith("OSError: [Errno 28] No space left on device (results.json could not be rewritten")


def test_the_sweeper_counts_a_diverged_job_as_diverged_not_finished(tmp_path):
    from hydra.core.utils import JobReturn, JobStatus

    from dpo_ppo.sweep import state, triage
    from dpo_ppo.sweep.grid import SweepJob

    error = "diverged: train/kl = nan in training at step 1; the likely cause is the learning rate (algorithm.lr=1e+06)"
    ret = JobReturn(status=JobStatus.COMPLETED, _return_value={"status": R.DIVERGED, "error": error})
    job = SweepJob(arm="dpo", overrides=["algorithm=dpo", "algorithm.lr=1e6"], dir=str(tmp_path))
    triage.outcome(job, ret, None)
    assert (job.status, job.error) == (R.DIVERGED, error)
    lost = SweepJob(arm="dpo", overrides=["algorithm=dpo"], dir=str(tmp_path))  # the launcher lost it: the folder says
    R.write_results(tmp_path, {"status": R.DIVERGED, "error": error})
    triage.outcome(lost, None, "lost")
    assert lost.status == R.DIVERGED
    assert "0 finished, 0 skipped, 0 failed, 2 diverged" in state.done_line([job, lost], 0.0, tmp_path)


def test_the_wandb_run_id_is_recorded_before_init_so_a_kill_there_leaves_no_stray_run(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import wandb

    from dpo_ppo.runtime.record import Recorder

    def killed(**kwargs):  # the kill arrives while wandb.init waits
        raise KeyboardInterrupt
    monkeypatch.setattr(wandb, "init", killed)
    cfg = SimpleNamespace(enabled=True, mode="offline", project="p", entity=None, dir=None, tags=[])
    with pytest.raises(KeyboardInterrupt):
        Recorder(tmp_path, {"algorithm": "dpo", "name": "t", "overrides": []}, cfg, {}, run_name="job")
    first_id = _strict(tmp_path / R.RESULTS_FILE)["wandb"]["id"]
    monkeypatch.undo()
    # the relaunch (run_job passes the recorded id) resumes that run instead of starting a second
    rec = Recorder(tmp_path, {"algorithm": "dpo", "name": "t", "overrides": []}, cfg, {}, run_name="job",
                   resume_id=first_id)
    assert rec.run.id == first_id
    rec.finish("finished")


def test_a_job_whose_wandb_cannot_start_says_failed_not_running(shared_cache, tmp_path, monkeypatch):
    import wandb

    def broken(**kwargs):
        raise RuntimeError("wandb service did not start")
    monkeypatch.setattr(wandb, "init", broken)
    with pytest.raises(RuntimeError, match="wandb service did not start"):
        run_job(compose_cfg([f"cache_dir={shared_cache}", "analysis=none", "logger=wandb_offline", *DPO]), tmp_path)
    res = _strict(tmp_path / R.RESULTS_FILE)
    assert res["status"] == R.FAILED and res["error"] == "RuntimeError: wandb service did not start"
