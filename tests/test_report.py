"""dpo-ppo-report on fabricated sweep folders: numbers checked against values computed by hand."""

import json
import math
import time
from pathlib import Path

import pytest

from dpo_ppo import report

T2 = 4.303  # t quantile, 2 degrees of freedom (3 seeds)


def write_job(root: Path, algorithm: str, knob: float, seed: int, kl: float, reward: float, bias: float,
              status: str = "finished", wall: float = 100.0, mem: float = 500.0, error=None) -> Path:
    key = "beta" if algorithm == "dpo" else "kl_target"
    folder = root / f"algorithm.{key}={knob},algorithm={algorithm},seed={seed}"
    folder.mkdir(parents=True)
    results = {
        "status": status, "algorithm": algorithm, "name": "fab",
        "overrides": [f"algorithm={algorithm}", f"algorithm.{key}={knob}", f"seed={seed}"],
        "params": {"algorithm": algorithm, "beta": knob if algorithm == "dpo" else None,
                   "kl_target": knob if algorithm == "ppo" else None, "seed": seed, "prefix_len": 25,
                   "prefix_len_max": None, "completion_len": 48, "examples": 512, "num_completions": 2,
                   "lr": 0.0005},
        "config": {"name": "fab", "logger": {"project": "dpo-ppo-test", "entity": None}},
        "metrics": {} if status != "finished" else {
            "eval/policy/reward_mean": reward, "eval/policy/kl_to_ref": kl,
            "eval/policy/gradient_loss": 1.0 - reward, "eval/policy/binary_loss": 0.4,
            "eval/reference/reward_mean": 0.1, "eval/reference/gradient_loss": 0.9,
            "eval/reference/binary_loss": 0.6,
            "analysis/divergence/weights_mean": 0.031, "analysis/divergence/bias_mean": bias,
            "analysis/time_s/total": 12.0 + seed,  # cost, not a finding: never compared
        },
        "analysis": {"per_head": {"ablation/zero/lm_loss_increase": [[kl, 1.0, 2.0], [3.0, 4.0, float(seed)]]},
                     "images": {}},
        "artifacts": {}, "wall_time_s": wall, "peak_mem_mb": mem, "error": error, "traceback": None,
    }
    (folder / "results.json").write_text(json.dumps(results))
    return folder


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sweep") / "fab"
    for s, (kl_hi, kl_lo) in enumerate([(3.0, 0.5), (3.1, 0.6), (3.2, 0.7)]):
        write_job(root, "dpo", 0.1, s, kl_hi, 0.50 + 0.02 * s, 0.010 + 0.001 * s)
        write_job(root, "dpo", 1.0, s, kl_lo, 0.30, 0.005)
    for s, (kl_hi, kl_lo) in enumerate([(3.3, 0.8), (3.4, 0.9), (3.5, 1.0)]):
        write_job(root, "ppo", 6, s, kl_hi, 0.60, 0.030 + 0.002 * s)
        write_job(root, "ppo", 1, s, kl_lo, 0.32, 0.010)
    write_job(root, "ppo", 24, 0, 0, 0, 0, status="failed", wall=50.0, mem=900.0,
              error="Traceback ...\nRuntimeError: CUDA out of memory")
    write_job(root, "dpo", 5, 0, 0, 0, 0, status="running", wall=None, mem=None)
    (root / "algorithm.beta=2,algorithm=dpo,seed=0" / ".hydra").mkdir(parents=True)  # started, no results
    (root / "algorithm.beta=-1,algorithm=dpo,seed=0" / ".hydra").mkdir(parents=True)  # raised before results
    (root / "sweep.json").write_text(json.dumps({"name": "fab", "jobs": [
        {"idx": 0, "arm": "dpo", "overrides": ["algorithm=dpo", "algorithm.beta=0.1", "seed=0"],
         "dir": "algorithm.beta=0.1,algorithm=dpo,seed=0", "status": "finished"},
        {"idx": 1, "arm": "ppo", "overrides": ["algorithm=ppo", "algorithm.kl_target=16", "seed=0"],
         "dir": "algorithm.kl_target=16,algorithm=ppo,seed=0", "status": "pending"},
        {"idx": 2, "arm": "dpo", "overrides": ["algorithm=dpo", "algorithm.beta=-1", "seed=0"],
         "dir": "algorithm.beta=-1,algorithm=dpo,seed=0", "status": "failed",
         "error": "ConfigError('algorithm.beta: must be > 0, got -1.0')"}]}))
    return root


