#!/usr/bin/env bash
# One device call: W-nano (with --gpu-idle) and a batch-16 run with a module-level constant of
# the installed package at its repo value ("on") and at another value ("off"), alternated on the
# same machine (the installed copy is edited, then restored). Builds first unless SKIP_BUILD=1.
#   bash benchmarks/constant_ab.sh "$OUT" pagedllm.models.llama FUSED_KV_WRITE False
# With "env" as the module, an environment variable instead: unset ("on") or set to the value.
#   bash benchmarks/constant_ab.sh "$OUT" env PAGEDLLM_PREFILL_VARIANT 1
#   env: ROUNDS (default 2), NANO=0 (batch 16 only), B16=0 (W-nano only)
set -uo pipefail
OUT=${1:?output dir}; MODULE=${2:?module}; NAME=${3:?constant}; OFF=${4:?value for "off"}
cd "$(dirname "$0")/.."
L=/tmp/constant_ab; mkdir -p $L
t0=$(date +%s); since() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
[ "${SKIP_BUILD:-0}" = 1 ] || bash benchmarks/gpu_session.sh $L build > /dev/null || { tail -30 $L/build.log; exit 1; }
if [ "$MODULE" = env ]; then
  ON="(unset)"
  set_to() { if [ "$1" = "(unset)" ]; then unset "$NAME"; else export "$NAME=$1"; fi; }
  shown() { echo "${!NAME-(unset)}"; }
else
  F=$(python3 -c "import torch, $MODULE as m; print(m.__file__)")
  ON=$(grep -E "^$NAME = " "$F" | head -1 | sed -E "s/^$NAME = //")
  [ -n "$ON" ] || { echo "no line '$NAME = ...' in $F"; exit 1; }
  set_to() { sed -i -E "s/^$NAME = .*/$NAME = $1/" "$F"; rm -rf "$(dirname "$F")/__pycache__"; }
  shown() { grep -E "^$NAME = " "$F" | sed -E "s/^$NAME = //"; }
fi
SMALL="--model-shape qwen3-0.6b --dtype bfloat16 --max-model-len 2048 --num-prompts 16 --input-len 256 --output-len 1024"
pick='"(output_tokens_per_second|mean_step_model_ms|gpu_idle_fraction|roofline_fraction)"'
for r in $(seq 1 "${ROUNDS:-2}"); do
  for v in on off; do
    set_to "$([ $v = on ] && echo "$ON" || echo "$OFF")"
    if [ "${B16:-1}" = 1 ]; then
      timeout 90 python3 benchmarks/throughput.py $SMALL --output-json $OUT/b16_$v$r.json > $L/b16.log 2>&1
      since "batch16 $v$r ($NAME = $(shown)): $(grep -E "$pick" $OUT/b16_$v$r.json 2>/dev/null | tr -d ' \n')"
    fi
    if [ "${NANO:-1}" = 1 ]; then
      NANO_ARGS=--gpu-idle bash benchmarks/gpu_session.sh $L nano > /dev/null 2>&1
      cp $L/nano_graphs.json $OUT/nano_$v$r.json 2>/dev/null
      since "nano $v$r: $(grep -E "$pick" $L/nano_graphs.json 2>/dev/null | tr -d ' \n')"
    fi
  done
done
set_to "$ON"
