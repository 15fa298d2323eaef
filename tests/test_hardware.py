"""Issue 10: precision and batch sizes from the device, without changing what a job computes."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import types
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_cfg
from dpo_ppo.runtime import hardware
from dpo_ppo.config import ConfigError, load
from dpo_ppo.train.dpo import micro_batches
from dpo_ppo.results import config_key as config_hash
from dpo_ppo.train.sampling import generate, sample_keys


def _word_model():
    from test_ppo import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    return tiny_model(tok), tok


# ----------------------------------------------------------------------------- resolution


def test_cpu_keeps_the_cpu_sizes_in_float32_and_fixed_values_win():
    rt = hardware.resolve(compose_cfg([]), torch.device("cpu"))
    assert (rt.precision, rt.gen_batch_size, rt.forward_batch_size, rt.train_micro_batch,
            rt.analysis_batch_size) == ("fp32", 250, 64, 16, 16)
    rt = hardware.resolve(compose_cfg(["hardware.gen_batch_size=7", "precision=bf16"]), torch.device("cpu"))
    assert (rt.gen_batch_size, rt.precision, rt.bf16) == (7, "bf16", True)
    assert isinstance(rt.autocast(), torch.autocast)
    assert not isinstance(hardware.resolve(compose_cfg([]), torch.device("cpu")).autocast(), torch.autocast)
    # hardware=cpu fixes the CPU sizes on any device: the preset must say what CPU_SIZES says
    preset = compose_cfg(["hardware=cpu"]).hardware
    assert {k: preset[k] for k in hardware.CPU_SIZES} == hardware.CPU_SIZES


def test_gpu_sizes_scale_with_the_memory_a_job_may_use(monkeypatch):
    # 80 GiB alone: every size at its cap; 80 GiB shared by 4: 20 GiB each, the powers of two below
    # 32, 2, 2, 4 per GiB (640 -> 512, 40 -> 32, 40 -> 32, 80 -> 64), which is the gpu80 preset
    assert hardware.gpu_sizes(80) == {"gen_batch_size": 1024, "forward_batch_size": 64,
                                      "train_micro_batch": 64, "analysis_batch_size": 128}
    assert hardware.gpu_sizes(20) == {"gen_batch_size": 512, "forward_batch_size": 32,
                                      "train_micro_batch": 32, "analysis_batch_size": 64}
    preset = OmegaConf.load(Path(__file__).parents[1] / "conf" / "hardware" / "gpu80.yaml")
    assert {k: preset[k] for k in hardware.gpu_sizes(20)} == hardware.gpu_sizes(80 / preset.jobs_per_gpu)
    assert hardware.gpu_sizes(1)["gen_batch_size"] == 64  # small cards: the floor

    props = types.SimpleNamespace(name="Fake H100", total_memory=80 * 2**30)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    rt = hardware.resolve(compose_cfg(["hardware.jobs_per_gpu=4"]), torch.device("cuda", 0))
    assert (rt.device_name, rt.precision, rt.memory_gib, rt.gen_batch_size) == ("Fake H100", "bf16", 20.0, 512)
    assert hardware.resolve(compose_cfg(["precision=fp32"]), torch.device("cuda", 0)).precision == "fp32"


def test_bad_precision_and_sizes_name_the_key():
    with pytest.raises(ConfigError, match=r"precision: must be one of auto, fp32, bf16; got 'fp16'"):
        load(compose_cfg(["precision=fp16"]))
    with pytest.raises(ConfigError, match=r"hardware\.jobs_per_gpu: must be > 0, got 0"):
        load(compose_cfg(["hardware.jobs_per_gpu=0"]))
    with pytest.raises(ConfigError, match=r"hardware\.static_cache_min_tokens: must be >= 0, got -1"):
        load(compose_cfg(["hardware.static_cache_min_tokens=-1"]))
    load(compose_cfg(["hardware.static_cache_min_tokens=0"]))


def test_batch_sizes_are_not_part_of_a_jobs_identity():
    def key(overrides):
        return config_hash(OmegaConf.to_container(compose_cfg(overrides), resolve=True))

    base = key([])
    assert key(["hardware=gpu80", "eval.batch_size=17", "analysis.batch_size=3", "hardware.static_cache=true",
                "hardware.static_cache_min_tokens=0"]) == base
    assert key(["precision=bf16"]) != base  # bf16 numerics are another computation


def test_artifact_keys_carry_the_precision_only_when_it_is_not_float32():
    from dpo_ppo.data.cache import artifact_specs

    cfg = compose_cfg([])
    fp32, bf16 = artifact_specs(cfg, "fp32"), artifact_specs(cfg, "bf16")
    assert "precision" not in json.dumps(fp32)  # the keys of caches built before precision existed
    for name in ("base", "classifier", "prefs", "ref_eval"):
        assert bf16[name] != fp32[name]
    assert bf16["corpus"] == fp32["corpus"]
    assert "batch_size" not in fp32["ref_eval"]["eval"]


# ----------------------------------------------------------------------------- same computation


@pytest.mark.parametrize("batch,micro,expected", [(16, None, (16, 1)), (16, 64, (16, 1)), (16, 5, (4, 4)),
                                                  (12, 8, (6, 2)), (7, 3, (1, 7))])
def test_micro_batches_divide_the_optimizer_batch(batch, micro, expected):
    assert micro_batches(batch, micro) == expected


def test_dpo_micro_batches_take_the_same_steps_as_whole_batches(tmp_path):
    """Gradient accumulation over micro-batches of 2 pairs gives the optimizer step of the whole
    batch of 4 (the loss is a mean over pairs): the weights after two steps match."""
    from fixtures import dpo_algo, token_pairs

    from dpo_ppo.train.dpo import train_dpo

    model, tok = _word_model()
    pairs, algo = token_pairs(8, texts=True), dpo_algo()
    trained = {}
    for micro in (None, 2):
        policy = copy.deepcopy(model)
        rt = None if micro is None else hardware.Runtime("cpu", "cpu", "fp32", 8, 8, micro, 8)
        summary = train_dpo(algo, policy, copy.deepcopy(model).eval(), tok, pairs, tmp_path / str(micro), hw=rt)
        assert summary["steps"] == 2
        trained[micro] = policy.state_dict()
    moved = max(float((trained[None][k] - model.state_dict()[k]).abs().max()) for k in trained[None])
    diff = max(float((trained[None][k] - trained[2][k]).abs().max()) for k in trained[None])
    assert moved > 1e-3 and diff < 1e-3 * moved  # float32 sums in another order, through Adam


def test_dpo_runs_each_forward_once_per_step(tmp_path, monkeypatch):
    """TRL's DPOConfig checkpoints gradients by default, which re-runs every block's forward inside
    the backward pass; train_dpo turns it off: one forward of the policy's blocks per optimizer step
    (chosen and rejected together), half of what checkpointing runs, and the same trained weights."""
    from fixtures import dpo_algo, token_pairs

    from dpo_ppo.train import dpo

    model, tok = _word_model()
    pairs, algo = token_pairs(8), dpo_algo()
    calls, weights = {}, {}
    for checkpointing in (False, True):
        monkeypatch.setattr(dpo, "_GRADIENT_CHECKPOINTING", checkpointing)
        policy = copy.deepcopy(model)
        seen = []
        # calls of a module's forward inside a block: a checkpointed block calls it again in the backward
        # pass (forward hooks would not show it: they do not run in the recomputation)
        mlp = policy.gpt_neox.layers[0].mlp
        mlp.forward = functools.partial(lambda forward, *args, **kwargs: (seen.append(1), forward(*args, **kwargs))[1],
                                        mlp.forward)
        summary = dpo.train_dpo(algo, policy, copy.deepcopy(model).eval(), tok, pairs, tmp_path / str(checkpointing))
        calls[checkpointing], weights[checkpointing] = len(seen), policy.state_dict()
    assert summary["steps"] == 2
    assert calls == {False: 2, True: 4}
    assert all(torch.equal(weights[False][k], weights[True][k]) for k in weights[False])


def test_static_cache_gives_the_same_completions():
    model, tok = _word_model()
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(4, 20, (int(n),), generator=g).tolist() for n in torch.randint(2, 7, (11,), generator=g)]
    keys = sample_keys(3, range(len(prompts)))
    dynamic = generate(model, tok, prompts, 9, batch_size=4, desc=None, keys=keys)
    static = generate(model, tok, prompts, 9, batch_size=4, desc=None, keys=keys, static_cache=True)
    assert static == dynamic and len(set(map(tuple, dynamic))) > 5


def test_static_cache_is_on_for_a_gpu_unless_set(monkeypatch):
    assert hardware.resolve(compose_cfg([]), torch.device("cpu")).static_cache is False
    assert hardware.resolve(compose_cfg(["hardware.static_cache=true"]), torch.device("cpu")).static_cache is True
    props = types.SimpleNamespace(name="Fake H100", total_memory=80 * 2**30)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert hardware.resolve(compose_cfg([]), torch.device("cuda", 0)).static_cache is True
    assert hardware.resolve(compose_cfg(["hardware.static_cache=false"]), torch.device("cuda", 0)).static_cache is False


def test_sampling_under_bf16_autocast_is_the_float32_models_with_or_without_static_cache():
    """Decoding turns autocast off and runs the model in its own dtype: under bf16 autocast the
    completions are the float32 model's, with the static cache or without (so that
    hardware.static_cache, left out of a job's identity, changes speed only), and they follow
    the weights after an update.  A bf16 copy samples something else: the check can fail."""
    model, tok = _word_model()
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(4, 20, (int(n),), generator=g).tolist() for n in torch.randint(2, 6, (12,), generator=g)]
    keys = sample_keys(1, range(len(prompts)))

    def sample(m, static, autocast):
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        with ctx:
            return generate(m, tok, prompts, 10, batch_size=5, desc=None, keys=keys, static_cache=static)

    for _ in range(2):  # before and after a weight update
        plain = sample(model, False, False)
        assert sample(model, True, True) == plain and sample(model, False, True) == plain
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.3 * torch.randn_like(p))
        assert next(model.parameters()).dtype == torch.float32  # the policy itself is never cast
    assert sample(copy.deepcopy(model).to(torch.bfloat16), False, False) != sample(model, False, False)


def test_a_failing_static_cache_on_a_gpu_falls_back_to_eager_decoding(monkeypatch, caplog):
    """A compiler error in the static-cache path on a GPU costs a warning, not the job: the call
    and later ones decode eagerly.  On a CPU (no compile) the error is raised."""
    from dpo_ppo.train import sampling

    model, tok = _word_model()
    calls = []

    def fake_generate(*args, static_cache, **kwargs):
        calls.append(static_cache)
        if static_cache:
            raise RuntimeError("inductor failed")
        return [[1]]

    monkeypatch.setattr(sampling, "_generate", fake_generate)
    monkeypatch.setattr(sampling, "_COMPILE_FAILED", set())
    with pytest.raises(RuntimeError, match="inductor"):  # a CPU: nothing compiles, a real error
        generate(model, tok, [[4, 5]], 3, desc=None, static_cache=True)
    monkeypatch.setattr(sampling, "model_device", lambda m: torch.device("cuda", 0))
    calls.clear()
    assert generate(model, tok, [[4, 5]], 3, desc=None, static_cache=True) == [[1]]
    assert generate(model, tok, [[4, 5]], 3, desc=None, static_cache=True) == [[1]]
    assert calls == [True, False, False]  # the second call no longer tries to compile
    assert "decoding eagerly" in caplog.text


def test_static_cache_for_prefs_and_evaluation_only_from_enough_tokens(monkeypatch):
    """Prefs and evaluation sample with the static cache only when the call is large enough to pay
    for its compile (hardware.static_cache_min_tokens, prompts x new tokens)."""
    from dpo_ppo import evaluate

    rt = hardware.Runtime("cpu", "cpu", "fp32", 8, 8, 8, 8, static_cache=True, static_cache_min_tokens=1000)
    assert not rt.static_for(10, 99) and rt.static_for(10, 100)
    assert not dataclasses.replace(rt, static_cache=False).static_for(10**6, 100)
    assert hardware.resolve(compose_cfg([]), torch.device("cpu")).static_cache_min_tokens == \
        hardware.STATIC_CACHE_MIN_TOKENS
    assert hardware.resolve(compose_cfg(["hardware.static_cache_min_tokens=7"]),
                            torch.device("cpu")).static_cache_min_tokens == 7
    seen = []
    monkeypatch.setattr(evaluate, "generate", lambda *a, static_cache, **k: seen.append(static_cache) or
                        [[5]] * len(a[2]))

    class Scorer:
        def logits(self, texts):
            return torch.zeros(len(texts))

    model, tok = _word_model()
    cfg = OmegaConf.create({"seed": 0, "completion_len": 10, "temperature": 1.0, "batch_size": None})
    for n in (99, 100):
        evaluate.evaluate_model(model, tok, Scorer(), [[4, 5]] * n, cfg, hw=rt)
    assert seen == [False, True]


def test_bf16_evaluation_agrees_with_float32_within_its_noise():
    """The same policy evaluated in float32 and under bf16 autocast (on the CPU here): mean KL and
    reward differ by less than their standard errors."""
    from dpo_ppo.evaluate import evaluate_model

    ref, tok = _word_model()
    policy = copy.deepcopy(ref)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.1 * torch.randn_like(p))

    class LengthScorer:  # p(positive) rises with the text's length: a smooth, cheap reward
        def logits(self, texts):
            return torch.tensor([0.1 * len(t.split()) - 1.0 for t in texts])

    cfg = OmegaConf.create({"seed": 0, "completion_len": 12, "temperature": 1.0, "batch_size": None})
    prompts = [[4 + i % 16, 5 + i % 7, 6] for i in range(200)]
    out = {}
    for precision in ("fp32", "bf16"):
        rt = hardware.Runtime("cpu", "cpu", precision, 64, 64, 16, 16)
        out[precision], _ = evaluate_model(policy, tok, LengthScorer(), prompts, cfg, ref_model=ref, hw=rt)
    n = len(prompts) ** 0.5
    assert out["fp32"]["kl_to_ref"] > 0.5
    assert abs(out["bf16"]["kl_to_ref"] - out["fp32"]["kl_to_ref"]) < out["fp32"]["kl_to_ref_std"] / n
    assert abs(out["bf16"]["p_positive_mean"] - out["fp32"]["p_positive_mean"]) < out["fp32"]["p_positive_std"] / n


def test_a_bf16_job_runs_end_to_end_on_the_cpu(shared_cache, tmp_path):
    """precision=bf16 reaches every stage (here on the CPU's autocast): the job finishes, records
    its precision, and its policy's numbers are finite."""
    from dpo_ppo.job import run_job

    cfg = compose_cfg([f"cache_dir={shared_cache}", "logger=none", "precision=bf16", "analysis=fast",
                       "algorithm=ppo", "algorithm.batch_size=null", "algorithm.rollout_prefixes=8"])
    out = run_job(cfg, tmp_path / "job")
    results = json.loads((tmp_path / "job" / "results.json").read_text())
    assert out.status == "finished" and results["hardware"]["precision"] == "bf16"
    assert results["hardware"]["train_micro_batch"] == 16
    for key in ("eval/policy/p_positive_mean", "eval/policy/kl_to_ref"):
        assert torch.isfinite(torch.tensor(results["metrics"][key]))


def test_a_job_samples_its_prefs_with_the_static_cache_from_enough_tokens(tmp_path, monkeypatch):
    """The job asks for the static cache for DPO's pairs when prefixes x completions x completion
    length reaches hardware.static_cache_min_tokens, not below."""
    from datasets import Dataset

    from dpo_ppo.data import prefs
    from dpo_ppo.job import Job

    seen = []

    def fake_build_prefs(algo, prompts, model, tokenizer, scorer, path, *, static_cache, **kwargs):
        seen.append(static_cache)
        Dataset.from_dict({"prompt_ids": [[1]], "chosen_ids": [[2]], "rejected_ids": [[3]]}).save_to_disk(str(path))

    monkeypatch.setattr(prefs, "build_prefs", fake_build_prefs)
    prompts = [[4, 5], [6, 7], [8, 9]]
    for extra in (0, 1):
        cfg = compose_cfg(["algorithm=dpo", f"cache_dir={tmp_path / str(extra)}", "hardware.static_cache=true"])
        tokens = len(prompts) * cfg.algorithm.num_completions * cfg.algorithm.completion_len
        cfg.hardware.static_cache_min_tokens = tokens + extra
        Job(cfg, tmp_path / f"job{extra}").prefs(prompts, None, None, None)
    assert seen == [True, False]


# ----------------------------------------------------------------------------- what compares two models


def _nearby(model, scale=5e-4):
    """A copy with every weight moved by ``scale`` of its tensor's spread: a policy early in a run at
    lr 1e-6, whose changes sit below bf16's resolution (a relative step of 2^-8)."""
    near = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in near.parameters():
            p.add_(scale * p.std().clamp_min(1e-3) * torch.randn(p.shape, generator=g))
    return near


def test_kl_to_the_reference_is_float32_under_bf16_autocast():
    """Evaluation's KL compares two nearby models: under bf16 autocast it is computed in float32
    (hardware.exact_float32), bit for bit the float32 numbers.  The same forwards in bf16 sit on a
    floor of rounding far above the true KL: what a GPU job's KL axis would have measured."""
    from dpo_ppo.train import sampling

    ref, tok = _word_model()
    policy = _nearby(ref)
    prompts = [[4 + i % 16, 5 + i % 7, 6] for i in range(48)]
    completions = sampling.generate(policy, tok, prompts, 12, keys=sampling.sample_keys(0, range(48)),
                                    batch_size=48, desc=None)
    kl, k1 = sampling.sequence_kl(policy, ref, prompts, completions, pad_id=tok.pad_token_id)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        kl_auto, k1_auto = sampling.sequence_kl(policy, ref, prompts, completions, pad_id=tok.pad_token_id)
        with torch.no_grad():  # the same forwards without exact_float32
            floor, _ = sampling._sequence_kl(policy, ref, prompts, completions, tok.pad_token_id, 64,
                                             torch.device("cpu"))
    assert torch.equal(kl, kl_auto) and torch.equal(k1, k1_auto)
    # the true KL, in float64 (float32's own rounding is ~1e-7 per sequence here, as large as the KL:
    # its clamped sums are no yardstick)
    truth = _sequence_kl_float64(policy, ref, prompts, completions)
    assert float(floor.mean()) > 10 * float(truth.mean())
    assert bool((kl >= 0).all()) and float((kl - truth).abs().max()) < 2e-6


def _sequence_kl_float64(policy, ref, prompts, completions) -> torch.Tensor:
    """sum over completion positions of KL(policy || ref), both models run in float64."""
    import torch.nn.functional as F

    p64, r64 = copy.deepcopy(policy).double(), copy.deepcopy(ref).double()
    out = []
    with torch.no_grad():
        for p, c in zip(prompts, completions):
            ids = torch.tensor([list(p) + list(c)])
            lp = F.log_softmax(p64(input_ids=ids).logits[0, :-1], -1)
            lq = F.log_softmax(r64(input_ids=ids).logits[0, :-1], -1)
            out.append((lp.exp() * (lp - lq)).sum(-1)[len(p) - 1:len(p) + len(c) - 1].sum())
    return torch.stack(out).float()


def test_ppo_kl_penalty_is_float32_under_bf16_autocast():
    """PPO's per-token KL (its penalty and the controller's reading) is float32 under bf16 autocast:
    the same rollout gives the same KL with and without autocast.  The ratio's old log-probs stay
    in the update's precision."""
    from test_ppo import make_prompts, ppo_cfg, rollout_with_advantages, share_of_target

    from dpo_ppo.train.ppo import PolicyWithValue

    ref, tok = _word_model()
    policy = _nearby(ref)
    cfg = ppo_cfg(completion_len=8)
    queries = make_prompts(16)
    out = {}
    for name, autocast in (("fp32", contextlib.nullcontext),
                           ("bf16", lambda: torch.autocast("cpu", dtype=torch.bfloat16))):
        torch.manual_seed(0)
        out[name], _ = rollout_with_advantages(PolicyWithValue(policy, ref), ref, tok, queries, share_of_target,
                                               cfg, kl_coef=0.2, normalizer=None, autocast=autocast)
    assert torch.equal(out["fp32"]["completion_ids"], out["bf16"]["completion_ids"])
    assert torch.equal(out["fp32"]["kl"], out["bf16"]["kl"])
    assert not torch.equal(out["fp32"]["old_logprobs"], out["bf16"]["old_logprobs"])  # the update's precision
