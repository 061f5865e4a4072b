#!/usr/bin/env bash
# One device call: Qwen3-8B's decode-step GEMMs at W-8B's batch sizes (128-256 sequences), each
# timed alone (linear_shapes.py: cuBLAS, cuBLASLt, split-K 2/4; norm_shapes.py: the fused norm
# summing 0/2/4 split-K planes; lt_algos.cu --8b: cuBLASLt's own algorithm list), then the
# 8bprof kernel profile of 10 decode steps at 192 sequences under three split-K rules, edited in
# the installed copy of layers/linear.py: a = as in the repo, b = SPLIT_K_MAX_ROWS 256 (down_proj
# splits up to 256 rows), c = b plus SPLIT_K_WIDE_MIN_K_OVER_N 1 (o_proj splits too).
# ~6-8 minutes with the build.   bash benchmarks/gemm_8b_probe.sh "$OUT"
set -uo pipefail
OUT=${1:?output dir}
cd "$(dirname "$0")/.."
bash benchmarks/gpu_session.sh "$OUT" build > /dev/null || exit 1
export PYTHONUNBUFFERED=1
echo "== per-call timings $(date -u +%H:%M:%S)"
timeout 150 python3 benchmarks/kernels/linear_shapes.py --shape qwen3-8b --batch 128 160 192 224 256 \
  --split-k 2 4 --out "$OUT/linear_shapes.json" > "$OUT/linear_shapes.log" 2>&1
cut -c1-260 "$OUT/linear_shapes.log"
timeout 60 python3 benchmarks/kernels/norm_shapes.py --hidden 4096 --rows 128,160,192,224,256 \
  --partials 0,2,4 --out "$OUT/norm_shapes.json" > "$OUT/norm_shapes.log" 2>&1
cat "$OUT/norm_shapes.log"
# lt_algos.cu builds against the cuBLAS wheel torch loads.
CUBLAS=$(python3 -c "import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], 'cu13'))")
nvcc -O2 -std=c++17 -arch=sm_90 -I"$CUBLAS/include" benchmarks/kernels/lt_algos.cu -L"$CUBLAS/lib" \
  -l:libcublasLt.so.13 -l:libcublas.so.13 -Xlinker -rpath="$CUBLAS/lib" -o /tmp/lt_algos \
  && timeout 150 /tmp/lt_algos --8b --read-gbs 3020 128 160 192 224 256 > "$OUT/lt_algos.log" 2>&1
grep -E "^[a-z_]+ +M=|GemmEx" "$OUT/lt_algos.log"
LINEAR=$(python3 -c "import torch, pagedllm.layers.linear as m; print(m.__file__)")
for rule in a b c; do
  case $rule in
    b) sed -i 's/^SPLIT_K_MAX_ROWS = .*/SPLIT_K_MAX_ROWS = 256/' "$LINEAR" ;;
    c) sed -i 's/^SPLIT_K_WIDE_MIN_K_OVER_N = .*/SPLIT_K_WIDE_MIN_K_OVER_N = 1/' "$LINEAR" ;;
  esac
  rm -rf "$(dirname "$LINEAR")/__pycache__"
  echo "== rule $rule: $(grep -E '^SPLIT_K_(MAX_ROWS|WIDE_MIN_K_OVER_N) = ' "$LINEAR" | tr '\n' ' ')"
  bash benchmarks/gpu_session.sh "$OUT" 8bprof
  mv "$OUT/w8b_profile.log" "$OUT/w8b_profile_$rule.log"
done
# The installed copy back to the repo's rule.
cp python/pagedllm/layers/linear.py "$LINEAR"
