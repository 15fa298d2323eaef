"""The typed config: the entrypoint converts the composed DictConfig once (``load``), every field
documents itself, every dataclass checks its own fields, and what a job records is the same as
the DictConfig path made before the conversion existed."""

import copy
import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import DictConfig, ListConfig, OmegaConf

from conftest import compose_cfg
from dpo_ppo import config as C
from dpo_ppo.config import analysis as AC
from dpo_ppo.data.cache import spec_key
from dpo_ppo.config.fields import ConfigError
from dpo_ppo.results import config_key as config_hash
from dpo_ppo.data.cache import artifact_specs
from dpo_ppo.config.schedule import swept_params

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------- the DictConfig path, as it was


def _old_apply_compute(cfg: DictConfig) -> None:
    compute = cfg.get("compute")
    if compute is None or compute.mode != "matched":
        return
    algo, n = cfg.algorithm, compute.prefixes_per_step
    if algo.name == "dpo":
        algo.batch_size, algo.epochs = n, 1.0
    else:
        algo.ppo_epochs, algo.num_minibatches = 1, algo.rollout_prefixes // n


def _old_params(cfg: DictConfig) -> dict:
    from dpo_ppo.config.schedule import kl_controller_name

    algo = cfg.algorithm
    ppo = algo.name == "ppo"
    controller = kl_controller_name(algo) if ppo else None
    return {
        # arm, rounds and loss_type came with the arms (issue 31): what the DictConfig says of them
        "algorithm": algo.name, "arm": algo.name if algo.name != "dpo" or algo.loss_type == "sigmoid" else "?",
        "rounds": algo.get("rounds"), "loss_type": algo.get("loss_type"), "beta": algo.get("beta"),
        "kl_target": algo.get("kl_target") if controller != "fixed" else None,
        "kl_coef": algo.get("kl_coef"), "kl_controller": controller,
        "value_model": algo.get("value_model") if ppo else None,
        "compute": cfg.compute.mode if cfg.get("compute") is not None else "native",
        "optimizer_steps": C.planned_optimizer_steps(cfg),
        "seed": cfg.seed, "examples": algo.examples,
        "lr": algo.lr, "num_completions": algo.num_completions, "prefix_len": algo.prefix_len,
        "prefix_len_max": algo.prefix_len_max, "completion_len": algo.completion_len,
        "model": cfg.model.name, "data": cfg.data.name, "classifier": cfg.classifier.name,
    }


def _old_specs(cfg: DictConfig, precision: str) -> dict:
    def container(node):
        return OmegaConf.to_container(node, resolve=True)

    corpus = {"data": container(cfg.data)}
    numerics = {} if precision == "fp32" else {"precision": precision}
    base = {"model": container(cfg.model), "corpus": corpus if cfg.model.source == "embedded" else None,
            **(numerics if cfg.model.source == "embedded" else {})}
    # classifier.negative_label came later: at its default (null) it is left out (results.LATE_DEFAULTS)
    cls = {k: v for k, v in container(cfg.classifier).items() if not (k == "negative_label" and v is None)}
    classifier = {"classifier": cls, "corpus": corpus,
                  "tokenizer": base if cfg.classifier.source == "embedded" else None,
                  **(numerics if cfg.classifier.finetune else {})}
    algo = cfg.algorithm
    prefs = {"base": base, "classifier": classifier, "corpus": corpus, "seed": cfg.seed,
             **{k: algo[k] for k in ("examples", "num_completions", "prefix_len", "prefix_len_max",
                                     "completion_len", "temperature", "top_k")}, **numerics}
    eval_spec = {k: v for k, v in container(cfg.eval).items() if k != "batch_size"}
    ref_eval = {"base": base, "classifier": classifier, "corpus": corpus, "eval": eval_spec, **numerics}
    analysis = {k: v for k, v in container(cfg.analysis).items() if k not in ("name", "batch_size", "device")}
    ref_analysis = {"base": base, "classifier": classifier, "corpus": corpus, "analysis": analysis, "code": 1,
                    **numerics}
    return {"corpus": corpus, "base": base, "classifier": classifier, "prefs": prefs, "ref_eval": ref_eval,
            "ref_analysis": ref_analysis}


CONFIGS = [[], ["algorithm=ppo"], ["compute=matched", "compute.prefixes_per_step=8"],
           ["algorithm=ppo", "compute=matched", "compute.prefixes_per_step=8"], ["analysis=fast", "seed=3"],
           ["algorithm=ppo", "algorithm.kl_coef=0.05", "logger.tags=[a,b]"], ["sweep=smoke"],
           ["experiment=paper_run2", "algorithm=ppo", "model=pythia70m", "classifier=gpt2_imdb"]]


