#!/usr/bin/env bash
# Fill the git-ignored wheel folders that benchmarks/device_env.sh installs on a GPU machine with
# no internet (Python 3.12 there; torch, transformers and the scientific stack already installed):
#
#   bash benchmarks/fetch_wheels.sh        # run here, where pip reaches an index; then carry .whl, .whl_trl112
#
# The versions are in benchmarks/device_wheels.txt (device_env.sh reads the same file). Those marked
# sdist (antlr4 4.9.3) exist only as source: built here.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || printf '/.whl/\n/.whl_trl112/\n' >> .git/info/exclude
mkdir -p .whl .whl_trl112
get() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
          --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
          -d "$1" "${@:2}"; }
while read -r group spec kind; do
  case "$group" in main) dir=.whl ;; trl112) dir=.whl_trl112 ;; *) continue ;; esac
  if [ "${kind:-}" = sdist ]; then python3 -m pip wheel -q --no-deps "$spec" -w "$dir"; else get "$dir" "$spec"; fi
done < benchmarks/device_wheels.txt
ls .whl .whl_trl112
