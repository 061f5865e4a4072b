#!/usr/bin/env bash
# One device call for a kernel change measured against the code it replaces, in the same run:
# build, kernel tests (-n 4), decode attention under PAGEDLLM_DECODE_VARIANT A and B taken in turn,
# then the other GPU tests (with the real-weights bf16 test when .devstage/smol14.gguf and the
# gguf / accelerate wheels in .whl are carried; ~290 s on an H200, hence their 400 s limit). At most 8 small files land in $OUT.
#   VARIANTS="0 5" bash benchmarks/ab_session.sh   # env: VARIANTS (PAGEDLLM_DECODE_VARIANT values
#   to compare, e.g. the default and a measurement-only variant), ROUNDS (default 2)
set -u
cd "$(dirname "$0")/.."
L=/tmp/logs; mkdir -p $L
t0=$(date +%s); since() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
bash benchmarks/gpu_session.sh $L build > /dev/null || { tail -30 $L/build.log; exit 1; }
since built
GPU_TEST_ARGS="-n 4" GPU_TEST_DIRS=kernels bash benchmarks/gpu_session.sh $L test > $L/tk.txt 2>&1
cp $L/pytest_gpu.log $L/pytest_kernels.log
since "kernels: $(grep -E 'passed|failed' $L/tk.txt | tail -1)"; grep -E "^(FAILED|ERROR)" $L/pytest_kernels.log | head

VARIANT_TESTS=0 ROUNDS=${ROUNDS:-2} HINT_CASES= CASES=1x4096,64x512,64x4096,256x512,256x4096 \
  RAGGED=256x100-1100,128x1000-3000 RAGGED_G2=256x100-1100,244x250-1200 timeout 220 bash benchmarks/kernels/decode_variants.sh $OUT "${VARIANTS:?VARIANTS: the decode variants to compare, e.g. \"0 5\"}"
since "decode A/B done"

[ -f .devstage/smol14.gguf ] && export PAGEDLLM_REAL_GGUF=$PWD/.devstage/smol14.gguf
GPU_TEST_TIMEOUT=400 GPU_TEST_DIRS="models engine gpu distributed" bash benchmarks/gpu_session.sh $L test > $L/te.txt 2>&1
since "others: $(grep -E 'passed|failed' $L/te.txt | tail -1)"; grep -E "^(FAILED|ERROR)|SKIPPED.*real|agreement" $L/pytest_gpu.log | head
grep -h -E "passed|failed" $L/pytest_kernels.log $L/pytest_gpu.log | tail -2 > $OUT/pytest_summary.txt
grep -E "^(FAILED|ERROR)|agreement|teacher|free.running" $L/pytest_gpu.log | head -20 >> $OUT/pytest_summary.txt
cp $L/bf16_agreement*.json $OUT/ 2>/dev/null
date -u
