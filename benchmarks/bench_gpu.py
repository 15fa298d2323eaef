"""GPU figures at Pythia-70m shape (random weights: no downloads): sampling, precision, job targets.

    python benchmarks/bench_gpu.py sampling      # tokens/s: forward limit, before, after, static cache
    python benchmarks/bench_gpu.py agreement     # eval metrics in float32 and bf16, same policy
    python benchmarks/bench_gpu.py targets       # paper_run2 DPO and PPO jobs, seconds per stage
    python benchmarks/bench_gpu.py targets1      # paper_run1's DPO and PPO jobs (fitted from parts)

Shapes: the policy is a GPT-NeoX of Pythia-70m's shape (hidden 512, 6 layers, 8 heads, vocabulary
50304), the classifier a GPT-2 small sequence classifier (768 x 12 x 12), both random and saved with
``save_pretrained`` so that the jobs load them through the real loading code
(``model.source=FOLDER``, ``classifier.source=FOLDER classifier.finetune=false``).  A random
policy rarely samples EOS, so every completion runs to its length limit: the slowest case.

"before" is what the code did before issue 10: float32 (no TF32), batches of 250 (eval.batch_size),
transformers' dynamic KV cache.  "after" is the default now: ``hardware=auto`` batch sizes and
``precision=auto`` (bf16 autocast).  Prints figures, asserts nothing; docs/performance.md keeps them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import SHAPES, build  # noqa: E402

from dpo_ppo import hardware  # noqa: E402
from dpo_ppo.train.sampling import generate, sample_keys  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT_FILE: Path | None = None  # <out>/<section>.json, rewritten at every emit: a killed run keeps its figures


def emit(out: dict) -> None:
    print(json.dumps(out), flush=True)
    if OUT_FILE is not None:
        OUT_FILE.write_text(json.dumps(out, indent=1))


SHAPE = "pythia70m"  # --shape embedded: a CPU smoke run of the script itself
VOCAB = SHAPES[SHAPE][3]


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn):
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - t0


def set_precision(precision: str, device) -> None:
    hardware.set_matmul_precision("fp32" if precision == "fp32" else "auto", device)


def autocast(precision: str, device):
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def prompts_of(n: int, length: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB - 2, (n, length), generator=g).tolist()


def sample_rate(model, tok, prompts, new_tokens, batch, precision, device, static=False) -> dict:
    set_precision(precision, device)
    keys = sample_keys(0, range(len(prompts)))
    with autocast(precision, device):
        out, seconds = timed(lambda: generate(model, tok, prompts, new_tokens, batch_size=batch, desc=None,
                                              keys=keys, static_cache=static))
    tokens = sum(map(len, out))
    return {"tokens": tokens, "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds)}


def forward_rate(model, batch, length, precision, device, repeats=5) -> dict:
    """Teacher-forced forward passes over whole sequences: what sampling's tokens would cost if
    every token were computed in parallel (the forward-pass limit)."""
    set_precision(precision, device)
    ids = torch.randint(0, VOCAB - 2, (batch, length), device=device)
    with torch.no_grad(), autocast(precision, device):
        model(input_ids=ids)
        _, seconds = timed(lambda: [model(input_ids=ids) for _ in range(repeats)])
    return {"tokens_per_s": round(batch * length * repeats / seconds), "batch": batch, "length": length}


def section_sampling(device, out: dict) -> None:
    model, tok = build(SHAPE, device)
    rt = hardware.resolve(argparse.Namespace(hardware=None, precision="auto"), device)
    out["device_name"] = rt.device_name
    out["auto_gen_batch"] = rt.gen_batch_size
    # evaluation / run2 prefs shape: 25-token prefixes, 100 new tokens
    out["forward_limit_bf16"] = forward_rate(model, 256, 125, "bf16", device)
    out["forward_limit_fp32"] = forward_rate(model, 256, 125, "fp32", device)
    sample_rate(model, tok, prompts_of(64, 25), 8, 64, "fp32", device)  # warm-up
    out["before_fp32_b250"] = sample_rate(model, tok, prompts_of(500, 25), 100, 250, "fp32", device)
    n = 2 * rt.gen_batch_size
    out["after_bf16_auto"] = sample_rate(model, tok, prompts_of(n, 25, 1), 100, rt.gen_batch_size, "bf16", device)
    out["after_fp32_auto"] = sample_rate(model, tok, prompts_of(n, 25, 1), 100, rt.gen_batch_size, "fp32", device)
    out["ratio_after_vs_before"] = round(out["after_bf16_auto"]["tokens_per_s"] / out["before_fp32_b250"]["tokens_per_s"], 2)
    emit(out)
    # the static cache at the same batch (what prefs of >= hardware.static_cache_min_tokens use):
    # the first call compiles, the second (new prompts, same shape) runs what was compiled
    first = sample_rate(model, tok, prompts_of(n, 25, 6), 100, rt.gen_batch_size, "bf16", device, static=True)
    out["static_auto_first_call_s"] = first["seconds"]
    out["static_auto"] = static = sample_rate(model, tok, prompts_of(n, 25, 7), 100, rt.gen_batch_size, "bf16",
                                              device, static=True)
    out["ratio_static_vs_before"] = round(static["tokens_per_s"] / out["before_fp32_b250"]["tokens_per_s"], 2)
    compile_s = first["seconds"] - static["seconds"]
    gain = 1 / out["after_bf16_auto"]["tokens_per_s"] - 1 / static["tokens_per_s"]
    # the call size from which the static cache pays for its compile (hardware.static_cache_min_tokens)
    out["static_break_even_tokens"] = round(compile_s / gain) if gain > 0 else None
    emit(out)
    # run1 shape: 100-token prefixes, 500 new tokens (a shorter run of it: 200 new tokens)
    half = rt.gen_batch_size // 2
    out["run1_after_bf16"] = sample_rate(model, tok, prompts_of(half, 100, 2), 200, half, "bf16", device)
    emit(out)
    sample_rate(model, tok, prompts_of(half, 100, 8), 200, half, "bf16", device, static=True)  # compile
    out["run1_static"] = sample_rate(model, tok, prompts_of(half, 100, 2), 200, half, "bf16", device, static=True)
    emit(out)


def section_static(device, out: dict) -> None:
    """PPO's rollout shape (run2: 128 samples, 25 + 100 tokens) with transformers' static cache,
    which generate compiles on a GPU: the one-off compile, then per rollout, against dynamic."""
    model, tok = build(SHAPE, device)
    first = sample_rate(model, tok, prompts_of(128, 25, 3), 100, 128, "bf16", device, static=True)
    out["static_first_call_s"] = first["seconds"]
    out["static_rollout128"] = sample_rate(model, tok, prompts_of(128, 25, 4), 100, 128, "bf16", device, static=True)
    out["dynamic_rollout128"] = sample_rate(model, tok, prompts_of(128, 25, 4), 100, 128, "bf16", device)
    emit(out)


def section_agreement(device, out: dict) -> None:
    """The same perturbed policy evaluated in float32 and in bf16: the metrics' differences
    against their standard errors (prompt-paired: the sampling noise is shared)."""
    import copy

    from omegaconf import OmegaConf

    from dpo_ppo.evaluate import evaluate_model

    ref, tok = build(SHAPE, device)
    policy = copy.deepcopy(ref)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.02 * torch.randn_like(p))

    class WordScorer:  # p(positive) = share of words t0..t999 in the text: varies with the sample
        def logits(self, texts):
            share = torch.tensor([sum(int(w[1:]) < 1000 for w in t.split() if w[1:].isdigit()) / max(1, len(t.split()))
                                  for t in texts])
            return 40 * share - 1

    cfg = OmegaConf.create({"seed": 0, "completion_len": 48, "temperature": 1.0, "batch_size": None})
    prompts = prompts_of(1000, 25, 5)
    rows = {}
    for precision in ("fp32", "bf16"):
        set_precision(precision, device)
        rt = hardware.Runtime(str(device), "", precision, 512, 32, 32, 32)
        metrics, rows[precision] = evaluate_model(policy, tok, WordScorer(), prompts, cfg, ref_model=ref, hw=rt)
        # this benchmark's output keeps its own names (reward_mean: p_positive_mean, as gpu_table reads them)
        names = {"reward_mean": "p_positive_mean", "reward_std": "p_positive_std"}
        out[precision] = {k: round(metrics[names.get(k, k)], 4) for k in ("kl_to_ref", "kl_to_ref_std", "reward_mean", "reward_std")}
    n = len(prompts)
    for key, col in (("kl_to_ref", "kl"), ("reward_mean", "p_positive")):
        d = torch.tensor([a[col] - b[col] for a, b in zip(rows["bf16"], rows["fp32"])])
        out[f"{key}_bf16_minus_fp32"] = round(float(d.mean()), 4)
        out[f"{key}_paired_se"] = round(float(d.std() / n ** 0.5), 4)
        out[f"{key}_se"] = round(out["fp32"][f"{key.split('_mean')[0]}_std" if key == "reward_mean" else "kl_to_ref_std"] / n ** 0.5, 4)
    emit(out)


def save_shapes(folder: Path) -> tuple[Path, Path]:
    """A random Pythia-70m-shaped policy and a random GPT-2-small classifier, save_pretrained (kept
    when ``folder`` has them: a second section in the same ``--work`` folder reuses its cache)."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    if (folder / "policy" / "config.json").is_file() and (folder / "classifier" / "config.json").is_file():
        return folder / "policy", folder / "classifier"
    policy, tok = build(SHAPE, "cpu")
    policy.save_pretrained(folder / "policy")
    tok.save_pretrained(folder / "policy")
    width, layers = (768, 12) if SHAPE == "pythia70m" else (64, 2)
    cls = GPT2ForSequenceClassification(GPT2Config(vocab_size=VOCAB, n_positions=1024, n_embd=width, n_layer=layers,
                                                   n_head=width // 64, num_labels=2, pad_token_id=tok.pad_token_id,
                                                   eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id))
    cls.save_pretrained(folder / "classifier")
    tok.save_pretrained(folder / "classifier")
    return folder / "policy", folder / "classifier"


