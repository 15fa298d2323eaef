"""Exact resume (slow): a job killed with SIGKILL after a checkpoint and relaunched ends where an
uninterrupted job with the same config ends, for DPO and for PPO, and its train_log.jsonl holds
each step once."""

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY

pytestmark = pytest.mark.slow

BASE = [*TINY, "analysis=none", "logger=none", "threads=1"]
# (overrides, the file that says a complete checkpoint is on disk, the relaunch's log line)
ALGOS = {
    # 32 DPO steps of 8 pairs; a Trainer checkpoint every 4 steps (snapshot_every / batch_size)
    "dpo": (["algorithm=dpo", "algorithm.examples=256", "algorithm.snapshot_every=32"],
            "dpo_trainer/checkpoint-8/trainer_state.json", "dpo: resuming from"),
    # 8 PPO updates of 8 prefixes; the resume state is written every 16 examples
    "ppo": (["algorithm=ppo", "algorithm.examples=64", "algorithm.rollout_prefixes=8",
             "algorithm.snapshot_every=16"], "ppo_state/state.pt", "ppo: resuming from"),
}
# what legitimately differs between attempts: wall-clock timings; TRL's token counter (kept by
# the trainer object, not in the checkpoint; it restarts at 0 in a resumed attempt); and the
# Trainer's end-of-run train_loss, which sums the losses of this attempt's steps only
NOT_COMPARED = ("_s", "runtime", "per_second", "num_tokens", "tokens_per_s", "train/train_loss")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("resume-cache")


def _args(cache: Path, job_dir: Path, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "dpo_ppo.main", *BASE, *overrides, f"cache_dir={cache}",
            f"hydra.run.dir={job_dir}"]


def _rows(job_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (job_dir / "train_log.jsonl").read_text().splitlines()]


def _comparable(row: dict) -> dict:
    return {k: v for k, v in row.items() if not any(part in k for part in NOT_COMPARED)}


@pytest.mark.parametrize("algo", ["dpo", "ppo"])
def test_killed_and_relaunched_job_equals_an_uninterrupted_one(algo, cache, tmp_path):
    overrides, checkpoint, resume_line = ALGOS[algo]
    full_dir, killed_dir = tmp_path / "full", tmp_path / "killed"
    full = subprocess.run(_args(cache, full_dir, overrides), capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr[-2000:]

    proc = subprocess.Popen(_args(cache, killed_dir, overrides), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed_dir / checkpoint).exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    assert proc.returncode == -9, "the job ended before it could be killed after its checkpoint"
    assert json.loads((killed_dir / "results.json").read_text())["status"] == "running"
    killed_rows = _rows(killed_dir)

    again = subprocess.run(_args(cache, killed_dir, overrides), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert resume_line in again.stdout + again.stderr

    res_full = json.loads((full_dir / "results.json").read_text())
    res = json.loads((killed_dir / "results.json").read_text())
    assert res["status"] == "finished" and res["attempts"] == 2
    assert res["train_summary"]["resumed_from"] not in (None, 0)
    metrics = {k: v for k, v in res_full["metrics"].items() if k.startswith(("eval/policy/", "eval/improvement/"))}
    assert metrics and "eval/policy/kl_to_ref" in metrics
    for key, value in metrics.items():
        assert res["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-7), key

    # train_log.jsonl: each step once, and the same curve as the uninterrupted job's
    rows, rows_full = _rows(killed_dir), _rows(full_dir)
    keys = [(r["step"], tuple(sorted(r))) for r in rows]
    assert len(keys) == len(set(keys)), "a step is logged twice"
    assert [r["step"] for r in rows] == [r["step"] for r in rows_full]
    for row, row_full in zip(rows, rows_full):
        a, b = _comparable(row), _comparable(row_full)
        assert a.keys() == b.keys()
        for k in a:
            if isinstance(b[k], float) and not math.isnan(b[k]):
                assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7), (row["step"], k)
    assert len(killed_rows) >= 1  # the killed attempt had logged; the relaunch replaced what it redid

    # nothing was written into a finished artifact (no datasets cache-*.arrow files, no temp files)
    from dpo_ppo.data.cache import MANIFEST, verify

    artifacts = [p for p in cache.glob("*/*") if p.is_dir()]
    assert {p.parent.name for p in artifacts} >= {"corpus", "base", "classifier"}
    for art in artifacts:
        files = {str(p.relative_to(art)) for p in art.rglob("*") if p.is_file()}
        assert files == set(json.loads((art / MANIFEST).read_text())) | {MANIFEST}, art
        assert verify(art) is None
