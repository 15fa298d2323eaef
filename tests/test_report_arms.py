"""Issue 31: the report's "Data or loss?" section (dpo_ppo/report/arms.py) on fabricated sweeps:
the headline stays DPO vs PPO (online DPO never pooled into DPO), each pair of arms is compared at
matched KL by the headline's code, and `--compare A,B` adds a pair."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from dpo_ppo import results as R
from dpo_ppo.report import arms, render
from dpo_ppo.report.cli import main
from dpo_ppo.report.load import load_sweep
from sweepfab import BINARY, write_job

# planted: the metric is 1 + 0.3 log KL, plus 0.4 for every on-policy arm (the data matters, the loss not)
ON_POLICY_SHIFT = 0.4
ARMS = {"dpo": ("dpo", {}), "online_dpo": ("dpo", {"rounds": 4, "arm": "online_dpo"}), "ppo": ("ppo", {}),
        "rloo": ("rloo", {})}


def _sweep(root):
    rng = np.random.default_rng(3)
    for name, (algorithm, params) in ARMS.items():
        for k, kl0 in enumerate((0.5, 1.5, 5.0)):
            for s in range(3):
                kl = kl0 * (1 + 0.03 * s)
                value = 1 + 0.3 * math.log(kl) + rng.normal(0, 0.03) + (ON_POLICY_SHIFT if name != "dpo" else 0.0)
                metrics = {R.KL: kl, R.REWARD: 0.5 + 0.05 * math.log(kl), R.REF_REWARD: 0.4, BINARY: value}
                write_job(root, algorithm, [0.02, 0.1, 0.5][k] if algorithm != "ppo" else [1, 3, 9][k], s, metrics,
                          params={**params, "arm": params.get("arm", name)},
                          overrides=[f"algorithm.rounds={params['rounds']}"] if "rounds" in params else ())
    return root


def test_pairs_are_compared_at_matched_kl_and_the_headline_keeps_dpo_and_ppo(tmp_path):
    root = _sweep(tmp_path / "sweep")
    runs, _ = load_sweep(root)
    assert arms.arms_present(runs) == ["dpo", "online_dpo", "ppo", "rloo"]
    assert {arms.arm_of(r) for r in arms.headline_runs(runs)} == {"dpo", "ppo"}
    data = arms.compare_pair(runs, "dpo", "online_dpo", min_runs=3, min_seeds=3, n_boot=200)
    row = next(r for r in data if r.metric == BINARY)
    assert render.runs_text(row.comparison) == "9 / 9"
    assert abs(row.comparison.points[0].effect - ON_POLICY_SHIFT) < 0.1  # the data moved it
    loss = arms.compare_pair(runs, "online_dpo", "ppo", min_runs=3, min_seeds=3, n_boot=200)
    row = next(r for r in loss if r.metric == BINARY)
    assert abs(row.comparison.points[0].effect) < 0.1  # the loss did not


def test_the_report_has_the_section_and_compare_a_b_adds_a_pair(tmp_path, capsys):
    root = _sweep(tmp_path / "sweep")
    assert main([str(root), "--no-figures", "--no-wandb", "--bootstrap", "200", "--compare", "rloo,online_dpo"]) == 0
    md = (root / "report" / "report.md").read_text()
    assert "## Data or loss?" in md
    for title in ("online DPO vs DPO: the data", "PPO vs RLOO: the implementation",
                  "online DPO vs RLOO: asked for (--compare)"):
        assert title in md, title
    head = md.split("## Data or loss?")[0]
    assert "runs DPO / PPO" in head and "| 9 / 9 |" in head  # online DPO and RLOO runs not pooled in
    summary = json.loads((root / "report" / "summary.json").read_text())
    assert {(x["a"], x["b"]) for x in summary["arms"]} >= {("dpo", "online_dpo"), ("rloo", "online_dpo")}
    with pytest.raises(SystemExit):
        main([str(root), "--no-figures", "--no-wandb", "--compare", "rloo,sft"])
