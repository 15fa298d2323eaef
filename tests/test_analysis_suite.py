"""The whole suite (run_analysis), its registry, its config group and the dpo-ppo-analyze app."""

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from dpo_ppo import results as R
from dpo_ppo.cli.analyze import analysis_config, analyze, compose
from dpo_ppo.analysis.common import select_balanced
from dpo_ppo.config.analysis import AnalysisConfig
from dpo_ppo.analysis.suite import run_analysis
from fixtures import LexiconScorer, toy_model, toy_reviews, toy_tokenizer

CONF = Path(__file__).resolve().parents[1] / "conf"



@pytest.fixture(scope="module")
def world():
    texts, labels = toy_reviews(60)
    tok = toy_tokenizer(texts)
    ref = toy_model(tok, layers=2, hidden=32, heads=4, initializer_range=0.1)
    pol = copy.deepcopy(ref)
    with torch.no_grad():
        for name, p in pol.named_parameters():
            p.add_((0.05 if name.endswith("bias") else 0.01) * torch.randn_like(p))
    return tok, ref, pol, texts, labels


def _strict_json(path):
    def no_nan(x):
        raise ValueError(f"non-JSON constant {x}")
    return json.loads(Path(path).read_text(), parse_constant=no_nan)


def _preset(name, *overrides):
    """conf/analysis/NAME.yaml as dpo-ppo-analyze composes it, its null batch size resolved on the
    CPU as a job would (the suite takes a number)."""
    from dpo_ppo.runtime import hardware

    composed = compose([f"analysis={name}", *overrides])
    cfg = analysis_config(composed)
    if cfg.batch_size is None:
        cfg.batch_size = hardware.resolve(composed, torch.device("cpu")).analysis_batch_size
    return cfg


def _fast(**overrides):
    cfg = _preset("fast")
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


EXPECTED = [
    "analysis/weights/msd_weights", "analysis/weights/msd_biases", "analysis/weights/msd_all",
    "analysis/weights/msd_layer0", "analysis/weights/msd_layer1", "analysis/weights/bias_weight_ratio",
    "analysis/weights/num_snapshots",
    *[f"analysis/activations/{site}/{m}_{s}_mean" for site in ("resid", "attn", "mlp") for m in ("cos", "kl")
      for s in ("all", "pos", "neg")],
    "analysis/activations/resid/cos_all_layer1", "analysis/activations/mlp/kl_neg_layer0",
    "analysis/activations/logit_lens_kl_layer0", "analysis/activations/logit_lens_kl_layer1",
    "analysis/activations/output_kl",
    *[f"analysis/ablation/{m}/{k}/{x}_{s}" for m in ("reference", "policy") for k in ("zero", "mean")
      for x in ("lm_loss_increase", "grad_loss_delta", "binary_loss_delta") for s in ("mean", "max")],
    "analysis/ablation/policy/lm_loss_base", "analysis/ablation/policy/grad_loss_base",
    *[f"analysis/heads/{t}_max_abs_change" for t in ("previous_token", "duplicate_token", "induction")],
    "analysis/heads/reference/induction_max", "analysis/heads/policy/previous_token_max",
    "analysis/sentiment_attention/max_abs_change", "analysis/sentiment_attention/top_change_layer",
    "analysis/sentiment_attention/top_change_head", "analysis/sentiment_attention/policy/max_attention",
    "analysis/time_s/total",
    # the names the report and the dashboard read (results.py): the producer must write them
    R.MSD_ALL, R.MSD_WEIGHTS, R.MSD_BIASES, R.BIAS_WEIGHT_RATIO, R.MSD_LAYER + "1", R.LOGIT_LENS_KL_LAYER + "1",
    *[R.RESID_KL_MEAN.format(s) for s in ("pos", "neg", "all")],
]


