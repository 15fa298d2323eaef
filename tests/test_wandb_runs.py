"""What a job's and a report's W&B runs hold, read back from the offline run files (issue 24)."""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import pytest

from dpo_ppo import results as R
from dpo_ppo.config import LoggerConfig
from dpo_ppo.runtime.record import Recorder, run_group

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
    rec.metrics({"analysis/weights/msd_all": 0.25, R.REWARD: 0.6})
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
    run_id, next_step = rec.record.wandb["id"], rec.record.wandb["next_step"]
    assert json.loads((tmp_path / R.RESULTS_FILE).read_text())["wandb"]["next_step"] == next_step == 3
    rec.run.finish(exit_code=1)  # killed: results.json still says running
    time.sleep(1.1)  # W&B names an offline run's folder by the second it started
    rec2 = Recorder(tmp_path, job_results(), LoggerConfig(project="proj"), {}, run_name="j", resume_id=run_id,
                    resume_step=next_step)
    for ex in (48, 64):
        rec2.log({"train/loss": 1.0 / ex}, ex)
    rec2.metrics({R.REWARD: 0.6})  # the summary, not a history row
    rec2.finish("finished")
    first, second = (read_offline_run(r) for r in offline_runs(tmp_path))
    assert first["run"]["id"] == second["run"]["id"] == run_id
    assert [r["_step"] for r in first["history"]] == [0, 1, 2]
    assert [r["_step"] for r in second["history"]] == [3, 4]
    assert second["summary"][R.REWARD] == 0.6
    assert [r["train/examples"] for r in second["history"] if "train/examples" in r] == [48, 64]


def test_report_run_is_typed_stable_across_copies_and_continues_when_remade(tmp_path):
    from dpo_ppo import report

    root = tmp_path / "a" / "fab"
    for algorithm in R.ALGORITHMS:
        for seed in (0, 1):
            write_job(root, algorithm, 1, seed, {R.KL: 1.0 + seed, R.REWARD: 0.5, BIAS: 0.1})
    assert report.main([str(root), "--wandb", "--bootstrap", "100", "--no-figures"]) == 0
    read_offline_run(offline_runs(root / "report")[0])  # W&B's service may still be writing it: wait
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


# --------------------------------------------------------------------------- DPO's train/kl and reward


def test_dpo_logs_ppos_train_kl_and_reward_on_the_examples_axis(tmp_path):
    """The probe's train/kl is PPO's: per completion the sum over its tokens of log pi - log
    pi_ref (k1) on the policy's own samples, mean over completions; train/p_positive_mean the
    classifier's mean p_positive; before training, every ``probe_every`` examples and at the end."""
    import copy

    import torch
    from test_ppo import tiny_model, tiny_tokenizer

    from dpo_ppo.train.dpo import train_dpo
    from dpo_ppo.train.probe import TrainingProbe
    from dpo_ppo.train.sampling import generate, sample_keys
    from fixtures import completion_logprobs, dpo_algo, token_pairs

    tok = tiny_tokenizer()
    model = tiny_model(tok)
    ref = copy.deepcopy(model).eval()
    prompts = [[5, 6, 7, 8], [9, 10, 11], [12, 13, 14, 15, 16]]

    def reward(texts):
        return [min(1.0, len(t) / 40) for t in texts]

    probe = TrainingProbe(ref, tok, prompts, reward, completion_len=6, seed=3)
    rng = torch.get_rng_state()
    before = probe(model)
    assert torch.equal(rng, torch.get_rng_state())  # a probe never moves the training's random stream
    assert before["train/kl"] == pytest.approx(0.0, abs=1e-6)  # the policy is still the reference
    rows = []
    policy = copy.deepcopy(model)
    algo = dpo_algo(snapshot_every=8, lr=3e-2)
    train_dpo(algo, policy, ref, tok, token_pairs(16), tmp_path, log_fn=lambda m, s: rows.append(m), probe=probe)
    probes = [r for r in rows if "train/kl" in r]
    assert [r["train/examples"] for r in probes] == [0, 8, 16]
    # the reference, measured: KL 0 and its reward on the probe prefixes (PPO's probe at 0 is the same)
    assert probes[0]["train/kl"] == pytest.approx(0.0, abs=1e-6)
    assert probes[0]["train/p_positive_mean"] == pytest.approx(before["train/p_positive_mean"])
    probes = probes[1:]
    assert all("trl/loss" not in r for r in probes) and any("trl/loss" in r for r in rows)
    # the last probe by hand: the same keyed completions, then PPO's k1 sum per sequence
    completions = generate(policy, tok, prompts, 6, batch_size=3, desc=None, keys=sample_keys(3, range(3)))
    k1 = (completion_logprobs(policy, prompts, completions, pad_id=tok.pad_token_id)
          - completion_logprobs(ref, prompts, completions, pad_id=tok.pad_token_id))
    texts = tok.batch_decode([p + c for p, c in zip(prompts, completions)], skip_special_tokens=True)
    assert probes[-1]["train/kl"] == pytest.approx(float(k1.mean()), abs=1e-4) and abs(probes[-1]["train/kl"]) > 1e-3
    assert probes[-1]["train/p_positive_mean"] == pytest.approx(sum(reward(texts)) / 3, abs=1e-6)
    assert probes[-1]["train/kl_exact"] > 0


