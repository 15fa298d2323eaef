"""The real smoke sweep, end to end (slow): joblib launcher, killed mid-way, relaunched, relaunched
again (nothing re-runs), then the report."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _jobs(root: Path) -> dict:
    out = {}
    for res in root.glob("*/results.json"):
        try:
            out[res.parent.name] = json.loads(res.read_text())
        except ValueError:  # being rewritten
            pass
    return out


def _checkpointed(job: Path) -> bool:
    """A resume point exists (a snapshot is written before the checkpoint, so it is not one)."""
    return bool(list(job.glob("dpo_trainer/checkpoint-*/trainer_state.json"))) or (job / "ppo_state" / "state.pt").exists()


def test_smoke_sweep_killed_relaunched_reported(tmp_path, default_cache):
    root = tmp_path / "smoke"
    cmd = [sys.executable, "-m", "dpo_ppo.main", "-m", "sweep=smoke", "hydra/launcher=joblib",
           "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={root}", f"cache_dir={default_cache}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 1500
    while time.time() < deadline and proc.poll() is None:
        jobs = _jobs(root)
        done = [n for n, r in jobs.items() if r["status"] == "finished"]
        midway = [n for n, r in jobs.items() if r["status"] == "running" and not r.get("trained")
                  and _checkpointed(root / n)]  # killed mid-training, after a checkpoint
        if done and midway:
            break
        time.sleep(0.5)
    assert proc.poll() is None, "the sweep ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for lock in root.glob("*/.job.lock"):  # joblib's workers need not share the sweep's process group
        try:
            os.kill(json.loads(lock.read_text())["pid"], signal.SIGKILL)
        except (OSError, ValueError, KeyError):
            pass
    time.sleep(1)
    before = _jobs(root)
    finished_before = {n for n, r in before.items() if r["status"] == "finished"}
    interrupted = {n for n, r in before.items() if r["status"] == "running"}
    assert finished_before and interrupted

    relaunch = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    assert relaunch.returncode == 0, relaunch.stderr[-3000:]
    after = _jobs(root)
    assert len(after) == 8 and all(r["status"] == "finished" for r in after.values())
    assert {r["algorithm"] for r in after.values()} == {"dpo", "ppo"}
    for name in finished_before:  # no finished job lost or re-run
        assert after[name]["attempts"] == 1 and after[name]["metrics"] == before[name]["metrics"]
    resumed = 0
    for name in interrupted:  # each picks up where it was
        assert after[name]["attempts"] == 2
        if before[name].get("trained"):  # killed after training: not trained again
            assert "train" not in after[name]["stage_seconds"]
        elif _checkpointed(root / name):  # killed mid-training: from its checkpoint
            resumed += after[name]["train_summary"]["resumed_from"] is not None
    assert resumed >= 1

    # the sweep places its runs: no two configurations alike, a 4x span of KL, DPO and PPO overlapping
    kl = {n: r["metrics"]["eval/policy/kl_to_ref"] for n, r in after.items()}
    configs = {}
    for n, r in after.items():
        configs.setdefault(tuple(sorted(o for o in r["overrides"] if not o.startswith("seed="))), []).append(n)
    assert len(configs) == 4
    means = {c: sum(kl[n] for n in names) / len(names) for c, names in configs.items()}
    assert len({round(v, 6) for v in means.values()}) == 4, means
    assert max(kl.values()) >= 4 * min(kl.values()), kl
    span = {a: [kl[n] for n, r in after.items() if r["algorithm"] == a] for a in ("dpo", "ppo")}
    assert max(min(span["dpo"]), min(span["ppo"])) < min(max(span["dpo"]), max(span["ppo"])), span

    # the reference's side of the analyses was computed once for the sweep's 8 jobs (and shared with
    # any other job of this cache with analysis=fast), not once per job
    specs = [json.loads(p.read_text()) for p in default_cache.glob("ref_analysis/*/spec.json")]
    fast = sorted(s["what"] for s in specs if s["analysis"]["max_tokens"] == 32 and not s["analysis"]["ablation_reference"])
    assert fast == ["heads", "sentiment_attention"], fast

    stamps = {p: p.stat().st_mtime for p in root.glob("*/results.json")}
    third = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert third.returncode == 0
    assert {p: p.stat().st_mtime for p in root.glob("*/results.json")} == stamps  # nothing re-ran
    sweep = json.loads((root / "sweep.json").read_text())
    assert sum(sweep["counts"].get(k, 0) for k in ("skipped", "finished")) == 8

    report = subprocess.run([sys.executable, "-m", "dpo_ppo.report", str(root), "--no-wandb"],
                            capture_output=True, text=True, timeout=600)
    assert report.returncode == 0, report.stderr[-2000:]
    md = (root / "report" / "report.md").read_text()
    assert (root / "report" / "frontier.png").stat().st_size > 10_000
    assert "8 finished" in md and "## The seed paper's claims, DPO vs PPO at matched KL" in md