@pytest.mark.parametrize("overrides", CONFIGS, ids=lambda o: " ".join(o) or "default")
def test_the_typed_path_records_byte_identical_config_params_hash_and_cache_keys(overrides):
    composed = compose_cfg(overrides, tiny=False)
    old = copy.deepcopy(composed)
    _old_apply_compute(old)
    old_config = OmegaConf.to_container(old, resolve=True)

    typed = C.load(composed)  # what the entrypoint passes to run_job: checked, compute=matched applied
    new_config = C.as_dict(typed)

    # results.json "config" and "params" (written with json.dumps, key order kept)
    assert json.dumps(new_config, indent=1, default=str) == json.dumps(old_config, indent=1, default=str)
    assert json.dumps(swept_params(typed)) == json.dumps(_old_params(old))
    assert config_hash(new_config) == config_hash(old_config)
    for precision in ("fp32", "bf16"):
        old_specs, new_specs = _old_specs(old, precision), artifact_specs(typed, precision)
        assert json.dumps(new_specs) == json.dumps(old_specs)
        assert {k: spec_key(v) for k, v in new_specs.items()} == {k: spec_key(v) for k, v in old_specs.items()}


def test_default_config_hash_and_cache_keys_are_pinned():
    """The default config's identity, computed through the typed path: a change here moves every
    existing job folder's config_key and every cached artifact."""
    typed = C.load(compose_cfg(tiny=False))
    old = compose_cfg(tiny=False)
    assert config_hash(C.as_dict(typed)) == config_hash(OmegaConf.to_container(old, resolve=True))
    assert spec_key(artifact_specs(typed)["prefs"]) == spec_key(_old_specs(old, "fp32")["prefs"])
    # as the code before classifier.negative_label computed them (its default leaves them alone);
    # ref_analysis moved on purpose with analysis 6 and the twelve default sentiment prompts (the
    # reference's attention to the sentiment word is a different computation now); the base and
    # everything downstream of it moved on purpose with the induction phase (issue 32, head roles)
    assert {k: spec_key(v) for k, v in artifact_specs(typed).items() if k != "ref_eval"} == {
        "corpus": "95f9e7d4cf909d04", "base": "67ef29114042a940", "classifier": "dde6f1d6dc6f8a67",
        "prefs": "676c767d94b5cd63", "ref_analysis": "337bcdb2c7b37ba7"}


# ------------------------------------------------------------- the conversion


def _no_omegaconf(node, path="cfg"):
    assert not isinstance(node, (DictConfig, ListConfig)), path
    if dataclasses.is_dataclass(node):
        for f in dataclasses.fields(node):
            _no_omegaconf(getattr(node, f.name), f"{path}.{f.name}")
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            _no_omegaconf(v, f"{path}[{i}]")


@pytest.mark.parametrize("algorithm, schema", [("dpo", C.DPOAlgorithmConfig), ("ppo", C.PPOAlgorithmConfig)])
def test_load_gives_dataclasses_all_the_way_down(algorithm, schema):
    typed = C.load(compose_cfg([f"algorithm={algorithm}", "analysis=fast"], tiny=False))
    assert type(typed) is C.Config and type(typed.algorithm) is schema
    assert type(typed.analysis) is AC.AnalysisConfig and typed.analysis.name == "fast"
    assert type(typed.model) is C.ModelConfig and type(typed.hardware) is C.HardwareConfig
    _no_omegaconf(typed)
    assert typed.eval.completion_len == typed.algorithm.completion_len == 48  # ${algorithm.completion_len} resolved
    assert C.to_typed(typed) is typed  # a Config passes through


def test_to_typed_refuses_what_is_not_the_composed_config():
    with pytest.raises(TypeError, match="composed dpo-ppo config"):
        C.to_typed(OmegaConf.create({"seed": 0}))


def test_an_algorithm_node_without_its_schema_is_typed_by_its_name():
    cfg = OmegaConf.structured(C.Config)
    for name, node in [("model", C.ModelConfig), ("data", C.DataConfig), ("classifier", C.ClassifierConfig),
                       ("eval", C.EvalConfig), ("analysis", AC.AnalysisConfig), ("logger", C.LoggerConfig),
                       ("compute", C.ComputeConfig), ("hardware", C.HardwareConfig)]:
        cfg[name] = node()
    cfg.algorithm = {"name": "ppo", "kl_target": 3.0}  # Any: stays a plain node
    typed = C.to_typed(cfg)
    assert type(typed.algorithm) is C.PPOAlgorithmConfig and typed.algorithm.kl_target == 3.0
    assert typed.algorithm.lam == 0.95  # the schema's default


