"""The fused sampler (ops.exponential_race_sample: Gumbel race over bf16 logits) at decode batch
sizes over Qwen3's 151,936-token vocabulary, for logits of several spreads (normal, standard
deviation --sigmas; T = 1; no greedy rows, or only greedy rows with --greedy).

Each time is the median per call of a CUDA graph of `--calls` launches on one logits tensor
(paged_attention.time_fn); GB/s counts the logits read once. Compare kernels by running it once
per build (the 13th session's A/B of the exact skip used a PAGEDLLM_RACE_SKIP switch, since removed):
  python benchmarks/kernels/sampler_shapes.py --out sampler.json
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


def sampler_case(rows: int, vocab: int, sigma: float, calls: int, repeats: int, greedy_rows: bool) -> dict:
    g = torch.Generator(device="cuda").manual_seed(rows)
    logits = (torch.randn(rows, vocab, device="cuda", generator=g) * sigma).to(torch.bfloat16)
    inv_t = torch.ones(rows, device="cuda")
    greedy = torch.full((rows,), int(greedy_rows), dtype=torch.int32, device="cuda")
    out = torch.empty(rows, dtype=torch.int64, device="cuda")
    step = [0]

    def call():
        step[0] += 1  # captured once: every replay draws with the captured step
        ops.exponential_race_sample(logits, inv_t, greedy, seed=1234, step=step[0], out=out)

    us, mode = time_fn(call, calls, repeats)
    return {"rows": rows, "vocab": vocab, "sigma": sigma, "us": round(us, 2),
            "gbs": round(rows * vocab * 2 / us / 1e3, 1), "mode": mode}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default="1,16,64,144,244")
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--sigmas", default="1,4")
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--greedy", action="store_true",
                   help="greedy rows: the loads and the argmax alone, no noise (the kernel's floor)")
    p.add_argument("--out", default="sampler_shapes.json")
    args = p.parse_args()
    setting = "greedy" if args.greedy else os.environ.get("SAMPLER_LABEL", "pagedllm")
    results = []
    for sigma in map(float, args.sigmas.split(",")):
        for rows in map(int, args.rows.split(",")):
            row = sampler_case(rows, args.vocab, sigma, args.calls, args.repeats, args.greedy)
            results.append(row)
            print(f"{setting:8s} sigma {sigma:4.1f} rows {rows:4d}: {row['us']:8.2f} us  "
                  f"{row['gbs']:7.1f} GB/s ({row['mode']})", flush=True)
    with open(args.out, "w") as f:
        json.dump({"setting": setting, "device": torch.cuda.get_device_name(), "rows": results}, f, indent=1)


if __name__ == "__main__":
    main()
