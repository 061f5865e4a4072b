#!/usr/bin/env bash
# One device call: W-nano (with --gpu-idle) and a batch-16 run with a module-level constant of
# the installed package at its repo value ("on") and at another value ("off"), alternated on the
# same machine (the installed copy is edited, then restored). Builds first unless SKIP_BUILD=1.
#   bash benchmarks/constant_ab.sh "$OUT" pagedllm.models.llama FUSED_KV_WRITE False
# With "env" as the module, an environment variable instead: unset ("on") or set to the value.
#   bash benchmarks/constant_ab.sh "$OUT" env PAGEDLLM_PREFILL_VARIANT 1
# With "flag", a throughput.py flag: absent ("on") or given ("off").
#   bash benchmarks/constant_ab.sh "$OUT" flag --no-plan-ahead
#   env: ROUNDS (default 2), NANO=0 (batch 16 only), B16=0 (W-nano only), W8B=1 (also W-8B,
#   ~300 s a run: with SIDES=on or SIDES=off, one side per device call), SIDES (default "on off")
#   SIDES=off W8B=1 NANO=0 B16=0 ROUNDS=1 bash benchmarks/constant_ab.sh "$OUT" pagedllm.models.llama FUSED_KV_WRITE False
# $OUT gets the W-nano / W-8B result JSONs (nano_on1.json, w8b_off1.json ...); batch 16 is
# summarized in the log.
set -uo pipefail
OUT=${1:?output dir}; MODULE=${2:?module, env or flag}; NAME=${3:?constant, variable or flag}
OFF=${4:-}; [ "$MODULE" = flag ] || [ -n "$OFF" ] || { echo "value for \"off\" missing"; exit 1; }
cd "$(dirname "$0")/.."
L=/tmp/constant_ab; mkdir -p $L
t0=$(date +%s); since() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
[ "${SKIP_BUILD:-0}" = 1 ] || bash benchmarks/gpu_session.sh $L build > /dev/null || { tail -30 $L/build.log; exit 1; }
FLAG=""  # the throughput.py flag of the current side (flag mode)
if [ "$MODULE" = flag ]; then
  ON="(absent)"
  set_to() { if [ "$1" = "(absent)" ]; then FLAG=""; else FLAG="$NAME"; fi; }
  shown() { echo "${FLAG:-(absent)}"; }
elif [ "$MODULE" = env ]; then
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
pick='"(output_tokens_per_second|mean_step_model_ms|gpu_idle_fraction|gpu_idle_mean_gap_ms|roofline_fraction|plans_ahead)"'
# Runs gpu_session.sh stage $1 (results JSON $2 in $L) and keeps the JSON as $OUT/$3_<side><round>.json.
keep_stage_result() {
  bash benchmarks/gpu_session.sh $L "$1" > /dev/null 2>&1
  cp "$L/$2" "$OUT/$3_$v$r.json" 2>/dev/null
  rm -f "$L/$2"
  since "$3 $v$r: $(grep -E "$pick" "$OUT/$3_$v$r.json" 2>/dev/null | tr -d ' \n')"
}
for r in $(seq 1 "${ROUNDS:-2}"); do
  for v in ${SIDES:-on off}; do
    set_to "$([ $v = on ] && echo "$ON" || echo "${OFF:-set}")"
    if [ "${B16:-1}" = 1 ]; then
      timeout 90 python3 benchmarks/throughput.py $SMALL --gpu-idle $FLAG --output-json $L/b16.json > $L/b16.log 2>&1
      since "batch16 $v$r ($NAME = $(shown)): $(grep -E "$pick" $L/b16.json 2>/dev/null | tr -d ' \n')"
      rm -f $L/b16.json
    fi
    # gpu_session.sh's stage takes the current side's flag through NANO_ARGS / W8B_ARGS.
    [ "${NANO:-1}" = 1 ] && NANO_ARGS="--gpu-idle $FLAG" keep_stage_result nano nano_graphs.json nano
    [ "${W8B:-0}" = 1 ] && W8B_ARGS="--gpu-idle $FLAG" keep_stage_result 8b w8b.json w8b
  done
done
set_to "$ON"
