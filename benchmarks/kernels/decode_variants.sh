#!/usr/bin/env bash
# Decode-attention kernel variants side by side on one GPU (after gpu_session.sh's build stage):
# the kernel tests under each variant, then the same decode cases per variant, all in two logs.
#   bash benchmarks/kernels/decode_variants.sh OUT_DIR "0 1 5"
# Variants: values of the environment variable VAR, by default PAGEDLLM_DECODE_VARIANT
# (decode_variant() in csrc/kernels/paged_attention_decode.cu); a knob added for a measurement
# goes through VAR too (the 12th session's PAGEDLLM_DECODE_WAVES, since removed).
# Env: CASES (uniform BxL list), RAGGED, RAGGED_G2 (ragged cases at group 2, Qwen3-0.6B's),
# HINT_CASES (cases re-run with a 40,960-token max_seq_len hint, as in a CUDA graph),
# VARIANT_TESTS=0 (skip the per-variant kernel tests), ROUNDS (the variants' benchmarks run this
# many times in turn, A B A B ..., so a drift of the card shows instead of favouring one variant).
set -uo pipefail
OUT=${1:?output dir}
VARIANTS=${2:-"0 5"}
VAR=${VAR:-PAGEDLLM_DECODE_VARIANT}
cd "$(dirname "$0")/../.."
CASES=${CASES:-1x4096,1x16384,16x4096,64x512,64x4096,256x512,256x4096}
RAGGED=${RAGGED:-256x100-1100,128x1000-3000}
RAGGED_G2=${RAGGED_G2:-256x100-1100,240x100-2000}
HINT_CASES=${HINT_CASES-1x512,1x4096,16x512,16x4096}  # empty: no hint runs
BENCH="python3 benchmarks/kernels/paged_attention.py --no-flashinfer --no-sdpa --prefill= --repeats 7"

ROUNDS=${ROUNDS:-1}
for v in $VARIANTS; do
  [ "${VARIANT_TESTS:-1}" = 0 ] && break
  echo "== variant $v tests $(date -u +%H:%M:%S)" >> "$OUT/variant_tests.log"
  (cd tests && env "$VAR=$v" timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu \
     -x -rfE kernels/test_paged_attention.py 2>&1 | tail -6) >> "$OUT/variant_tests.log"
done
for round in $(seq "$ROUNDS"); do for v in $VARIANTS; do
  echo "== variant $v group 4 $(date -u +%H:%M:%S)" >> "$OUT/variant_bench.log"
  env "$VAR=$v" timeout 120 $BENCH --cases "$CASES" --ragged "$RAGGED" \
    --out /tmp/v$v.json 2>&1 | grep -v "^device" >> "$OUT/variant_bench.log"
  echo "== variant $v group 2 $(date -u +%H:%M:%S)" >> "$OUT/variant_bench.log"
  env "$VAR=$v" timeout 60 $BENCH --num-q-heads 16 --cases "" --batches "" \
    --ragged "$RAGGED_G2" --out /tmp/v${v}g2.json 2>&1 | grep -v "^device" >> "$OUT/variant_bench.log"
  [ -z "$HINT_CASES" ] && continue
  echo "== variant $v hint 40960 $(date -u +%H:%M:%S)" >> "$OUT/variant_bench.log"
  env "$VAR=$v" timeout 60 $BENCH --hint-len 40960 --cases "$HINT_CASES" --ragged= \
    --out /tmp/v${v}h.json 2>&1 | grep -v "^device" >> "$OUT/variant_bench.log"
done; done
