#!/usr/bin/env bash
# One device call: W-nano and a batch-16 run with the decode split-K (layers/linear.py) on and
# off, alternated on the same machine (off = SPLIT_K_MAX_ROWS = 0 in the installed copy of
# linear.py; on = the value in the repo). Builds first unless SKIP_BUILD=1. Results in $OUT.
#   bash benchmarks/split_k_ab.sh "$OUT"        # env: ROUNDS (default 2), NANO=0 (batch 16 only)
exec bash "$(dirname "$0")/constant_ab.sh" "${1:?output dir}" pagedllm.layers.linear SPLIT_K_MAX_ROWS 0
