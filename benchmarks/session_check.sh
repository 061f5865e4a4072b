#!/usr/bin/env bash
# One device call that checks a change end to end: build, GPU tests (kernels with -n 4, then the
# rest), W-nano at max_model_len 2048 and 40960 with --gpu-idle, ncu counters of the decode
# kernels (group 4 64 x 4096, group 2 244 x 250-1200). Small outputs only in $OUT (8 files come back).
#   bash benchmarks/session_check.sh
set -u
cd "$(dirname "$0")/.."
L=/tmp/logs; mkdir -p $L
bash benchmarks/gpu_session.sh $L build > /dev/null || { tail -30 $L/build.log; exit 1; }
GPU_TEST_ARGS="-n 4" GPU_TEST_DIRS="kernels" bash benchmarks/gpu_session.sh $L test > $L/tk.txt 2>&1
echo "kernels: $(grep -E 'passed|failed' $L/tk.txt | tail -1)"; grep -E "^(FAILED|ERROR)" $L/pytest_gpu.log | head
cp $L/pytest_gpu.log $L/pytest_kernels.log
GPU_TEST_DIRS="models engine gpu distributed" bash benchmarks/gpu_session.sh $L test > $L/te.txt 2>&1
echo "others: $(grep -E 'passed|failed' $L/te.txt | tail -1)"; grep -E "^(FAILED|ERROR)" $L/pytest_gpu.log | head
grep -h -E "passed|failed" $L/pytest_kernels.log $L/pytest_gpu.log | tail -2 > $OUT/pytest_summary.txt
NANO_ARGS="--gpu-idle" bash benchmarks/gpu_session.sh $L nano > /dev/null 2>&1
cp $L/nano_graphs.json $L/nano_steps.json $OUT/
python3 - <<'PY'
import json; d=json.load(open('/tmp/logs/nano_graphs.json'))
print({k: d.get(k) for k in ('output_tokens_per_second','mean_step_host_ms','mean_step_model_ms','gpu_idle_fraction','gpu_idle_mean_gap_ms','graph_input_build_ms_mean','graph_launch_ms_mean','roofline_fraction','read_bandwidth_gbs')})
PY
timeout 120 python3 benchmarks/throughput.py --model-shape qwen3-0.6b --workload nano --dtype bfloat16 \
  --max-model-len 40960 --gpu-idle --output-json $OUT/nano_40960.json > $L/nano_40960.log 2>&1
grep -E '"(output_tokens_per_second|mean_step_host_ms|mean_step_model_ms|gpu_idle_fraction|gpu_idle_mean_gap_ms|roofline_fraction)"' $OUT/nano_40960.json
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
echo "ncu: $NCU"
B="python3 benchmarks/kernels/paged_attention.py --no-flashinfer --prefill= --repeats 1 --calls 2 --batches="
timeout 100 $NCU --clock-control none -k regex:"token_attention|flash" -c 2 --section SpeedOfLight \
  --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy --section LaunchStats \
  $B --cases 64x4096 --ragged= --out /tmp/n1.json > $OUT/ncu_g4.txt 2>&1
timeout 80 $NCU --clock-control none -k regex:"token_attention" -c 1 --section SpeedOfLight \
  --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy \
  $B --no-sdpa --num-q-heads 16 --cases= --ragged 244x250-1200 --out /tmp/n2.json > $OUT/ncu_g2.txt 2>&1
grep -E "DRAM Throughput|Memory Throughput|Duration|L2 Hit|Achieved Occupancy|Warp Cycles Per Issued|==PROF==|kernel|Kernel" $OUT/ncu_g4.txt $OUT/ncu_g2.txt | cut -c1-150 | head -40
date -u
