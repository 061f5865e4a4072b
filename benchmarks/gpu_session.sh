#!/usr/bin/env bash
# One device session on a bare GPU machine: build for sm_90, then the chosen stages, logs in $OUT.
#   bash benchmarks/gpu_session.sh OUT_DIR "build test nano"      # first call
#   bash benchmarks/gpu_session.sh OUT_DIR "build peer eager 8b"  # a second call
# Stages: build, test (pytest -m gpu), nano (W-nano with CUDA graphs), eager (W-nano eager),
# sync (W-nano with --no-async-scheduling: what the default async scheduling buys),
# nprof (kernel profile of 10 W-nano decode steps), 8bprof (the same for W-8B's shape at 192
# sequences of ~1,120 context tokens, the batch W-8B's cache holds),
# peer (HF generate on W-nano), 8b (W-8B), kernels (decode/prefill attention benchmark),
# moe (the MoE block's expert paths, then the Qwen3-30B-A3B shape end to end; MOE_BEFORE: a
# package directory of older code to run the same workload with; MOE_PEER=1: HF generate too).
# Wheels of packages the machine lacks travel in .whl/ (see the device tool's README).
# Env: GPU_TEST_DIRS (pytest dirs of the test stage), W8B_TIMEOUT, W8B_ARGS (extra engine flags for 8b),
# KERNEL_ARGS (case selection of the kernels stage), KERNEL_TIMEOUT, GPU_TEST_ARGS (extra pytest
# arguments of the test stage, e.g. -n 4), GPU_TEST_TIMEOUT (seconds, default 330), NANO_ARGS
# (extra throughput.py flags of the nano stage).
set -uo pipefail
OUT=${1:?output dir}
STAGES=${2:-"build test nano"}
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PAGEDLLM_CUDA_ARCHS=90 NCCL_NVLS_ENABLE=0
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
has() { [[ " $STAGES " == *" $1 "* ]]; }
stage() { echo "== $1 $(date -u +%H:%M:%S)"; }
NANO="--model-shape qwen3-0.6b --workload nano --dtype bfloat16 --max-model-len 2048"

if has build; then
  stage build
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt"
  python3 -m pip install -q --no-build-isolation --no-deps . > "$OUT/build.log" 2>&1 \
    || { tail -40 "$OUT/build.log"; exit 1; }
fi
if has test; then
  stage test
  (cd tests && PAGEDLLM_REPORT_DIR="$OUT" timeout ${GPU_TEST_TIMEOUT:-330} python3 -m pytest -q -p no:cacheprovider \
     -m gpu -rfE ${GPU_TEST_ARGS:-} ${GPU_TEST_DIRS:-kernels models engine gpu distributed} 2>&1 | tee "$OUT/pytest_gpu.log" | tail -25)
fi
if has nano; then
  stage nano
  timeout 200 python3 benchmarks/throughput.py $NANO --output-json "$OUT/nano_graphs.json" \
    --step-log "$OUT/nano_steps.json" ${NANO_ARGS:-} > "$OUT/nano_graphs.log" 2>&1; tail -40 "$OUT/nano_graphs.log"
fi
if has sync; then
  stage sync  # W-nano with --no-async-scheduling (each step's outputs before the next launch)
  timeout 200 python3 benchmarks/throughput.py $NANO --no-async-scheduling \
    --output-json "$OUT/nano_sync.json" > "$OUT/nano_sync.log" 2>&1; tail -30 "$OUT/nano_sync.log"
fi
if has nprof; then
  stage nprof  # kernel table of 10 steady decode steps (figures of this run are not reported)
  timeout 200 python3 benchmarks/throughput.py $NANO --profile-steps 10 --profile-after 150 \
    > "$OUT/nano_profile.log" 2>&1; grep -A45 "== profile" "$OUT/nano_profile.log" | cut -c1-200
fi
if has 8bprof; then
  stage 8bprof  # kernel table of 10 decode steps of W-8B's shape (figures of this run are not reported)
  timeout 200 python3 benchmarks/throughput.py --model-shape qwen3-8b --dtype bfloat16 --max-model-len 3072 \
    --gpu-memory-utilization 0.9 --input-len 1024 --output-len 300 --num-prompts 192 --profile-steps 10 \
    --profile-after 120 > "$OUT/w8b_profile.log" 2>&1; grep -A30 "== profile" "$OUT/w8b_profile.log" | cut -c1-200
fi
if has eager; then
  stage eager
  timeout 200 python3 benchmarks/throughput.py $NANO --enforce-eager \
    --output-json "$OUT/nano_eager.json" > "$OUT/nano_eager.log" 2>&1; tail -8 "$OUT/nano_eager.log"
fi
if has peer; then
  stage peer
  (cd benchmarks && timeout 300 python3 hf_generate_peer.py --shape qwen3-0.6b --workload nano \
     --batch-size 64 > "$OUT/nano_hf.json" 2> "$OUT/nano_hf.log"); cat "$OUT/nano_hf.json"
fi
if has 8b; then
  stage 8b
  timeout ${W8B_TIMEOUT:-540} python3 benchmarks/throughput.py --model-shape qwen3-8b --workload 8b \
    --dtype bfloat16 --max-model-len 3072 --gpu-memory-utilization 0.9 --progress-every 30 ${W8B_ARGS:-} \
    --output-json "$OUT/w8b.json" > "$OUT/w8b.log" 2>&1; tail -40 "$OUT/w8b.log"
fi
if has kernels; then
  stage kernels
  # FlashInfer (the peer) travels as wheels in wheels/ (carry it); its kernels JIT-compile here.
  if ls wheels/flashinfer*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/fi wheels/*.whl \
      && export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}/tmp/fi" FLASHINFER_WORKSPACE_BASE=/tmp/fi_cache
  fi
  timeout ${KERNEL_TIMEOUT:-200} python3 benchmarks/kernels/paged_attention.py --out "$OUT/kernels.json" \
    --png "$OUT/decode_gbps.png" ${KERNEL_ARGS:-} > "$OUT/kernels.log" 2>&1; tail -30 "$OUT/kernels.log"
fi
if has moe; then
  stage moe
  timeout 90 python3 benchmarks/kernels/moe_block.py --out "$OUT/moe_block.json" > "$OUT/moe_block.log" 2>&1
  cat "$OUT/moe_block.log"
  MOE="--model-shape qwen3-30b-a3b --workload moe --dtype bfloat16 --max-model-len 2048"
  timeout 150 python3 benchmarks/throughput.py $MOE --output-json "$OUT/moe.json" > "$OUT/moe.log" 2>&1
  tail -32 "$OUT/moe.log"
  if [ -n "${MOE_BEFORE:-}" ]; then
    stage moe-before
    PYTHONPATH="$MOE_BEFORE${PYTHONPATH:+:$PYTHONPATH}" timeout 170 python3 benchmarks/throughput.py $MOE \
      --output-json "$OUT/moe_before.json" > "$OUT/moe_before.log" 2>&1; tail -32 "$OUT/moe_before.log"
  fi
  if [ -n "${MOE_PEER:-}" ]; then
    stage moe-peer
    (cd benchmarks && timeout 150 python3 hf_generate_peer.py --shape qwen3-30b-a3b --workload moe \
       --num-prompts 64 --batch-size 64 > "$OUT/moe_hf.json" 2> "$OUT/moe_hf.log"); cat "$OUT/moe_hf.json"
  fi
fi
stage done
