#!/usr/bin/env bash
# Download the peer libraries (pure-Python wheels, ~0.4 MB) into .whl/ for the GPU machine,
# whose image lacks them (see benchmarks/gpu_check.sh). Run here, in the repository root;
# PYTHON=.venv/bin/python picks the interpreter whose pip downloads.
set -euo pipefail
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
"${PYTHON:-python3}" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl \
    nngeometry==0.4 curvlinops-for-pytorch==3.0.1 backpack-for-pytorch==1.7.1 einconv==0.1.0 unfoldNd==0.2.3
ls .whl