def test_full_suite_on_tiny_models(world, tmp_path):
    tok, ref, pol, texts, labels = world
    snaps = []
    for k, examples in enumerate([10, 20]):
        m = copy.deepcopy(ref)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.01 * (k + 1))
        m.save_pretrained(tmp_path / "snapshots" / f"ex_{examples:07d}")
        snaps.append(tmp_path / "snapshots" / f"ex_{examples:07d}")
    scorer = LexiconScorer()
    before = {n: p.clone() for n, p in pol.state_dict().items()}
    pol.train()
    res = run_analysis(_fast(ablation_reference=True), ref, pol, tok, texts=texts, labels=labels, scorer=scorer,
                       out_dir=tmp_path / "out", snapshots=snaps, device="cpu", strict=True)
    assert res["errors"] == {}
    missing = [k for k in EXPECTED if k not in res["scalars"]]
    assert not missing, missing
    assert all(k.startswith("analysis/") for k in res["scalars"])
    assert all(math.isfinite(v) for v in res["scalars"].values())
    s = res["scalars"]
    assert s["analysis/weights/msd_biases"] > s["analysis/weights/msd_weights"] > 0  # as perturbed
    assert s["analysis/weights/num_snapshots"] == 2
    assert 0 < s["analysis/activations/resid/cos_all_mean"] < 1
    assert s["analysis/activations/logit_lens_kl_layer1"] == s["analysis/activations/output_kl"] > 0
    assert scorer.calls > 0  # the sentiment objective was really scored
    # the caller's models are untouched, and keep their train/eval mode
    assert pol.training and not ref.training
    assert all(torch.equal(before[n], p) for n, p in pol.state_dict().items())
    # outputs on disk
    saved = _strict_json(tmp_path / "out" / "analysis.json")
    assert set(saved["scalars"]) == set(res["scalars"])
    assert saved["config"]["name"] == "fast"
    for name, path in res["images"].items():
        assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert {"weights_summary", "weights_over_training", "activations_cos", "logit_lens_kl",
            "ablation_lm_loss_increase", "heads_induction", "sentiment_attention"} <= set(res["images"])
    assert any(k.startswith("attention_L") for k in res["images"])
    for name, table in res["tables"].items():
        assert table["data"] and all(len(row) == len(table["columns"]) for row in table["data"]), name
    assert len(res["tables"]["ablation"]["data"]) == 2 * 2 * 2 * 4  # models x kinds x layers x heads
    assert [r[0] for r in res["tables"]["weights_over_training"]["data"]] == [10, 20]
    # per_head: flat names -> layer x head matrices only
    assert {"ablation/policy/zero/lm_loss_increase", "ablation/reference/mean/grad_loss_delta",
            "heads/policy/induction", "heads/change/previous_token", "sentiment_attention/change"} <= set(res["per_head"])
    for name, grid in res["per_head"].items():
        assert len(grid) == 2 and all(len(row) == 4 for row in grid), name
    assert res["details"]["ablation"]["policy"]["completions_base"]


def test_the_reference_side_is_computed_once_through_the_reference_cache(world, tmp_path):
    """With a reference_cache the reference's ablation, head scores and attention are asked of it
    (and computed only when it has none): the same numbers as without one; what it holds is what
    the analyses report, and the policy's side never goes through it."""
    tok, ref, pol, texts, labels = world
    cfg = _fast(ablation_reference=True, activations=False, weights=False)

    def analyse(out, cache=None):
        res = run_analysis(cfg, ref, pol, tok, texts=texts, labels=labels, scorer=LexiconScorer(),
                           out_dir=tmp_path / out, device="cpu", strict=True, reference_cache=cache)
        return {k: v for k, v in res["scalars"].items() if "/time_s/" not in k}, res["per_head"]

    plain = analyse("plain")
    store, asked = {}, []

    def cache(what, compute):
        asked.append(what)
        if what not in store:
            store[what] = compute()
        return store[what]

    assert analyse("first", cache) == plain
    assert sorted(asked) == ["ablation", "heads", "sentiment_attention"]
    # a later job reads what is stored (changed here, so that reading it shows): nothing is recomputed
    store["ablation"]["lm_loss_base"] = 123.0
    store["heads"]["induction"] = torch.full_like(store["heads"]["induction"], 0.5)
    store["sentiment_attention"]["mean"] = torch.zeros_like(store["sentiment_attention"]["mean"])

    def read_only(what, compute):
        return store[what]

    scalars, per_head = analyse("second", read_only)
    assert scalars["analysis/ablation/reference/lm_loss_base"] == 123.0
    assert scalars["analysis/heads/reference/induction_max"] == 0.5
    assert scalars["analysis/sentiment_attention/reference/max_attention"] == 0.0
    assert scalars["analysis/sentiment_attention/max_abs_change"] == pytest.approx(
        plain[0]["analysis/sentiment_attention/policy/max_attention"])
    for name, value in plain[0].items():
        if "/policy/" in name:
            assert scalars[name] == value, name
    assert per_head["heads/policy/induction"] == plain[1]["heads/policy/induction"]


