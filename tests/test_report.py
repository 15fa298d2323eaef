"""dpo-ppo-report on fabricated sweep folders: statistics checked by hand, truths planted in the
runs' metrics (a real effect, no effect, one run per side, pooled facets) and found again."""

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dpo_ppo import report
from dpo_ppo import results as R
from dpo_ppo.report import estimator as E
from dpo_ppo.report import facets as F
from dpo_ppo.report import render
from dpo_ppo.report import verdicts as V
from dpo_ppo.report import stats
from sweepfab import BIAS, BINARY, WEIGHTS, planted_sweep, write_job

T2 = 4.303  # t quantile, 2 degrees of freedom (3 seeds)


def claim_rows(summary, claim):
    return [c for c in summary["claims"] if c["claim"] == claim]


# --------------------------------------------------------------------------- statistics by hand


def test_mean_ci_by_hand():
    stat = report.mean_ci([1.0, 2.0, 3.0])
    assert stat.mean == 2.0 and stat.n == 3
    assert stat.half == pytest.approx(T2 * 1.0 / math.sqrt(3), rel=1e-3)
    one = report.mean_ci([5.0, float("nan")])
    assert one.n == 1 and math.isnan(one.half) and one.text() == "5"


def test_fdr_adjustments_by_hand():
    p = [0.01, 0.04, 0.03, 0.005, float("nan")]
    assert np.allclose(stats.benjamini_hochberg(p)[:4], [0.02, 0.04, 0.04, 0.02])
    assert np.allclose(stats.holm(p)[:4], [0.03, 0.06, 0.06, 0.02])
    assert math.isnan(stats.benjamini_hochberg(p)[4]) and math.isnan(stats.holm(p)[4])


def test_t_interval_p_and_welch_dof_by_hand():
    assert stats.t975(2) == pytest.approx(T2, abs=5e-4) and stats.t975(4) == pytest.approx(2.776, abs=5e-4)
    assert math.isnan(stats.t975(0))
    assert stats.boot_se(np.array([1.0, 2.0, 3.0, np.nan])) == pytest.approx(1.0)
    lo, hi = stats.t_interval(1.0, 0.5, 4)
    assert (lo, hi) == pytest.approx((1.0 - 2.7764 * 0.5, 1.0 + 2.7764 * 0.5), abs=1e-4)
    assert stats.t_p(2.7764451 * 0.5, 0.5, 4) == pytest.approx(0.05, abs=1e-6)  # at the quantile: p = 5%
    assert stats.t_p(-1.0, 1.0, 4) == pytest.approx(0.3739, abs=1e-4)  # 2 x P(T_4 > 1)
    assert stats.t_p_beyond(1.5, 0.5, 4, margin=1.0) == pytest.approx(0.18695, abs=1e-4)  # P(T_4 > 1)
    assert stats.t_p_beyond(0.4, 0.5, 4, margin=1.0) > 0.5  # inside the margin: no evidence beyond it
    # Welch-Satterthwaite: equal errors from 3 + 3 units -> 4; one side exact -> the other's k - 1
    assert stats.welch_dof([1.0, 1.0], [3, 3]) == pytest.approx(4.0)
    assert stats.welch_dof([1.0, 0.0], [3, 3]) == pytest.approx(2.0)
    assert stats.welch_dof([1.0, 1.0], [3, 5]) == pytest.approx(4 / (1 / 2 + 1 / 4))
    assert math.isnan(stats.welch_dof([1.0, 1.0], [1, 3]))
    # draws that are all equal: a point interval; p 0 for a nonzero value, 1 for zero
    assert stats.t_interval(0.3, 0.0, 4) == (0.3, 0.3)
    assert stats.t_p(0.3, 0.0, 4) == 0.0 and stats.t_p(0.0, 0.0, 4) == 1.0


def _runs_at_one_kl(algorithm, values, kl=1.0):
    from dpo_ppo.report.load import Run

    return [Run(dir=Path("/nowhere"), rel=f"{algorithm}{i}", status="finished", algorithm=algorithm,
                params={"seed": i}, metrics={BIAS: v, R.KL: kl}) for i, v in enumerate(values)]


def test_matched_kl_interval_is_welchs_t_interval_with_three_seeds():
    """All runs at one KL: each fit is its seeds' mean, so the interval must be Welch's t-interval
    of two means of 3 (computed by hand), not the +-1.96 se a percentile bootstrap gives."""
    facet = F.Facet({}, {}, {"dpo": _runs_at_one_kl("dpo", [1.0, 2.0, 3.0]),
                             "ppo": _runs_at_one_kl("ppo", [2.0, 4.0, 6.0])})
    pt = E.compare(facet, BIAS, n_boot=20000).points[0]
    se = math.sqrt(1.0 / 3 + 4.0 / 3)  # sample variances 1 and 4, 3 seeds each
    dof = (5 / 3) ** 2 / ((1 / 3) ** 2 / 2 + (4 / 3) ** 2 / 2)  # 2.94
    assert pt.effect == pytest.approx(2.0)
    assert pt.effect_se == pytest.approx(se, rel=0.03) and pt.effect_dof == pytest.approx(dof, rel=0.03)
    half = (pt.ci[1] - pt.ci[0]) / 2
    assert half == pytest.approx(stats.t975(dof) * se, rel=0.04)  # ~4.1; 1.96 se would be ~2.5
    assert pt.p == pytest.approx(stats.t_p(2.0, se, dof), rel=0.05)  # ~0.23
    # each side's own interval: its mean +- t(2) s / sqrt(3)
    assert pt.fit_ci["dpo"] == pytest.approx((2.0 - T2 / math.sqrt(3), 2.0 + T2 / math.sqrt(3)), rel=0.04)