@pytest.fixture(scope="module")
def built(sweep):
    code = report.main([str(sweep), "--bins", "2", "--no-wandb", "--compare",
                        "algorithm.beta=0.1,algorithm=dpo,seed=0", str(sweep / "algorithm.kl_target=6,algorithm=ppo,seed=0")])
    assert code == 0
    out = sweep / "report"
    return out, (out / "report.md").read_text(), json.loads((out / "summary.json").read_text())


def test_mean_ci_by_hand():
    stat = report.mean_ci([1.0, 2.0, 3.0])
    assert stat.mean == 2.0 and stat.n == 3
    assert stat.half == pytest.approx(T2 * 1.0 / math.sqrt(3), rel=1e-3)
    one = report.mean_ci([5.0, float("nan")])
    assert one.n == 1 and math.isnan(one.half) and one.text() == "5"


def test_progress_and_cost(built):
    out, md, summary = built
    assert summary["counts"] == {"finished": 12, "failed": 2, "running": 1, "no results": 1, "pending": 1}
    assert summary["wall_time_s"] == pytest.approx(12 * 100 + 50)
    assert summary["peak_mem_mb"] == 900
    assert "17 jobs: 12 finished, 2 failed, 1 running, 1 started without results, 1 not started" in md
    assert "1250 s of job wall time" in md and "900 MB" in md
    # unfinished jobs are listed, with the failure's last line
    assert "| `algorithm.kl_target=24,algorithm=ppo,seed=0` | failed | RuntimeError: CUDA out of memory |" in md
    assert "`algorithm.kl_target=16,algorithm=ppo,seed=0` | pending" in md
    # a job that failed before writing results.json: the sweeper's record says why
    assert "| `algorithm.beta=-1,algorithm=dpo,seed=0` | failed | ConfigError('algorithm.beta: must be > 0" in md


def test_frontier(built):
    out, md, summary = built
    png = out / "frontier.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "![frontier](frontier.png)" in md
    # seeds aggregated: params minus seed -> 4 configurations of 3 runs each
    groups = {(g["algorithm"], g["params"]["beta"] or g["params"]["kl_target"]): g for g in summary["groups"]}
    assert set(groups) == {("dpo", 0.1), ("dpo", 1.0), ("ppo", 6), ("ppo", 1)}
    kl = groups[("dpo", 0.1)]["metrics"]["eval/policy/kl_to_ref"]
    assert kl["n"] == 3 and kl["mean"] == pytest.approx(3.1)
    assert kl["half"] == pytest.approx(T2 * 0.1 / math.sqrt(3), rel=1e-3)
    assert sorted(groups[("ppo", 6)]["seeds"]) == [0, 1, 2]
    assert "| DPO | β=0.1 | 3 | 0.52 ± 0.05 | 3.1 ± 0.25 |" in md


def test_metrics_vs_kl_grid(built):
    out, md, summary = built
    assert (out / "metrics_vs_kl.png").stat().st_size > 10_000
    assert "metrics_vs_kl" in summary["images"]


def test_matched_kl_table(built):
    out, md, summary = built
    bins = summary["matched_kl"]
    # quantile bins over 12 runs: the median KL (1.0 + 3.0) / 2 splits them
    assert [(b["lo"], b["hi"]) for b in bins] == [(0.5, 2.0), (2.0, 3.5)]
    high = bins[1]
    assert high["n"] == {"dpo": 3, "ppo": 3}
    bias = high["metrics"]["analysis/divergence/bias_mean"]
    assert bias["dpo"]["mean"] == pytest.approx(0.011) and bias["ppo"]["mean"] == pytest.approx(0.032)
    assert bias["dpo"]["half"] == pytest.approx(T2 * 0.001 / math.sqrt(3), rel=1e-3)
    assert bias["ppo"]["half"] == pytest.approx(T2 * 0.002 / math.sqrt(3), rel=1e-3)
    assert "### KL 2-3.5 nats (DPO: 3 runs, PPO: 3 runs)" in md
    assert "| analysis/divergence/bias_mean | 0.011 ± 0.0025 | 0.032 ± 0.005 | 2.91 | **no** |" in md
    # a plain sentence for each difference beyond the intervals, none where they overlap
    assert ("At KL 2-3.5 nats, PPO's analysis/divergence/bias_mean is 2.91x DPO's "
            "(0.032 ± 0.005 vs 0.011 ± 0.0025; intervals don't overlap).") in high["notable"]
    assert any("eval/policy/reward_mean" in s for s in high["notable"])
    assert not any("weights_mean" in s or "binary_loss" in s for s in high["notable"])
    assert all(s in md for s in high["notable"])
    # the reference's own metrics are not compared between algorithms
    assert "eval/reference/" not in json.dumps(high["metrics"])


