"""Bad sweep files, faults that left dead ends, and the report/analysis CLIs on what is not a
finished sweep (issue 20, items 6-8), each through the real command line with its line asserted."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY

BIN = Path(sys.executable).parent
DPO_PPO, REPORT, ANALYZE = (str(BIN / name) for name in ("dpo-ppo", "dpo-ppo-report", "dpo-ppo-analyze"))

HEADER = "# @package _global_\ndefaults:\n  - override /hydra/sweeper: dpo_ppo\n"
SWEEPS = {
    "dup": HEADER + "name: dup\nhydra:\n  sweeper:\n    arms:\n      dpo:\n        algorithm: dpo\n"
                    "        algorithm.beta: [1, 1.0, 1e0]\n    params:\n      seed: [0, 0]\n",
    "both": HEADER + "name: both\nhydra:\n  sweeper:\n    arms:\n      dpo:\n        algorithm: dpo\n"
                     "        algorithm.beta: [0.1, 1.0]\n    params:\n      algorithm.beta: [5, 6]\n",
    "nullarm": HEADER + "name: nullarm\nhydra:\n  sweeper:\n    arms:\n      dpo:\n        algorithm: dpo\n"
                        "      ppo:\n    params:\n      seed: [0]\n",
    "broken": HEADER + "name: broken\nhydra:\n  sweeper:\n    arms:\n      dpo: {algorithm: dpo\n",
    "nosweeper": "# @package _global_\nname: nosweeper\nhydra:\n  sweeper:\n    arms:\n"
                 "      dpo: {algorithm: dpo}\n    params:\n      seed: [0, 1]\n",
}


def _env(tmp: Path) -> dict:
    env = {**os.environ, "WANDB_MODE": "disabled", "DPO_PPO_SWEEPS": str(tmp / "sweeps")}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


@pytest.fixture
def sweeps(tmp_path):
    (tmp_path / "sweeps").mkdir()
    for name, text in SWEEPS.items():
        (tmp_path / "sweeps" / f"{name}.yaml").write_text(text)
    return tmp_path


def _sweep(tmp: Path, name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([DPO_PPO, "-m", f"sweep={name}", f"hydra.sweep.dir={tmp}/multirun/{name}",
                           f"cache_dir={tmp}/cache", "logger=none", *args],
                          capture_output=True, text=True, timeout=120, env=_env(tmp))


def _one_line(proc) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    return lines[0]


# --------------------------------------------------------------------------- 6. sweep files


def test_grid_points_with_one_config_key_launch_once_and_say_so(sweeps):
    # the one job is already finished, so the sweep plans, reports and launches nothing
    folder = sweeps / "multirun" / "dup" / "algorithm.beta=1,algorithm=dpo,seed=0"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(
        {"status": "finished", "overrides": ["algorithm=dpo", "algorithm.beta=1", "seed=0"]}))
    proc = _sweep(sweeps, "dup")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    assert ("[dup] 5 grid points merged into the job with the same config key (launched once): "
            "a repeat of job #0") in out
    assert "algorithm.beta=1.0 as job #0 (algorithm.beta=1) x4" in out
    assert "[dup] 1 jobs (5 duplicate grid points merged)" in out and "1 already finished, 0 to run" in out
    plan = json.loads((sweeps / "multirun" / "dup" / "sweep.json").read_text())
    assert len(plan["jobs"]) == 1 and len(plan["merged"]) == 5


@pytest.mark.parametrize("name, expected", [
    ("both", "Config error: dpo_ppo sweeper: algorithm.beta is set both in arm 'dpo' and in params"),
    ("nullarm", "Config error: dpo_ppo sweeper: arm 'ppo' is empty (null) in hydra.sweeper.arms"),
    ("broken", "Config error: sweep=broken: {sweeps}/broken.yaml is not valid YAML: expected ',' or '}}', "
               "but got '<stream end>' at line 9, column 1"),
    ("nosweeper", "Config error: sweep=nosweeper: {sweeps}/nosweeper.yaml sets hydra.sweeper.arms, which only "
                  "the dpo_ppo sweeper reads, but does not select it: add '- override /hydra/sweeper: dpo_ppo'"),
])
def test_a_bad_sweep_file_fails_with_one_line(sweeps, name, expected):
    proc = _sweep(sweeps, name)
    line = _one_line(proc)
    assert proc.returncode == 2 and line.startswith(expected.format(sweeps=sweeps / "sweeps")), line
    assert not (sweeps / "multirun" / name / "sweep.json").exists()


def test_a_bad_value_fails_the_sweep_with_one_line_before_any_prepare_job(sweeps):
    """The sweeper loads each job's config through config.load (its checks too) when it plans the
    prepare step: a bad value is one line naming the key (exit 2), not a prepare job per config
    that each fails the same way."""
    proc = _sweep(sweeps, "smoke", "eval.num_prompts=-3", "hydra.sweeper.prepare=true")
    assert proc.returncode == 2 and _one_line(proc) == "Config error: eval.num_prompts: must be > 0, got -3"
    assert [p.name for p in (sweeps / "multirun" / "smoke").iterdir()] == ["multirun.yaml"]


def test_a_broken_sweep_file_is_silent_until_asked_for(sweeps):
    """A sweep file that does not parse no longer prints a warning at every app start."""
    proc = subprocess.run([DPO_PPO, "sweep=dup", "--cfg", "job", "--package", "name"], capture_output=True,
                          text=True, timeout=120, env=_env(sweeps))
    assert proc.returncode == 0 and proc.stdout.strip() == "dup" and not proc.stderr.strip(), proc.stderr


# --------------------------------------------------------------------------- 7. faults that left dead ends

JOB = [*TINY, "analysis=none", "logger=none", "threads=1", "algorithm=ppo", "algorithm.examples=64",
       "algorithm.rollout_prefixes=8", "algorithm.snapshot_every=16"]


def _job(cache: Path, job_dir: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.Popen([DPO_PPO, *JOB, f"cache_dir={cache}", f"hydra.run.dir={job_dir}", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            # Ctrl-C raises KeyboardInterrupt in the job whatever pytest's parent ignores
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _results(job_dir: Path) -> dict:
    return json.loads((job_dir / "results.json").read_text())


def _started(job_dir: Path) -> bool:
    """The job's own results.json says running: its stages (and the signal handler) are on."""
    try:
        return _results(job_dir).get("status") == "running"
    except (OSError, ValueError):
        return False


