#!/usr/bin/env bash
# One device call for a change behind an environment switch, measured against the code it
# replaces on one machine: build; kernel tests (-n 4) with the switch in its default state and
# the named test files again with it set; W-nano and batch 16 alternated, switch unset ("on") and
# set ("off"), ROUNDS rounds (constant_ab.sh); with NPROF=1 a kernel profile of 10 W-nano decode
# steps each way; with OTHER_TESTS=1 the model / engine / gpu tests (with the real-weights test
# when .devstage/smol14.gguf and the gguf / accelerate wheels in .whl are carried).
#   TESTS_OFF=kernels/test_sampling_kernel.py NPROF=1 bash benchmarks/env_ab_session.sh "$OUT" PAGEDLLM_RACE_SKIP 0
# Env: ROUNDS (default 2), TESTS_OFF (test paths under tests/ run again with the switch set),
# SKIP_TESTS=1, NPROF=1, OTHER_TESTS=1. Logs: $OUT/tests.log, ab.log, nprof.log, nano_*.json.
set -u
OUT=${1:?output dir}; NAME=${2:?environment variable}; OFF=${3:?value that turns the change off}
cd "$(dirname "$0")/.."
L=/tmp/env_ab; mkdir -p $L
t0=$(date +%s); since() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
bash benchmarks/gpu_session.sh $L build > /dev/null || { tail -30 $L/build.log; exit 1; }
since built
PYTEST="python3 -m pytest -q -p no:cacheprovider -m gpu -rfE"
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  (cd tests && timeout 150 $PYTEST -n 4 kernels 2>&1 | tail -8) > $OUT/tests.log
  if [ -n "${TESTS_OFF:-}" ]; then
    (cd tests && env "$NAME=$OFF" timeout 150 $PYTEST -n 4 $TESTS_OFF 2>&1 | tail -4) >> $OUT/tests.log
  fi
  since "kernel tests: $(grep -E 'passed|failed' $OUT/tests.log | tr '\n' ';')"
fi
if [ "${OTHER_TESTS:-0}" = 1 ]; then
  [ -f .devstage/smol14.gguf ] && export PAGEDLLM_REAL_GGUF=$PWD/.devstage/smol14.gguf
  GPU_TEST_DIRS="models engine gpu" GPU_TEST_TIMEOUT=330 bash benchmarks/gpu_session.sh $L test 2>&1 | tail -25 >> $OUT/tests.log
  since "model/engine tests: $(grep -E 'passed|failed' $L/pytest_gpu.log | tail -1)"
  unset PAGEDLLM_REAL_GGUF
fi
SKIP_BUILD=1 ROUNDS=${ROUNDS:-2} bash benchmarks/constant_ab.sh $OUT env "$NAME" "$OFF" 2>&1 | tee $OUT/ab.log
if [ "${NPROF:-0}" = 1 ]; then
  for side in on off; do
    echo "== $NAME $side" >> $OUT/nprof.log
    if [ $side = on ]; then unset "$NAME"; else export "$NAME=$OFF"; fi
    bash benchmarks/gpu_session.sh $L nprof >> $OUT/nprof.log 2>&1
    since "profile $side done"
  done
  unset "$NAME"
fi