def test_compare_two_runs(built):
    out, md, summary = built
    images = summary["compare"]["images"]
    assert set(images) == {"losses", "divergence", "ablation/zero/lm_loss_increase"}
    for name in images.values():
        assert (out / name).stat().st_size > 5_000
    assert "- A: `algorithm.beta=0.1,algorithm=dpo,seed=0` (DPO β=0.1 seed 0, finished)" in md
    assert "| analysis/divergence/bias_mean | 0.01 | 0.03 | 3 |" in md


def test_runs_csv(built):
    out, _, _ = built
    lines = (out / "runs.csv").read_text().splitlines()
    assert len(lines) == 1 + 17 and lines[0].startswith("job,status,algorithm")


def test_log_bins_and_no_finished_jobs(tmp_path):
    root = tmp_path / "s"
    for s in range(2):
        write_job(root, "dpo", 0.1, s, 0.2 + s, 0.5, 0.01)
        write_job(root, "ppo", 6, s, 0.3 + s, 0.6, 0.03)
    summary = report.build_report(root, bins=3, bin_mode="log")
    assert summary["matched_kl"] and all(b["n"]["dpo"] and b["n"]["ppo"] for b in summary["matched_kl"])
    empty = tmp_path / "empty"
    write_job(empty, "ppo", 6, 0, 0, 0, 0, status="failed", error="boom")
    report.build_report(empty)
    text = (empty / "report" / "report.md").read_text()
    assert "No finished jobs yet." in text and "1 failed" in text


def test_compare_rejects_ambiguous_job(sweep):
    with pytest.raises(SystemExit, match="matches 7 jobs"):
        report.build_report(sweep, compare=["algorithm=dpo", "kl_target=6,algorithm=ppo,seed=0"],
                            out=sweep.parent / "r2")


def test_wandb_offline_report_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    root = tmp_path / "w"
    write_job(root, "dpo", 0.1, 0, 1.0, 0.5, 0.01)
    write_job(root, "ppo", 6, 0, 1.1, 0.6, 0.03)
    assert report.main([str(root), "--wandb"]) == 0
    runs = list((root / "report" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0
    assert not (tmp_path / "wandb").exists()
    try:
        from dpo_ppo.record import read_offline_run
    except ImportError:  # the reader lives with the job's recorder
        return
    # wandb's service may still be flushing the file for a moment after finish() returned
    deadline = time.time() + 20
    while True:
        logged = read_offline_run(runs[0].parent)
        if "jobs/finished" in logged["summary"] or time.time() > deadline:
            break
        time.sleep(0.5)
    # group = the sweep name the jobs recorded (their W&B group), job type "report"
    assert logged["run"]["group"] == "fab" and logged["run"]["job_type"] == "report"
    assert logged["run"]["project"] == "dpo-ppo-test"  # from the jobs' logger config
    keys = set().union(*logged["history"])
    assert {"plots/frontier/path", "runs/nrows", "matched_kl/nrows"} <= keys
    assert logged["summary"]["jobs/finished"] == 2


def test_seeds_pool_only_within_one_configuration(tmp_path):
    """Same params, different model override: two configurations, not one of four seeds."""
    root = tmp_path / "m"
    for s in range(2):
        write_job(root, "dpo", 0.1, s, 1.0 + s, 0.5, 0.01)
        other = write_job(root / "pythia", "dpo", 0.1, s, 5.0 + s, 0.7, 0.01)
        results = json.loads((other / "results.json").read_text())
        results["overrides"] += ["model=pythia70m", "+sweep=confound", "logger=wandb"]
        (other / "results.json").write_text(json.dumps(results))
    summary = report.build_report(root)
    groups = sorted((g["overrides"], g["seeds"], g["metrics"]["eval/policy/kl_to_ref"]["mean"])
                    for g in summary["groups"])
    assert groups == [([], [0, 1], 1.5), (["model=pythia70m"], [0, 1], 5.5)]
    assert "other overrides" in (root / "report" / "report.md").read_text()


def test_divergence_metrics_are_recognised_by_name():
    assert report._is_divergence("analysis/weights/msd_biases")
    assert report._is_divergence("analysis/weights/msd_layer0_weights")
    assert report._is_divergence("analysis/divergence/bias_mean")
    assert not report._is_divergence("analysis/weights/num_snapshots")
    assert not report._is_divergence("analysis/weights/bias_weight_ratio")
    assert not report._is_divergence("analysis/time_s/weights")
    assert not report._is_divergence("eval/policy/kl_to_ref")


def test_timings_are_not_compared(built):
    _, md, summary = built
    assert all("time_s" not in m for b in summary["matched_kl"] for m in b["metrics"])
    assert "analysis/time_s/total" not in md.split("## Two runs side by side")[0]