def test_identical_models_show_no_change(world, tmp_path):
    tok, ref, _, texts, labels = world
    cfg = _fast(ablation=False)
    res = run_analysis(cfg, ref, copy.deepcopy(ref), tok, texts=texts, labels=labels, scorer=LexiconScorer(),
                       out_dir=tmp_path, strict=True)
    s = res["scalars"]
    assert s["analysis/weights/msd_all"] == 0.0
    for site in ("resid", "attn", "mlp"):
        assert s[f"analysis/activations/{site}/cos_all_mean"] == pytest.approx(1.0, abs=1e-6)
        assert abs(s[f"analysis/activations/{site}/kl_all_mean"]) < 1e-9
    assert s["analysis/activations/output_kl"] < 1e-7
    for t in ("previous_token", "duplicate_token", "induction"):
        assert s[f"analysis/heads/{t}_max_abs_change"] < 1e-6
    assert s["analysis/sentiment_attention/max_abs_change"] < 1e-6
    assert not any(k.startswith("analysis/ablation/") for k in s)


def test_disabled_suite_writes_an_empty_result(world, tmp_path):
    tok, ref, pol, texts, labels = world
    res = run_analysis(_preset("none"), ref, pol, tok, texts=texts, labels=labels, scorer=None, out_dir=tmp_path)
    assert res["scalars"] == {} and res["images"] == {}
    assert _strict_json(tmp_path / "analysis.json")["config"]["enabled"] is False


def test_a_failing_analysis_is_recorded_unless_strict(world, tmp_path):
    tok, ref, pol, texts, labels = world
    cfg = _fast(activations=False, ablation=False, heads=False,
                sentiment_prompts=["a prompt whose [word]"])  # nothing after the word: invalid
    res = run_analysis(cfg, ref, pol, tok, texts=texts, labels=labels, scorer=None, out_dir=tmp_path)
    assert "sentiment_attention" in res["errors"] and "analysis/weights/msd_all" in res["scalars"]
    with pytest.raises(ValueError, match="last token"):
        run_analysis(cfg, ref, pol, tok, texts=texts, labels=labels, scorer=None, out_dir=tmp_path, strict=True)


