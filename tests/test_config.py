"""Config composes, validates and fails early with a message that names the key."""

import contextlib
import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from conftest import compose_cfg
from dpo_ppo.config import ConfigError, load
from dpo_ppo.inputs import check_inputs


def load_here(cfg):
    """What dpo-ppo does before the job: the config (``config.load``), then what it names on this
    machine (``inputs.check_inputs``: devices, folders, the data)."""
    typed = load(cfg)
    check_inputs(typed)
    return typed


def test_default_composes_and_validates():
    cfg = compose_cfg(tiny=False)
    load(cfg)
    assert cfg.algorithm.name == "dpo" and cfg.model.source == "embedded"
    # as long as training's completions; 1950 prompts: 1987 of the 2000 synthetic test reviews reach 25 tokens
    assert (cfg.eval.num_prompts, cfg.eval.prefix_len, cfg.eval.completion_len) == (1950, 25, 48)
    assert compose_cfg(["experiment=paper_run2"], tiny=False).eval.num_prompts == 2000  # the seed's 5.2


@pytest.mark.parametrize("override, key", [
    ("algorithm.beta=-1", "algorithm.beta"),
    ("algorithm.lr=0", "algorithm.lr"),
    ("algorithm.num_completions=1", "algorithm.num_completions"),
    ("algorithm.prefix_len=250", "algorithm.prefix_len"),
    ("eval.prefix_len=220", "eval.prefix_len"),
    ("data.test_fraction=1.5", "data.test_fraction"),
])
def test_bad_values_name_the_key(override, key):
    cfg = compose_cfg([override], tiny=False)
    with pytest.raises(ConfigError) as err:
        load(cfg)
    assert err.value.key == key and str(err.value).startswith(key)


def test_ppo_checks():
    load(compose_cfg(["algorithm=ppo"], tiny=False))
    for override, key in [("algorithm.kl_target=-2", "algorithm.kl_target"),
                          ("algorithm.kl_estimator=k2", "algorithm.kl_estimator"),
                          ("algorithm.lam=1.5", "algorithm.lam"),
                          ("algorithm.prefix_len_max=10", "algorithm.prefix_len_max")]:
        with pytest.raises(ConfigError, match=key):
            load(compose_cfg(["algorithm=ppo", override], tiny=False))


def test_typo_and_wrong_type_fail_at_composition():
    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg(["algorithm.betaa=0.1"])
    assert "betaa" in str(err.value.__cause__ or err.value)
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose_cfg(["algorithm.beta=high"])
    # beta means nothing to PPO: the PPO schema has no such key
    with pytest.raises(ConfigCompositionException):
        compose_cfg(["algorithm=ppo", "algorithm.beta=0.1"])


def test_unknown_algorithm_lists_choices():
    with pytest.raises(Exception) as err:
        compose_cfg(["algorithm=foo"])
    text = str(err.value)
    assert "algorithm/foo" in text and "dpo" in text and "ppo" in text


def test_paper_presets_match_section_5_1():
    hub = ["model=pythia70m", "classifier=gpt2_imdb"]  # the paper's world (composed, not loaded)
    run1_dpo = compose_cfg(["experiment=paper_run1", *hub], tiny=False).algorithm
    assert (run1_dpo.examples, run1_dpo.lr, run1_dpo.beta, run1_dpo.num_completions, run1_dpo.prefix_len,
            run1_dpo.prefix_len_max, run1_dpo.completion_len) == (25000, 1e-6, 0.1, 8, 100, None, 500)
    run1_ppo = compose_cfg(["experiment=paper_run1", "algorithm=ppo", *hub], tiny=False)
    a = run1_ppo.algorithm
    assert (a.examples, a.lr, a.kl_target, a.kl_controller, a.kl_horizon, a.num_completions, a.prefix_len,
            a.prefix_len_max, a.completion_len) == (25000, 1e-6, 0.1, "ziegler", 10000, 2, 25, 75, 200)
    run2_dpo = compose_cfg(["experiment=paper_run2", *hub], tiny=False)
    a = run2_dpo.algorithm
    assert (a.examples, a.lr, a.beta, a.num_completions, a.prefix_len, a.completion_len) == (10000, 1e-6, 0.1, 4, 25, 100)
    run2_ppo = compose_cfg(["experiment=paper_run2", "algorithm=ppo", *hub], tiny=False)
    a = run2_ppo.algorithm
    assert (a.examples, a.lr, a.kl_target, a.num_completions, a.prefix_len, a.completion_len) == (10000, 1e-6, 0.1, 4, 25, 100)
    assert run2_ppo.name == "paper_run2"
    for cfg in (run1_ppo, run2_ppo, run2_dpo, compose_cfg(["experiment=paper_run1", *hub], tiny=False)):
        load(cfg)
        assert cfg.algorithm.weight_decay == 0.0  # AdamW; the seed gives no decay


