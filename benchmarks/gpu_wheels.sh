#!/usr/bin/env bash
# Fetch, on a machine with PyPI, the wheels that the lent GPU machine's image lacks
# (mrcfile, starfile, gemmi; its python3 is CPython 3.12 with numpy, scipy, pandas, pyarrow,
# matplotlib, cupy, pytest already installed) into .whl/ (ignored by git). The device tool
# carries .whl/ to that machine, where benchmarks/gpu_check.sh installs it without a network.
#
#   bash benchmarks/gpu_wheels.sh        # here, once per session
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    "mrcfile==1.5.4" "starfile==0.5.13" "gemmi==0.7.5"
ls -l .whl