def test_the_suite_runs_each_registered_analysis_on_one_context(world, tmp_path, monkeypatch):
    """The registry: every enabled analysis gets the same Context; its output is merged under the
    suite's names, a failure (or a name another analysis already wrote) is that analysis's error."""
    from dpo_ppo.analysis import suite
    from dpo_ppo.train.sampling import pad_token_id as pad_id
    from dpo_ppo.analysis.context import Output

    tok, ref, pol, texts, labels = world
    seen = []

    def first(ctx):
        seen.append(ctx)
        out = Output()
        out.scalar("weights/x", 2)
        out.table("t", ["a"], [[1]])
        out.per_head["weights/grid"] = [[0.5]]
        out.images["p"] = "p.png"
        out.details["d"] = {"k": 1}
        return out

    def broken(ctx):
        seen.append(ctx)
        raise RuntimeError("boom")

    def clash(ctx):
        seen.append(ctx)
        out = Output()
        out.scalar("weights/x", 3)
        return out

    def disabled(ctx):
        raise AssertionError("a switched-off analysis ran")

    monkeypatch.setattr(suite, "ANALYSES", {"weights": first, "activations": broken, "heads": clash,
                                            "ablation": disabled})
    res = run_analysis(_fast(ablation=False), ref, pol, tok, texts=texts, labels=labels, scorer=None,
                       out_dir=tmp_path, device="cpu")
    assert len(seen) == 3 and all(c is seen[0] for c in seen)  # one context, built once
    ctx = seen[0]
    assert (ctx.n_layers, ctx.n_heads, ctx.pad, str(ctx.device)) == (2, 4, pad_id(tok), "cpu")
    assert ctx.texts == list(texts) and ctx.plot_dir == tmp_path / "plots"
    assert {k: v for k, v in res["scalars"].items() if "/time_s/" not in k} == {"analysis/weights/x": 2.0}
    assert set(res["scalars"]) - {"analysis/weights/x"} == {
        "analysis/time_s/weights", "analysis/time_s/activations", "analysis/time_s/heads", "analysis/time_s/total"}
    assert res["errors"]["activations"] == "RuntimeError: boom"
    assert res["errors"]["heads"].startswith("ValueError") and "weights/x" in res["errors"]["heads"]
    assert (res["tables"], res["per_head"], res["images"], res["details"]) == (
        {"t": {"columns": ["a"], "data": [[1]]}}, {"weights/grid": [[0.5]]}, {"p": "p.png"}, {"d": {"k": 1}})
    with pytest.raises(RuntimeError, match="boom"):
        run_analysis(_fast(ablation=False), ref, pol, tok, texts=texts, labels=labels, scorer=None,
                     out_dir=tmp_path, device="cpu", strict=True)


def test_every_registered_analysis_has_its_switch():
    from dataclasses import fields

    from dpo_ppo.analysis.suite import ANALYSES

    switches = {f.name: f.default for f in fields(AnalysisConfig)}
    assert list(ANALYSES) == ["weights", "activations", "ablation", "heads", "sentiment_attention",
                              "heads_over_training"]
    assert all(switches.get(name) is True for name in ANALYSES)


# --------------------------------------------------------------------------- config


def test_presets_compose_with_hydra_and_validate():
    from hydra import compose, initialize_config_dir

    from dpo_ppo.config import ConfigError, load, register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        for preset in ("full", "fast", "none"):
            cfg = compose("config", overrides=[f"analysis={preset}"])
            assert cfg.analysis.name == preset
            load(cfg)
        assert compose("config").analysis.name == "full"  # the default
        assert compose("config", overrides=["analysis=none"]).analysis.enabled is False
        bad = {"analysis.ablation_kinds=[zero,median]": "analysis.ablation_kinds",
               "analysis.activation_prompts=0": "analysis.activation_prompts",
               "analysis.attention_layer=-2": "analysis.attention_layer",
               "analysis.max_tokens=1000": "analysis.max_tokens",
               "analysis.sentiment_prompts=[no mark here]": "analysis.sentiment_prompts[0]",
               "analysis.ablation_temperature=0": "analysis.ablation_temperature"}
        for override, key in bad.items():
            cfg = compose("config", overrides=["analysis=fast", override])
            with pytest.raises(ConfigError) as e:
                load(cfg)
            assert e.value.key == key, override
        # a disabled suite is not checked further
        load(compose("config", overrides=["analysis=none", "analysis.activation_prompts=0"]))


def test_full_preset_matches_the_schema_defaults():
    full = OmegaConf.load(CONF / "analysis" / "full.yaml")
    defaults = OmegaConf.structured(AnalysisConfig)
    for key, value in full.items():
        if key != "defaults":
            assert defaults[key] == value, key
    fast = analysis_config(compose(["analysis=fast", "analysis.heads=false"]))
    assert fast.name == "fast" and fast.heads is False and fast.activation_prompts < defaults.activation_prompts
    assert fast.batch_size is None and _preset("fast").batch_size == 16  # null: the device's size (a CPU's)


# --------------------------------------------------------------------------- dpo-ppo-analyze


def _save_classifier(path, tok):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    cfg = GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=16, n_layer=1, n_head=2, num_labels=2,
                     pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    GPT2ForSequenceClassification(cfg).save_pretrained(path)
    tok.save_pretrained(path)


