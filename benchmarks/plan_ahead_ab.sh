#!/usr/bin/env bash
# One device call: what planning one step ahead buys (EngineCore.plans_ahead, on by default with
# async scheduling). W-nano (with --gpu-idle) and a batch-16 run, ahead on and off
# (--no-plan-ahead) alternated on the same machine (constant_ab.sh's flag mode); then the
# engine-level GPU tests. Builds first unless SKIP_BUILD=1.
#   bash benchmarks/plan_ahead_ab.sh "$OUT"      # env: ROUNDS (default 2), TESTS=0 (no tests)
set -uo pipefail
OUT=${1:?output dir}
cd "$(dirname "$0")/.."
bash benchmarks/constant_ab.sh "$OUT" flag --no-plan-ahead
if [ "${TESTS:-1}" = 1 ]; then
  L=/tmp/plan_ahead_ab; mkdir -p $L
  GPU_TEST_TIMEOUT=330 GPU_TEST_DIRS="engine gpu models distributed" bash benchmarks/gpu_session.sh $L test > $L/te.txt 2>&1
  cp $L/pytest_gpu.log $OUT/
  echo "tests: $(grep -E 'passed|failed' $L/te.txt | tail -1)"; grep -E "^(FAILED|ERROR)|agreement" $L/pytest_gpu.log | head
fi