def test_an_algorithm_name_that_does_not_fit_its_keys_names_the_key():
    with pytest.raises(ConfigError, match=r"^algorithm.name: ppo does not fit .*algorithm=ppo"):
        C.load(compose_cfg(["algorithm.name=ppo"], tiny=False))


def test_the_entrypoint_passes_the_typed_config_to_run_job(tmp_path, monkeypatch):
    import dpo_ppo.job
    from dpo_ppo import main

    seen = {}

    def fake_run_job(cfg, job_dir, overrides=None, raise_errors=True):
        seen["cfg"], seen["overrides"] = cfg, overrides
        from dpo_ppo.results import JobOutcome

        return JobOutcome("finished", str(job_dir))

    monkeypatch.setattr(dpo_ppo.job, "run_job", fake_run_job)
    monkeypatch.setattr(sys, "argv", ["dpo-ppo", "algorithm=ppo", "algorithm.kl_target=3", "logger=none",
                                      f"hydra.run.dir={tmp_path}", f"cache_dir={tmp_path}/cache"])
    main.app()
    cfg = seen["cfg"]
    assert type(cfg) is C.Config and type(cfg.algorithm) is C.PPOAlgorithmConfig
    assert cfg.algorithm.kl_target == 3.0 and seen["overrides"][:2] == ["algorithm=ppo", "algorithm.kl_target=3"]
    _no_omegaconf(cfg)


# ------------------------------------------------------------- documented fields, checks beside them


def _schemas():
    from dpo_ppo.config import schema as S

    for module in (S, AC):
        for value in vars(module).values():
            if isinstance(value, type) and dataclasses.is_dataclass(value) and value.__module__ == module.__name__:
                yield value


def test_every_field_of_every_config_dataclass_has_help():
    schemas = list(_schemas())
    assert {C.Config, C.PPOAlgorithmConfig, AC.AnalysisConfig} <= set(schemas)
    for schema in schemas:
        for f in dataclasses.fields(schema):
            text = C.field_help(schema, f.name)
            assert len(text) >= 2 and text == f.metadata["help"], f"{schema.__name__}.{f.name} has no help"
    for name in ("gamma", "lam", "cliprange", "cliprange_value", "vf_coef"):
        assert "[0, 1]" in C.field_help(C.PPOAlgorithmConfig, name) or "> 0" in C.field_help(C.PPOAlgorithmConfig, name) \
            or ">= 0" in C.field_help(C.PPOAlgorithmConfig, name), name
    assert "nats" in C.field_help(C.PPOAlgorithmConfig, "kl_target")


def test_a_field_without_help_is_refused():
    from dpo_ppo.config.fields import option

    with pytest.raises(TypeError, match="help"):
        option(1)


@pytest.mark.parametrize("group, where, key", [
    (C.PPOAlgorithmConfig(gamma=1.5), "algorithm", "algorithm.gamma"),
    (C.PPOAlgorithmConfig(lam=float("nan")), "algorithm", "algorithm.lam"),
    (C.PPOAlgorithmConfig(rollout_prefixes=3, num_completions=2, num_minibatches=4), "algorithm",
     "algorithm.num_minibatches"),
    (C.DPOAlgorithmConfig(label_smoothing=0.5), "algorithm", "algorithm.label_smoothing"),
    (C.DPOAlgorithmConfig(label_smoothing=0.1), "algorithm", "algorithm.label_smoothing"),  # sigmoid ignores it
    (C.DPOAlgorithmConfig(lr=float("nan")), "algorithm", "algorithm.lr"),
    (C.ModelConfig(num_heads=3), "model", "model.num_heads"),
    (C.ClassifierConfig(finetune=False), "classifier", "classifier.finetune"),
    (C.EvalConfig(num_prompts=0), "eval", "eval.num_prompts"),
    (C.DataConfig(test_fraction=1.0), "data", "data.test_fraction"),
    (C.ComputeConfig(mode="equal"), "compute", "compute.mode"),
    (C.HardwareConfig(jobs_per_gpu=0), "hardware", "hardware.jobs_per_gpu"),
    (C.LoggerConfig(mode="loud"), "logger", "logger.mode"),
    (AC.AnalysisConfig(max_tokens=1), "analysis", "analysis.max_tokens"),
    (AC.AnalysisConfig(ablation_kinds=["median"]), "analysis", "analysis.ablation_kinds"),
])
def test_each_group_checks_its_own_fields(group, where, key):
    with pytest.raises(ConfigError) as err:
        group.check()
    assert err.value.key == key
    with pytest.raises(ConfigError) as err:  # the same group elsewhere names its own path
        group.check("other")
    assert err.value.key == "other." + key.split(".", 1)[1]