def run_job(name: str, overrides: list[str], work: Path, timeout: int) -> dict:
    job = work / "jobs" / name
    cmd = [sys.executable, "-m", "dpo_ppo.main", *overrides, f"hydra.run.dir={job}"]
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        proc = subprocess.CompletedProcess(cmd, returncode=124, stderr=f"timed out after {timeout} s")
    wall = time.time() - t0
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
    return {**read_job(name, work), "rc": proc.returncode, "process_s": round(wall, 1)}


def read_job(name: str, work: Path) -> dict:
    """What the benchmark keeps of job ``name``'s results.json (empty figures if it has none)."""
    res_file = work / "jobs" / name / "results.json"
    res = json.loads(res_file.read_text()) if res_file.exists() else {}
    return {"name": name, "rc": 0 if res.get("status") == "finished" else 1, "job_s": res.get("wall_time_s"),
            "stages": res.get("stage_seconds"), "peak_gpu_mb": res.get("peak_gpu_mem_mb"),
            "hardware": res.get("hardware"), "compute": res.get("compute"),
            "kl": (res.get("metrics") or {}).get("eval/policy/kl_to_ref"),
            "train": {k: v for k, v in (res.get("train_summary") or {}).items() if k in ("updates", "steps", "wall_s")}}


# A job's parts that grow with its examples (pairs sampled and trained on, PPO's updates) are
# measured at two sizes and fitted, t = fixed + rate x examples: a compile (the static cache's, ~12 s)
# or a model load happens once however long the job, so scaling one part up would multiply it.
# name: (experiment, algorithm, full examples, (small, large) examples actually run)
EVAL_TOKENS = 2000 * 100  # the experiments' evaluation: 2000 prefixes, completions of up to 100 tokens
# (at the sizes below, each DPO part samples more than this: 64 prefixes x 8 x 500 tokens = 256000)
PARTS = {
    "run2_ppo": ("paper_run2", "ppo", 10000, (96, 288)),
    "run1_dpo": ("paper_run1", "dpo", 25000, (64, 192)),
    "run1_ppo": ("paper_run1", "ppo", 25000, (64, 192)),
}