def _stop(proc: subprocess.Popen, signum: int, ready) -> tuple:
    """Send ``signum`` once ``ready()``; the exit code, stdout and stderr."""
    deadline = time.time() + 300
    while not ready():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def test_cut_short_results_then_sigterm_leave_a_job_that_resumes(shared_cache, tmp_path):
    """A results.json cut short is named and moved aside (was: JSONDecodeError on every relaunch,
    force=true too); SIGTERM while the job runs records status interrupted, one line, exit 143
    (during training: the slow test below)."""
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    (job_dir / "results.json").write_text('{"status": "fini')
    code, out, err = _stop(_job(shared_cache, job_dir), signal.SIGTERM, lambda: _started(job_dir))
    assert f"{job_dir / 'results.json'} is unreadable (cut short, or not a results object); moved to " \
           f"results.json.unreadable, the job runs from scratch" in out + err
    assert (job_dir / "results.json.unreadable").read_text() == '{"status": "fini'
    assert code == 143, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines[-1] == (f"Interrupted by SIGTERM: {job_dir} recorded as interrupted; run the same command "
                         f"again to resume it")
    assert "Traceback" not in out + err and not (job_dir / "traceback.txt").exists()
    results = _results(job_dir)
    assert results["status"] == "interrupted" and results["error"] == "interrupted by SIGTERM"
    assert [a["status"] for a in results["compute_attempts"]] == ["interrupted"]


@pytest.mark.slow
def test_interrupted_attempts_are_resumed_and_their_compute_counted(shared_cache, tmp_path):
    """SIGTERM, then Ctrl-C (exit 130), then a relaunch that resumes from the checkpoint and
    finishes: compute's seconds are the sums over the three attempts, its steps the planned ones."""
    job_dir = tmp_path / "job"
    checkpoint = job_dir / "ppo_state" / "state.pt"
    code, _, err = _stop(_job(shared_cache, job_dir), signal.SIGTERM, checkpoint.exists)
    assert code == 143, err[-2000:]
    checkpoint.unlink()  # the second attempt is stopped during its own training, after a checkpoint
    code, _, err = _stop(_job(shared_cache, job_dir), signal.SIGINT, checkpoint.exists)
    assert code == 130 and err.splitlines()[-1].startswith("Interrupted by SIGINT: "), err[-2000:]
    assert "Traceback" not in err and _results(job_dir)["status"] == "interrupted"
    proc = _job(shared_cache, job_dir)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    assert "ppo: resuming from" in out + err
    results = _results(job_dir)
    attempts = results["compute_attempts"]
    assert results["status"] == "finished" and results["attempts"] == 3
    assert [a["status"] for a in attempts] == ["interrupted", "interrupted", "finished"]
    compute = results["compute"]
    for key in ("wall_s", "train_s"):
        assert compute[key] == pytest.approx(sum(a[key] or 0 for a in attempts), abs=0.011)
        assert compute[key] > attempts[-1][key]  # not only the last attempt
    assert compute["wall_s"] == pytest.approx(sum(a["wall_s"] for a in attempts), abs=0.011)
    assert compute["optimizer_steps"] == results["params"]["optimizer_steps"]  # the trained policy's
    assert compute["examples_seen"] == 64