def test_the_defaults_pass_their_own_checks():
    for group in (C.ModelConfig(), C.DataConfig(), C.ClassifierConfig(), C.DPOAlgorithmConfig(),
                  C.PPOAlgorithmConfig(), C.EvalConfig(), C.ComputeConfig(), C.HardwareConfig(), C.LoggerConfig(),
                  AC.AnalysisConfig()):
        group.check()


def test_cross_group_checks_live_in_config_check():
    typed = C.to_typed(compose_cfg(tiny=False))
    typed.check()
    typed.algorithm.prefix_len_max = 250  # each group alone is fine
    typed.algorithm.check()
    typed.model.check()
    with pytest.raises(ConfigError, match=r"^algorithm.prefix_len_max: prefix \(250\) .* context of model=tiny"):
        typed.check()
    typed = C.to_typed(compose_cfg(["analysis.head_random_len=200"], tiny=False))
    typed.analysis.check()
    with pytest.raises(ConfigError, match=r"^analysis.head_random_len: needs 401 tokens"):
        typed.check()


def test_load_applies_the_schedule_and_never_edits_what_it_is_given():
    """config.load is the one way in: compute=matched's schedule is applied by it (nobody after it),
    a Config handed to it is left as it was, and a loaded config loads back equal."""
    composed = compose_cfg(["algorithm=ppo", "compute=matched", "compute.prefixes_per_step=8"], tiny=False)
    assert (composed.algorithm.ppo_epochs, composed.algorithm.num_minibatches) == (4, 4)
    loaded = C.load(composed)
    assert (loaded.algorithm.ppo_epochs, loaded.algorithm.num_minibatches) == (1, loaded.algorithm.rollout_prefixes // 8)
    assert composed.algorithm.ppo_epochs == 4  # the DictConfig is not edited
    raw = C.to_typed(composed)
    again = C.load(raw)
    assert raw.algorithm.ppo_epochs == 4 and again is not raw and again == loaded
    assert C.load(loaded) == loaded and C.load(loaded) is not loaded
    dpo = C.load(compose_cfg(["compute=matched", "compute.prefixes_per_step=8"], tiny=False))
    assert (dpo.algorithm.batch_size, dpo.algorithm.epochs) == (8, 1.0)


def test_nothing_but_load_applies_the_schedule():
    """apply_compute is called by config.load alone (read, not imported: a grep of the package)."""
    calls = [f"{path.relative_to(REPO)}:{n}" for path in sorted((REPO / "dpo_ppo").rglob("*.py"))
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if re.search(r"\bapply_compute\(", line) and not line.lstrip().startswith("def ")]
    calls += [f"{path.relative_to(REPO)}:{n}" for path in sorted((REPO / "hydra_plugins").rglob("*.py"))
              for n, line in enumerate(path.read_text().splitlines(), 1) if "apply_compute(" in line]
    assert calls == ["dpo_ppo/config/__init__.py:" + str(next(
        n for n, line in enumerate((REPO / "dpo_ppo/config/__init__.py").read_text().splitlines(), 1)
        if "apply_compute(typed)" in line))], calls


# ------------------------------------------------------------- no import loop


CONFIG_MODULES = ("fields", "analysis", "schema", "schedule", "keys")


@pytest.mark.parametrize("module", CONFIG_MODULES)
def test_each_config_module_imports_first_in_a_fresh_interpreter(module):
    """No import loop inside the config package: any module of it can be the first one imported."""
    code = f"import dpo_ppo.config.{module}"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_the_bottom_of_the_config_package_imports_nothing_above_it():
    """fields (ConfigError, option) and the analysis schema sit below the schema; sources (which
    raises ConfigError) imports only fields: not even lazily, inside a function."""
    above = re.compile(r"^\s*(from dpo_ppo\.config(\.(schema|keys|environment|schedule|errors))? import|"
                       r"import dpo_ppo\.config\b)", re.M)
    for path in ("dpo_ppo/config/analysis.py", "dpo_ppo/config/fields.py", "dpo_ppo/data/sources.py"):
        assert not above.search((REPO / path).read_text()), path
    assert above.search((REPO / "dpo_ppo/main.py").read_text())  # the pattern does find one


def test_label_smoothing_is_refused_where_trls_loss_ignores_it():
    C.DPOAlgorithmConfig(loss_type="robust", label_smoothing=0.1).check()  # conservative DPO reads it
    with pytest.raises(ConfigError, match=r"^algorithm.label_smoothing: TRL's 'sigmoid' loss ignores it.*robust"):
        C.DPOAlgorithmConfig(label_smoothing=0.1).check()
