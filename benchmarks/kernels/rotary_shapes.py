"""The layer's q/k norm + rotary + K/V cache write (one ops.rotary_embedding call) at decode and
prefill token counts, on the model shapes' views of one fused qkv output, as the layer calls it.

Each time is the median per call of a CUDA graph of `--calls` launches (paged_attention.time_fn);
GB/s counts q and k read and written, v read, the K/V rows written to the cache and the cos|sin
rows read. Run it once per kernel choice to compare (PAGEDLLM_ROTARY_VEC=0: the general kernel):
  python benchmarks/kernels/rotary_shapes.py --out rotary.json
  PAGEDLLM_ROTARY_VEC=0 python benchmarks/kernels/rotary_shapes.py --out rotary_general.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from model_shapes import SHAPES  # noqa: E402
from paged_attention import time_fn  # noqa: E402

import pagedllm.ops as ops  # noqa: E402


def rotary_case(shape: str, tokens: int, calls: int, repeats: int) -> dict:
    cfg = SHAPES[shape]
    d = cfg["head_dim"]
    hq, hkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    dtype, dev, block_size = torch.bfloat16, "cuda", 16
    max_pos = 4096
    inv_freq = 1.0 / (cfg.get("rope_theta", 1e6) ** (torch.arange(0, d, 2).float() / d))
    freqs = torch.outer(torch.arange(max_pos).float(), inv_freq)
    table = torch.cat((freqs.cos(), freqs.sin()), dim=-1).to(dev)  # float32, as the model keeps it
    qkv = torch.randn(tokens, (hq + 2 * hkv) * d, device=dev, dtype=dtype)
    q, k, v = qkv[:, : hq * d], qkv[:, hq * d: (hq + hkv) * d], qkv[:, (hq + hkv) * d:]
    q_w = torch.rand(d, device=dev, dtype=dtype) + 0.5
    k_w = torch.rand(d, device=dev, dtype=dtype) + 0.5
    positions = torch.randint(0, max_pos, (tokens,), device=dev)
    num_blocks = max(64, 4 * tokens // block_size)
    kv_cache = torch.zeros(2, num_blocks, block_size, hkv, d, device=dev, dtype=dtype)
    slots = torch.randperm(num_blocks * block_size, device=dev)[:tokens].to(torch.int32)

    def call():
        ops.rotary_embedding(positions, q, k, d, table, True, q_norm_weight=q_w, k_norm_weight=k_w,
                             norm_eps=1e-6, value=v, kv_cache=kv_cache, slot_mapping=slots)

    us, mode = time_fn(call, calls, repeats)
    moved = tokens * ((2 * (hq + hkv) + hkv + 2 * hkv) * d * 2 + d * 4)  # + the cos|sin row
    return {"shape": shape, "tokens": tokens, "us": round(us, 2), "gbs": round(moved / us / 1e3, 1),
            "mode": mode}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="qwen3-0.6b,qwen3-8b")
    p.add_argument("--tokens", default="1,64,244,1024,8192")
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", default="rotary_shapes.json")
    args = p.parse_args()
    kernel = "general" if os.environ.get("PAGEDLLM_ROTARY_VEC") == "0" else "default"
    rows = []
    for shape in args.shapes.split(","):
        for tokens in map(int, args.tokens.split(",")):
            row = rotary_case(shape, tokens, args.calls, args.repeats)
            rows.append(row)
            print(f"{kernel:8s} {shape:11s} tokens {tokens:6d}: {row['us']:8.2f} us  "
                  f"{row['gbs']:7.1f} GB/s ({row['mode']})", flush=True)
    with open(args.out, "w") as f:
        json.dump({"kernel": kernel, "device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
