"""What a job's and a report's W&B runs hold, read back from the offline run files (issue 24)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from dpo_ppo import results as R
from dpo_ppo.config import LoggerConfig
from dpo_ppo.record import Recorder, run_group

from fixtures import read_offline_run
from sweepfab import BIAS, write_job

pytest.importorskip("wandb")


@pytest.fixture(autouse=True)
def _quiet_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)


def offline_runs(folder: Path) -> list:
    return sorted(Path(folder, "wandb").glob("offline-run-*"))


def job_results(**extra) -> dict:
    return {"status": "running", "algorithm": "dpo", "name": "smoke", "metrics": {},
            "overrides": ["algorithm=dpo", "algorithm.lr=2e-4", "seed=1", "logger=wandb_offline"], **extra}


def test_analysis_tables_stay_tables_and_measurements_stay_out_of_the_config(tmp_path):
    asked = {"mode": "matched", "prefixes_per_step": 16}
    rec = Recorder(tmp_path, job_results(), LoggerConfig(project="proj"), {"compute": asked}, run_name="j")
    rec.metrics({"analysis/weights/msd_all": 0.25, "eval/policy/reward_mean": 0.6})
    rec.table("analysis/heads", ["layer", "head", "score"], [[0, 1, 0.5]])
    rec.measured("compute", {"wall_s": 12.5, "trained_tokens": 1000})
    rec.finish("finished")
    run = read_offline_run(offline_runs(tmp_path)[0])
    # summary="last" made every field of a table {"last": ...}: the summary held a dict, not a table
    assert run["summary"]["analysis/heads/_type"] == "table-file"
    assert run["summary"]["analysis/weights/msd_all"] == 0.25
    assert not any(m["summary"] for m in run["metrics"].values())
    assert run["config"]["compute"] == asked  # the Hydra group as asked, not replaced by what it cost
    assert run["summary"]["compute/wall_s"] == 12.5 and run["summary"]["compute/trained_tokens"] == 1000


def test_a_job_is_grouped_by_its_arm_configuration_not_its_seed(tmp_path):
    assert run_group(job_results()) == "smoke/dpo/lr=2e-4"
    assert run_group({**job_results(), "overrides": ["algorithm=ppo", "seed=0"], "algorithm": "ppo"}) == "smoke/ppo"
    assert run_group(job_results(overrides=["algorithm=dpo", "algorithm.beta=0.1", "model=tiny", "seed=2"])) \
        == "smoke/dpo/beta=0.1,model=tiny"
    long = run_group(job_results(overrides=[f"algorithm.k{i}=1" for i in range(40)]))
    assert len(long) <= 128 and long != run_group(job_results(overrides=[f"algorithm.k{i}=2" for i in range(40)]))
    rec = Recorder(tmp_path, job_results(), LoggerConfig(project="proj"), {"sweep": "smoke"}, run_name="j")
    rec.finish("finished")
    run = read_offline_run(offline_runs(tmp_path)[0])
    assert run["run"]["group"] == "smoke/dpo/lr=2e-4" and run["run"]["job_type"] == "dpo"
    assert "sweep=smoke" in run["run"]["tags"]


def test_a_resumed_run_continues_its_history_steps(tmp_path):
    """Offline, every attempt of a requeued job is a new folder under the same id whose history
    would start at step 0 again; W&B keeps only rising steps of a run."""
    results = job_results()
    rec = Recorder(tmp_path, results, LoggerConfig(project="proj"), {}, run_name="j")
    for ex in (16, 32, 48):
        rec.log({"train/loss": 1.0 / ex}, ex)
    run_id, next_step = results["wandb"]["id"], results["wandb"]["next_step"]
    assert json.loads((tmp_path / R.RESULTS_FILE).read_text())["wandb"]["next_step"] == next_step == 3
    rec.run.finish(exit_code=1)  # killed: results.json still says running
    time.sleep(1.1)  # W&B names an offline run's folder by the second it started
    rec2 = Recorder(tmp_path, job_results(), LoggerConfig(project="proj"), {}, run_name="j", resume_id=run_id,
                    resume_step=next_step)
    for ex in (48, 64):
        rec2.log({"train/loss": 1.0 / ex}, ex)
    rec2.metrics({"eval/policy/reward_mean": 0.6})
    rec2.finish("finished")
    first, second = (read_offline_run(r) for r in offline_runs(tmp_path))
    assert first["run"]["id"] == second["run"]["id"] == run_id
    assert [r["_step"] for r in first["history"]] == [0, 1, 2]
    assert [r["_step"] for r in second["history"]] == [3, 4, 5]
    assert [r["train/examples"] for r in second["history"] if "train/examples" in r] == [48, 64]


def test_report_run_is_typed_stable_across_copies_and_continues_when_remade(tmp_path):
    from dpo_ppo import report

    root = tmp_path / "a" / "fab"
    for algorithm in R.ALGORITHMS:
        for seed in (0, 1):
            write_job(root, algorithm, 1, seed, {R.KL: 1.0 + seed, R.REWARD: 0.5, BIAS: 0.1})
    assert report.main([str(root), "--wandb", "--bootstrap", "100", "--no-figures"]) == 0
    moved = tmp_path / "b" / "fab-copy"
    shutil.copytree(root, moved)
    time.sleep(1.1)
    assert report.main([str(moved), "--wandb", "--bootstrap", "100", "--no-figures"]) == 0
    assert report.report_run_id(root) == report.report_run_id(moved)  # name and jobs, not the path
    other = tmp_path / "c" / "fab"
    write_job(other, "dpo", 2, 0, {R.KL: 1.0, R.REWARD: 0.5})
    assert report.report_run_id(other) != report.report_run_id(root)
    runs = [read_offline_run(r) for r in offline_runs(moved / "report")]
    assert len(runs) == 2 and {r["run"]["id"] for r in runs} == {report.report_run_id(root)}
    assert [[h["_step"] for h in r["history"]] for r in runs] == [[0], [1]]  # the re-made one after the first
    logged = runs[-1]
    assert logged["run"]["group"] == "fab/report" and logged["run"]["job_type"] == "report"
    assert {"report", "sweep=fab"} <= set(logged["run"]["tags"])
    table = json.loads((offline_runs(moved / "report")[-1] / "files" / logged["summary"]["runs/path"]).read_text())
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert sorted(r[R.KL] for r in rows) == [1.0, 1.0, 2.0, 2.0]  # numbers, not '1.0'
    assert all(r["error"] is None and r["beta"] in (1, None) for r in rows)  # None, not 'None' or ''
