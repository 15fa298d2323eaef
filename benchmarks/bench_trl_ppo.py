"""Time TRL's PPOTrainer (``trl.experimental.ppo``, TRL 1.12) per PPO update: a peer for bench_ppo.py.

    python benchmarks/bench_trl_ppo.py --pythia      # Pythia-70m shape, cuda if available
    python benchmarks/bench_trl_ppo.py --tiny        # embedded shape, 2 updates, CPU: a check

On the GPU machine (wheel folders .whl and .whl_trl112 carried; see device_env.sh)::

    source benchmarks/device_env.sh trl112 && \
    PYTHONPATH=$TRL112_PYTHONPATH python3 benchmarks/bench_trl_ppo.py --pythia && \
    python3 benchmarks/bench_ppo.py --pythia --rollout-prefixes 64 --num-completions 1 \
        --completion-len 64 --prefix-len 25 --batch-size 64 --ppo-epochs 4 --num-minibatches 4 \
        --value-model separate --reward-model

Checked with trl 1.12.0 on transformers 5.17.0 (the GPU machine's) and 5.24.0, torch 2.13 (CPU).

TRL 1.x dropped PPOTrainer from its main API; 1.12 keeps it as ``trl.experimental.ppo.PPOTrainer``
(with ``PPOConfig``).  Geometry, the same as ``bench_ppo.py --pythia --rollout-prefixes 64
--num-completions 1 --completion-len 64 --batch-size 64 --reward-model``: 64 prompts of 25 random
tokens per update, one completion each of 64 new tokens (EOS stops it; random models hardly emit
one), ``num_ppo_epochs`` 4 x ``num_mini_batches`` 4 (16 AdamW steps of 16 samples), a separate
value model and a reward model (sequence-classification heads, num_labels=1, of the policy's
shape), all randomly initialised from configs (no downloads).

Mapping onto TRL's batch sizes: rollout = ``per_device_train_batch_size`` x
``gradient_accumulation_steps`` = 64 x 1; ``num_mini_batches`` = 4 gives minibatches of 16, one
micro-batch each.  (64 = 16 x 4 accumulation steps would not do the same work: TRL wraps every
micro-batch in ``accelerator.accumulate``, whose optimiser step only fires every 4th micro-batch,
so an update would take 4 AdamW steps, not 16.)  ``local_rollout_forward_batch_size`` = 64: the
rollout's generation and no-grad forwards run as one batch, as ours do with ``--batch-size 64``.

Precision (one subprocess per mode, because accelerate's state is a per-process singleton):

* ``default``: PPOConfig's own default, ``bf16=None``, which its ``__post_init__`` turns into
  ``bf16=True`` (on CPU TrainingArguments refuses bf16 unless ``use_cpu=True``, set here).
* ``fp32``: ``bf16=False``.
* ``autocast``: ``bf16=True`` plus ``ACCELERATE_MIXED_PRECISION=bf16`` in the environment.
  PPOTrainer builds its own ``Accelerator()`` without a ``mixed_precision`` argument, and
  transformers 5.x TrainingArguments no longer exports the env var, so without it ``bf16=True``
  changes nothing; with it, accelerate autocasts the forward of the policy+value wrapper (the
  training forward).  Generation, the reference and the reward model stay float32 either way.

What each run really did is measured, not assumed: a forward hook on the policy's LM head records
the logits' dtype and whether autocast was on, in rollout (no grad) and training (grad) calls.

Per-update time is wall time between TRL's ``on_step_end`` callbacks (device synchronised), the
first ``--warmup`` updates dropped; rollout = from the update's start to the first grad-enabled
policy forward.  Models are float32, as in bench_ppo.py.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

MODES = ("default", "fp32", "autocast")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pythia", action="store_true", help="Pythia-70m shape (vocab 50304)")
    parser.add_argument("--tiny", action="store_true",
                        help="a CPU check: embedded shape, 16 prompts x 16 tokens, 1 warm-up + 1 timed "
                             "update, cpu, 1 thread, precision fp32")
    parser.add_argument("--device", default=None, help="default: cuda if available with --pythia, else cpu")
    parser.add_argument("--precision", default=None,
                        help=f"comma-separated modes from {','.join(MODES)} (default: all; --tiny: fp32)")
    parser.add_argument("--prompts", type=int, default=None, help="prompts (= samples) per update (64; --tiny 16)")
    parser.add_argument("--prompt-len", type=int, default=25, help="tokens per prompt (ours: prefix_len)")
    parser.add_argument("--completion-len", type=int, default=None, help="new tokens per sample (64; --tiny 16)")
    parser.add_argument("--ppo-epochs", type=int, default=4)
    parser.add_argument("--num-minibatches", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=None, help="untimed updates first (default 1)")
    parser.add_argument("--updates", type=int, default=None, help="timed updates (default 4; --tiny 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", default=None, help="also write the per-mode figures to this file")
    parser.add_argument("--one", choices=MODES, default=None, help=argparse.SUPPRESS)  # child process
    args = parser.parse_args(argv)
    args.warmup = 1 if args.warmup is None else args.warmup
    args.updates = args.updates if args.updates is not None else (1 if args.tiny else 4)
    args.prompts = args.prompts or (16 if args.tiny else 64)
    args.completion_len = args.completion_len or (16 if args.tiny else 64)
    if args.tiny:
        args.pythia = False
        args.device = args.device or "cpu"
        args.threads = args.threads or 1  # on a loaded small box, spinning OpenMP threads cost far more
    if args.precision is None:
        args.precision = "fp32" if args.tiny else ",".join(MODES)
    return args


# --------------------------------------------------------------------------- one run (child)


class PrecisionProbe:
    """Forward hook on the policy's LM head: (phase, logits dtype, autocast on) of every call."""

    def __init__(self, device_type: str):
        self.device_type = device_type
        self.seen: set[tuple[str, str, bool]] = set()

    def __call__(self, module, inputs, output):
        import torch
        phase = "train" if torch.is_grad_enabled() else "rollout"
        self.seen.add((phase, str(output.dtype).replace("torch.", ""),
                       torch.is_autocast_enabled(self.device_type)))

    def summary(self) -> dict:
        out = {}
        for phase in ("rollout", "train"):
            kinds = sorted({f"{dtype}{' (autocast)' if ac else ''}" for p, dtype, ac in self.seen if p == phase})
            out[phase] = "/".join(kinds) or "none"
        return out