# --------------------------------------------------------------------------- lineage and joins


def test_policy_artifact_inputs_and_files_of_a_job_run(tmp_path):
    shared = {}
    for kind in ("corpus", "reference", "classifier", "prefs"):
        shared[kind] = str(tmp_path / "cache" / kind / f"key{kind}")
        Path(shared[kind]).mkdir(parents=True)
    policy = tmp_path / "job" / "policy"
    policy.mkdir(parents=True)
    (policy / "config.json").write_text("{}")
    (policy / "model.safetensors").write_bytes(b"0" * 64)
    job = tmp_path / "job"
    results = job_results(artifacts=shared)
    rec = Recorder(job, results, LoggerConfig(project="proj"), {}, run_name="j")
    rec.model(policy, "upload", algorithm="dpo")
    rec.inputs(shared)
    (job / "analysis.json").write_text("{}")
    rec.files(job / "analysis.json")
    rec.finish("finished")
    run = read_offline_run(offline_runs(job)[0])
    (art,) = run["artifacts"]
    assert art["name"] == f"policy-{rec.record.wandb['id']}" and art["type"] == "model"
    assert {"latest", "final"} <= set(art["aliases"]) and art["metadata"]["algorithm"] == "dpo"
    assert sorted(art["paths"]) == ["config.json", "model.safetensors"]
    assert {"results.json", "analysis.json"} <= set(run["files"])
    # W&B refuses use_artifact offline: the inputs wait in results.json for dpo-ppo-sync
    saved = json.loads((job / R.RESULTS_FILE).read_text())["wandb"]
    assert [i["name"] for i in saved["inputs"]] == ["corpus-keycorpus", "reference-keyreference",
                                                   "classifier-keyclassifier", "prefs-keyprefs"]
    assert not saved.get("inputs_declared")


def test_sync_declares_the_shared_inputs_once_a_run_is_uploaded(tmp_path):
    from types import SimpleNamespace

    from dpo_ppo.runtime.wandb_sync import sync

    job = tmp_path / "sweep" / "job"
    rec = Recorder(job, job_results(), LoggerConfig(project="proj"), {}, run_name="j")
    corpus = tmp_path / "cache" / "corpus" / "k1"
    corpus.mkdir(parents=True)
    rec.inputs({"corpus": str(corpus)})
    rec.finish("finished")

    def fake_wandb(cmd):
        for path in cmd[2:]:
            for f in Path(path).glob("run-*.wandb"):
                f.with_suffix(".wandb.synced").write_text("")
        return SimpleNamespace(returncode=0)

    declared = []
    sync(tmp_path / "sweep", runner=fake_wandb, wandb_cmd=["wandb"], declare=lambda info, status: declared.append(
        ([i["name"] for i in info["inputs"]], status)))
    assert declared == [(["corpus-k1"], "finished")]
    assert json.loads((job / R.RESULTS_FILE).read_text())["wandb"]["inputs_declared"]
    sync(tmp_path / "sweep", runner=fake_wandb, wandb_cmd=["wandb"], declare=lambda *a: declared.append(a))
    assert len(declared) == 1  # once


# --------------------------------------------------------------------------- (c) and (d) as native panels


