"""The decode step's residual-add + RMSNorm (ops.fused_add_rms_norm) at decode batch sizes: plain
(x + residual) and summing a split-K GEMM's float32 partials (the engine's o / down projections
at <= 128 rows). The kernel is latency-bound at these sizes (a few hundred KB per call), so the
figure that matters is µs per call inside a CUDA graph, as the engine replays it.

    python benchmarks/kernels/norm_shapes.py --hidden 1024 --out norm.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from paged_attention import time_fn  # noqa: E402

import pagedllm.ops as ops  # noqa: E402


def norm_case(rows: int, hidden: int, slices: int, calls: int, repeats: int) -> dict:
    g = torch.Generator(device="cuda").manual_seed(rows)
    x = torch.randn(rows, hidden, device="cuda", generator=g).to(torch.bfloat16)
    residual = torch.randn(rows, hidden, device="cuda", generator=g).to(torch.bfloat16)
    weight = torch.rand(hidden, device="cuda", generator=g).to(torch.bfloat16) + 0.5
    partials = torch.randn(slices, rows, hidden, device="cuda", generator=g) if slices else None
    us, mode = time_fn(lambda: ops.fused_add_rms_norm(x, residual, weight, 1e-6, partials=partials),
                       calls, repeats)
    return {"rows": rows, "hidden": hidden, "partials": slices, "us": round(us, 2), "mode": mode}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default="16,40,128,244")
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--partials", default="0,4", help="split-K slices summed in (0: plain x + residual)")
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", default="norm_shapes.json")
    args = p.parse_args()
    label = os.environ.get("NORM_LABEL", "pagedllm")
    results = []
    for slices in map(int, args.partials.split(",")):
        for rows in map(int, args.rows.split(",")):
            row = norm_case(rows, args.hidden, slices, args.calls, args.repeats)
            results.append(row)
            print(f"{label:8s} hidden {args.hidden} partials {slices} rows {rows:4d}: {row['us']:7.2f} us "
                  f"({row['mode']})", flush=True)
    with open(args.out, "w") as f:
        json.dump({"setting": label, "device": torch.cuda.get_device_name(), "rows": results}, f, indent=1)


if __name__ == "__main__":
    main()
