#!/usr/bin/env bash
# Fill the git-ignored wheel folders that benchmarks/device_env.sh installs on a GPU machine with
# no internet (Python 3.12 there; torch, transformers and the scientific stack already installed):
#
#   bash benchmarks/fetch_wheels.sh        # run here, where pip reaches an index; then carry .whl, .whl_trl112
#
# The versions are the ones device_env.sh names (our TRL, datasets and transformer-lens as pinned
# here; TRL 1.12.0 for the peer benchmark). antlr4 4.9.3 exists only as an sdist: built here.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || printf '/.whl/\n/.whl_trl112/\n' >> .git/info/exclude
mkdir -p .whl .whl_trl112
get() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
          --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
          -d "$1" "${@:2}"; }
get .whl beartype==0.23.1 datasets==5.2.0 dill==0.4.1 fancy_einsum==0.0.3 hydra-core==1.3.8 \
    hydra-joblib-launcher==1.2.0 multiprocess==0.70.19 omegaconf==2.3.1 transformer-lens==4.3.0 trl==1.16.0 \
    typeguard==4.6.1
python3 -m pip wheel -q --no-deps antlr4-python3-runtime==4.9.3 -w .whl
get .whl_trl112 trl==1.12.0
ls .whl .whl_trl112
