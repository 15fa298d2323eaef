# Python packages for the GPU machine (no internet; Python 3.12, torch/transformers/accelerate and
# the usual scientific stack already there): source this from the repository root, with the
# git-ignored wheel folders .whl (and .whl_trl112) carried along.
#
#   source benchmarks/device_env.sh          # .whl -> /tmp/site; PYTHONPATH=/tmp/site:<repo>
#   source benchmarks/device_env.sh trl112   # also .whl_trl112 -> /tmp/site112, and
#                                            # TRL112_PYTHONPATH=/tmp/site112:/tmp/site:<repo>
#
#   python3 -m dpo_ppo.main ... logger=none
#   python3 benchmarks/bench_ppo.py --pythia ...
#   PYTHONPATH=$TRL112_PYTHONPATH python3 benchmarks/bench_trl_ppo.py --pythia
#
# .whl holds what our package needs beyond that machine's own packages; .whl_trl112 holds TRL
# 1.12.0 (its experimental PPOTrainer, for benchmarks/bench_trl_ppo.py), which shadows our TRL only
# in TRL112_PYTHONPATH.  benchmarks/device_wheels.txt names them all, with their versions: a
# missing wheel stops here (return 1), before anything runs.
# Being sourced, it returns instead of exiting, so chain what follows with &&.  DEVICE_PYTHON
# names another interpreter than python3.

_dpo_ppo_device_env() {
    local repo py="${DEVICE_PYTHON:-python3}" w missing=0
    repo="$(pwd)"
    if [ ! -f "$repo/benchmarks/device_env.sh" ]; then
        echo "device_env.sh: source me from the repository root (not from $repo)" >&2
        return 1
    fi
    if [ -n "${1:-}" ] && [ "$1" != "trl112" ]; then
        echo "device_env.sh: unknown argument '$1' (only: trl112)" >&2
        return 1
    fi
    # the wheel files of one group of benchmarks/device_wheels.txt, found in their folder
    local main_wheels=() trl112_wheels=() group spec kind name version dir file
    while read -r group spec kind; do
        case "$group" in main) dir=.whl ;; trl112) dir=.whl_trl112 ;; *) continue ;; esac
        [ "$group" = trl112 ] && [ "${1:-}" != trl112 ] && continue
        name=$(printf '%s' "${spec%%==*}" | tr 'A-Z-' 'a-z_') version=${spec##*==}
        file=$(cd "$repo/$dir" 2>/dev/null && ls "$name-$version-"*.whl 2>/dev/null | head -n 1)
        if [ -z "$file" ]; then
            echo "device_env.sh: MISSING WHEEL $dir/$name-$version-*.whl ($spec)" >&2; missing=1; continue
        fi
        if [ "$group" = main ]; then main_wheels+=("$file"); else trl112_wheels+=("$file"); fi
    done < "$repo/benchmarks/device_wheels.txt"
    if [ "$missing" != 0 ]; then
        echo "device_env.sh: carry .whl (and .whl_trl112) with the run; see benchmarks/device_env.sh" >&2
        return 1
    fi

    local pip_args=(-m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade
                    --disable-pip-version-check)
    (cd "$repo/.whl" && "$py" "${pip_args[@]}" --target /tmp/site "${main_wheels[@]}") || {
        echo "device_env.sh: installing .whl into /tmp/site FAILED" >&2; return 1; }
    export PYTHONPATH="/tmp/site:$repo${PYTHONPATH:+:$PYTHONPATH}"
    export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=disabled
    export TRL_EXPERIMENTAL_SILENCE=1
    "$py" -c "import hydra, omegaconf, datasets, trl, dpo_ppo; assert trl.__version__ == '$(awk '$1 == "main" && $2 ~ /^trl==/ {sub("trl==", "", $2); print $2}' "$repo/benchmarks/device_wheels.txt")', trl.__version__" || {
        echo "device_env.sh: import check with PYTHONPATH=$PYTHONPATH FAILED" >&2; return 1; }

    if [ "${1:-}" = "trl112" ]; then
        (cd "$repo/.whl_trl112" && "$py" "${pip_args[@]}" --target /tmp/site112 "${trl112_wheels[@]}") || {
            echo "device_env.sh: installing .whl_trl112 into /tmp/site112 FAILED" >&2; return 1; }
        export TRL112_PYTHONPATH="/tmp/site112:$PYTHONPATH"
        PYTHONPATH="$TRL112_PYTHONPATH" "$py" -c "import trl; from trl.experimental.ppo import PPOTrainer; assert trl.__version__ == '$(awk '$1 == "trl112" && $2 ~ /^trl==/ {sub("trl==", "", $2); print $2}' "$repo/benchmarks/device_wheels.txt")', trl.__version__" || {
            echo "device_env.sh: import check of TRL 1.12 (TRL112_PYTHONPATH) FAILED" >&2; return 1; }
    fi
    echo "device_env.sh: ready; PYTHONPATH=$PYTHONPATH${TRL112_PYTHONPATH:+; TRL112_PYTHONPATH=$TRL112_PYTHONPATH}"
}
_dpo_ppo_device_env "$@"
_dpo_ppo_rc=$?
unset -f _dpo_ppo_device_env
return $_dpo_ppo_rc 2>/dev/null || exit $_dpo_ppo_rc