# --------------------------------------------------------------------------- 8. the report and analysis CLIs


def _report(path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    return subprocess.run([REPORT, str(path), "--no-figures", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def test_report_on_a_file_or_an_empty_folder_says_so_and_writes_nothing(tmp_path):
    a_file = tmp_path / "results.json"
    a_file.write_text("{}")
    proc = _report(a_file)
    assert proc.returncode == 1 and _one_line(proc) == (
        f"dpo-ppo-report: {a_file} is a file, not a sweep folder (give the folder a sweep wrote, e.g. multirun/NAME)")
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _report(empty, "--wandb")
    assert proc.returncode == 1 and _one_line(proc) == (
        f"dpo-ppo-report: {empty} holds no jobs (no job folder with results.json or .hydra/, no sweep.json): "
        f"nothing to report")
    assert list(empty.iterdir()) == []  # no report/, no W&B run


def test_report_counts_empty_results_as_unreadable_and_a_duplicate_once(tmp_path):
    from sweepfab import write_job

    from dpo_ppo import results as R

    root = tmp_path / "sweep"
    (root / "job_empty").mkdir(parents=True)
    (root / "job_empty" / "results.json").write_text("{}")
    # beta=1 and beta=1.0 of an older sweeper: one job in two folders, the same config_key
    for spelling in ("1", "1.0"):
        folder = write_job(root, "dpo", 1, 0, {R.KL: 1.0, R.REWARD: 0.5}, overrides=[f"x={spelling}"])
        R.write_results(folder, {**R.read_results(folder), "config_key": "abc"})
    proc = _report(root, "--no-wandb")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "fab: 2 jobs (1 finished, 0 failed, 0 running, 1 without results, 0 not started)" in proc.stdout
    assert ("unreadable results.json (cut short, or not a results object; a relaunch redoes the job): 1 (job_empty)"
            in proc.stdout)
    assert "duplicate job (same config key as algorithm.beta=1,algorithm=dpo,x=1,seed=0), counted once: " \
           "algorithm.beta=1,algorithm=dpo,x=1.0,seed=0" in proc.stdout
    summary = json.loads((root / "report" / "summary.json").read_text())
    assert summary["counts"]["running"] == 0 and summary["unreadable"] == ["job_empty"]
    assert [c["seeds"] for c in summary["configurations"]] == [[0]]  # one seed, not two with a zero interval
    assert "Counted once: 1 job folder(s) with the config key of another" in (root / "report" / "report.md").read_text()


@pytest.mark.parametrize("status, error, expected", [
    ("failed", "RuntimeError: CUDA out of memory", "the job failed before its policy was trained "
                                                   "(RuntimeError: CUDA out of memory); fix it and relaunch it"),
    ("interrupted", "interrupted by SIGTERM", "the job has not finished training (status interrupted); "
                                              "relaunch it to resume"),
])
def test_analyze_on_a_job_that_did_not_train_says_why(tmp_path, status, error, expected):
    job = tmp_path / "job"
    job.mkdir()
    (job / "results.json").write_text(json.dumps({"status": status, "error": error, "trained": False,
                                                  "artifacts": {"reference": str(tmp_path / "ref")}}))
    env = {**os.environ, "WANDB_MODE": "disabled"}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run([ANALYZE, f"job={job}"], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2 and _one_line(proc) == f"Config error: job: {job}: {expected}"


def test_an_arm_dropped_on_the_command_line_is_no_error(sweeps):
    """``hydra.sweeper.arms.ppo=null`` on the command line drops the arm on purpose (the file's
    null arm is the error above)."""
    folder = sweeps / "multirun" / "nullarm" / "algorithm=dpo,seed=0"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"status": "finished", "overrides": ["algorithm=dpo", "seed=0"]}))
    proc = _sweep(sweeps, "nullarm", "hydra.sweeper.arms.ppo=null")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "[nullarm] 1 jobs (dpo: 1)" in proc.stdout + proc.stderr


def test_analyze_on_a_job_that_failed_after_training_says_it_failed(tmp_path):
    """Its trained policy can still be re-analysed (the remedy when the job's own analysis failed),
    but the command says the job failed first."""
    job = tmp_path / "job"
    job.mkdir()
    (job / "results.json").write_text(json.dumps({"status": "failed", "error": "ValueError: analysis broke",
                                                  "trained": True, "artifacts": {}}))
    env = {**os.environ, "WANDB_MODE": "disabled"}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run([ANALYZE, f"job={job}"], capture_output=True, text=True, timeout=120, env=env)
    assert (f"{job}: the job failed after training (ValueError: analysis broke); analysing its trained policy"
            in proc.stderr.splitlines()[0])
