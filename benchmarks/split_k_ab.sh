#!/usr/bin/env bash
# One device call: W-nano and a batch-16 run with the decode split-K (layers/linear.py) on and
# off, alternated on the same machine (off = SPLIT_K_MAX_ROWS set to 0 in the installed copy of
# linear.py; on = the value in the repo). Builds first unless SKIP_BUILD=1. Results in $OUT.
#   bash benchmarks/split_k_ab.sh "$OUT"        # env: ROUNDS (default 2), NANO=0 (batch 16 only)
set -uo pipefail
OUT=${1:?output dir}
cd "$(dirname "$0")/.."
L=/tmp/split_k_ab; mkdir -p $L
[ "${SKIP_BUILD:-0}" = 1 ] || bash benchmarks/gpu_session.sh $L build > /dev/null || { tail -30 $L/build.log; exit 1; }
F=$(python3 -c "import pagedllm.layers.linear as m; print(m.__file__)")
ON=$(grep -E '^SPLIT_K_MAX_ROWS = [0-9]+' python/pagedllm/layers/linear.py | grep -oE '[0-9]+$')
SMALL="--model-shape qwen3-0.6b --dtype bfloat16 --max-model-len 2048 --num-prompts 16 --input-len 256 --output-len 1024"
pick='"(output_tokens_per_second|mean_step_model_ms|mean_step_host_ms|gpu_idle_fraction|roofline_fraction)"'
for r in $(seq 1 "${ROUNDS:-2}"); do
  for v in on off; do
    rows=$([ $v = on ] && echo "$ON" || echo 0)
    sed -i -E "s/^SPLIT_K_MAX_ROWS = [0-9]+/SPLIT_K_MAX_ROWS = $rows/" "$F"
    rm -rf "$(dirname "$F")/__pycache__"
    timeout 90 python3 benchmarks/throughput.py $SMALL --output-json $OUT/b16_$v$r.json > $L/b16.log 2>&1
    echo "batch16 $v$r (max rows $rows): $(grep -E "$pick" $OUT/b16_$v$r.json 2>/dev/null | tr -d ' \n')"
    if [ "${NANO:-1}" = 1 ]; then
      NANO_ARGS=--gpu-idle bash benchmarks/gpu_session.sh $L nano > /dev/null 2>&1
      cp $L/nano_graphs.json $OUT/nano_$v$r.json 2>/dev/null
      echo "nano $v$r (max rows $rows): $(grep -E "$pick" $L/nano_graphs.json 2>/dev/null | tr -d ' \n')"
    fi
  done
done
sed -i -E "s/^SPLIT_K_MAX_ROWS = [0-9]+/SPLIT_K_MAX_ROWS = $ON/" "$F"