def run_one(args) -> dict:
    if args.one == "autocast":
        os.environ["ACCELERATE_MIXED_PRECISION"] = "bf16"
    else:
        os.environ.pop("ACCELERATE_MIXED_PRECISION", None)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch
    import transformers
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    from bench_common import SHAPES, build_model, build_scorer, word_tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    shape = "pythia70m" if args.pythia else "embedded"
    device = torch.device(args.device or ("cuda" if args.pythia and torch.cuda.is_available() else "cpu"))
    tok = word_tokenizer(SHAPES[shape][3])
    torch.manual_seed(0)
    policy = build_model(shape, tok, device)
    ref = copy.deepcopy(policy).eval()
    value = build_scorer(shape, tok, device)
    reward = build_scorer(shape, tok, device).eval()
    total_updates = args.warmup + args.updates
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, len(tok) - 2, (total_updates * args.prompts, args.prompt_len), generator=g)
    dataset = Dataset.from_dict({"input_ids": prompts.tolist()})

    config = dict(
        output_dir=tempfile.mkdtemp(prefix="bench_trl_ppo_"), report_to="none", save_strategy="no",
        logging_strategy="no", disable_tqdm=True, seed=0, dataloader_num_workers=0,
        per_device_train_batch_size=args.prompts, gradient_accumulation_steps=1,
        num_mini_batches=args.num_minibatches, num_ppo_epochs=args.ppo_epochs,
        local_rollout_forward_batch_size=args.prompts, response_length=args.completion_len,
        total_episodes=total_updates * args.prompts, num_sample_generations=0,
        stop_token="eos", temperature=1.0, learning_rate=1e-4,
        use_cpu=device.type == "cpu",
    )
    if args.one == "fp32":
        config["bf16"] = False
    elif args.one == "autocast":
        config["bf16"] = True
    ppo_args = PPOConfig(**config)  # "default": bf16 left to PPOConfig

    probe = PrecisionProbe(device.type)
    policy.get_output_embeddings().register_forward_hook(probe)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    marks = {"start": [], "train_start": [], "end": []}

    class Timer(TrainerCallback):
        def on_train_begin(self, *a, **k):
            sync()
            marks["start"].append(time.perf_counter())

        def on_step_end(self, *a, **k):
            sync()
            now = time.perf_counter()
            marks["end"].append(now)
            marks["start"].append(now)

    def first_train_forward(module, inputs):
        if torch.is_grad_enabled() and len(marks["train_start"]) < len(marks["start"]):
            sync()
            marks["train_start"].append(time.perf_counter())

    policy.register_forward_pre_hook(first_train_forward)

    trainer = PPOTrainer(args=ppo_args, processing_class=tok, model=policy, ref_model=ref,
                         reward_model=reward, train_dataset=dataset, value_model=value,
                         callbacks=[Timer()])
    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)
    wall = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - wall

    per_update = [e - s for s, e in zip(marks["start"], marks["end"])]
    rollout = [t - s for s, t in zip(marks["start"], marks["train_start"])]
    optimize = [e - t for t, e in zip(marks["train_start"], marks["end"])]
    skip = args.warmup
    timed = per_update[skip:]
    return {
        "mode": args.one, "shape": shape, "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "threads": torch.get_num_threads(),
        "versions": {"trl": trl.__version__, "transformers": transformers.__version__,
                     "torch": torch.__version__},
        "params_m": sum(p.numel() for p in policy.parameters()) / 1e6,
        "bf16_arg": ppo_args.bf16, "accelerate_mixed_precision": trainer.accelerator.mixed_precision,
        "gradient_checkpointing_arg": ppo_args.gradient_checkpointing,
        "gradient_checkpointing_on": bool(getattr(policy, "is_gradient_checkpointing", False)),
        "lm_head": probe.summary(), "param_dtype": str(next(policy.parameters()).dtype).replace("torch.", ""),
        "batch": {"local_batch_size": ppo_args.local_batch_size, "mini_batch": ppo_args.local_mini_batch_size,
                  "micro_batch": ppo_args.per_device_train_batch_size,
                  "grad_accum": ppo_args.gradient_accumulation_steps},
        "updates": len(per_update), "per_update_s": per_update, "timed": len(timed),
        "median_s": statistics.median(timed) if timed else float("nan"),
        "mean_s": statistics.mean(timed) if timed else float("nan"),
        "rollout_s": statistics.median(rollout[skip:]) if rollout[skip:] else float("nan"),
        "optimize_s": statistics.median(optimize[skip:]) if optimize[skip:] else float("nan"),
        "wall_s": wall,
    }