def test_analysis_as_tables_bar_chart_and_history_over_training(tmp_path):
    out = {
        "tables": {
            "weights_over_training": {"columns": ["examples", "msd_weights", "msd_layer0"],
                                      "data": [[32, 0.1, 0.2], [64, 0.3, 0.4]]},
            # a per-snapshot table in long format, as a head analysis over training would write it
            "heads_over_training": {"columns": ["examples", "model", "layer", "head", "score"],
                                    "data": [[32, "policy", 0, 1, 0.5], [64, "policy", 0, 1, 0.7]]},
            "ablation": {"columns": ["model", "kind", "layer", "head", "lm_loss_increase"],
                         "data": [["policy", "zero", 0, 0, 0.01]]},
        },
        "details": {"weights_per_layer": {"0": {"weight": 1.0, "bias": 2.0, "all": 1.5},
                                          "1": {"weight": 3.0, "bias": 4.0, "all": 3.5}}},
        "per_head": {"ablation/policy/zero/lm_loss_increase": [[0.1, 0.2], [0.3, 0.4]]},
    }
    rec = Recorder(tmp_path, job_results(), LoggerConfig(project="proj"), {}, run_name="j")
    for ex in (32, 64):
        rec.log({"train/loss": 1.0}, ex)
    rec.analysis(out)
    rec.finish("finished")
    folder = offline_runs(tmp_path)[0]
    run = read_offline_run(folder)
    s = run["summary"]
    for key in ("analysis/weights_over_training", "analysis/ablation", "analysis/weights_per_layer",
                "analysis/per_head/ablation/policy/zero/lm_loss_increase"):
        assert s[f"{key}/_type"] == "table-file", key
    layer = json.loads((folder / "files" / s["analysis/weights_per_layer/path"]).read_text())
    assert layer["columns"] == ["layer", "weights", "biases", "all"] and layer["data"][1] == [1, 3.0, 4.0, 3.5]
    heads = json.loads((folder / "files" / s["analysis/per_head/ablation/policy/zero/lm_loss_increase/path"]).read_text())
    assert heads["columns"] == ["layer", "head", "value"] and heads["data"][2] == [1, 0, 0.3]
    assert any(k.startswith("analysis/charts/weights_per_layer") for k in s)  # wandb.plot.bar
    assert run["metrics"]["over_training/*"]["step_metric"] == "train/examples"
    points = [r for r in run["history"] if any(k.startswith("over_training/") for k in r)]
    # key columns as plain parts, layer and head as integer indices, no "=" (issue 34)
    assert [(p["train/examples"], p["over_training/weights_over_training/msd_layer0"],
             p["over_training/heads_over_training/policy/layer0/head1/score"]) for p in points] \
        == [(32, 0.2, 0.5), (64, 0.4, 0.7)]


# --------------------------------------------------------------------------- the scripted dashboard


def test_dashboard_spec_has_every_panel_of_the_comparison(tmp_path):
    pytest.importorskip("wandb_workspaces")
    from dpo_ppo import report
    from dpo_ppo.report import dashboard as D

    root = tmp_path / "fab"
    grid = [[0.1, 0.2], [0.3, 0.4]]
    for algorithm in R.ALGORITHMS:
        for seed in (0, 1):
            write_job(root, algorithm, 1, seed, {R.KL: 1.0, R.REWARD: 0.5, "analysis/weights/msd_layer0": 0.1,
                                                 "analysis/weights/msd_layer1": 0.2},
                      per_head={"ablation/policy/zero/lm_loss_increase": grid})
    spec_file = tmp_path / "dash.json"
    assert report.main([str(root), "--no-wandb", "--bootstrap", "100", "--no-figures",
                        "--dashboard-spec", str(spec_file)]) == 0
    spec = json.loads(spec_file.read_text())
    assert spec["project"] == "dpo-ppo-test" and spec["x_axis"] == "train/examples"
    assert "sweep=fab" in spec["filters"] and "Group" in spec["groupby"][0]
    # one colour per arm group, blues for DPO and oranges for PPO
    assert set(spec["group_colors"]) == {"fab/dpo/beta=1", "fab/ppo/kl_target=1"}
    assert spec["group_colors"]["fab/dpo/beta=1"] in D.DPO_COLORS and spec["group_colors"]["fab/ppo/kl_target=1"] in D.PPO_COLORS
    panels = {s["name"][:3]: s["panels"] for s in spec["sections"]}
    assert list(panels) == ["(a)", "(b)", "(c)", "(d)", "(e)"]
    (frontier,) = panels["(a)"]
    assert frontier["type"] == "ScatterPlot" and R.KL in frontier["x"] and R.REWARD in frontier["y"]
    curves = {p["y"][0] for p in panels["(b)"]}
    assert {R.TRAIN_KL, R.TRAIN_P_POSITIVE, R.TRL_LOSS, R.ROLLOUT_KL} <= curves
    assert all(p["x"] == R.EXAMPLES for p in panels["(b)"])
    assert all("nat" in p["title"] or "(0-1)" in p["title"] for p in panels["(b)"] if "kl" in p["y"][0]
               or "p_positive" in p["y"][0])  # units in the titles
    bar = next(p for p in panels["(c)"] if p["type"] == "BarPlot")
    assert [m.split("'")[1] for m in bar["metrics"]] == ["analysis/weights/msd_layer0", "analysis/weights/msd_layer1"]
    assert any("over_training/weights_over_training/msd_layer1" in p.get("y", []) for p in panels["(c)"])
    # per-layer activation divergence: a bar per layer (logit-lens KL) and the activation plots
    lens = next(p for p in panels["(c)"] if p["type"] == "BarPlot" and "activation" in p["title"])
    assert [m.split("'")[1] for m in lens["metrics"]] == ["analysis/activations/logit_lens_kl_layer0",
                                                         "analysis/activations/logit_lens_kl_layer1"]
    assert any("plots/activations_kl" in p.get("media_keys", []) for p in panels["(c)"])
    # heads over training (curves and plot) and the ablation as heat maps, not 18 raw per-head tables
    assert any(p.get("y") == [f"over_training/heads_over_training/{m}_max_abs_change" for m in D.HEAD_MEASURES]
               for p in panels["(d)"])
    media = [k for p in panels["(d)"] if p["type"] == "MediaBrowser" for k in p["media_keys"]]
    assert {"plots/heads_over_training", "plots/ablation_lm_loss_increase"} <= set(media)
    assert [p["table_name"] for p in panels["(d)"] if "table_name" in p] == ["analysis/ablation"]
    assert {"claims", "runs", "eval_rows"} <= {p["table_name"] for p in panels["(e)"]}
    # W&B's own wire form builds offline (what workspace.save() would send)
    view = D.build_workspace("fab", "lab", "p", layers=2)._to_model()
    assert "train/examples" in view.model_dump_json()


