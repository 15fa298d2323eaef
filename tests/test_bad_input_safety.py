"""Nothing silently wrong, nothing executed (issue 30): a diverged run ends as ``diverged`` with
valid JSON, a crafted resume state is refused and not run, force=true re-runs from scratch, a
copied job folder reads its own files, and the confusing cases end in one clear line."""

import json
import math
import os
import pickle
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
    assert out["status"] == R.DIVERGED, out
    assert "algorithm.lr=1e+06" in out["error"] and " at step " in out["error"], out["error"]
    assert "probability tensor" not in out["error"]
    res = _strict(tmp_path / R.RESULTS_FILE)
    assert res["status"] == R.DIVERGED and res["error"] == out["error"] and res["traceback"] is None
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
    with pytest.raises(Diverged, match=r"train/kl = nan in training at step 24; .*algorithm.lr=0.1"):
        check_finite({"train/loss": 0.7, "train/kl": float("nan")}, 24, knob="algorithm.lr=0.1")


def test_an_update_whose_trust_region_cuts_back_every_step_says_so(shared_cache, tmp_path, caplog):
    # a bound no step keeps: every step of every update is cut back
    out = run_job(_cfg(shared_cache, *PPO, "algorithm.early_stop_kl=1e-9"), tmp_path, raise_errors=False)
    assert out["status"] == R.FINISHED
    assert "cut back all" in caplog.text and "algorithm.lr" in caplog.text
    res = _strict(tmp_path / R.RESULTS_FILE)
    assert res["train_summary"]["updates_all_cut_back"] == 2
    rows = R.read_train_log(tmp_path)
    assert [r["train/updates_all_cut_back"] for r in rows] == [1, 2]
