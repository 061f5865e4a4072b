#!/usr/bin/env bash
# One device call for a kernel change measured against the code it replaces, in the same run:
# build, kernel tests (-n 4), decode attention under PAGEDLLM_DECODE_VARIANT A and B taken in turn,
# prefill attention under PAGEDLLM_PREFILL_VARIANT values likewise, the full kernel benchmark with
# FlashInfer when wheels/ is carried, then the other GPU tests (with the real-weights bf16 test when
# .devstage/smol14.gguf and the gguf / accelerate wheels in .whl are carried; ~290 s on an H200,
# hence their 400 s limit). At most 8 small files land in $OUT.
#   VARIANTS="0 5" bash benchmarks/ab_session.sh
# Env: VARIANTS (PAGEDLLM_DECODE_VARIANT values to compare; empty: no decode A/B), PREFILL_VARIANTS
# (PAGEDLLM_PREFILL_VARIANT values; empty: none), ROUNDS (default 2), FULL_KERNELS=1 (the
# kernels stage of gpu_session.sh: every decode and prefill case with the peers), OTHER_TESTS=0
# (skip the model / engine / distributed GPU tests).
set -u
cd "$(dirname "$0")/.."
L=/tmp/logs; mkdir -p $L
t0=$(date +%s); since() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
bash benchmarks/gpu_session.sh $L build > /dev/null || { tail -30 $L/build.log; exit 1; }
since built
GPU_TEST_ARGS="-n 4" GPU_TEST_DIRS=kernels bash benchmarks/gpu_session.sh $L test > $L/tk.txt 2>&1
cp $L/pytest_gpu.log $L/pytest_kernels.log
since "kernels: $(grep -E 'passed|failed' $L/tk.txt | tail -1)"; grep -E "^(FAILED|ERROR)" $L/pytest_kernels.log | head

if [ -n "${VARIANTS:-}" ]; then
  VARIANT_TESTS=0 ROUNDS=${ROUNDS:-2} HINT_CASES= CASES=1x4096,64x512,64x4096,256x512,256x4096 \
    RAGGED=256x100-1100,128x1000-3000 RAGGED_G2=256x100-1100,244x250-1200 timeout 220 bash benchmarks/kernels/decode_variants.sh $OUT "$VARIANTS"
  since "decode A/B done"
fi
if [ -n "${PREFILL_VARIANTS:-}" ]; then
  ROUNDS=${ROUNDS:-2} timeout 300 bash benchmarks/kernels/prefill_variants.sh $OUT "$PREFILL_VARIANTS"
  since "prefill A/B done"
fi
if [ "${FULL_KERNELS:-0}" = 1 ]; then
  KERNEL_TIMEOUT=${KERNEL_TIMEOUT:-240} bash benchmarks/gpu_session.sh $OUT kernels > $L/kernels_stage.txt 2>&1
  since "kernels stage done"; tail -32 $L/kernels_stage.txt
fi
[ "${OTHER_TESTS:-1}" = 0 ] && { cp $L/pytest_kernels.log $OUT/ 2>/dev/null; date -u; exit 0; }

[ -f .devstage/smol14.gguf ] && export PAGEDLLM_REAL_GGUF=$PWD/.devstage/smol14.gguf
GPU_TEST_TIMEOUT=400 GPU_TEST_DIRS="models engine gpu distributed" bash benchmarks/gpu_session.sh $L test > $L/te.txt 2>&1
since "others: $(grep -E 'passed|failed' $L/te.txt | tail -1)"; grep -E "^(FAILED|ERROR)|SKIPPED.*real|agreement" $L/pytest_gpu.log | head
grep -h -E "passed|failed" $L/pytest_kernels.log $L/pytest_gpu.log | tail -2 > $OUT/pytest_summary.txt
grep -E "^(FAILED|ERROR)|agreement|teacher|free.running" $L/pytest_gpu.log | head -20 >> $OUT/pytest_summary.txt
cp $L/bf16_agreement*.json $OUT/ 2>/dev/null
date -u