def test_false_positive_rate_with_three_seeds_is_near_alpha():
    """No difference between the algorithms, 3 seeds a side (the report's minimum): p < 0.05 in
    about 5% of sweeps. The percentile bootstrap this replaced gave ~14%."""
    rng = np.random.default_rng(7)
    hits = 0
    sims = 300
    for i in range(sims):
        facet = F.Facet({}, {}, {a: _runs_at_one_kl(a, rng.normal(size=3)) for a in ("dpo", "ppo")})
        hits += E.compare(facet, BIAS, n_boot=400, seed=i).points[0].p < 0.05
    assert hits / sims < 0.09  # binomial sd at 5% of 300: 1.3%


# --------------------------------------------------------------------------- planted truths


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """3 DPO and 3 PPO configurations x 3 seeds over KL 0.5-5: PPO's bias divergence is 0.5
    above DPO's at every KL, nothing else differs. Training logs on one configuration each."""
    root = planted_sweep(tmp_path_factory.mktemp("planted") / "fab", {BIAS: 0.5})
    for folder in root.glob("algorithm.*=0.1,*"):
        (folder / R.TRAIN_LOG_FILE).write_text("".join(json.dumps(
            {"step": i, "train/examples": 16 * i, "train/loss": 0.7 - 0.05 * i, "train/rewards/margins": 0.1 * i})
            + "\n" for i in range(1, 6)))
    for folder in root.glob("algorithm.kl_target=3,*"):
        (folder / R.TRAIN_LOG_FILE).write_text("".join(json.dumps(
            {"step": 16 * i, "train/examples": 16 * i, "train/kl": 0.5 * i, "train/kl_coef": 0.2 / i,
             "train/p_positive_mean": 0.5 + 0.02 * i, "train/policy_loss": -0.01 * i}) + "\n" for i in range(1, 6)))
    summary = report.build_report(root).summary
    return root, summary, (root / "report" / "report.md").read_text()


def test_real_effect_with_enough_runs_is_supported(planted):
    _, summary, md = planted
    (row,) = claim_rows(summary, "C5")  # PPO's bias divergence above DPO's
    assert row["metric"] == BIAS and row["n"] == {"dpo": 9, "ppo": 9} and row["seeds"] == {"dpo": 3, "ppo": 3}
    assert row["effect"] == pytest.approx(0.5, abs=1e-9)  # both fits see the same seeds' noise
    assert 0 < row["ci"][0] < 0.5 < row["ci"][1]
    assert row["q"] < 0.05 and row["verdict"] == "supported"
    assert "| `analysis/weights/msd_biases` | 0.5 [" in md and "| 9 / 9 | " in md


def test_no_effect_is_inconclusive_for_a_direction_and_supported_as_equal(planted):
    _, summary, _ = planted
    (binary,) = claim_rows(summary, "C1")  # "PPO < DPO" in binary loss: no planted difference
    assert binary["effect"] == pytest.approx(0.0, abs=1e-9) and binary["ci"][0] < 0 < binary["ci"][1]
    assert binary["verdict"] == "inconclusive" and binary["q"] > 0.05
    (weights,) = claim_rows(summary, "C4")  # "PPO ≈ DPO" in weight divergence: it is
    assert weights["metric"] == WEIGHTS and weights["verdict"] == "supported"
    # claims whose metric these runs lack are listed, without a verdict
    (ablation,) = claim_rows(summary, "C10")
    assert ablation["verdict"] == "inconclusive" and ablation["reason"] == "not measured by these runs"
    assert ablation["p"] is None and ablation["q"] is None


def test_holm_over_the_claims_table(planted):
    root, summary, _ = planted
    holm = report.build_report(root, fdr="holm", figures=False, out=root.parent / "holm").summary
    pairs = [(a["q"], b["q"]) for a, b in zip(summary["claims"], holm["claims"]) if a["eligible"]]
    assert len(pairs) == 3  # C1, C4, C5: the claims these runs measure
    assert all(h >= b for b, h in pairs)
    (c5,) = claim_rows(holm, "C5")  # the smallest of 3 p-values: Holm multiplies it by 3
    assert c5["q"] == pytest.approx(3 * c5["p"])
    assert [c["verdict"] for c in holm["claims"]] == [c["verdict"] for c in summary["claims"]]


def test_opposite_effect_is_contradicted(tmp_path):
    root = planted_sweep(tmp_path / "s", {BIAS: -0.5})
    (row,) = claim_rows(report.build_report(root, n_boot=400, figures=False).summary, "C5")
    assert row["effect"] == pytest.approx(-0.5, abs=1e-9) and row["verdict"] == "contradicted"


