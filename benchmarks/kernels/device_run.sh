#!/usr/bin/env bash
# One device call: build pagedllm for sm_90, run the kernel tests, run the kernel benchmark.
# Usage (from the repository root, on the GPU machine): bash benchmarks/kernels/device_run.sh OUTDIR
set -u
OUT=${1:?outdir}
ROOT=$(pwd)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
if ! python3 -c "import pytest, pytest_timeout" 2>/dev/null || [ -n "${FORCE_WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site wheels/pytest*.whl \
    wheels/pluggy*.whl wheels/iniconfig*.whl wheels/pytest_timeout*.whl wheels/pytest_asyncio*.whl >> "$OUT/build.log" 2>&1
fi
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/fi wheels/flashinfer*.whl \
  wheels/apache_tvm_ffi*.whl wheels/einops*.whl wheels/tabulate*.whl wheels/nvidia_ml_py*.whl \
  wheels/click*.whl >> "$OUT/build.log" 2>&1
export PYTHONPATH=/tmp/site
t0=$(date +%s)
PAGEDLLM_CUDA=ON PAGEDLLM_CUDA_ARCHS=90 CMAKE_BUILD_PARALLEL_LEVEL=16 \
  python3 -m pip install -q --no-build-isolation --no-deps . >> "$OUT/build.log" 2>&1 || { echo BUILD FAILED; tail -40 "$OUT/build.log"; exit 1; }
echo "build $(( $(date +%s) - t0 )) s"
cd "$ROOT/tests" && timeout "${TEST_TIMEOUT:-170}" python3 -m pytest -q -p no:cacheprovider kernels -m "${TEST_MARK:-gpu or not gpu}" \
  -x -o addopts="" --import-mode=importlib > "$OUT/pytest.log" 2>&1
echo "pytest rc=$?"; tail -25 "$OUT/pytest.log"
cd "$ROOT"
export PYTHONPATH=/tmp/site:/tmp/fi FLASHINFER_WORKSPACE_BASE=/tmp/fi_cache
timeout "${BENCH_TIMEOUT:-200}" python3 -u benchmarks/kernels/paged_attention.py --out "$OUT/bench.json" \
  --png "$OUT/decode_gbps.png" ${BENCH_ARGS:-} > "$OUT/bench.log" 2>&1
echo "bench rc=$?"; tail -32 "$OUT/bench.log"