@pytest.fixture(scope="module")
def saved(world, tmp_path_factory):
    """A finished job's folder (named as a sweep names it: '=' and ',' in it) and what it points to."""
    from datasets import Dataset, DatasetDict

    tok, ref, pol, texts, labels = world
    root = tmp_path_factory.mktemp("saved")
    job = root / "algorithm=dpo,seed=0"
    for name, model in (("reference", ref), ("policy", pol)):
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    pol.save_pretrained(job / "snapshots" / "ex_0000016")
    _save_classifier(root / "classifier", tok)
    DatasetDict({"train": Dataset.from_dict({"text": texts[:10], "label": labels[:10]}),
                 "test": Dataset.from_dict({"text": texts, "label": labels})}).save_to_disk(root / "corpus")
    (job / "results.json").write_text(json.dumps({"status": "finished", "artifacts": {
        "reference": str(root / "reference"), "policy": str(root / "policy"),
        "classifier": str(root / "classifier"), "corpus": str(root / "corpus")}}))
    return root, job


def test_analyze_app_reanalyses_a_job_folder(saved, tmp_path, capsys):
    root, job = saved
    cfg = compose([f"job='{job}'", "analysis=fast", "analysis.heads=false", "device=cpu"])
    assert cfg.job == str(job)  # the quoted folder name survives Hydra's grammar
    analyze(cfg)
    out = job / "reanalysis-fast" / "analysis.json"
    result = _strict_json(out)
    assert result["config"]["heads"] is False and result["errors"] == {}
    assert result["config"]["batch_size"] == 16  # null resolved through hardware.resolve on the CPU
    assert result["scalars"]["analysis/weights/num_snapshots"] == 1
    assert "analysis/ablation/policy/zero/grad_loss_delta_max" in result["scalars"]  # the real scorer ran
    printed = capsys.readouterr()
    assert "analysis/weights/msd_biases\t" in printed.out and "reanalysis-fast" in printed.err
    # two policies by path, each into its own folder; hardware.analysis_batch_size fills a null batch
    analyze(compose([f"reference={root / 'reference'}", f"policy=[{root / 'policy'},{root / 'reference'}]",
                     f"scorer={root / 'classifier'}", f"corpus={root / 'corpus'}", f"out_dir={tmp_path / 'two'}",
                     "analysis=fast", "analysis.ablation=false", "analysis.heads=false", "quiet=true",
                     "hardware.analysis_batch_size=3", "device=cpu"]))
    assert capsys.readouterr().out == ""
    assert _strict_json(tmp_path / "two" / "policy" / "analysis.json")["config"]["batch_size"] == 3
    same = _strict_json(tmp_path / "two" / "reference" / "analysis.json")
    assert same["scalars"]["analysis/weights/msd_all"] == 0.0


def test_analyze_app_checks_its_input_naming_the_key(saved, tmp_path):
    from dpo_ppo.config import ConfigError

    root, job = saved
    pieces = [f"reference={root / 'reference'}", f"policy={root / 'policy'}", f"scorer={root / 'classifier'}",
              "corpus=synthetic", f"out_dir={tmp_path}"]
    bad = {
        "analysis.activation_prompts=-1": "analysis.activation_prompts",
        "precision=fp16": "precision",
        "device=tpu": "device",
        "hardware.analysis_batch_size=0": "hardware.analysis_batch_size",
        "hardware.forward_batch_size=-1": "hardware.forward_batch_size",  # the scorer's batch
        f"scorer={root / 'policy'}": "scorer",  # a causal LM, not a classifier
        f"policy=[{root / 'policy'},{tmp_path / 'nowhere'}]": "policy[1]",
        f"corpus={tmp_path / 'nowhere'}": "corpus",
        "reference=null": "reference",
        "+extra=1": "extra",
    }
    for override, key in bad.items():
        with pytest.raises(ConfigError) as e:
            analyze(compose(pieces + [override]))
        assert e.value.key == key, override
    with pytest.raises(ConfigError, match="job: no readable results.json"):
        analyze(compose([f"job={root / 'reference'}"]))