def test_body_is_claims_frontier_training_matched_kl(planted):
    root, summary, md = planted
    body, appendix = md.split("# Appendix")
    order = [body.index(h) for h in ("## The seed paper's claims", "## Reward-KL frontier", "## Training curves",
                                     "## Matched KL")]
    assert order == sorted(order)
    assert body.count("\n") < 80  # two screens, not nine pages
    assert "How to read it." in body and "one run per side never gives one" in body
    for name in ("frontier.png", "training.png", "all_metrics.png", "claim_C5.png"):
        assert (root / "report" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert "![C5](claim_C5.png)" in appendix and "## Configurations" in appendix
    # the all-metrics dump is an appendix CSV: every finding, reference and timings left out
    lines = (root / "report" / "matched_kl.csv").read_text().splitlines()
    assert lines[0].startswith("facet,metric,n_dpo,n_ppo,kl,dpo,ppo,effect,ci_lo,ci_hi,p,note")
    assert {l.split(",")[1] for l in lines[1:]} == {R.REWARD, BIAS, WEIGHTS, BINARY}
    # matched KL at three points of the common range, stated
    assert "common range 0.5-5.3 nats" in body and "| metric (DPO / PPO: PPO - DPO [95%]) | at KL 0.9" in body


@pytest.mark.parametrize("change, verdict", [(0.02, "supported"), (0.5, "contradicted")])
def test_within_a_margin_for_both(tmp_path, change, verdict):
    """C13: induction heads barely change under either (largest score change < 0.1)."""
    root = tmp_path / "heads"
    for algorithm in R.ALGORITHMS:
        for k, kl in enumerate((0.5, 1.0, 2.0)):
            for s in range(3):
                write_job(root, algorithm, k + 1, s, {R.KL: kl * (1 + 0.02 * s), R.REWARD: 0.5,
                                                      "analysis/heads/reference/induction_max": 0.8,
                                                      "analysis/heads/induction_max_abs_change": change + 0.01 * s})
    (row,) = claim_rows(report.build_report(root, n_boot=300, figures=False).summary, "C13")
    assert row["expect"] == "|x| < 0.1 x heads/reference/induction_max for DPO and PPO" and row["verdict"] == verdict
    # the reference's top induction score (0.8, the margin's unit) is in every run: margin 0.08
    assert row["margin"] == "±0.1 x 0.8 (`analysis/heads/reference/induction_max`)"
    assert (row["q"] < 0.05) == (verdict == "supported")  # the TOST p is in the FDR family


def test_one_run_per_side_never_gives_a_verdict(tmp_path):
    root = tmp_path / "one"
    for algorithm, bias in (("dpo", 0.01), ("ppo", 10.0)):  # a thousand-fold difference
        write_job(root, algorithm, 1, 0, {R.KL: 2.0, R.REWARD: 0.5, BIAS: bias})
    summary = report.build_report(root, figures=False).summary
    (row,) = claim_rows(summary, "C5")
    assert row["n"] == {"dpo": 1, "ppo": 1} and row["effect"] == pytest.approx(9.99)
    assert row["verdict"] == "inconclusive" and row["reason"] == "fewer than 3 runs per side"
    assert all(c["verdict"] == "inconclusive" and not c["eligible"] for c in summary["claims"])
    (row,) = claim_rows(report.build_report(root, min_runs=1, min_seeds=1, figures=False).summary, "C5")
    assert row["verdict"] == "inconclusive" and row["reason"] == "fewer than 2 runs per side"
    # two runs per side of one seed: no verdict either (the default asks for 3 seeds)
    for algorithm, bias in (("dpo", 0.01), ("ppo", 10.0)):
        write_job(root, algorithm, 2, 0, {R.KL: 3.0, R.REWARD: 0.6, BIAS: bias})
    (row,) = claim_rows(report.build_report(root, min_runs=2, figures=False).summary, "C5")
    assert row["verdict"] == "inconclusive" and row["reason"] == "fewer than 3 seeds per side"
    with pytest.raises(SystemExit):
        report.main([str(root), "--min-runs", "1", "--no-wandb"])


def test_pooled_facets_are_flagged(tmp_path):
    """DPO ran with 48-token completions, PPO with 64: no facet holds both, so the claims pool
    over completion_len and say so."""
    root = planted_sweep(tmp_path / "p", {BIAS: 0.5},
                         params=lambda a: {"completion_len": 48 if a == "dpo" else 64})
    summary = report.build_report(root, n_boot=300, figures=False).summary
    assert summary["facet_notes"] == ["pooled over completion_len: DPO and PPO runs share no value of it"]
    (row,) = claim_rows(summary, "C5")
    assert row["pooled"] == "completion_len (DPO 48, PPO 64)"
    md = (root / "report" / "report.md").read_text()
    assert "**supported**: PPO > DPO at KL" in md and "; pooled: completion_len (DPO 48, PPO 64) |" in md


def test_facets_are_compared_separately(tmp_path):
    """Both algorithms at two completion lengths; the bias effect is planted at 64 tokens only."""
    root = tmp_path / "f"
    planted_sweep(root, {}, params=lambda a: {"completion_len": 48})
    planted_sweep(root, {BIAS: 0.5}, params=lambda a: {"completion_len": 64})
    summary = report.build_report(root, n_boot=300, figures=False).summary
    assert [f["label"] for f in summary["facets"]] == ["completion_len=48", "completion_len=64"]
    rows = {r["facet"]: r for r in claim_rows(summary, "C5")}
    assert rows["completion_len=48"]["n"] == {"dpo": 9, "ppo": 9}
    assert rows["completion_len=48"]["verdict"] == "inconclusive"
    assert rows["completion_len=64"]["verdict"] == "supported"
    assert rows["completion_len=64"]["effect"] == pytest.approx(0.5, abs=1e-9)
    # --pool merges them, flagged, and the planted effect is halved
    (pooled,) = claim_rows(report.build_report(root, pool=["completion_len"], n_boot=300, figures=False).summary, "C5")
    assert pooled["pooled"] == "completion_len (DPO 48/64, PPO 48/64)"
    assert pooled["effect"] == pytest.approx(0.25, abs=1e-9)


def test_value_model_facet_takes_dpo_into_each(tmp_path):
    root = tmp_path / "v"
    planted_sweep(root, {BIAS: 0.5}, params=lambda a: {"value_model": None if a == "dpo" else "separate"})
    planted_sweep(root / "shared", {}, params=lambda a: {"value_model": None if a == "dpo" else "shared"},
                  knobs=2)
    facets, notes = F.make_facets(report.load_sweep(root)[0])
    assert [f.label() for f in facets] == ["value_model=separate", "value_model=shared"]
    assert [(len(f.runs["dpo"]), len(f.runs["ppo"])) for f in facets] == [(15, 9), (15, 6)] and not notes


def test_weight_claims_name_unequal_optimizer_steps(tmp_path):
    root = planted_sweep(tmp_path / "steps", {BIAS: 0.5})
    for folder in root.glob("*algorithm=ppo*"):
        data = R.read_results(folder)
        data["compute"]["optimizer_steps"] = 64
        R.write_results(folder, data)
    summary = report.build_report(root, n_boot=200, figures=False).summary
    (bias,) = claim_rows(summary, "C5")
    assert bias["caveat"] == "unequal optimizer steps (median DPO 8, PPO 64); compare at compute=matched"
    assert "optimizer steps" not in claim_rows(summary, "C1")[0]["caveat"]  # not a weight claim
    md = (root / "report" / "report.md").read_text()
    assert "**supported**: PPO > DPO at KL" in md and "; caveat: unequal optimizer steps" in md


def test_ranges_that_do_not_meet_are_not_compared(tmp_path):
    root = planted_sweep(tmp_path / "k", {BIAS: 0.5}, kl_shift={"ppo": 20.0})
    (row,) = claim_rows(report.build_report(root, n_boot=200, figures=False).summary, "C5")
    assert row["verdict"] == "inconclusive" and row["reason"] == "KL ranges do not overlap" and row["effect"] is None


def test_prompt_rows_are_resampled_paired(tmp_path):
    """With per-prompt rows the reward is recomputed from them; the prompts are shared by all
    runs, so a prompt-level effect common to both algorithms cancels in PPO - DPO."""
    root = tmp_path / "rows"
    prompt = np.linspace(-0.3, 0.3, 40)  # how positive each prompt's completions are, for everyone
    for algorithm, lift in (("dpo", 0.0), ("ppo", 0.1)):
        for k, kl in enumerate((0.5, 1.0, 2.0)):
            for s in range(3):
                p = np.clip(0.5 + prompt + 0.002 * s + lift + 0.05 * math.log(kl), 0, 1)
                kls = np.full(40, kl)
                write_job(root, algorithm, k + 1, s, {R.KL: kl, R.REWARD: float(p.mean()), BIAS: 1.0},
                          rows={"prompt_id": [f"q{i}" for i in range(40)], "p_positive": p,
                                "completion_len": np.full(40, 20), "kl": kls, "kl_k1": kls})
    runs, _ = report.load_sweep(root)
    facets, _ = F.make_facets(runs)
    comp = E.compare(facets[0], R.REWARD, n_boot=400)
    assert comp.prompts == 40
    pt = comp.points[0]
    assert pt.effect == pytest.approx(0.1, abs=1e-9)
    assert pt.ci[1] - pt.ci[0] < 0.05  # the shared prompt effect (spread 0.6) cancels
    # each algorithm's own fit does carry the prompts' spread
    assert pt.fit_ci["dpo"][1] - pt.fit_ci["dpo"][0] > 0.05


# --------------------------------------------------------------------------- the sweep around them


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed") / "fab"
    for s in range(3):
        write_job(root, "dpo", 0.1, s, {R.KL: 3.0 + 0.1 * s, R.REWARD: 0.5 + 0.02 * s, BIAS: 0.01 + 0.001 * s,
                                        R.REF_REWARD: 0.1, "analysis/time_s/total": 12.0},
                  per_head={"ablation/policy/zero/lm_loss_increase": [[1.0, 2.0], [3.0, float(s)]]})
        write_job(root, "ppo", 6, s, {R.KL: 3.3 + 0.1 * s, R.REWARD: 0.6, BIAS: 0.03 + 0.002 * s, R.REF_REWARD: 0.1},
                  overrides=["threads=1", "logger=none", "experiment=paper_run2"],
                  per_head={"ablation/policy/zero/lm_loss_increase": [[1.0, 2.0], [3.0, 4.0]]})
    write_job(root, "ppo", 24, 0, {}, status=R.FAILED, wall=50.0, mem=900.0,
              error="Traceback ...\nRuntimeError: CUDA out of memory")
    write_job(root, "dpo", 5, 0, {}, status=R.RUNNING, wall=None, mem=None)
    (root / "algorithm.beta=2,algorithm=dpo,seed=0" / ".hydra").mkdir(parents=True)  # started, no results
    (root / "algorithm.beta=-1,algorithm=dpo,seed=0" / ".hydra").mkdir(parents=True)  # raised before results
    (root / R.SWEEP_FILE).write_text(json.dumps({"name": "fab", "jobs": [
        {"overrides": ["algorithm=ppo", "algorithm.kl_target=16", "seed=0"],
         "dir": "algorithm.kl_target=16,algorithm=ppo,seed=0", "status": "pending"},
        {"overrides": ["algorithm=dpo", "algorithm.beta=-1", "seed=0"], "dir": "algorithm.beta=-1,algorithm=dpo,seed=0",
         "status": "failed", "error": "ConfigError('algorithm.beta: must be > 0, got -1.0')"}]}))
    code = report.main([str(root), "--no-wandb", "--no-figures", "--compare", "algorithm.beta=0.1,algorithm=dpo,seed=0",
                        str(next(root.glob("algorithm.kl_target=6,algorithm=ppo,*seed=0")))])
    assert code == 0
    out = root / "report"
    return root, (out / "report.md").read_text(), json.loads((out / "summary.json").read_text())


def test_progress_and_cost(mixed):
    _, md, summary = mixed
    assert summary["counts"] == {"finished": 6, "failed": 2, "running": 1, "interrupted": 0, "diverged": 0, "no results": 1,
                                 "pending": 1}
    assert summary["wall_time_s"] == pytest.approx(6 * 100 + 50) and summary["peak_mem_mb"] == 900
    assert "11 jobs: 6 finished, 2 failed, 1 running, 1 started without results, 1 not started" in md
    assert "| `algorithm.kl_target=24,algorithm=ppo,seed=0` | failed | RuntimeError: CUDA out of memory |" in md
    assert "`algorithm.kl_target=16,algorithm=ppo,seed=0` | pending" in md
    assert "| `algorithm.beta=-1,algorithm=dpo,seed=0` | failed | ConfigError('algorithm.beta: must be > 0" in md


def test_configurations_aggregate_seeds_and_ignore_run_only_overrides(mixed):
    _, md, summary = mixed
    configs = {(c["algorithm"], c["params"]["beta"] or c["params"]["kl_target"]): c for c in summary["configurations"]}
    assert set(configs) == {("dpo", 0.1), ("ppo", 6)}
    kl = configs[("dpo", 0.1)]["metrics"][R.KL]
    assert kl["n"] == 3 and kl["mean"] == pytest.approx(3.1)
    assert kl["half"] == pytest.approx(T2 * 0.1 / math.sqrt(3), rel=1e-3)
    # threads=1 and logger=none do not change a result: not "other overrides" (issue 12)
    assert configs[("ppo", 6)]["overrides"] == ["experiment=paper_run2"]
    assert "| PPO | KL*=6 | experiment=paper_run2 | 3 | 0 | 0.6 ± 0 | 3.4 ± 0.25 |" in md
    assert "| DPO | β=0.1 |  | 3 | 0 | 0.52 ± 0.05 | 3.1 ± 0.25 |" in md
    assert "threads=1" not in md.split("## Configurations")[1].split("\n## ")[0]


def test_run_only_override_does_not_split_a_facet_but_experiment_does(mixed):
    _, _, summary = mixed
    # experiment=paper_run2 is PPO's alone: the algorithms share no value, so it is pooled, flagged
    assert summary["facet_notes"] == ["pooled over overrides: DPO and PPO runs share no value of it"]
    assert claim_rows(summary, "C5")[0]["pooled"] == "overrides (DPO none, PPO experiment=paper_run2)"


def test_configurations_are_told_apart_by_what_varies(tmp_path):
    """A sweep that places DPO runs by learning rate: the labels say the lr, not only β."""
    root = tmp_path / "lr"
    for lr in (1e-4, 5e-4):
        for s in range(2):
            write_job(root, "dpo", 0.1, s, {R.KL: 1.0 + 1000 * lr, R.REWARD: 0.5}, params={"lr": lr})
    write_job(root, "ppo", 3, 0, {R.KL: 1.0, R.REWARD: 0.5})
    configs = report.configurations(report.load_sweep(root)[0])
    assert [c.label() for c in configs] == ["β=0.1 lr=0.0001", "β=0.1 lr=0.0005", "KL*=3"]


def test_runs_csv_has_each_column_once(mixed):
    root, _, _ = mixed
    lines = (root / "report" / "runs.csv").read_text().splitlines()
    header = lines[0].split(",")
    assert len(lines) == 1 + 11 and header[:3] == ["job", "status", "algorithm"]
    assert len(header) == len(set(header)) and header.count("algorithm") == 1
    assert "compute/optimizer_steps" in header and R.REF_REWARD not in header


def test_compare_two_runs(mixed):
    root, md, summary = mixed
    images = summary["compare"]["images"]
    assert set(images) == {"divergence", "ablation/policy/zero/lm_loss_increase"}
    for name in images.values():
        assert (root / "report" / name).stat().st_size > 5_000
    assert "- A: `algorithm.beta=0.1,algorithm=dpo,seed=0` (DPO β=0.1 seed 0, finished)" in md
    assert "| analysis/weights/msd_biases | 0.01 | 0.03 | 3 |" in md
    assert "analysis/time_s/total" not in md.split("## Two runs side by side")[0]


def test_compare_rejects_ambiguous_job(mixed):
    root, _, _ = mixed
    with pytest.raises(report.ReportError, match="matches 4 jobs"):
        report.build_report(root, compare=["algorithm=dpo", "algorithm=ppo"], out=root.parent / "r2").summary


def test_no_finished_jobs(tmp_path):
    write_job(tmp_path / "empty", "ppo", 6, 0, {}, status=R.FAILED, error="boom")
    report.build_report(tmp_path / "empty", figures=False).summary
    text = (tmp_path / "empty" / "report" / "report.md").read_text()
    assert "No finished jobs yet." in text and "1 failed" in text


def test_python_m_report(tmp_path):
    root = tmp_path / "m"
    for algorithm in R.ALGORITHMS:
        write_job(root, algorithm, 1, 0, {R.KL: 1.0, R.REWARD: 0.5})
    done = subprocess.run([sys.executable, "-m", "dpo_ppo.report", str(root), "--no-wandb", "--no-figures", "--bootstrap", "100"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "claims: 0 supported, 0 contradicted, 21 inconclusive" in done.stdout
    assert "| DPO |" in (root / "report" / "report.md").read_text()


def _run_ids(run_file: Path) -> set:
    from wandb.proto import wandb_internal_pb2 as pb

    from fixtures import wandb_records

    ids = set()
    for payload in wandb_records(run_file.read_bytes()):
        rec = pb.Record()
        rec.ParseFromString(payload)
        if rec.WhichOneof("record_type") == "run":
            ids.add(rec.run.run_id)
    return ids


def test_wandb_report_is_one_run_with_the_claims_table(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from fixtures import read_offline_run

    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    root = tmp_path / "w"
    for algorithm in R.ALGORITHMS:
        write_job(root, algorithm, 1, 0, {R.KL: 1.0, R.REWARD: 0.5, BIAS: 0.1})
    for attempt in range(2):  # the report re-made: the same W&B run
        if attempt:
            time.sleep(1.1)  # W&B names an offline run's folder by the second it started
        assert report.main([str(root), "--wandb", "--bootstrap", "100"]) == 0
    files = sorted((root / "report" / "wandb").glob("offline-run-*/run-*.wandb"))
    runs = sorted(p.name for p in (root / "report" / "wandb").glob("*"))
    assert len(files) == 2, f"run files {files} in {runs}"
    assert not (tmp_path / "wandb").exists()
    run_id = report.report_run_id(root)
    assert run_id == report.report_run_id(root / ".." / "w")  # the folder, however it is named
    assert all(f.parent.name.endswith(run_id) for f in files)
    assert _run_ids(files[-1]) == {run_id}
    deadline = time.time() + 20  # W&B's service may still be flushing the summary after finish()
    while True:
        logged = read_offline_run(files[-1].parent)
        if "jobs/finished" in logged["summary"] or time.time() > deadline:
            break
        time.sleep(0.5)
    assert logged["run"]["group"] == "fab/report" and logged["run"]["job_type"] == "report"
    assert logged["run"]["project"] == "dpo-ppo-test"
    keys = set().union(*logged["history"])
    assert {"claims/nrows", "runs/nrows", "plots/frontier/path"} <= keys
    assert logged["summary"]["jobs/finished"] == 2 and logged["summary"]["claims/inconclusive"] == 21


@pytest.mark.parametrize("effect, half, verdict", [(0.3, 0.29, "inconclusive"),  # could be inside the margin
                                                   (0.45, 0.15, "contradicted"),  # beyond it: above 0.2875
                                                   (0.02, 0.2, "supported")])  # within +-0.2875
def test_same_is_contradicted_only_when_the_band_lies_beyond_the_margin(effect, half, verdict):
    """PPO ≈ DPO within 25% of the two values' mean (1.0 and 1.3: +-0.2875) along a 3-point grid:
    supported when the TOST q < 0.05 (the band within the margin), contradicted when the band lies
    wholly beyond the margin somewhere, else inconclusive."""
    from dpo_ppo.report.claims import Claim

    claim = Claim("X", "1", "equal", (BIAS,), "same", margin=0.25)
    kl = np.array([1.0, 2.0, 4.0])
    flat = lambda v: np.full(3, float(v))  # noqa: E731
    curve = E.Curve(kl, flat(effect), flat(half / 2.0), flat(0.0), 10.0, 2.0)  # band: effect +- half
    arms = {"dpo": E.Curve(kl, flat(1.0), flat(0.1), flat(0.0), 10.0, 2.0),
            "ppo": E.Curve(kl, flat(1.3), flat(0.1), flat(0.0), 10.0, 2.0)}
    comp = E.Comparison(BIAS, F.Facet({}, {}, {}), {}, {}, {}, (1.0, 4.0), curve=curve, arm_curves=arms)
    margin = V.margin_of(claim, comp)
    assert margin.values == pytest.approx(flat(0.2875))
    assert render.margin_text(margin) == "±25% of the two values' mean"
    row = V.ClaimRow(claim, comp.facet, BIAS, comp, eligible=True, margin=margin)
    row.p = V.claim_p(row)
    row.q = row.p
    assert (row.p < 0.05) == (verdict == "supported")
    assert V.decide(row) == verdict
    assert ("within the margin" in render.verdict_where(row)) == (verdict == "supported")


def test_over_training_curves_are_drawn_and_summarised_per_configuration(tmp_path):
    """Planted: PPO's induction heads drift away from the reference as training goes on (change
    0.01 per 100 examples, the same for every seed), DPO's stay put, and both diverge in weights
    alike. The report must draw them over examples and hold the seeds' means in summary.json."""
    root = tmp_path / "ot"
    for algorithm in ("dpo", "ppo"):
        for s in range(3):
            xs = [0, 100, 200, 300]
            heads = {"columns": ["examples", "induction_max_abs_change", "sentiment_attention_max_abs_change"],
                     "data": [[x, (0.0001 * x if algorithm == "ppo" else 0.0) + 0.001 * s, 0.0] for x in xs]}
            weights = {"columns": ["examples", "msd_weights", "msd_biases"],
                       "data": [[x, 1e-6 * x, 2e-6 * x] for x in xs]}
            write_job(root, algorithm, 1, s, {R.KL: 1.0 + 0.1 * s, R.REWARD: 0.6, BIAS: 1.0},
                      over_training={"heads_over_training": heads, "weights_over_training": weights})
    summary = report.build_report(root, n_boot=50).summary
    curves = {(c["algorithm"], c["measure"]): c for c in summary["over_training"]}
    ppo = curves[("ppo", "heads_over_training/induction_max_abs_change")]
    assert ppo["examples"] == [0, 100, 200, 300] and ppo["n"] == [3, 3, 3, 3]
    assert ppo["mean"] == pytest.approx([0.001, 0.011, 0.021, 0.031])  # + the seeds' mean offset 0.001
    assert curves[("dpo", "heads_over_training/induction_max_abs_change")]["mean"] == pytest.approx([0.001] * 4)
    assert curves[("dpo", "weights_over_training/msd_biases")]["mean"] == pytest.approx([0, 2e-4, 4e-4, 6e-4])
    assert ("ppo", "heads_over_training/previous_token_max_abs_change") not in curves  # not in the tables
    text = (root / "report" / "report.md").read_text()
    assert "## Over training" in text and "![over training](over_training.png)" in text
    assert (root / "report" / "over_training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary["images"]["over_training"] == "over_training.png"


def test_the_seeds_own_measures_and_run_conditions(tmp_path):
    """Planted: PPO recruits 2 heads to the sentiment word (attention up by 0.2 > the 0.1
    threshold), DPO none and DPO's largest change 0.01 (within 10% of the reference's top
    attention, 0.5); PPO's bias divergence goes back and forth over training, DPO's rises steadily.
    The sweep holds both seed runs (experiment=paper_run1 / paper_run2): a claim the seed made of
    one run is compared only in that run's facet."""
    root = tmp_path / "seed"
    for run in ("paper_run1", "paper_run2"):
        for algorithm in R.ALGORITHMS:
            for k, kl in enumerate((0.5, 1.0, 2.0)):
                for s in range(3):
                    ppo = algorithm == "ppo"
                    change = np.zeros((2, 4))
                    if ppo:
                        change[1, 2] = change[1, 3] = 0.2 + 0.01 * s
                    else:
                        change[0, 0] = 0.01 + 0.001 * s
                    path = [0.0, 1.0, 0.3, 1.2, 0.5 + 0.01 * s] if ppo else [0.0, 0.2, 0.4, 0.6, 0.8 + 0.01 * s]
                    write_job(root, algorithm, k + 1, s,
                              {R.KL: kl * (1 + 0.02 * s), R.REWARD: 0.6 + 0.01 * s, R.REF_REWARD: 0.4,
                               WEIGHTS: 1.0 + 0.01 * s, "analysis/weights/msd_all": 1.0 + 0.01 * s + 0.5 * ppo,
                               "analysis/sentiment_attention/max_abs_change": float(np.abs(change).max()),
                               "analysis/sentiment_attention/reference/max_attention": 0.5},
                              overrides=[f"experiment={run}"],
                              per_head={"sentiment_attention/change": change.tolist()},
                              over_training={"weights_over_training": {
                                  "columns": ["examples", "msd_biases"],
                                  "data": [[1000 * i, v] for i, v in enumerate(path)]}})
    summary = report.build_report(root, n_boot=200, figures=False).summary
    facets = {row["facet"] for row in summary["claims"]}
    assert facets == {"overrides=experiment=paper_run1", "overrides=experiment=paper_run2"}
    assert {r["facet"] for r in claim_rows(summary, "C4")} == {"overrides=experiment=paper_run1"}
    assert {r["facet"] for r in claim_rows(summary, "C7")} == {"overrides=experiment=paper_run2"}
    for row in claim_rows(summary, "C7"):
        assert row["verdict"] == "supported" and row["where"].startswith("PPO > DPO at KL 0.5")
        assert "run-condition" not in row["caveat"]
    for row in claim_rows(summary, "C4"):  # weights the same for both: within 25% everywhere
        assert row["verdict"] == "supported" and row["in_family"] and "within the margin" in row["where"]
    for row in claim_rows(summary, "C14"):  # a count against the stated threshold
        assert row["metric"] == "derived/sentiment_attention/heads_recruited"
        assert row["dpo"] == pytest.approx(0.0, abs=1e-9) and row["ppo"] == pytest.approx(2.0)
        assert row["verdict"] == "supported" and "0.1" in row["text"]
    for row in claim_rows(summary, "C15"):  # DPO attends like the reference: |change| < 0.1 x 0.5
        assert row["expect"] == "|x| < 0.1 x sentiment_attention/reference/max_attention for DPO"
        assert row["margin"].startswith("±0.1 x 0.5") and row["verdict"] == "supported"
    for row in claim_rows(summary, "C17"):  # (path 3.3 - net 0.5) / 1.2 for PPO, 0 for DPO
        assert row["ppo"] == pytest.approx(2.8 / 1.2, rel=0.02) and row["dpo"] == pytest.approx(0.0, abs=1e-6)
        assert row["verdict"] == "supported"
    (c18,) = claim_rows(summary, "C18")[:1]  # the efficiency hypothesis: (0.6 - 0.4) / msd_all
    assert c18["metric"] == "derived/efficiency/reward_gain_per_msd" and c18["effect"] < 0
    for row in claim_rows(summary, "C11") + claim_rows(summary, "C6"):
        assert not row["in_family"] and row["q"] is None


def test_a_claim_of_an_unknown_kind_is_refused_where_it_is_written():
    from dpo_ppo.report.claims import Claim

    with pytest.raises(ValueError, match="claim C99: kind must be one of higher, lower, same, differ, zero, got 'hihger'"):
        Claim("C99", "1", "a typo", ("eval/policy/p_positive_mean",), "hihger")


def test_render_only_formats():
    """report/render.py turns computed things into words: it computes no statistic, reads or writes
    no file and draws no figure (those are estimator / verdicts / stats, build and figures)."""
    import ast
    import inspect

    from dpo_ppo.report import render

    tree = ast.parse(inspect.getsource(render))
    imported = {(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    modules = {m for m, _ in imported} | {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not modules & {"csv", "json", "numpy", "dpo_ppo.report.figures", "dpo_ppo.report.build"}, modules
    assert ("dpo_ppo.report", "figures") not in imported and ("dpo_ppo.report", "stats") not in imported
    called = {(n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", ""))
              for n in ast.walk(tree) if isinstance(n, ast.Call)}
    banned = {"open", "read_text", "write_text", "write_atomic", "write_json", "load_sweep", "load_run", "mkdir",
              "compare", "claims_table", "all_metrics_table", "make_facets", "mean_ci", "t_interval", "sup_t",
              "benjamini_hochberg", "holm", "savefig"} | {n for n in called if n.startswith("plot_")}
    assert not called & banned, called & banned


def test_bad_input_is_a_report_error_in_the_library_and_one_line_from_the_cli(tmp_path):
    """build_report raises ReportError (a ValueError a caller can catch); the command turns it into
    its exit with the one line (SystemExit's code), and writes nothing."""
    missing = tmp_path / "nowhere"
    with pytest.raises(report.ReportError, match="no such sweep folder"):
        report.build_report(missing, figures=False)
    with pytest.raises(SystemExit) as exited:
        report.main([str(missing), "--no-wandb", "--no-figures"])
    assert exited.value.code == f"dpo-ppo-report: no such sweep folder: {missing}"
    assert not missing.exists()


def test_the_report_recomputes_evaluation_metrics_with_evaluations_own_definitions():
    """The per-prompt statistics behind the prompt bootstrap are evaluation's definitions
    (results.gradient_loss / binary_loss, which evaluate.py applies to torch tensors), not copies."""
    import torch

    assert E.ROW_METRICS is R.EVAL_ROW_STATISTICS
    assert E.ROW_METRICS[R.policy_metric(R.GRADIENT_LOSS)][2] is R.gradient_loss
    assert E.ROW_METRICS[R.policy_metric(R.BINARY_LOSS)][2] is R.binary_loss
    p = np.array([0.1, 0.49, 0.5, 0.9])
    assert R.binary_loss(p).tolist() == [1.0, 1.0, 0.0, 0.0] and R.gradient_loss(p) == pytest.approx([0.9, 0.51, 0.5, 0.1])
    t = torch.tensor(p, dtype=torch.float32)
    assert float(R.binary_loss(t).mean()) == float((t < 0.5).float().mean()) == 0.5
    assert float(R.gradient_loss(t).mean()) == pytest.approx(float(R.gradient_loss(p).mean()))


def test_an_effect_is_not_given_as_a_percentage_of_a_base_at_zero():
    """A metric that is 0 up to rounding on one side (DPO's bias fluctuation, ~1e-17) once read
    '-210875433931066432% of DPO': the relative size is left out where the base is ~0."""
    from types import SimpleNamespace

    from dpo_ppo.report.estimator import Point

    def text(effect, base):
        pt = Point(kl=2.0, fit={"ppo": base + effect, "dpo": base}, fit_ci={}, boot={}, se={}, dof={},
                   effect=effect, ci=(effect - 1, effect + 1), p=0.5)
        row = SimpleNamespace(comparison=SimpleNamespace(points=[pt], pair=("ppo", "dpo")),
                              claim=SimpleNamespace(kind="greater"))
        return render.effect_text(row)

    assert "(+50% of DPO)" in text(1.0, 2.0)
    assert "% of" not in text(-9.75e-18, 4.6e-35) and "% of" not in text(1.0, 0.0)


def test_a_dpo_job_whose_schedule_is_matched_stands_in_both_compute_facets(tmp_path):
    """PPO at compute=native (16 steps per rollout) and at compute=matched (one step per 16
    prefixes), DPO at its defaults, whose native schedule is matched's (batch_size 16, epochs 1):
    the DPO runs join both facets instead of leaving PPO's native runs without a partner."""
    root = tmp_path / "c"
    dpo_cfg = {"algorithm": {"name": "dpo", "batch_size": 16, "epochs": 1.0}, "compute": {"mode": "native",
                                                                                        "prefixes_per_step": 16}}
    for algorithm, mode, knobs in (("dpo", "native", (0.05, 0.1, 0.2)), ("ppo", "native", (1, 2, 4)),
                                   ("ppo", "matched", (1.5, 3, 6))):
        for knob in knobs:
            for seed in range(3):
                folder = write_job(root, algorithm, knob, seed, {R.KL: knob, BIAS: 1.0},
                                   params={"compute": mode}, overrides=[f"compute={mode}"] if mode != "native" else [])
                if algorithm == "dpo":
                    data = R.read_results(folder)
                    data["config"].update(dpo_cfg)
                    R.write_results(folder, data)
    facets, notes = F.make_facets(report.load_sweep(root)[0])
    assert [f.label() for f in facets] == ["compute=matched", "compute=native"] and not notes
    assert [(len(f.runs["dpo"]), len(f.runs["ppo"])) for f in facets] == [(9, 9), (9, 9)]
    report.build_report(root, n_boot=100, figures=False)
    table = (root / "report" / "report.md").read_text().split("## Configurations")[1].split("\n\n")[1]
    assert table.count("| DPO | β=0.1 | every |") == 1 and table.count("| PPO | KL*=1.5 compute=matched | matched |") == 1
    # a DPO run with two passes over its pairs is native only: PPO's matched runs lose their partner
    for folder in root.glob("*algorithm=dpo*"):
        data = R.read_results(folder)
        data["config"]["algorithm"]["epochs"] = 2.0
        R.write_results(folder, data)
    facets, _ = F.make_facets(report.load_sweep(root)[0])
    assert [(f.label(), len(f.runs["dpo"]), len(f.runs["ppo"])) for f in facets] == [
        ("compute=matched", 0, 9), ("compute=native", 9, 9)]


@pytest.mark.parametrize("algorithm", ["dpo", "ppo", "rloo", "grpo"])
def test_schedule_is_matched_agrees_with_the_schedule_compute_matched_writes(algorithm):
    """results.schedule_is_matched reads a recorded config; config.schedule.apply_compute writes
    the schedule: a default job whose native schedule equals matched's is the one it calls matched."""
    from conftest import compose_cfg

    from dpo_ppo.config import load, as_dict
    native = load(compose_cfg([f"algorithm={algorithm}"], tiny=False))
    matched = load(compose_cfg([f"algorithm={algorithm}", "compute=matched"], tiny=False))
    same = as_dict(native)["algorithm"] == as_dict(matched)["algorithm"]
    assert R.schedule_is_matched(as_dict(native)) == same
    assert R.schedule_is_matched({**as_dict(matched), "compute": {**as_dict(matched)["compute"], "mode": "native"}})
    assert same == (algorithm != "ppo")  # PPO's own: 4 epochs x 4 minibatches per rollout


def test_the_frontier_turns_to_a_log_kl_axis_only_when_one_arm_runs_far_out():
    """IPO at 45-77 nats beside DPO's 1-10 squeezed every other run into the left tenth of a linear
    axis (docs/findings/algorithms.md); a sweep spread over 1-10 nats keeps the linear axis."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from dpo_ppo.report import figures

    fig, ax = plt.subplots()
    assert figures.kl_axis(ax, [0.0, 0.9, 3.6, 10.3]) == "linear" and ax.get_xscale() == "linear"
    assert ax.get_xlim()[0] < 0 < 10.3 < ax.get_xlim()[1]
    fig, ax = plt.subplots()
    assert figures.kl_axis(ax, [0.0, 0.86, 3.6, 77.1, float("nan")]) == "symlog"
    assert ax.get_xscale() == "symlog" and "log scale above 0.1," in ax.get_xlabel()
    low, high = ax.get_xlim()
    assert low < 0 and high > 77.1  # the reference at 0 and the farthest run both inside
    plt.close("all")


def test_bias_fluctuation_by_hand_and_a_monotone_path_is_exactly_zero():
    """(path - net change) / largest value; a monotone path's rounding (~1e-17) once gave the
    answer sweep a 'PPO > DPO' band 4e-20 wide on C17."""
    from dpo_ppo.report.load import fluctuation

    assert fluctuation([0.0, 2.0, 1.0, 3.0]) == pytest.approx(2 / 3)  # path 5, net 3, largest 3
    rising = [2.580900585423031e-08, 1.134951088657201e-07, 1.7222661868813837e-07, 2.09200688836503e-07,
              2.572425387442923e-07]
    v = np.array(rising)
    assert np.sum(np.abs(np.diff(v))) - abs(v[-1] - v[0]) != 0  # the rounding is there
    assert fluctuation(rising) == 0.0
    assert fluctuation([1.0, 1.0]) is None  # fewer than 3 snapshots