# --------------------------------------------------------------------------- issue 34: one axis, one vocabulary


def _probe_runs(tmp_path):
    """A tiny DPO and a tiny PPO job, trained from the same reference with the same probe (the
    same 4 prefixes, every 8 examples), each recording an offline W&B run with its evaluation and
    analysis values; both runs read back."""
    import copy

    from test_ppo import make_prompts, ppo_cfg, share_of_target, tiny_model, tiny_tokenizer

    from dpo_ppo.train.dpo import train_dpo
    from dpo_ppo.train.ppo import train_ppo
    from dpo_ppo.train.probe import TrainingProbe
    from fixtures import dpo_algo, token_pairs

    tok = tiny_tokenizer()
    model = tiny_model(tok)
    ref = copy.deepcopy(model).eval().requires_grad_(False)
    probe = TrainingProbe(ref, tok, make_prompts(4, seed=7), share_of_target, completion_len=6, seed=3)
    analysis = {"tables": {"heads_over_training_per_head": {
        "columns": ["examples", "measure", "layer", "head", "value"],
        "data": [[8, "induction", 0, 1, 0.25], [16, "induction", 0, 1, 0.5]]}}}
    one_shot = {R.REWARD: 0.6, R.KL: 1.5, "analysis/heads/induction_top_layer": 1.0,
                "analysis/heads/induction_top_head": 0.0}
    runs = {}
    for algorithm in R.ALGORITHMS:
        folder = tmp_path / algorithm
        rec = Recorder(folder, job_results(algorithm=algorithm), LoggerConfig(project="proj"), {}, run_name=algorithm)
        policy = copy.deepcopy(model)
        if algorithm == "dpo":
            train_dpo(dpo_algo(snapshot_every=8, lr=3e-2), policy, ref, tok, token_pairs(16), folder, log_fn=rec.log,
                      probe=probe, probe_every=8)
        else:
            train_ppo(ppo_cfg(examples=16, rollout_prefixes=4, batch_size=8, ppo_epochs=1, num_minibatches=1,
                              completion_len=6), policy, ref, tok, make_prompts(16), share_of_target, folder,
                      log_fn=rec.log, probe=probe, probe_every=8)
        rec.metrics(one_shot)
        rec.analysis(analysis)
        rec.finish("finished")
        runs[algorithm] = read_offline_run(offline_runs(folder)[0])
    return runs