# --------------------------------------------------------------------------- driver


def main() -> None:
    args = parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_one(args)), flush=True)
        return
    modes = [m.strip() for m in args.precision.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad:
        sys.exit(f"unknown precision mode(s) {bad}; choose from {MODES}")
    results = []
    for mode in modes:
        cmd = [sys.executable, os.path.abspath(__file__), *sys.argv[1:], "--one", mode]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        lines = proc.stdout.splitlines()
        found = [json.loads(l[len("RESULT "):]) for l in lines if l.startswith("RESULT ")]
        for l in lines:
            if not l.startswith("RESULT "):
                print(l)
        if proc.returncode or not found:
            print(f"[{mode}] FAILED (exit {proc.returncode})", flush=True)
            continue
        results.append(found[0])
    if not results:
        sys.exit(1)
    r0 = results[0]
    print(f"TRL PPOTrainer (trl.experimental.ppo) trl={r0['versions']['trl']} "
          f"transformers={r0['versions']['transformers']} torch={r0['versions']['torch']}")
    print(f"shape={r0['shape']} ({r0['params_m']:.1f}M params/model) device={r0['device']}"
          f"{' (' + r0['gpu'] + ')' if r0['gpu'] else ''} threads={r0['threads']}")
    b = r0["batch"]
    micro = min(b["micro_batch"], b["mini_batch"])
    print(f"rollout {args.prompts} prompts x 1 = {b['local_batch_size']} samples, prompt {args.prompt_len}, "
          f"completion {args.completion_len} (stop at EOS), {args.ppo_epochs} epochs x {args.num_minibatches} "
          f"minibatches of {b['mini_batch']} (micro {micro}, grad_accum {b['grad_accum']}), "
          f"separate value model + reward model forward, params {r0['param_dtype']}")
    print(f"gradient_checkpointing: arg={r0['gradient_checkpointing_arg']} "
          f"on={r0['gradient_checkpointing_on']}")
    for r in results:
        print(f"[{r['mode']:8s}] bf16={r['bf16_arg']} accelerate.mixed_precision={r['accelerate_mixed_precision']} "
              f"lm-head logits: rollout {r['lm_head']['rollout']}, train {r['lm_head']['train']}")
        print(f"[{r['mode']:8s}] time per update {r['median_s']:.3f} s median of {r['timed']} "
              f"(mean {r['mean_s']:.3f}; rollout {r['rollout_s']:.3f} s, optimisation {r['optimize_s']:.3f} s; "
              f"all updates {', '.join(f'{t:.3f}' for t in r['per_update_s'])}; "
              f"train() wall {r['wall_s']:.1f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({r["mode"]: {"s_per_update": r["median_s"], "rollout_s": r["rollout_s"],
                                   "optimize_s": r["optimize_s"], "lm_head": r["lm_head"], "gpu": r["gpu"],
                                   "trl": r["versions"]["trl"]} for r in results}, f, indent=1)


if __name__ == "__main__":
    main()
