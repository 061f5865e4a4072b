#!/usr/bin/env bash
# One device call: what planning one step ahead buys (EngineCore.plans_ahead, on by default with
# async scheduling). W-nano (with --gpu-idle) and a batch-16 run, ahead on and off
# (--no-plan-ahead) alternated on the same machine; then the engine-level GPU tests. Builds
# first unless SKIP_BUILD=1. At most 8 files land in $OUT.
#   bash benchmarks/plan_ahead_ab.sh "$OUT"      # env: ROUNDS (default 2), TESTS=0 (no tests)
set -uo pipefail
OUT=${1:?output dir}
cd "$(dirname "$0")/.."
L=/tmp/plan_ahead_ab; mkdir -p $L
t0=$(date +%s); since() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
[ "${SKIP_BUILD:-0}" = 1 ] || bash benchmarks/gpu_session.sh $L build > /dev/null || { tail -30 $L/build.log; exit 1; }
since built
SMALL="--model-shape qwen3-0.6b --dtype bfloat16 --max-model-len 2048 --num-prompts 16 --input-len 256 --output-len 1024"
pick='"(output_tokens_per_second|mean_step_model_ms|mean_step_host_ms|gpu_idle_fraction|gpu_idle_mean_gap_ms|roofline_fraction|plans_ahead)"'
for r in $(seq 1 "${ROUNDS:-2}"); do
  for v in on off; do
    flag=$([ $v = off ] && echo --no-plan-ahead)
    NANO_ARGS="--gpu-idle $flag" bash benchmarks/gpu_session.sh $L nano > /dev/null 2>&1
    cp $L/nano_graphs.json $OUT/nano_$v$r.json 2>/dev/null
    since "nano $v$r: $(grep -E "$pick" $L/nano_graphs.json 2>/dev/null | tr -d ' \n')"
    if [ "$r" = 1 ]; then
      timeout 90 python3 benchmarks/throughput.py $SMALL --gpu-idle $flag --output-json $L/b16.json > $L/b16.log 2>&1
      since "batch16 $v: $(grep -E "$pick" $L/b16.json 2>/dev/null | tr -d ' \n')"
    fi
  done
done
if [ "${TESTS:-1}" = 1 ]; then
  GPU_TEST_TIMEOUT=330 GPU_TEST_DIRS="engine gpu models distributed" bash benchmarks/gpu_session.sh $L test > $L/te.txt 2>&1
  cp $L/pytest_gpu.log $OUT/
  since "tests: $(grep -E 'passed|failed' $L/te.txt | tail -1)"; grep -E "^(FAILED|ERROR)|agreement" $L/pytest_gpu.log | head
fi