def test_paper_run1_does_not_fit_the_tiny_model():
    with pytest.raises(ConfigError, match="algorithm.prefix_len.*context"):
        load(compose_cfg(["experiment=paper_run1"], tiny=False))


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "dpo_ppo.main", *args], capture_output=True, text=True,
                          timeout=120)


def test_cli_bad_value_exits_with_one_line(tmp_path):
    proc = _cli("algorithm.beta=-1", f"hydra.run.dir={tmp_path}", "logger=none")
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == ["Config error: algorithm.beta: must be > 0, got -1.0"]
    assert not (tmp_path / "results.json").exists()  # no stage started


def test_cli_typo_names_the_key(tmp_path):
    proc = _cli("algorithm.betaa=1", f"hydra.run.dir={tmp_path}")
    assert proc.returncode != 0
    assert "algorithm.betaa" in proc.stderr


def test_cli_help_and_cfg_job():
    proc = _cli("--help")
    assert proc.returncode == 0 and "algorithm: dpo, grpo, ppo, rloo" in proc.stdout
    # every key's default and help text, each algorithm's under its name (as TRL's parser shows them)
    keys = proc.stdout.split("== Keys", 1)[1]
    assert "  algorithm.kl_target = " in keys.split("algorithm=ppo:", 1)[1].split("algorithm=rloo:", 1)[0]
    assert "  eval.num_prompts = 1950\n      unseen test prefixes" in keys
    assert "  seed = 0\n      seed of training" in keys
    proc = _cli("--cfg", "job", "algorithm=ppo")
    assert proc.returncode == 0 and "kl_target" in proc.stdout and "beta:" not in proc.stdout


def test_help_of_a_group_option_and_of_dpo_ppo_analyze():
    """``dpo-ppo algorithm=ppo --help`` prints that algorithm's keys with their help (not the
    others'); dpo-ppo-analyze's --help prints its own keys and its groups' (the same dataclasses)."""
    proc = _cli("algorithm=ppo", "--help")
    keys = proc.stdout.split("== Keys", 1)[1]
    assert proc.returncode == 0 and "algorithm=ppo: PPO" in keys and "algorithm=dpo:" not in keys
    assert "  algorithm.kl_target = " in keys and "  algorithm.loss_type = " not in keys
    assert "(the other algorithms' keys: algorithm=dpo, algorithm=rloo, algorithm=grpo --help)" in keys
    proc = subprocess.run([sys.executable, "-m", "dpo_ppo.cli.analyze", "--help"], capture_output=True,
                          text=True, timeout=120)
    keys = proc.stdout.split("== Keys", 1)[1]
    assert proc.returncode == 0 and "  policy = null\n      the tuned model folder" in keys
    assert "  hardware.analysis_batch_size = " in keys and "  analysis.max_tokens = " in keys
    assert "algorithm" not in keys and "  seed = " not in keys  # dpo-ppo's own keys are not the analyzer's


# ------------------------------------------------------------- generic checks (issue 12)


@pytest.mark.parametrize("override, key, closest", [
    ("+algorithm.lerning_rate=1e-5", "algorithm.lerning_rate", "algorithm.lr"),
    ("+lerning_rate=1e-5", "lerning_rate", "algorithm.lr"),  # top level: searched everywhere
    ("+eval.num_prompt=3", "eval.num_prompt", "eval.num_prompts"),
    ("+analysis.devic=cpu", "analysis.devic", "analysis.device"),
    ("+model.extra.deeper=1", "model.extra", None),  # a whole unknown subtree: named at its top
])
def test_unknown_keys_added_with_plus_name_the_closest_valid_key(override, key, closest):
    cfg = compose_cfg([override], tiny=False)
    with pytest.raises(ConfigError) as err:
        load(cfg)
    assert err.value.key == key
    if closest:
        assert str(err.value).endswith(f"the closest valid key is {closest}")
    else:
        assert "the closest valid key is model." in str(err.value)


def test_the_other_algorithms_key_says_whose_it_is():
    cfg = compose_cfg(["+algorithm.kl_target=3"], tiny=False)
    with pytest.raises(ConfigError, match=r"^algorithm.kl_target: .*belongs to algorithm=ppo$"):
        load(cfg)


