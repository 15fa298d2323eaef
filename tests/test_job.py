"""One job end to end on the shrunk embedded default: stages, results.json, W&B, skip and resume."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import compose_cfg
from dpo_ppo.data.cache import artifact_specs
from dpo_ppo.job import run_job
from fixtures import read_offline_run


def _cfg(shared_cache, *overrides):
    return compose_cfg([f"cache_dir={shared_cache}", "analysis=none", *overrides])


def test_dpo_job_end_to_end_then_skip(shared_cache, tmp_path):
    cfg = _cfg(shared_cache, "name=t", "algorithm.beta=0.5")
    out = run_job(cfg, tmp_path, overrides=["algorithm.beta=0.5"])
    assert out.status == "finished"
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["status"] == "finished" and res["algorithm"] == "dpo" and res["params"]["beta"] == 0.5
    # the job's typed record (results.JobRecord) reads back and writes again byte for byte, and is
    # what the strict-JSON writer makes of the object (the file before the record was typed)
    from dpo_ppo.results import JobRecord, json_text, read_record

    text = (tmp_path / "results.json").read_text()
    assert read_record(tmp_path).text() == text == json_text(res) == JobRecord.from_json(res).text()
    assert read_record(tmp_path).params["beta"] == 0.5 and out.metrics == res["metrics"]
    m = res["metrics"]
    for k in ("p_positive_mean", "gradient_loss", "binary_loss", "kl_to_ref", "completion_len", "distinct_2"):
        assert f"eval/policy/{k}" in m
    assert m["eval/policy/kl_to_ref"] > 0
    assert m["eval/improvement/binary_loss"] == pytest.approx(
        m["eval/reference/binary_loss"] - m["eval/policy/binary_loss"])
    # the gold reward (eval.gold=auto: the generator's lexicon on data=synthetic) beside the proxy, for the
    # policy and the reference, in results.json, the rows (the reference's too) and W&B
    for side in ("policy", "reference"):
        assert 0 < m[f"eval/{side}/gold_p_positive_mean"] < 1
        assert m[f"eval/{side}/gold_p_positive_mean"] != m[f"eval/{side}/p_positive_mean"]
    assert m["eval/improvement/gold_p_positive_mean"] == pytest.approx(
        m["eval/policy/gold_p_positive_mean"] - m["eval/reference/gold_p_positive_mean"])
    from dpo_ppo.results import read_eval_rows
    rows = read_eval_rows(tmp_path)
    assert len(rows["gold_p_positive"]) == cfg.eval.num_prompts
    assert sum(rows["gold_p_positive"]) / len(rows["gold_p_positive"]) == pytest.approx(
        m["eval/policy/gold_p_positive_mean"], abs=1e-6)
    ref_rows = read_eval_rows(Path(res["artifacts"]["ref_eval"]) / "rows.csv")
    assert sum(ref_rows["gold_p_positive"]) / len(ref_rows["gold_p_positive"]) == pytest.approx(
        m["eval/reference/gold_p_positive_mean"], abs=1e-6)
    assert set(res["stage_seconds"]) >= {"corpus", "base", "scorer", "prompts", "prefs", "train", "evaluate"}
    # snapshots every 16 examples of 32, and the final policy
    assert sorted(p.name for p in (tmp_path / "snapshots").iterdir()) == ["ex_0000016", "ex_0000032"]
    assert (tmp_path / "policy" / "config.json").exists()
    for key in ("corpus", "reference", "classifier", "prefs"):
        assert Path(res["artifacts"][key]).is_dir()
    # the W&B run: group = name/algorithm/arm, job_type = algorithm, swept params, curves, eval scalars, samples
    run = read_offline_run(next((tmp_path / "wandb").glob("offline-run-*")))
    assert run["run"]["group"].startswith("t/dpo") and run["run"]["job_type"] == "dpo"
    assert run["config"]["params"]["beta"] == 0.5 and run["config"]["algorithm"]["beta"] == 0.5
    assert any("trl/loss" in row for row in run["history"])  # TRL's own keys under trl/
    # the probe's train/kl and train/p_positive_mean (PPO's too), on the examples axis, from the reference on
    probes = [row for row in run["history"] if "train/kl" in row]
    assert probes[0]["train/examples"] == 0 and probes[0]["train/kl"] == pytest.approx(0.0, abs=1e-5)
    assert 0 <= probes[0]["train/p_positive_mean"] <= 1  # the reference's, on the probe prefixes
    assert probes[-1]["train/examples"] == 32 and 0 <= probes[-1]["train/p_positive_mean"] <= 1
    assert probes[-1]["train/kl"] > 0
    # train_log.jsonl: every row's "step" is the examples its policy had seen, as in PPO's log, and
    # the optimizer steps are a column beside it (before issue 33 DPO's "step" was the optimizer step)
    from dpo_ppo.results import read_train_log

    log = read_train_log(tmp_path)
    assert log and all(row["step"] == row["train/examples"] for row in log), log
    per_step = {row["train/examples"] / row["train/optimizer_step"] for row in log if row["train/optimizer_step"]}
    assert per_step == {cfg.algorithm.batch_size}, log  # a DPO step: batch_size pairs
    assert max(row["train/examples"] for row in log) == 32
    assert all("train/optimizer_step" in row for row in run["history"] if "train/examples" in row)  # W&B too
    assert run["summary"]["eval/policy/kl_to_ref"] == pytest.approx(m["eval/policy/kl_to_ref"])
    assert run["summary"]["eval/policy/gold_p_positive_mean"] == pytest.approx(m["eval/policy/gold_p_positive_mean"])
    assert any(row.get("samples/_type") == "table-file" for row in run["history"])
    # per-prompt rows as a table (joinable on prompt_id), the policy as a model, the files
    assert run["summary"]["eval_rows/_type"] == "table-file" and run["summary"]["eval_rows/nrows"] == cfg.eval.num_prompts
    (model,) = [a for a in run["artifacts"] if a["type"] == "model"]  # (tables are run_table artifacts)
    assert model["name"] == f"policy-{res['wandb']['id']}" and "model.safetensors" in model["paths"]
    assert {"results.json", "eval_rows.csv"} <= set(run["files"])
    assert [i["name"].split("-")[0] for i in res["wandb"]["inputs"]] == ["corpus", "reference", "classifier", "prefs",
                                                                          "ref_eval"]
    # a second launch with the same config skips; shared artifacts were not rebuilt
    again = run_job(cfg, tmp_path)
    assert again.status == "skipped"


def test_artifacts_shared_across_jobs_and_keyed_by_their_inputs(shared_cache):
    a = artifact_specs(_cfg(shared_cache, "algorithm.beta=0.1", "seed=0"))
    b = artifact_specs(_cfg(shared_cache, "algorithm.beta=2.0", "seed=1", "algorithm=dpo"))
    c = artifact_specs(_cfg(shared_cache, "algorithm=ppo", "algorithm.kl_target=3"))
    assert a["base"] == b["base"] == c["base"] and a["classifier"] == c["classifier"]
    assert a["prefs"] != b["prefs"]  # the seed changes the sampled pairs, beta does not
    assert artifact_specs(_cfg(shared_cache, "algorithm.beta=3"))["prefs"] == a["prefs"]
    assert artifact_specs(_cfg(shared_cache, "classifier.lr=0.01"))["classifier"] != a["classifier"]


def test_the_reference_analysis_is_shared_by_jobs_and_keyed_by_what_it_depends_on(tmp_path):
    """Job.reference_cache: computed by the first job that asks, read back by every later one with
    the same reference, texts, scorer and analysis settings, whatever the algorithm, its
    hyperparameters, the seed or the batch size; recomputed when an analysis setting changes."""
    import torch

    from dpo_ppo.job import Job, _Scratch

    def job(*overrides):
        return Job(compose_cfg([f"cache_dir={tmp_path / 'cache'}", "analysis=fast", *overrides]),
                   tmp_path / "job")

    calls = []

    def compute():
        calls.append(1)
        return {"grid": torch.arange(6.0).view(2, 3) / 7, "base": 0.25, "texts": ["a b"]}

    recorded = job("algorithm.beta=0.5")
    recorded.rec = _Scratch()
    first = recorded.reference_cache("ablation", compute)
    assert calls == [1] and first["base"] == 0.25 and first["texts"] == ["a b"]
    folder = Path(recorded.rec.record.artifacts["ref_analysis"]["ablation"])  # results.json's record
    assert folder.parent == tmp_path / "cache" / "ref_analysis" and (folder / "value.pt").is_file()
    assert torch.equal(first["grid"], torch.arange(6.0).view(2, 3) / 7)
    for same in (["algorithm=ppo", "algorithm.kl_target=3"], ["seed=7"], ["analysis.batch_size=3"],
                 ["analysis.device=cpu"]):
        again = job(*same).reference_cache("ablation", compute)
        assert calls == [1], same
        assert torch.equal(again["grid"], first["grid"]) and again["base"] == first["base"]
    job().reference_cache("heads", compute)  # another analysis: its own entry
    job("analysis.ablation_prompts=5").reference_cache("ablation", compute)
    job("precision=bf16").reference_cache("ablation", compute)
    assert len(calls) == 4
    assert len([p for p in (tmp_path / "cache" / "ref_analysis").iterdir() if p.is_dir()]) == 4


def test_killed_job_resumes_from_its_last_snapshot(shared_cache, tmp_path):
    """Kill a real job after its first snapshot; the relaunch continues from the checkpoint."""
    from conftest import TINY

    args = [sys.executable, "-m", "dpo_ppo.main", *TINY, f"cache_dir={shared_cache}", "analysis=none",
            "logger=none", "algorithm.examples=256", "algorithm.snapshot_every=16",
            f"hydra.run.dir={tmp_path}"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (tmp_path / "snapshots" / "ex_0000032").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert proc.returncode != 0, "the job finished before it could be killed"
    killed = json.loads((tmp_path / "results.json").read_text())
    assert killed["status"] == "running"
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["status"] == "finished" and res["attempts"] == 2
    assert "checkpoint-" in res["train_summary"]["resumed_from"]
    assert (tmp_path / "snapshots" / "ex_0000256").exists()


def test_failed_job_is_recorded(shared_cache, tmp_path):
    cfg = _cfg(shared_cache, "logger=none", "model.source=/nonexistent/model", "model.name=missing")
    out = run_job(cfg, tmp_path, raise_errors=False)
    assert out.status == "failed"
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["status"] == "failed" and "model.source='/nonexistent/model'" in res["error"]
    assert "Traceback" in (tmp_path / "traceback.txt").read_text()
    with pytest.raises(RuntimeError, match="model=tiny"):
        run_job(cfg, tmp_path / "again")
