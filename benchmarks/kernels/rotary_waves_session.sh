#!/usr/bin/env bash
# One device call for two changes, each against what it would replace, on one machine: the
# register-path rotary kernel (PAGEDLLM_ROTARY_VEC=0: the general kernel) and the decode split
# plan's waves (PAGEDLLM_DECODE_WAVES, default 1). Build; kernel tests (-n 4) with the defaults,
# the rotary tests again on the general kernel and the attention tests at 3 waves;
# rotary_shapes.py under both kernels; decode attention at each of WAVES on ragged group-2 batches
# like W-nano's tail; then W-nano runs A (general rotary, 1 wave), B (register rotary, 1 wave),
# C (register rotary, NANO_WAVES waves) in turn, each with its by-batch-size summary.
#   bash benchmarks/kernels/rotary_waves_session.sh "$OUT"
# Env: ROUNDS (W-nano rounds, default 1), WAVES (default "1 2 4"), NANO_WAVES (default 2),
# SKIP_TESTS=1, SKIP_KERNELS=1 (W-nano only). Four logs land in $OUT.
set -u
OUT=${1:?output dir}
cd "$(dirname "$0")/../.."
L=/tmp/rotary_waves; mkdir -p $L
t0=$(date +%s); since() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
bash benchmarks/gpu_session.sh $L build > /dev/null || { tail -30 $L/build.log; exit 1; }
since built
PYTEST="python3 -m pytest -q -p no:cacheprovider -m gpu -rfE"
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  (cd tests && timeout 150 $PYTEST -n 4 kernels 2>&1 | tail -8) > $OUT/tests.log
  (cd tests && PAGEDLLM_ROTARY_VEC=0 timeout 90 $PYTEST kernels/test_layer_ops.py -k rotary 2>&1 | tail -4) >> $OUT/tests.log
  (cd tests && PAGEDLLM_DECODE_WAVES=3 timeout 120 $PYTEST -n 4 kernels/test_paged_attention.py 2>&1 | tail -4) >> $OUT/tests.log
  since "tests: $(grep -cE 'passed' $OUT/tests.log) summaries; $(grep -E 'passed|failed' $OUT/tests.log | tr '\n' ';')"
fi
if [ "${SKIP_KERNELS:-0}" != 1 ]; then
  for kernel in 1 0 1; do  # the default twice: a drift of the card shows
    PAGEDLLM_ROTARY_VEC=$kernel timeout 90 python3 benchmarks/kernels/rotary_shapes.py --out $L/rot.json >> $OUT/rotary.log 2>&1
  done
  since "rotary shapes done"
  VAR=PAGEDLLM_DECODE_WAVES VARIANT_TESTS=0 HINT_CASES= CASES=1x4096,16x4096,64x512,64x4096 \
    RAGGED=32x1000-3000,64x500-4000,128x1000-3000 \
    RAGGED_G2=16x1000-2000,32x1000-1900,48x800-1800,64x700-1700,96x600-1600,128x500-1500,200x300-1300,256x100-1100 \
    timeout 240 bash benchmarks/kernels/decode_variants.sh $OUT "${WAVES:-1 2 4}"
  since "decode waves done"
fi
pick='"(output_tokens_per_second|mean_step_model_ms|gpu_idle_fraction|roofline_fraction|read_bandwidth_gbs)"'
for r in $(seq "${ROUNDS:-1}"); do
  for c in A B C; do
    case $c in
      A) side="PAGEDLLM_ROTARY_VEC=0" ;;
      B) side="PAGEDLLM_ROTARY_VEC=1" ;;
      C) side="PAGEDLLM_DECODE_WAVES=${NANO_WAVES:-2}" ;;
    esac
    rm -f $L/nano_graphs.json
    env $side NANO_ARGS=--gpu-idle bash benchmarks/gpu_session.sh $L nano > /dev/null 2>&1
    since "nano $c$r ($side): $(grep -E "$pick" $L/nano_graphs.json 2>/dev/null | tr -d ' \n')" | tee -a $OUT/nano.log
    python3 benchmarks/step_log_summary.py $L/nano_steps.json $L/nano_graphs.json >> $OUT/nano.log 2>&1
  done
done
