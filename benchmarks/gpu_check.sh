#!/usr/bin/env bash
# Issue 10's GPU check, one script: run it from the repository root on a GPU machine.
#
#   bash benchmarks/gpu_check.sh            # results in $OUT (or ./gpu-check), one table at the end
#   STEPS="sampling ppo" BUDGET=200 bash benchmarks/gpu_check.sh   # some steps, a shorter budget
#
# It installs what the machine lacks from wheels in .whl/ (and TRL 1.12 for the peer benchmark in
# .whl_trl112/; `bash benchmarks/fetch_wheels.sh` fills both here: carry them along), then runs
# each benchmark under its own time limit, so that a slow one never costs the others.  The order is
# what docs/performance.md still lacks first: PPO per update, ours and TRL 1.12's on the same work
# (one run, one card, for the ratio); the paper_run2 jobs; the paper_run1 jobs (fitted from two
# parts each); sampling speed with the static cache at batch 1024 and its break-even size; jobs
# packed on one GPU; bf16 against fp32 (measured already: docs/performance.md); the rollouts'
# static cache.  Every figure comes from benchmarks/*.py; docs/performance.md keeps them with the
# card's name.  All of it takes ~1000 s on an H200, more than one device call (600 s) and than a
# session's 15 minutes: run the first four as two calls on the same warm machine (targets and
# targets1 share the jobs' folder $WORK, so the second does not prepare again),
#   STEPS="ppo trl targets" bash benchmarks/gpu_check.sh      # ~450 s (estimated; at most 500)
#   STEPS="targets1 sampling" bash benchmarks/gpu_check.sh    # ~350 s (estimated; at most 410)
# and packing (~110 s) in a later session.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check}
WORK=${WORK:-.gpu-work}  # the jobs of targets and targets1 and their cache (git-ignored; kept between calls)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled WANDB_SILENT=true \
       TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
T0=$(date +%s)
source benchmarks/device_env.sh trl112 || { echo "gpu_check: could not install the wheels in .whl/"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader 2>&1 | tee "$OUT/log.txt"

BUDGET=${BUDGET:-570}  # seconds for everything (the device tool allows 600 per command)
step() {  # step SECONDS NAME COMMAND...: one benchmark, its own limit (within the budget), its log kept
  local limit=$1 name=$2
  shift 2
  if [ -n "${STEPS:-}" ] && [[ " $STEPS " != *" $name "* ]]; then return; fi  # STEPS="sampling ppo": only those
  local left=$(( BUDGET - ($(date +%s) - T0) ))
  if [ "$left" -lt 20 ]; then echo "== $name: skipped, budget spent" | tee -a "$OUT/log.txt"; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit}s, at $(( $(date +%s) - T0 ))s)" | tee -a "$OUT/log.txt"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  if [ $rc -eq 0 ]; then
    tail -n 3 "$OUT/$name.log" | cut -c1-300 | tee -a "$OUT/log.txt"
  else  # a failure shows more of its log
    tail -n 25 "$OUT/$name.log" | cut -c1-300 | tee -a "$OUT/log.txt"
    echo "   $name: exit $rc" | tee -a "$OUT/log.txt"
  fi
}

step 100 ppo $PY benchmarks/bench_ppo.py --pythia --geometry trl --precision both --static-cache --json "$OUT/ppo.json"
step 100 trl env PYTHONPATH="$TRL112_PYTHONPATH" \
  $PY benchmarks/bench_trl_ppo.py --pythia --precision default,autocast --json "$OUT/trl.json"
step 300 targets $PY benchmarks/bench_gpu.py targets --work "$WORK" --out "$OUT"
step 260 targets1 $PY benchmarks/bench_gpu.py targets1 --work "$WORK" --out "$OUT"
step 150 sampling $PY benchmarks/bench_gpu.py sampling --out "$OUT"
step 110 packing $PY benchmarks/bench_packing.py 4 --lean --json "$OUT/packing.json"
step 40 agreement $PY benchmarks/bench_gpu.py agreement --out "$OUT"
step 60 static $PY benchmarks/bench_gpu.py static --out "$OUT"
echo "== total $(( $(date +%s) - T0 ))s" | tee -a "$OUT/log.txt"
$PY benchmarks/gpu_table.py "$OUT"
# what comes back from the device tool is at most 8 files: keep the JSON, the table and the log
rm -f "$OUT"/*.log
