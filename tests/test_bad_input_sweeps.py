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


def test_a_broken_sweep_file_is_silent_until_asked_for(sweeps):
    """A sweep file that does not parse no longer prints a warning at every app start."""
    proc = subprocess.run([DPO_PPO, "sweep=dup", "--cfg", "job", "--package", "name"], capture_output=True,
                          text=True, timeout=120, env=_env(sweeps))
    assert proc.returncode == 0 and proc.stdout.strip() == "dup" and not proc.stderr.strip(), proc.stderr