def fit_part(small: dict, large: dict, sizes: tuple[int, int], full: int, analyze_s) -> dict:
    """The full job's seconds from two parts of ``sizes`` examples (analysis off): the larger part's
    job, plus the per-example seconds of prefs + train (the fit's slope) for the examples it did not
    run, plus ``analyze_s``, the full analysis of a job of this shape (measured on run2's DPO job)."""
    def growing(part):
        stages = part.get("stages") or {}
        return stages.get("prefs", 0.0) + stages.get("train", 0.0)

    if small.get("rc") != 0 or large.get("rc") != 0 or not large.get("job_s"):
        return {}
    rate = (growing(large) - growing(small)) / (sizes[1] - sizes[0])
    out = {"s_per_example": round(rate, 5), "fixed_s": round(growing(small) - rate * sizes[0], 1)}
    if analyze_s is not None:
        out["extrapolated_s"] = round(large["job_s"] + rate * (full - sizes[1]) + analyze_s, 1)
    updates = (large.get("train") or {}).get("updates")
    if updates:
        out["s_per_update"] = round((large["stages"]["train"] - small["stages"]["train"])
                                    / max(1, updates - ((small.get("train") or {}).get("updates") or 0)), 3)
    return out


def section_targets(device, out: dict, work: Path, parts: list[str], extra: list[str],
                    sizes: tuple[int, int] | None = None) -> None:
    policy, classifier = save_shapes(work)
    common = ["model=pythia70m", f"model.source={policy}", "classifier=gpt2_imdb", f"classifier.source={classifier}",
              "classifier.finetune=false", "logger=none", f"cache_dir={work / 'cache'}", *extra]
    out["prepare"] = run_job("prepare", [*common, "experiment=paper_run2", "algorithm=ppo", "prepare=true"], work, 300)
    emit(out)
    if (work / "jobs" / "run2_dpo" / "results.json").is_file():
        out["run2_dpo"] = read_job("run2_dpo", work)  # measured by an earlier section in this --work
    elif "run2_dpo" in parts:
        out["run2_dpo"] = run_job("run2_dpo", [*common, "experiment=paper_run2", "algorithm=dpo", "analysis=full"],
                                  work, 400)
        emit(out)
    analyze_s = ((out.get("run2_dpo") or {}).get("stages") or {}).get("analyze")
    for name in [p for p in PARTS if p in parts]:
        experiment, algorithm, full, default_sizes = PARTS[name]
        part_sizes = sizes or default_sizes
        # the static cache where the full job uses it: for its DPO pairs (run1's 100M tokens are above
        # hardware.static_cache_min_tokens, a part's 0.26M below it), not for its evaluation (0.2M)
        static = [f"hardware.static_cache_min_tokens={EVAL_TOKENS + 1}"] if algorithm == "dpo" else []
        # measured afresh when run again in the same --work: not the old job's results, not cached pairs
        shutil.rmtree(work / "cache" / "prefs", ignore_errors=True)
        for n in part_sizes:
            shutil.rmtree(work / "jobs" / f"{name}_{n}", ignore_errors=True)
        runs = [run_job(f"{name}_{n}", [*common, f"experiment={experiment}", f"algorithm={algorithm}",
                                         "analysis=none", f"algorithm.examples={n}", *static], work, 300)
                for n in part_sizes]
        out[name] = {"parts": dict(zip(map(str, part_sizes), runs)), "examples": full,
                     **fit_part(runs[0], runs[1], part_sizes, full, analyze_s)}
        emit(out)
    if "run2_ppo_eager" in parts:  # rollouts without the static cache, for comparison
        out["run2_ppo_eager"] = run_job("run2_ppo_eager", [*common, "experiment=paper_run2", "algorithm=ppo",
                                                           "analysis=none", "algorithm.examples=288",
                                                           "hardware.static_cache=false"], work, 300)
        emit(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("section", choices=["sampling", "static", "agreement", "targets", "targets1"],
                        help="targets1: targets with --jobs run1_dpo,run1_ppo (its own targets1.json)")
    parser.add_argument("--out", default=os.environ.get("OUT") or ".", help="folder for <section>.json")
    parser.add_argument("--work", help="folder for the saved shapes, the jobs and their cache (default: a new "
                                       "temporary one); the same for targets and targets1 shares the prepare step")
    parser.add_argument("--jobs", default=None,
                        help="which jobs, of run2_dpo (whole), run2_ppo, run1_dpo, run1_ppo (two parts each, "
                             "fitted), run2_ppo_eager; default: run2_dpo,run2_ppo for targets, "
                             "run2_dpo,run1_dpo,run1_ppo for targets1 (run2_dpo is read, not run, when --work "
                             "has it: the fits add its analysis seconds)")
    parser.add_argument("--extra", action="append", default=[], help="extra job overrides (targets)")
    parser.add_argument("--sizes", help="SMALL,LARGE examples of every fitted part, instead of PARTS' (a CPU smoke run)")
    parser.add_argument("--shape", default="pythia70m", choices=sorted(SHAPES))
    args = parser.parse_args()
    global SHAPE, VOCAB
    SHAPE, VOCAB = args.shape, SHAPES[args.shape][3]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out: dict = {"section": args.section, "device": str(device), "torch": torch.__version__}
    if device.type == "cuda":
        out["card"] = torch.cuda.get_device_name(0)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    global OUT_FILE
    Path(args.out).mkdir(parents=True, exist_ok=True)
    OUT_FILE = Path(args.out) / f"{args.section}.json"
    try:
        if args.section == "sampling":
            section_sampling(device, out)
        elif args.section == "static":
            section_static(device, out)
        elif args.section == "agreement":
            section_agreement(device, out)
        else:
            default = "run2_dpo,run2_ppo" if args.section == "targets" else "run2_dpo,run1_dpo,run1_ppo"
            sizes = tuple(int(n) for n in args.sizes.split(",")) if args.sizes else None
            section_targets(device, out, work, (args.jobs or default).split(","), args.extra, sizes)
    finally:
        emit(out)


if __name__ == "__main__":
    main()