def test_dpo_and_ppo_curves_share_one_axis_and_one_vocabulary(tmp_path):
    """Read back from the offline files of a DPO and a PPO run: the probe's reward and KL on the
    same prefixes at the same examples (0, 8, 16) for both, equal at 0 (both policies are the
    reference there); PPO's rollout rows at the examples before their update (its first rollout,
    at 0, has KL 0: the policy that sampled it is the reference); DPO's first loss at 0 is the
    reference's, log 2; TRL's keys under trl/; evaluation and analysis values in the summary only,
    indices as integers; per-head keys without '=' or a stray 'value'."""
    runs = _probe_runs(tmp_path)
    probes = {a: {row[R.EXAMPLES]: row for row in run["history"] if R.TRAIN_P_POSITIVE in row}
              for a, run in runs.items()}
    assert sorted(probes["dpo"]) == sorted(probes["ppo"]) == [0, 8, 16]
    for key in (R.TRAIN_KL, R.TRAIN_KL_EXACT, R.TRAIN_P_POSITIVE, R.TRAIN_SCORE):
        assert probes["dpo"][0][key] == pytest.approx(probes["ppo"][0][key], abs=1e-6), key
    assert probes["ppo"][0][R.TRAIN_KL] == pytest.approx(0.0, abs=1e-6)
    assert probes["ppo"][16][R.TRAIN_KL] > 1e-4 and probes["dpo"][16][R.TRAIN_KL] > 1e-4  # trained
    # PPO: one rollout row per update, at the examples before it
    rollouts = [row for row in runs["ppo"]["history"] if R.ROLLOUT_KL in row]
    assert [row[R.EXAMPLES] for row in rollouts] == [0, 4, 8, 12]
    assert rollouts[0][R.ROLLOUT_KL] == pytest.approx(0.0, abs=1e-5)
    assert all(0 <= row[R.ROLLOUT_P_POSITIVE] <= 1 for row in rollouts)
    # DPO: TRL's own keys under trl/, each loss at the start of the steps it averages
    losses = [row for row in runs["dpo"]["history"] if R.TRL_LOSS in row]
    assert [row[R.EXAMPLES] for row in losses] == [0, 4, 8, 12]
    assert losses[0][R.TRL_LOSS] == pytest.approx(math.log(2), abs=1e-4)
    for algorithm, run in runs.items():
        keys = {k for row in run["history"] for k in row}
        media = {k.rsplit("/", 1)[0] for k in keys if k.endswith("/_type")}  # tables, charts: their fields
        scalars = {k for k in keys if k.rsplit("/", 1)[0] not in media and k.rsplit("/", 1)[0].rsplit("/", 1)[0] not in media}
        assert not {k for k in scalars if k.startswith(("eval/", "analysis/"))}, algorithm  # no one-point series
        train_keys = {k for k in keys if k.startswith(R.TRAIN)}
        assert not {k for k in train_keys if k.split("/")[1] in ("loss", "rewards", "logps", "logits", "grad_norm",
                                                                  "learning_rate", "epoch", "train_loss",
                                                                  "total_flos", "train_runtime", "reward_mean")}
        assert not [k for k in keys if "=" in k or "value" in k.split("/")]  # clean per-head keys
        assert "over_training/heads_over_training_per_head/induction/layer0/head1" in keys
        s = run["summary"]
        assert s[R.REWARD] == 0.6 and s[R.KL] == 1.5
        assert s["analysis/heads/induction_top_layer"] == 1 and isinstance(s["analysis/heads/induction_top_layer"], int)
        assert isinstance(s["analysis/heads/induction_top_head"], int)
        assert run["metrics"][f"{R.TRL}*"]["step_metric"] == R.EXAMPLES
    assert not any(k.startswith(R.TRL) for row in runs["ppo"]["history"] for k in row)
    assert any(k.startswith(R.TRL + "rewards/") for row in runs["dpo"]["history"] for k in row)


