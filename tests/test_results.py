"""The results contract (dpo_ppo.results): one definition that config, job and readers agree on."""

import json
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from dpo_ppo import results as R

ROOT = Path(__file__).resolve().parents[1]


def test_excluded_keys_are_the_configs_exclude_keys():
    conf = OmegaConf.load(ROOT / "conf" / "config.yaml")
    assert tuple(conf.hydra.job.config.override_dirname.exclude_keys) == R.EXCLUDED_KEYS
    assert "threads" in R.EXCLUDED_KEYS


@pytest.mark.parametrize("algorithm", ["dpo", "ppo"])
def test_swept_params_are_the_contracts_params(algorithm):
    from conftest import compose_cfg
    from dpo_ppo.config.schedule import swept_params

    params = swept_params(compose_cfg([f"algorithm={algorithm}"]))
    assert set(params) == set(R.PARAM_KEYS)
    assert set(R.FACET_KEYS) <= set(R.PARAM_KEYS)
    assert params["algorithm"] == algorithm and R.KNOBS[algorithm] in params


def test_identity_and_what_changes_results():
    overrides = ["+threads=1", "algorithm=ppo", "logger=none", "logger.dir=/x", "seed=3", "device=cpu"]
    # exact keys, as Hydra's override_dirname excludes them: logger.dir still names the folder
    assert R.folder_key(overrides) == ["algorithm=ppo", "logger.dir=/x", "seed=3"]
    assert R.override_key("+~algorithm.lr=1e-5") == "algorithm.lr"
    assert not R.changes_results("threads") and not R.changes_results("logger.dir")
    assert not R.changes_results("seed") and not R.changes_results("hydra.launcher.n_jobs")
    assert R.changes_results("algorithm.lr") and R.changes_results("experiment")


def test_findings_leave_out_reference_timings_and_indices():
    assert R.is_finding(R.KL) and R.is_finding("analysis/weights/msd_biases")
    assert R.is_finding("analysis/ablation/policy/zero/lm_loss_increase_mean")
    for name in (R.REF_REWARD, "analysis/time_s/total", "analysis/weights/num_snapshots",
                 "analysis/heads/policy/induction_top_layer", "analysis/ablation/reference/zero/lm_loss_increase_mean",
                 "analysis/sentiment_attention/top_change_head", "eval/improvement/gradient_loss"):
        assert not R.is_finding(name), name


def test_results_round_trip_and_bad_files(tmp_path):
    R.write_results(tmp_path, {"status": R.FINISHED, "algorithm": "DPO", "params": {"seed": 1},
                               "metrics": {R.KL: 2.5, "x": float("nan"), "flag": True, "text": "a"},
                               "analysis": {"per_head": {"h": [[1.0]]}, "images": {"i": "plots/i.png"}}})
    job = R.read_job(tmp_path)
    assert job.status == R.FINISHED and job.algorithm == "dpo" and job.params == {"seed": 1}
    assert job.metrics == {R.KL: 2.5} and job.images == {"i": "plots/i.png"}
    assert not list(tmp_path.glob("*.tmp*"))
    assert R.read_job(tmp_path / "nothing") is None
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / R.RESULTS_FILE).write_text('{"status": "fini')
    assert R.read_results(tmp_path / "half") is None and R.read_job(tmp_path / "half") is None
    (tmp_path / "list").mkdir()
    (tmp_path / "list" / R.RESULTS_FILE).write_text("[1, 2]")
    assert R.read_results(tmp_path / "list" / R.RESULTS_FILE) is None


def test_eval_rows_round_trip_and_missing_column(tmp_path):
    rows = [{"prompt_id": f"p{i}", "p_positive": i / 4, "completion_len": 10 + i, "kl": 0.5 * i, "kl_k1": 0.4 * i}
            for i in range(4)]
    R.write_eval_rows(tmp_path / R.EVAL_ROWS_FILE, rows)
    cols = R.read_eval_rows(tmp_path)
    assert cols["prompt_id"] == ["p0", "p1", "p2", "p3"] and cols["kl"] == [0.0, 0.5, 1.0, 1.5]
    (tmp_path / "bad.csv").write_text("prompt_id,p_positive\n0,0.5\n")
    assert R.read_eval_rows(tmp_path / "bad.csv") is None
    assert R.read_eval_rows(tmp_path / "missing") is None


def test_eval_rows_keep_only_the_contracts_columns(tmp_path):
    """evaluate_model's rows also carry the texts; the CSV keeps the contract's columns only."""
    R.write_eval_rows(tmp_path / R.EVAL_ROWS_FILE, [{"prompt_id": 3, "p_positive": 0.25, "completion_len": 7,
                                                     "kl": 1.5, "kl_k1": 1.25, "prompt": "a, b", "completion": "c"}])
    assert (tmp_path / R.EVAL_ROWS_FILE).read_text().splitlines()[0] == ",".join(R.EVAL_ROW_COLUMNS)
    assert R.read_eval_rows(tmp_path) == {"prompt_id": ["3"], "p_positive": [0.25], "completion_len": [7.0],
                                          "kl": [1.5], "kl_k1": [1.25]}


def test_train_log_keeps_each_step_once(tmp_path):
    """A resumed attempt's row replaces the first attempt's values; two rows of one step (DPO's
    probe and the Trainer's loss) are merged, so neither curve loses its points (the report's DPO
    KL panel was empty while the probe's row came before the loss's)."""
    lines = [{"step": 1, "train/examples": 8, "train/loss": 0.7}, {"step": 2, "train/examples": 16, "train/kl": 0.3},
             {"step": 2, "train/examples": 16, "train/loss": 0.6},
             {"step": 2, "train/examples": 16, "train/loss": 0.5},  # the resumed attempt's row
             {"step": 3, "train/examples": 24, "train/loss": 0.4}]
    (tmp_path / R.TRAIN_LOG_FILE).write_text("\n".join(json.dumps(r) for r in lines) + "\n{broken\n")
    rows = R.read_train_log(tmp_path)
    assert [(r["train/examples"], r["train/loss"]) for r in rows] == [(8, 0.7), (16, 0.5), (24, 0.4)]
    assert [r.get("train/kl") for r in rows] == [None, 0.3, None]
    assert R.read_train_log(tmp_path / "none") == []
    assert math.isclose(R.scalar_metrics({"a": 1, "b": float("inf")})["a"], 1.0)
