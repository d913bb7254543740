#!/usr/bin/env bash
# The device check for a session that is lent a GPU machine, in one call (about 8 minutes):
#   1. here, once:   bash benchmarks/gpu_wheels.sh            (peer wheels into .whl/, ignored by git)
#   2. device tool:  run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=560)
# It installs nothing but the peers (the machine's image has torch, numpy, scipy, ...), runs
# the CUDA tests (tests/test_gpu.py: every quantity on the GPU against the CPU float64 oracle,
# mixed precision, NCCL) and the benchmark suite on the GPU, and leaves under $OUT:
#   device.txt, gpu_tests.txt, bench/RESULTS.md, bench/results.json
# ONLY=W1,W2 (environment) narrows the workloads; REPEATS=5 changes the timed calls.
set -uo pipefail
OUT=${OUT:-/tmp/tangentlab_gpu}
mkdir -p "$OUT/bench"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
} 2>&1 | tee "$OUT/device.txt"
timeout 170 python3 -m pytest -q -p no:cacheprovider -x tests/test_gpu.py 2>&1 | tail -30 | tee "$OUT/gpu_tests.txt"
timeout 330 python3 -m benchmarks.run --device cuda --only "${ONLY:-W1,W2,W3,W4}" \
    --repeats "${REPEATS:-3}" --timeout 90 --slow 20 --out "$OUT/bench" 2>&1 | tail -45