@pytest.mark.parametrize("override, key", [
    ("algorithm.lr=nan", "algorithm.lr"), ("algorithm.lr=inf", "algorithm.lr"),
    ("algorithm.beta=nan", "algorithm.beta"), ("eval.temperature=-inf", "eval.temperature"),
    ("classifier.lr=nan", "classifier.lr"), ("model.pretrain_lr=inf", "model.pretrain_lr"),
])
def test_non_finite_floats_fail(override, key):
    with pytest.raises(ConfigError) as err:
        load(compose_cfg([override], tiny=False))
    assert err.value.key == key and "finite" in str(err.value)


@pytest.mark.parametrize("override, key, ok", [
    ("seed=-5", "seed", False), ("seed=4294967296", "seed", False), ("seed=4294967295", "seed", True),
    ("data.seed=-1", "data.seed", False), ("eval.seed=0", "eval.seed", True),
])
def test_seeds_are_in_uint32(override, key, ok):
    cfg = compose_cfg([override], tiny=False)
    if ok:
        load(cfg)
    else:
        with pytest.raises(ConfigError, match=r"\[0, 2\^32-1\]") as err:
            load(cfg)
        assert err.value.key == key


@pytest.mark.parametrize("device, ok", [("auto", True), ("cpu", True), ("tpu", False), ("cuda:x", False),
                                        ("cuda:99", False), ("CPU", False)])
def test_device_names(device, ok):
    cfg = compose_cfg([f"device={device}"], tiny=False)
    if ok:
        load_here(cfg)
    else:
        with pytest.raises(ConfigError) as err:
            load_here(cfg)
        assert err.value.key == "device"
    if device != "cuda:99":  # a name that is no device fails in config.load itself (the sweeper's too)
        with pytest.raises(ConfigError) if not ok else contextlib.nullcontext():
            load(cfg)


def test_cuda_where_there_is_none_fails_at_the_config_check(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for key, override in [("device", "device=cuda"), ("analysis.device", "analysis.device=cuda:0")]:
        with pytest.raises(ConfigError, match=f"^{key}: .*no CUDA device"):
            load_here(compose_cfg([override], tiny=False))


def test_local_folders_are_checked_for_what_they_hold(tmp_path):
    from datasets import Dataset, DatasetDict

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="^classifier.source: .*empty folder"):
        load_here(compose_cfg([f"classifier.source={empty}"], tiny=False))
    half = tmp_path / "half"  # config and tokenizer, no weights
    half.mkdir()
    (half / "config.json").write_text("{}")
    (half / "tokenizer.json").write_text("{}")
    with pytest.raises(ConfigError) as err:
        load_here(compose_cfg([f"model.source={half}"], tiny=False))
    assert err.value.key == "model.source" and "model weights" in str(err.value) and "tokenizer" not in str(err.value)
    data = tmp_path / "data"
    DatasetDict({s: Dataset.from_dict({"text": ["a"], "sentiment": [1]}) for s in ("train", "test")}).save_to_disk(str(data))
    with pytest.raises(ConfigError, match=r"^data.source: split 'train' of .* has no 'label' column \(columns: text, sentiment\)"):
        load_here(compose_cfg([f"data.source={data}"], tiny=False))
    good = tmp_path / "good"
    review = "a review long enough for a prefix of 25 tokens, whatever the tokenizer makes of it " * 2
    DatasetDict({s: Dataset.from_dict({"text": [review, review], "label": [0, 1]}) for s in ("train", "test")}
                ).save_to_disk(str(good))
    load_here(compose_cfg([f"data.source={good}", "eval.num_prompts=2"], tiny=False))


def test_cache_dir_under_a_file_fails(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError, match="^cache_dir: .* is a file"):
        load_here(compose_cfg([f"cache_dir={tmp_path}/f/cache"], tiny=False))
    assert (tmp_path / "f").read_text() == ""


@pytest.mark.parametrize("overrides", [["sweep=smoke"], ["sweep=confound"], ["sweep=paper"], ["sweep=answer"],
                                       ["sweep=algorithms"], ["compute=matched"],
                                       ["experiment=paper_run2", "algorithm=ppo", "model=pythia70m"]])
def test_shipped_configs_hold_only_schema_keys(overrides):
    from dpo_ppo.config.keys import check_keys

    check_keys(compose_cfg(overrides, tiny=False))


def test_cli_composition_errors_are_one_line(tmp_path):
    for args, line in [(["algorithm.lerning_rate=1"], "Config error: algorithm.lerning_rate: not a key of the config; "
                                                       "the closest valid key is algorithm.lr"),
                       (["algorithm=foo"], "Config error: algorithm=foo: no such option; choose one of dpo, grpo, ppo, rloo")]:
        proc = _cli(*args, f"hydra.run.dir={tmp_path}", f"cache_dir={tmp_path}/cache")
        assert proc.returncode == 2
        assert [ln for ln in proc.stderr.splitlines() if ln.strip()] == [line]
