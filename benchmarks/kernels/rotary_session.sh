#!/usr/bin/env bash
# One device call for the register-path rotary kernel against the general one it replaces
# (PAGEDLLM_ROTARY_VEC=0), on one machine. Build; kernel tests (-n 4), the rotary tests again on
# the general kernel; rotary_shapes.py under both kernels; W-nano runs A (general) and B (register)
# in turn, each with its by-batch-size summary; with NPROF=1 a kernel profile of 10 decode steps
# under each; with OTHER_TESTS=1 the model / engine / gpu tests (the real-weights test too when
# .devstage/smol14.gguf and the gguf / accelerate wheels in .whl are carried).
#   NPROF=1 OTHER_TESTS=1 ROUNDS=2 bash benchmarks/kernels/rotary_session.sh "$OUT"
# Env: ROUNDS (W-nano rounds, default 1), SKIP_TESTS=1, SKIP_KERNELS=1. At most six logs in $OUT.
# (The 12th session's first call also swept the decode split plan's waves with this script's
# earlier version, rotary_waves_session.sh; the knob was removed after it: see NOTES.md.)
set -u
OUT=${1:?output dir}
cd "$(dirname "$0")/../.."
L=/tmp/rotary_session; mkdir -p $L
t0=$(date +%s); since() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
bash benchmarks/gpu_session.sh $L build > /dev/null || { tail -30 $L/build.log; exit 1; }
since built
PYTEST="python3 -m pytest -q -p no:cacheprovider -m gpu -rfE"
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  (cd tests && timeout 150 $PYTEST -n 4 kernels 2>&1 | tail -8) > $OUT/tests.log
  (cd tests && PAGEDLLM_ROTARY_VEC=0 timeout 90 $PYTEST kernels/test_layer_ops.py -k rotary 2>&1 | tail -4) >> $OUT/tests.log
  since "kernel tests: $(grep -E 'passed|failed' $OUT/tests.log | tr '\n' ';')"
fi
if [ "${OTHER_TESTS:-0}" = 1 ]; then
  [ -f .devstage/smol14.gguf ] && export PAGEDLLM_REAL_GGUF=$PWD/.devstage/smol14.gguf
  GPU_TEST_DIRS="models engine gpu" GPU_TEST_TIMEOUT=330 bash benchmarks/gpu_session.sh $L test 2>&1 | tail -25 >> $OUT/tests.log
  since "model/engine tests: $(grep -E 'passed|failed' $L/pytest_gpu.log | tail -1)"
  unset PAGEDLLM_REAL_GGUF
fi
if [ "${SKIP_KERNELS:-0}" != 1 ]; then
  for kernel in 1 0 1; do  # the default twice: a drift of the card shows
    PAGEDLLM_ROTARY_VEC=$kernel timeout 90 python3 benchmarks/kernels/rotary_shapes.py --out $L/rot.json >> $OUT/rotary.log 2>&1
  done
  since "rotary shapes done"
fi
pick='"(output_tokens_per_second|mean_step_model_ms|gpu_idle_fraction|roofline_fraction|read_bandwidth_gbs)"'
for r in $(seq "${ROUNDS:-1}"); do
  for v in 0 1; do
    rm -f $L/nano_graphs.json
    PAGEDLLM_ROTARY_VEC=$v NANO_ARGS=--gpu-idle bash benchmarks/gpu_session.sh $L nano > /dev/null 2>&1
    since "nano rotary_vec=$v round $r: $(grep -E "$pick" $L/nano_graphs.json 2>/dev/null | tr -d ' \n')" | tee -a $OUT/nano.log
    python3 benchmarks/step_log_summary.py $L/nano_steps.json $L/nano_graphs.json >> $OUT/nano.log 2>&1
  done
done
if [ "${NPROF:-0}" = 1 ]; then
  for v in 0 1; do
    echo "== rotary_vec=$v" >> $OUT/nprof.log
    PAGEDLLM_ROTARY_VEC=$v bash benchmarks/gpu_session.sh $L nprof >> $OUT/nprof.log 2>&1
    since "profile rotary_vec=$v done"
  done
fi
