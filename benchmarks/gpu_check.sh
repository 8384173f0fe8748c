#!/usr/bin/env bash
# The checks that need a real NVIDIA GPU, in one run (docs/gpu.md): the GPU
# backend's tests against the CPU backend (tests/test_gpu.py, the simulator
# off, the gpu-marked W1 test included), then its W1 benchmark in full mode
# beside the CPU backend on every core. Meant for a machine with a GPU and
# the project's dependencies (numba-cuda among them) but no install of the
# project: it runs from the source tree. Logs go to $OUT (or ./gpu_check).
#
#   bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_check}"
mkdir -p "$out"
# wheels carried for packages the machine lacks (see docs/gpu.md)
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile \
        --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
# the kernels are installed as refinefit.kernels; from the source tree, a link
[ -e refinefit/kernels ] || ln -s ../kernels refinefit/kernels
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export NUMBA_ENABLE_CUDASIM=0 REFINEFIT_AOT=0 PYTHONUNBUFFERED=1
export NUMBA_CACHE_DIR=/tmp/numba_cache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv \
    | tee "$out/gpu.txt"
python3 -m pytest -q -p no:cacheprovider -n 4 tests/test_gpu.py 2>&1 \
    | tee "$out/test_gpu.log"
tests=${PIPESTATUS[0]}
REFINEFIT_BENCH=full python3 -m pytest -q -p no:cacheprovider \
    benchmarks/test_bench_gpu.py --benchmark-enable \
    --benchmark-json="$out/bench_gpu.json" 2>&1 | tee "$out/bench_gpu.log"
bench=${PIPESTATUS[0]}
exit $(( tests || bench ))
