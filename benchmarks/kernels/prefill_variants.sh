#!/usr/bin/env bash
# Prefill-attention kernel shapes side by side on one GPU (after gpu_session.sh's build stage):
# the prefill kernel tests under each variant, then the same prefill cases per variant with torch
# SDPA (flash) timed in each run as the peer, rounds taken in turn (A B A B) so drift shows.
#   bash benchmarks/kernels/prefill_variants.sh OUT_DIR "0 1"
# Variants: PAGEDLLM_PREFILL_VARIANT in csrc/kernels/paged_attention_prefill.cu (prefill_variant()).
# Env: PREFILL (BxL cases at Hq=32 Hkv=8), PREFILL_G2 (cases at Hq=16 Hkv=8, Qwen3-0.6B's group),
# VARIANT_TESTS=0 (skip the per-variant tests), ROUNDS (default 2).
set -uo pipefail
OUT=${1:?output dir}
VARIANTS=${2:?variants, e.g. \"0 1\"}
cd "$(dirname "$0")/../.."
PREFILL=${PREFILL:-1x2048,4x2048,1x8192,8x1024}
PREFILL_G2=${PREFILL_G2:-16x512,64x128,1x8192}
BENCH="python3 benchmarks/kernels/paged_attention.py --no-flashinfer --cases= --batches= --ragged= --repeats 7"
for v in $VARIANTS; do
  [ "${VARIANT_TESTS:-1}" = 0 ] && break
  echo "== prefill variant $v tests $(date -u +%H:%M:%S)" >> "$OUT/prefill_tests.log"
  (cd tests && PAGEDLLM_PREFILL_VARIANT=$v timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu \
     -x -rfE -k "prefill or sliding or misaligned" kernels/test_paged_attention.py 2>&1 | tail -4) >> "$OUT/prefill_tests.log"
done
for round in $(seq "${ROUNDS:-2}"); do for v in $VARIANTS; do
  echo "== prefill variant $v group 4 $(date -u +%H:%M:%S)" >> "$OUT/prefill_bench.log"
  PAGEDLLM_PREFILL_VARIANT=$v timeout 120 $BENCH --prefill "$PREFILL" --out /tmp/p$v.json 2>&1 \
    | grep -A20 "TFLOP/s" >> "$OUT/prefill_bench.log"
  echo "== prefill variant $v group 2 $(date -u +%H:%M:%S)" >> "$OUT/prefill_bench.log"
  PAGEDLLM_PREFILL_VARIANT=$v timeout 120 $BENCH --num-q-heads 16 --prefill "$PREFILL_G2" --out /tmp/p${v}g2.json 2>&1 \
    | grep -A20 "TFLOP/s" >> "$OUT/prefill_bench.log"
done; done
