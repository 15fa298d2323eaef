"""How a job uses its device: numeric precision and batch sizes, chosen once when it starts.

``precision`` (top-level key): ``auto`` is bf16 autocast with float32 master weights on CUDA (TF32
matmuls on) and float32 on a CPU; ``fp32`` is float32 everywhere with TF32 off (the reference to
compare against); ``bf16`` is bf16 autocast on any device (a CPU too: slow, but it tests the path).
Weights, optimizer states and every loss, log-probability and KL stay float32: autocast runs the
matrix products in bf16 and the code casts logits to float32 before a softmax.

Batch sizes (group ``hardware``) never change what a job computes: sampling is keyed (a completion
does not depend on its batch), DPO's optimizer batch is ``algorithm.batch_size`` whatever the
micro-batch, and PPO's chunks accumulate into the same minibatch.  ``hardware=auto`` keeps the CPU
sizes on a CPU and, on a GPU, scales them with the memory one job may use (the card's memory over
``hardware.jobs_per_gpu``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Optional

import torch

# sizes on a CPU (what the embedded default has always used)
CPU_SIZES = {"gen_batch_size": 250, "forward_batch_size": 64, "train_micro_batch": 16, "analysis_batch_size": 16}

# on a GPU, per GiB of memory a job may use, capped: the Pythia-70m shape (50k vocabulary) holds a
# float32 [batch, seq, vocab] logits tensor and its log-softmax, ~0.4 GB per sequence of 1000 tokens
_PER_GIB = {"gen_batch_size": 32, "forward_batch_size": 2, "train_micro_batch": 2, "analysis_batch_size": 4}
_GPU_MAX = {"gen_batch_size": 1024, "forward_batch_size": 64, "train_micro_batch": 64, "analysis_batch_size": 128}
_GPU_MIN = {"gen_batch_size": 64, "forward_batch_size": 8, "train_micro_batch": 8, "analysis_batch_size": 8}


# a prefs or evaluation call samples with the static cache from this many tokens (prompts x new
# tokens) on: the compile (12 s per model and shape on an H200) against the eager rate at batch 1024
# (106k tokens/s) pays off from ~2M tokens if compiled decoding at that batch runs ~3x faster, as
# it does at PPO's batch of 128 (21x there); `bench_gpu.py sampling` measures it
STATIC_CACHE_MIN_TOKENS = 2_000_000


@dataclasses.dataclass
class Runtime:
    """The resolved precision and batch sizes of one job (results.json ``hardware``)."""

    device: str
    device_name: str
    precision: str  # fp32 | bf16
    gen_batch_size: int
    forward_batch_size: int
    train_micro_batch: int
    analysis_batch_size: int
    jobs_per_gpu: int = 1
    static_cache: bool = False
    static_cache_min_tokens: int = STATIC_CACHE_MIN_TOKENS
    memory_gib: Optional[float] = None  # GPU memory one job may use

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16"

    def static_for(self, prompts: int, max_new_tokens: int) -> bool:
        """Whether one sampling call of ``prompts`` x ``max_new_tokens`` (prefs, evaluation) uses
        the static cache: when it is on and the call is large enough to pay for its compile.  PPO's
        rollouts (hundreds of calls of one shape) use ``static_cache`` as it is."""
        return self.static_cache and prompts * max_new_tokens >= self.static_cache_min_tokens

    def autocast(self):
        """The context every forward pass of a stage runs in: bf16 autocast, or nothing."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(self.device).type, dtype=torch.bfloat16)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def resolve_precision(name: str, device: torch.device) -> str:
    if name == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return name


def set_matmul_precision(precision_key: str, device: torch.device) -> None:
    """TF32 matmuls on CUDA unless ``precision=fp32`` asks for strict float32."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = precision_key != "fp32"
        torch.backends.cudnn.allow_tf32 = precision_key != "fp32"


@contextlib.contextmanager
def exact_float32(device):
    """Float32 arithmetic for what compares two models: autocast off and, on CUDA, TF32 off.

    The KL of a policy to its reference (evaluation, PPO's penalty and controller) and the
    activation divergences are differences of two models' outputs.  Under bf16 autocast every
    weight is rounded to bf16 (a relative step of 2^-8) in each forward pass, and at the paper's lr
    of 1e-6 most of what training changed is smaller than that step: the two rounded models then
    differ by rounding, which puts a positive floor under every KL and divergence (~1e-3 nats on the
    embedded model at a 5e-4 relative weight change, where float32 gives < 1e-5).  These passes are a
    few forwards without gradients, so float32 costs little; training and sampling keep the precision.
    """
    device = torch.device(device)
    with torch.autocast(device_type=device.type, enabled=False):
        if device.type != "cuda":
            yield
            return
        saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def is_exact_float32(device) -> bool:
    """Whether forwards on ``device`` run in plain float32 here (no autocast, no TF32)."""
    device = torch.device(device)
    if torch.is_autocast_enabled(device.type):
        return False
    return device.type != "cuda" or not torch.backends.cuda.matmul.allow_tf32


def gpu_sizes(memory_gib: float) -> dict:
    return {k: int(min(_GPU_MAX[k], max(_GPU_MIN[k], _pow2_floor(_PER_GIB[k] * memory_gib)))) for k in _PER_GIB}


def _pow2_floor(x: float) -> int:
    n = 1
    while n * 2 <= x:
        n *= 2
    return n


def _static_cache(hw, device: torch.device) -> bool:
    """hardware.static_cache, null = on for CUDA (where generate compiles it), off elsewhere (on a
    CPU nothing is compiled: the same completions at about the same speed)."""
    value = getattr(hw, "static_cache", None)
    return device.type == "cuda" if value is None else bool(value)


def jobs_per_gpu(cfg) -> int:
    """``cfg.hardware.jobs_per_gpu``, 1 where unset or where the config has no hardware group."""
    return int(getattr(getattr(cfg, "hardware", None), "jobs_per_gpu", None) or 1)


def resolve(cfg, device: torch.device) -> Runtime:
    """The job's ``Runtime`` from ``cfg.precision`` and ``cfg.hardware`` on ``device``."""
    hw = getattr(cfg, "hardware", None)
    jobs = jobs_per_gpu(cfg)
    memory = None
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        name = props.name
        memory = round(props.total_memory / 2**30 / jobs, 1)
        sizes = gpu_sizes(memory)
    else:
        name = device.type
        sizes = dict(CPU_SIZES)
    for key in sizes:  # fixed values (hardware=cpu, hardware.gen_batch_size=512) win
        value = getattr(hw, key, None)
        if value is not None:
            sizes[key] = int(value)
    precision_key = getattr(cfg, "precision", "auto")
    min_tokens = getattr(hw, "static_cache_min_tokens", None)
    return Runtime(device=str(device), device_name=name, precision=resolve_precision(precision_key, device),
                   jobs_per_gpu=jobs, memory_gib=memory, static_cache=_static_cache(hw, device),
                   static_cache_min_tokens=STATIC_CACHE_MIN_TOKENS if min_tokens is None else int(min_tokens),
                   **sizes)
