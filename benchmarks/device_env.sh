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
# .whl holds what our package needs beyond that machine's own packages (hydra-core, omegaconf,
# antlr4, trl, datasets and its dill/multiprocess, transformer-lens and its beartype/typeguard/
# fancy-einsum, the joblib launcher); .whl_trl112 holds TRL 1.12.0 (its experimental PPOTrainer,
# for benchmarks/bench_trl_ppo.py), which shadows our TRL only in TRL112_PYTHONPATH.  Every wheel
# named below must be there: a missing one stops here (return 1), before anything runs.
# Being sourced, it returns instead of exiting, so chain what follows with &&.  DEVICE_PYTHON
# names another interpreter than python3.

_dpo_ppo_device_env() {
    local repo py="${DEVICE_PYTHON:-python3}" w missing=0
    repo="$(pwd)"
    if [ ! -f "$repo/benchmarks/device_env.sh" ]; then
        echo "device_env.sh: source me from the repository root (not from $repo)" >&2
        return 1
    fi
    local main_wheels=(
        antlr4_python3_runtime-4.9.3-py3-none-any.whl
        beartype-0.23.1-py3-none-any.whl
        datasets-5.2.0-py3-none-any.whl
        dill-0.4.1-py3-none-any.whl
        fancy_einsum-0.0.3-py3-none-any.whl
        hydra_core-1.3.8-py3-none-any.whl
        hydra_joblib_launcher-1.2.0-py3-none-any.whl
        multiprocess-0.70.19-py312-none-any.whl
        omegaconf-2.3.1-py3-none-any.whl
        transformer_lens-4.3.0-py3-none-any.whl
        trl-1.16.0-py3-none-any.whl
        typeguard-4.6.1-py3-none-any.whl
    )
    local trl112_wheels=(trl-1.12.0-py3-none-any.whl)

    for w in "${main_wheels[@]}"; do
        [ -f "$repo/.whl/$w" ] || { echo "device_env.sh: MISSING WHEEL .whl/$w" >&2; missing=1; }
    done
    if [ "${1:-}" = "trl112" ]; then
        for w in "${trl112_wheels[@]}"; do
            [ -f "$repo/.whl_trl112/$w" ] || { echo "device_env.sh: MISSING WHEEL .whl_trl112/$w" >&2; missing=1; }
        done
    elif [ -n "${1:-}" ]; then
        echo "device_env.sh: unknown argument '$1' (only: trl112)" >&2
        return 1
    fi
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
    "$py" -c "import hydra, omegaconf, datasets, trl, dpo_ppo; assert trl.__version__ == '1.16.0', trl.__version__" || {
        echo "device_env.sh: import check with PYTHONPATH=$PYTHONPATH FAILED" >&2; return 1; }

    if [ "${1:-}" = "trl112" ]; then
        (cd "$repo/.whl_trl112" && "$py" "${pip_args[@]}" --target /tmp/site112 "${trl112_wheels[@]}") || {
            echo "device_env.sh: installing .whl_trl112 into /tmp/site112 FAILED" >&2; return 1; }
        export TRL112_PYTHONPATH="/tmp/site112:$PYTHONPATH"
        PYTHONPATH="$TRL112_PYTHONPATH" "$py" -c "import trl; from trl.experimental.ppo import PPOTrainer; assert trl.__version__ == '1.12.0', trl.__version__" || {
            echo "device_env.sh: import check of TRL 1.12 (TRL112_PYTHONPATH) FAILED" >&2; return 1; }
    fi
    echo "device_env.sh: ready; PYTHONPATH=$PYTHONPATH${TRL112_PYTHONPATH:+; TRL112_PYTHONPATH=$TRL112_PYTHONPATH}"
}
_dpo_ppo_device_env "$@"
_dpo_ppo_rc=$?
unset -f _dpo_ppo_device_env
return $_dpo_ppo_rc 2>/dev/null || exit $_dpo_ppo_rc
