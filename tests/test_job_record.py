"""The typed job record (results.JobRecord) and run_job's outcome (results.JobOutcome): results.json
files written before the record was typed read back and are written again byte for byte, older
formats still load, and every reader (attempts, triage, dpo-ppo-sync, the report) reads the record."""

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from dpo_ppo import results as R

# results.json of a real job, written by the code before the record was typed (commit 55b52d5):
# the shrunk embedded default (tests/conftest.py TINY), algorithm=ppo logger=wandb_offline analysis=none
OLD_JOB = Path(__file__).parent / "data" / "results_55b52d5_ppo.json"


def _folder(tmp_path: Path, text: str, name: str = "job") -> Path:
    folder = tmp_path / name
    folder.mkdir(parents=True)
    (folder / R.RESULTS_FILE).write_text(text)
    return folder


def test_a_real_results_json_round_trips_byte_for_byte(tmp_path):
    text = OLD_JOB.read_text()
    record = R.read_record(_folder(tmp_path, text))
    assert record.to_json() == json.loads(text) and list(record.to_json()) == list(json.loads(text))
    assert record.text() == text
    R.write_record(tmp_path / "again", record)
    assert (tmp_path / "again" / R.RESULTS_FILE).read_text() == text
    # typed: the fields are the file's values
    assert record.status == R.FINISHED and record.algorithm == "ppo" and record.attempts == 1
    assert record.algorithm_version == 2 and record.wandb["id"] == "750e465a" and record.wandb["next_step"] == 7
    assert record.compute["optimizer_steps"] > 0 and set(record.stage_seconds) >= {"corpus", "train", "evaluate"}
    assert record.metrics[R.KL] == pytest.approx(0.09161029011011124) and record.extra == {}
    # the report's view of it
    job = R.read_job(tmp_path / "job")
    assert job.metrics[R.KL] == pytest.approx(0.09161029011011124) and job.config_key == record.config_key
    assert job.wandb["id"] == "750e465a" and job.algorithm_version == 2


def test_a_record_changed_after_reading_writes_what_the_dict_writer_wrote(tmp_path):
    """Setting a key a file lacks appends it, as a dict did; setting one it has keeps its place."""
    text = OLD_JOB.read_text()
    record = R.JobRecord.from_json(json.loads(text))
    expected = json.loads(text)
    record.status = R.RUNNING
    expected["status"] = R.RUNNING
    record.replaces = {"status": "finished", "why": "force=true"}
    expected["replaces"] = {"status": "finished", "why": "force=true"}
    record.metrics["eval/policy/x"] = float("nan")  # strict JSON: null, and where it was
    expected["metrics"]["eval/policy/x"] = float("nan")
    assert record.text() == R.json_text(expected)
    assert list(json.loads(record.text()))[-2:] == ["replaces", "non_finite"]


def test_a_fresh_record_starts_in_the_order_a_job_writes():
    record = R.JobRecord(algorithm="dpo", attempts=1)
    assert list(record.to_json()) == list(R.RECORD_START)
    record.wandb = {"id": "x"}
    record.classifier_accuracy = None  # set, even to None: written (null), as the job wrote it
    assert list(record.to_json())[-2:] == ["wandb", "classifier_accuracy"]
    assert record.has("classifier_accuracy") and not record.has("analysis")
    with pytest.raises(TypeError, match="no key wal_time_s"):
        record.update(wal_time_s=1.0)


# a results.json from before issue 34 (eval names reward_mean, ...), before algorithm versions and
# relative paths, with a key this code no longer writes
OLDER = {"status": "finished", "algorithm": "dpo", "name": "old", "overrides": ["algorithm.beta=0.1", "seed=1"],
         "params": {"algorithm": "dpo", "beta": 0.1, "seed": 1}, "config": {"algorithm": {"name": "dpo", "beta": 0.1}},
         "metrics": {"eval/policy/reward_mean": 0.7, "eval/reference/reward_mean": 0.5, R.KL: 2.0},
         "artifacts": {"policy": "/elsewhere/job/policy"}, "error": None, "traceback": None, "trained": True,
         "attempts": 1, "reward_kind": "p_positive", "config_key": "0123456789abcdef", "wall_time_s": 12.5,
         "stage_seconds": {"train": 3.0, "evaluate": 1.0}}