def test_dashboard_without_a_login_says_what_is_missing_and_still_reports(tmp_path, monkeypatch, capsys):
    """No API key: one line naming WANDB_API_KEY / wandb login, a non-zero exit, report.md written
    and the final 'report:' line printed; a key but no entity: one line naming WANDB_ENTITY."""
    pytest.importorskip("wandb_workspaces")
    import wandb

    from dpo_ppo import report

    root = tmp_path / "fab"
    for algorithm in R.ALGORITHMS:
        for seed in (0, 1):
            write_job(root, algorithm, 1, seed, {R.KL: 1.0, R.REWARD: 0.5})
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "home" / ".netrc"))
    for var in ("WANDB_API_KEY", "WANDB_ENTITY"):
        monkeypatch.delenv(var, raising=False)
    spec = tmp_path / "dash.json"
    args = [str(root), "--no-wandb", "--bootstrap", "100", "--no-figures", "--dashboard", "--dashboard-spec", str(spec)]
    assert report.main(args) != 0
    out, err = capsys.readouterr()
    assert out.strip().splitlines()[-1] == f"report: {root / 'report' / 'report.md'}"
    assert (root / "report" / "report.md").is_file() and spec.is_file()  # the spec still written
    (line,) = [e for e in err.splitlines() if e.strip()]
    assert line.startswith("dashboard: no W&B API key") and "WANDB_API_KEY" in line and "wandb login" in line

    class NoEntity:  # a login whose default entity W&B does not know
        default_entity = None

    monkeypatch.setattr(wandb, "Api", NoEntity)
    assert report.main(args) != 0
    out, err = capsys.readouterr()
    assert out.strip().splitlines()[-1].startswith("report: ")
    (line,) = [e for e in err.splitlines() if e.strip()]
    assert line.startswith("dashboard: no W&B entity") and "WANDB_ENTITY" in line


def test_results_written_before_the_renames_are_read_under_the_new_names():
    """eval/*/reward_mean (the mean p_positive), reward_std and score_logit_mean (the log-odds)
    of an older results.json are read as p_positive_mean, p_positive_std and score_mean."""
    old = {"eval/policy/reward_mean": 0.5, "eval/reference/reward_std": 0.2, "eval/policy/score_logit_mean": 1.5,
           "eval/improvement/reward_mean": 0.1, "analysis/heads/reward_mean_top_layer": 2.0}
    assert R.scalar_metrics(old) == {R.REWARD: 0.5, "eval/reference/p_positive_std": 0.2,
                                     "eval/policy/score_mean": 1.5, "eval/improvement/p_positive_mean": 0.1,
                                     "analysis/heads/reward_mean_top_layer": 2.0}
    assert R.typed_value("analysis/heads/induction_top_head", 3.0) == 3
    assert isinstance(R.typed_value("analysis/heads/induction_top_head", 3.0), int)
    assert R.typed_value("analysis/weights/msd_all", 3.0) == 3.0 and R.typed_value("x/top_layer", 2.5) == 2.5


def test_the_reports_training_figure_reads_every_row_at_the_examples_its_policy_had_seen():
    """New PPO logs are already aligned (rollout rows before their update); a PPO log written
    before issue 34 had each update at the count after it, and is moved back one update."""
    from dpo_ppo.report.figures import _aligned_rows

    legacy = [{"step": x, R.EXAMPLES: x, "train/kl": 0.1 * x, R.KL_COEF: 0.2} for x in (16, 32, 48)]
    assert [x for x, _ in _aligned_rows(legacy)] == [0, 16, 32]
    current = [{R.EXAMPLES: 0, R.TRAIN_KL: 0.0, R.ROLLOUT_KL: 0.0, R.KL_COEF: 0.2},
               {R.EXAMPLES: 16, R.ROLLOUT_KL: 0.3, R.KL_COEF: 0.2}, {R.EXAMPLES: 32, R.TRAIN_KL: 0.5}]
    assert [x for x, _ in _aligned_rows(current)] == [0, 16, 32]
    dpo = [{R.EXAMPLES: 0, R.TRAIN_KL: 0.0, R.TRL_LOSS: 0.69}, {R.EXAMPLES: 8, R.TRL_LOSS: 0.6}]
    assert [x for x, _ in _aligned_rows(dpo)] == [0, 8]


def test_the_dashboards_colours_tell_every_trainer_apart():
    """RLOO's and GRPO's groups get colour families of their own (they were left uncoloured, and a
    frontier of five arms then read as two)."""
    from dpo_ppo.report import dashboard as D

    groups = ["s/dpo/beta=0.1", "s/dpo/beta=0.1,algorithm.rounds=4", "s/ppo/kl_target=1", "s/rloo/beta=0.05",
              "s/grpo/beta=0.04", "s/rloo/beta=0.1"]
    colors = D.group_colors(groups)
    assert set(colors) == set(groups)
    assert colors["s/rloo/beta=0.05"] in D.RLOO_COLORS and colors["s/grpo/beta=0.04"] in D.GRPO_COLORS
    assert colors["s/rloo/beta=0.05"] != colors["s/rloo/beta=0.1"]
    assert colors["s/dpo/beta=0.1"] in D.DPO_COLORS and colors["s/ppo/kl_target=1"] in D.PPO_COLORS
