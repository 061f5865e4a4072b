#!/usr/bin/env bash
# One device call for the decode GEMM (csrc/kernels/decode_linear.h): build; its GPU tests and
# the layer / end-to-end GPU tests it changes; the decode-step linears of Qwen3-0.6B and -8B
# timed under cuBLAS, cuBLASLt, decode_linear and split-K (linear_shapes.py); then W-nano and a
# batch-16 run with the kernel on (DECODE_GEMM_MAX_ROWS = 128) and off (0), alternated.
#   bash benchmarks/decode_gemm_session.sh "$OUT"    # env: ROUNDS (A/B rounds, default 1)
set -uo pipefail
OUT=${1:?output dir}
cd "$(dirname "$0")/.."
t0=$(date +%s); since() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
bash benchmarks/gpu_session.sh "$OUT" build > /dev/null || { tail -30 "$OUT/build.log"; exit 1; }
since built
(cd tests && timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu -rfE \
   kernels/test_decode_linear.py models/test_layers_and_cache.py gpu/test_end_to_end_gpu.py \
   > "$OUT/pytest_decode_gemm.log" 2>&1; tail -15 "$OUT/pytest_decode_gemm.log")
since tested
timeout 150 python3 benchmarks/kernels/linear_shapes.py --shape qwen3-0.6b qwen3-8b \
  --batch 1 16 32 64 128 --split-k 4 --out "$OUT/linear_shapes.json" 2>&1 | tee "$OUT/linear_shapes.log" | cut -c1-230
since shapes
SKIP_BUILD=1 ROUNDS=${ROUNDS:-1} bash benchmarks/constant_ab.sh "$OUT" pagedllm.layers.linear DECODE_GEMM_MAX_ROWS 0
since done
