"""One mixture-of-experts block (layers/moe.py: router, top-k, experts, weighted sum) at decode
and small-prefill token counts, bf16 on CUDA, both expert paths:
- grouped: torch's F.grouped_mm over the expert-sorted pairs, no host sync (timed in a CUDA
  graph, as the engine replays it);
- loop: one gate/up and one down matmul per expert that received tokens, sized on the host
  (cannot be captured: timed eagerly, as the engine runs it).
The experts' weights are read once per call; achieved GB/s counts only the experts the routing
touched, against the weights' bytes at the copy bandwidth measured in the same run.

    python benchmarks/kernels/moe_block.py --out moe_block.json     # Qwen3-30B-A3B's layer
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from paged_attention import copy_bandwidth_gbs, time_fn  # noqa: E402

import pagedllm.layers.moe as moe  # noqa: E402
from pagedllm.layers.moe import SparseMoeBlock, route  # noqa: E402


def make_block(hidden: int, inter: int, experts: int, top_k: int) -> SparseMoeBlock:
    block = SparseMoeBlock(hidden, experts, top_k, inter, renormalize=True)
    block = block.to(device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        for param in block.parameters():
            param.normal_(0.0, param.shape[-1] ** -0.5)
    return block


def case(block: SparseMoeBlock, tokens: int, path: str, calls: int, repeats: int) -> dict:
    grouped = path == "grouped"
    moe.grouped_mm_on_device = lambda *args: grouped     # the benchmark picks the path
    assert block.experts.grouped == grouped
    x = torch.randn(tokens, block.gate.weight.shape[1], device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        touched = route(block.gate(x), block.top_k, block.renormalize)[1].unique().numel()
        us, mode = time_fn(lambda: block(x), calls, repeats)
    experts = block.experts
    per_expert = (experts.gate_up_proj[0].numel() + experts.down_proj[0].numel()) * 2
    gbs = touched * per_expert / (us * 1e-6) / 1e9
    return {"tokens": tokens, "path": path, "us": round(us, 1), "mode": mode,
            "experts_touched": touched, "weight_gbs": round(gbs, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", default="1,8,32,64,128,256")
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--inter", type=int, default=768, help="each expert's intermediate size")
    p.add_argument("--experts", type=int, default=128)
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("--paths", default="grouped,loop")
    p.add_argument("--calls", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="moe_block.json")
    args = p.parse_args()
    on_device = moe.grouped_mm_on_device
    copy_gbs = copy_bandwidth_gbs()
    block = make_block(args.hidden, args.inter, args.experts, args.top_k)
    rows = []
    for tokens in map(int, args.tokens.split(",")):
        for path in args.paths.split(","):
            row = case(block, tokens, path, args.calls, args.repeats)
            row["of_copy_bw"] = round(row["weight_gbs"] / copy_gbs, 3)
            rows.append(row)
            print(f"tokens {tokens:4d} {path:7s} {row['us']:9.1f} us ({row['mode']}), "
                  f"{row['experts_touched']:3d} experts, {row['weight_gbs']:7.1f} GB/s "
                  f"({row['of_copy_bw']:.0%} of copy)", flush=True)
    moe.grouped_mm_on_device = on_device
    with open(args.out, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "copy_gbs": round(copy_gbs, 1),
                   "shape": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
