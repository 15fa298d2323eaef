"""The README's main job, for real: the embedded default, DPO and PPO, full analysis (slow).

These run the `dpo-ppo` command as a newcomer would (one shared artifact cache), and check what
the issue asks a job to show: the trained policy beats the reference on binary and gradient loss
over the unseen test prefixes, with KL > 0 reported, and every analysis in the results.
"""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def _run(out, cache, *overrides):
    proc = subprocess.run([sys.executable, "-m", "dpo_ppo.main", f"hydra.run.dir={out}", f"cache_dir={cache}",
                           *overrides], capture_output=True, text=True, timeout=2400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


def _beats_reference(res):
    m = res["metrics"]
    assert res["status"] == "finished"
    assert m["eval/policy/binary_loss"] < m["eval/reference/binary_loss"]
    assert m["eval/policy/gradient_loss"] < m["eval/reference/gradient_loss"]
    assert m["eval/policy/kl_to_ref"] > 0


def test_default_dpo_job(tmp_path, default_cache):
    res = _run(tmp_path, default_cache)
    _beats_reference(res)
    assert res["classifier_accuracy"] > 0.9
    m = res["metrics"]
    # the reference writes mixed reviews by both rewards, and the gold is recorded beside the proxy
    assert 0.3 < m["eval/reference/p_positive_mean"] < 0.7 and 0.3 < m["eval/reference/gold_p_positive_mean"] < 0.7
    assert m["eval/policy/gold_p_positive_mean"] != m["eval/policy/p_positive_mean"]
    analysis = [k for k in res["metrics"] if k.startswith("analysis/")]
    for family in ("weights", "activations", "ablation", "heads", "sentiment_attention"):
        assert any(k.startswith(f"analysis/{family}/") for k in analysis), family
    assert res["analysis"]["images"]
    # the embedded base's heads have roles (docs/analyses.md, "head roles"): a previous-token head
    # (> 0.5: more than half its attention on the token before) and an induction head (> 0.25 on
    # BOS r r, where a perfect one scores about 0.49); no duplicate-token head yet
    assert m["analysis/heads/reference/previous_token_max"] > 0.5
    assert m["analysis/heads/reference/induction_max"] > 0.25


def test_default_ppo_job_logs_its_kl_coefficient(tmp_path, default_cache):
    res = _run(tmp_path, default_cache, "algorithm=ppo", "analysis=fast")
    _beats_reference(res)
    rows = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    coefs = [r["train/kl_coef"] for r in rows if "train/kl_coef" in r]
    assert len(coefs) >= 8 and len(set(coefs)) > 1  # the adaptive controller moved it


def test_larger_kl_target_gives_larger_kl(tmp_path, default_cache):
    small = _run(tmp_path / "small", default_cache, "algorithm=ppo", "algorithm.kl_target=1", "analysis=none",
                 "logger=none")
    large = _run(tmp_path / "large", default_cache, "algorithm=ppo", "algorithm.kl_target=8", "analysis=none",
                 "logger=none")
    assert large["metrics"]["eval/policy/kl_to_ref"] > small["metrics"]["eval/policy/kl_to_ref"]
    # the KL the target is defined on (training rollouts, last quarter of the updates) lands within
    # a factor 1.5 of it (measured: 1.12 and 7.73 nats; 16 is at the edge of what 512 examples at
    # lr 1e-4 reach: 15.6 and 10.4 in two runs; docs/kl_control.md)
    for res, target in ((small, 1), (large, 8)):
        assert target / 1.5 < res["train_summary"]["kl_recent"] < target * 1.5, res["train_summary"]
