"""Jobs per hour with several jobs on one GPU: one job alone, then N of the same job at once.

    python benchmarks/bench_packing.py 4                 # the embedded default, on the first GPU
    python benchmarks/bench_packing.py 4 --lean          # the same with analysis=none logger=none
    python benchmarks/bench_packing.py 2 --lean --extra algorithm.examples=32 --extra eval.num_prompts=32
                                                         # seconds-sized, e.g. on a CPU

Every job is a separate ``python -m dpo_ppo.main`` process in its own folder, as a sweep runs it:
first one ``prepare=true`` run builds the shared artifacts (corpus, base model, classifier,
reference evaluation, preference data) into a fresh cache, so neither measurement builds them;
then the job runs alone (``hardware.jobs_per_gpu=1``, every CPU core); then N copies of it start
at once (``hardware.jobs_per_gpu=N``: each claims a slot on the GPU and sizes its batches for
1/N of its memory, with cores // N torch threads, as hydra/launcher=joblib_gpu and slurm_gpu run
them). With several GPUs visible all jobs go to one (``--gpu``, default: the first).
Prints seconds, jobs/hour and their ratio; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


from dpo_ppo.runtime.gpus import task_cores as cores  # noqa: E402  (OMP_NUM_THREADS, else the affinity)


def job_command(cache: Path, run_dir: Path, jobs_per_gpu: int, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "dpo_ppo.main", f"cache_dir={cache}", f"hydra.run.dir={run_dir}",
            f"hardware.jobs_per_gpu={jobs_per_gpu}", *extra]


def start(cmd: list[str], log: Path, threads: int) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def run_at_once(cmds: list[list[str]], logs: list[Path], threads: int) -> float:
    """Start every command at once; the seconds until the last one ended."""
    t0 = time.perf_counter()
    procs = [start(c, log, threads) for c, log in zip(cmds, logs)]
    for p, log in zip(procs, logs):
        if p.wait() != 0:
            tail = log.read_text().strip().splitlines()[-5:]
            raise SystemExit(f"a job exited {p.returncode} ({log}):\n  " + "\n  ".join(tail))
    return time.perf_counter() - t0


def job_figures(run_dir: Path) -> dict:
    res = json.loads((run_dir / "results.json").read_text())
    hw = res.get("hardware") or {}
    return {"status": res.get("status"), "wall_s": res.get("wall_time_s"), "device": hw.get("device"),
            "gpu_mem_mb": res.get("peak_gpu_mem_mb"), "batches": {k: hw.get(k) for k in
                                                                 ("gen_batch_size", "forward_batch_size",
                                                                  "train_micro_batch")}}


def gpu_mem(jobs: list[dict]) -> str:
    peaks = [j["gpu_mem_mb"] for j in jobs if j["gpu_mem_mb"]]
    return f", peak GPU memory {max(peaks):.0f} MB a job" if peaks else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("n", type=int, help="jobs at once on the GPU (hardware.jobs_per_gpu)")
    ap.add_argument("--extra", action="append", default=[], metavar="KEY=VALUE",
                    help="an override for every job (repeatable), e.g. --extra algorithm=ppo")
    ap.add_argument("--lean", action="store_true", help="analysis=none logger=none (training and evaluation only)")
    ap.add_argument("--gpu", default=None, help="the CUDA device to share (an entry of CUDA_VISIBLE_DEVICES); "
                                                "default: the first visible")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the cache and job folders here "
                                                               "(default: a temporary folder, removed)")
    args = ap.parse_args()
    if args.n < 1:
        ap.error(f"n (hardware.jobs_per_gpu) must be >= 1, got {args.n}")
    extra = (["analysis=none", "logger=none"] if args.lean else []) + list(args.extra)

    import torch  # only to see the devices; the jobs are separate processes

    if torch.cuda.is_available():
        visible = [v for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()] or \
                  [str(i) for i in range(torch.cuda.device_count())]
        os.environ["CUDA_VISIBLE_DEVICES"] = args.gpu or visible[0]
        device = f"{torch.cuda.get_device_name(0)} (CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']})"
    else:
        device = "cpu (no GPU: the jobs share the CPU cores)"
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-packing-"))
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "cache"
    total = cores()
    per_job = max(1, total // args.n)
    print(f"device: {device}; {total} CPU cores; overrides: {' '.join(extra) or '(the embedded default)'}")
    try:
        t = run_at_once([job_command(cache, work / "prepare", 1, ["prepare=true", *extra])],
                        [work / "logs" / "prepare.log"], total)
        print(f"warm cache built in {t:.1f} s ({cache})")

        alone_s = run_at_once([job_command(cache, work / "alone", 1, extra)], [work / "logs" / "alone.log"], total)
        alone = job_figures(work / "alone")
        runs = [work / "packed" / str(i) for i in range(args.n)]
        packed_s = run_at_once([job_command(cache, r, args.n, extra) for r in runs],
                               [work / "logs" / f"packed{i}.log" for i in range(args.n)], per_job)
        packed = [job_figures(r) for r in runs]
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    alone_rate = 3600.0 / alone_s
    packed_rate = args.n * 3600.0 / packed_s
    print(f"\n{'':28s}{'wall s':>9s}{'jobs/hour':>11s}   per job (results.json)")
    print(f"{'1 job alone':28s}{alone_s:9.1f}{alone_rate:11.1f}   {alone['wall_s']} s on {alone['device']}, "
          f"{total} threads, batches {alone['batches']}{gpu_mem([alone])}")
    walls = ", ".join(f"{p['wall_s']}" for p in packed)
    print(f"{f'{args.n} jobs at once':28s}{packed_s:9.1f}{packed_rate:11.1f}   {walls} s on "
          f"{', '.join(sorted({str(p['device']) for p in packed}))}, {per_job} threads each, "
          f"batches {packed[0]['batches']}{gpu_mem(packed)}")
    print(f"\nthroughput ratio ({args.n} at once / alone): {packed_rate / alone_rate:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"n": args.n, "device": device, "overrides": extra,
                                         "alone_s": round(alone_s, 1), "packed_s": round(packed_s, 1),
                                         "alone_jobs_per_hour": round(alone_rate, 1),
                                         "packed_jobs_per_hour": round(packed_rate, 1),
                                         "ratio": round(packed_rate / alone_rate, 2), "alone": alone,
                                         "packed": packed}, indent=1, default=str))


if __name__ == "__main__":
    main()