def test_analyze_command_one_line_errors_and_a_run(saved, tmp_path):
    """The console script: bad input is one line on stderr naming the key (exit 2), before torch is
    imported; a run writes analysis.json where asked and nothing of Hydra's in the working folder."""
    import subprocess
    import sys

    root, job = saved
    exe = str(Path(sys.executable).with_name("dpo-ppo-analyze"))
    cases = {("polcy=x",): "Config error: polcy: not a key of the config; the closest valid key is policy",
             ("analysis=medium",): "Config error: analysis=medium: no such option; choose one of fast, full, none",
             (f"job='{job}'", "analysis.max_tokens=1"): "Config error: analysis.max_tokens: must be >= 2"}
    for args, line in cases.items():
        r = subprocess.run([exe, *args], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and r.stderr.strip().startswith(line) and len(r.stderr.strip().splitlines()) == 1, r.stderr
    run = tmp_path / "run"
    run.mkdir()
    r = subprocess.run([exe, f"job='{job}'", f"out_dir={tmp_path / 'out'}", "analysis=fast", "analysis.activations=false",
                        "analysis.ablation=false", "analysis.heads=false", "analysis.sentiment_attention=false",
                        "device=cpu"], cwd=run, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "analysis/weights/msd_all\t" in r.stdout and "Traceback" not in r.stderr
    assert _strict_json(tmp_path / "out" / "analysis.json")["scalars"]["analysis/weights/num_snapshots"] == 1
    assert list(run.iterdir()) == []  # no outputs/, .hydra/ or log file


def test_prompt_selection_is_balanced_shuffled_and_deterministic():
    labels = [0] * 50 + [1] * 50  # sorted by label, as IMDb's test split is
    idx = select_balanced(labels, 10, seed=0)
    assert len(idx) == 10 and sum(labels[i] for i in idx) == 5
    assert idx == select_balanced(labels, 10, seed=0) and idx != select_balanced(labels, 10, seed=1)
    assert sorted(idx) != list(range(45, 55))  # not just the ones around the boundary
    few_pos = [1, 0, 0, 0, 0, 0]
    idx = select_balanced(few_pos, 4, seed=0)
    assert len(idx) == 4 and sum(few_pos[i] for i in idx) == 1  # all the positives there are


def test_analyze_app_computes_the_references_side_once_for_a_list_of_policies(saved, tmp_path, monkeypatch):
    from dpo_ppo.analysis import context

    root, _ = saved
    computed = []
    original = context.Context.for_model

    def spy(self, name, what, compute):
        def counted():
            computed.append((name, what))
            return compute()
        return original(self, name, what, counted)

    monkeypatch.setattr(context.Context, "for_model", spy)
    overrides = [f"reference={root / 'reference'}", f"scorer={root / 'classifier'}", f"corpus={root / 'corpus'}",
                 "analysis=fast", "analysis.heads=false", "analysis.ablation_reference=true", "quiet=true",
                 "device=cpu"]
    two = analyze(compose(overrides + [f"policy=[{root / 'policy'},{root / 'policy'}]",
                                       f"out_dir={tmp_path / 'two'}"]))
    reference_side = [c for c in computed if c[0] == "reference"]
    whats = {w for _, w in reference_side}
    assert whats == {"ablation", "sentiment_attention"}  # the per-model analyses left on
    assert len(reference_side) == len(whats)  # once each, for the first policy only
    assert sum(1 for c in computed if c[0] == "policy") == 2 * len(whats)  # the policies' sides every time
    # the second policy's reference numbers are the first's, which are those of a lone analysis
    computed.clear()
    one = analyze(compose(overrides + [f"policy={root / 'policy'}", f"out_dir={tmp_path / 'one'}"]))
    first, second = two.values()
    (alone,) = one.values()
    ref_keys = [k for k in alone["scalars"] if "/reference/" in k]
    assert ref_keys
    for key in ref_keys:
        assert first["scalars"][key] == second["scalars"][key] == alone["scalars"][key], key