def test_an_older_format_folder_still_loads(tmp_path):
    from dpo_ppo.report.load import load_run
    from dpo_ppo.runtime.attempts import attempt_costs, previous_results

    text = json.dumps(OLDER, indent=1)
    folder = _folder(tmp_path, text)
    record = R.read_record(folder)
    assert record.text() == text  # the unknown key kept, in its place
    assert record.extra == {"reward_kind": "p_positive"} and record.algorithm_version is None
    assert R.recorded_version(record) == R.UNRECORDED_VERSION
    run = load_run(folder, tmp_path)  # DPO's version is still the unrecorded one: finished, not drift
    assert run.status == R.FINISHED and run.metrics[R.REWARD] == 0.7 and run.metrics[R.REF_REWARD] == 0.5
    assert previous_results(folder).to_json() == OLDER
    # an attempt without compute_attempts counts its stages (a lower bound)
    (cost,) = attempt_costs(previous_results(folder), force=False)
    assert cost == {"attempt": 1, "status": R.FINISHED, "recorded": False, "wall_s": 4.0, "train_s": 3.0,
                    "accelerator_s": None}
    # the same folder from PPO (now at version 2): drift, named
    ppo = _folder(tmp_path, json.dumps({**OLDER, "algorithm": "ppo", "params": {"algorithm": "ppo"}}), "ppo")
    assert load_run(ppo, tmp_path).status == R.FAILED
    assert "algorithm_version (ppo): 1 (not recorded" in load_run(ppo, tmp_path).error
    # the short record a full disk leaves (Recorder._save_in_place), and no status at all
    partial = {"status": R.FAILED, "error": "disk full", "partial": True}
    assert R.read_record(_folder(tmp_path, json.dumps(partial), "partial")).to_json() == partial
    assert R.read_record(_folder(tmp_path, json.dumps({"algorithm": "dpo"}), "nostatus")) is None


def test_triage_reads_the_record_and_the_outcome(tmp_path):
    from hydra.core.utils import JobReturn, JobStatus

    from dpo_ppo.sweep.grid import SweepJob
    from dpo_ppo.sweep.triage import finished_before, outcome, prepare_failure

    folder = _folder(tmp_path, json.dumps(OLDER))
    job = SweepJob(arm="dpo", overrides=["seed=1", "algorithm.beta=0.1"], dir=str(folder))
    assert finished_before(job, R.read_record(folder), exclude=R.EXCLUDED_KEYS)
    assert not finished_before(SweepJob(arm="dpo", overrides=["seed=2"], dir=str(folder)), R.read_record(folder), ())

    def ret(status, value):
        r = JobReturn(overrides=[], status=status)
        r.return_value = value
        return r

    outcome(job, ret(JobStatus.COMPLETED, R.JobOutcome(R.DIVERGED, str(folder), error="NaN loss at step 3")), None)
    assert job.status == R.DIVERGED and job.error == "NaN loss at step 3"
    outcome(job, ret(JobStatus.COMPLETED, R.JobOutcome(R.SKIPPED, str(folder), reason="running elsewhere")), None)
    assert job.status == R.SKIPPED
    assert prepare_failure(ret(JobStatus.COMPLETED, R.JobOutcome(R.PREPARED, artifacts=["corpus"])), None) is None
    assert prepare_failure(ret(JobStatus.COMPLETED, R.JobOutcome(R.FINISHED)), None).startswith("JobOutcome(")


def test_sync_rewrites_results_json_through_the_record_writer(tmp_path, monkeypatch):
    """dpo-ppo-sync adds wandb.synced and the url and leaves every other byte as the job wrote it."""
    from dpo_ppo.runtime.wandb_sync import sync

    monkeypatch.setenv("WANDB_ENTITY", "lab")
    text = OLD_JOB.read_text()
    folder = _folder(tmp_path, text)
    run = folder / "wandb" / "offline-run-20261207_221108-750e465a"
    run.mkdir(parents=True)
    (run / "run-750e465a.wandb").write_bytes(b":W&B")

    def fake_wandb(cmd):
        for path in cmd[2:]:
            for f in Path(path).glob("run-*.wandb"):
                f.with_suffix(".wandb.synced").write_text("")
        return SimpleNamespace(returncode=0)

    sync(tmp_path, runner=fake_wandb, wandb_cmd=["wandb"], lineage=False)
    expected = json.loads(text)
    expected["wandb"].update(synced=True, url="https://wandb.ai/lab/dpo-ppo/runs/750e465a")
    assert (folder / R.RESULTS_FILE).read_text() == R.json_text(expected)
    assert not [p for p in os.listdir(folder) if ".tmp" in p]  # the atomic writer's


def test_sweep_json_entries_are_written_and_read_by_one_definition(tmp_path):
    import time

    from dpo_ppo.report.load import load_sweep
    from dpo_ppo.sweep.grid import SweepJob
    from dpo_ppo.sweep.state import write_sweep_json

    jobs = [SweepJob(overrides=["algorithm=ppo", "seed=0"], dir=str(tmp_path / "a"), arm="ppo"),
            SweepJob(overrides=["algorithm=dpo"], dir=str(tmp_path / "b"), arm="dpo")]
    jobs[1].status, jobs[1].error = R.FAILED, "config drift: ..."
    write_sweep_json(tmp_path, name="s", state="done", started=time.time(), launcher="basic", arguments=[],
                     jobs=jobs, merged=[])
    meta = json.loads((tmp_path / R.SWEEP_FILE).read_text())
    entries = [R.SweepEntry.from_json(j) for j in meta[R.SWEEP_JOBS]]
    assert [e.dir for e in entries] == ["a", "b"] and entries[1].error == "config drift: ..."
    assert [e.to_json() for e in entries] == meta[R.SWEEP_JOBS] and meta[R.SWEEP_STATE] == "done"
    runs, _ = load_sweep(tmp_path)  # planned, not started: pending, with the algorithm from the overrides
    assert sorted((r.rel, r.status, r.algorithm) for r in runs) == [("a", R.PENDING, "ppo"), ("b", R.PENDING, "dpo")]
