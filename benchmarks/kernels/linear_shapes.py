"""Decode-step GEMMs of real model shapes: time per call and weight-read GB/s, per BLAS setting.

A decode step's linears are skinny (M = sequences in the batch, 16-256) and read their whole
weight once, so their floor is weight bytes / read bandwidth. This script times each of a model's
linears (QKV, O, gate/up, down, lm_head) at a few batch sizes, as a CUDA graph of back-to-back
calls (the engine replays decode steps as graphs, so launch latency is not part of the figure),
under torch's BLAS back-ends and as split-K batched GEMMs (fp32 partials), and prints µs, GB/s
and the share of the read-bandwidth floor. Each timing cycles through copies of the weight that
together exceed the L2 (--cycle-mb), so weights come from HBM as in a decode step.

    python benchmarks/kernels/linear_shapes.py --shape qwen3-0.6b --batch 64 144 256
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from model_shapes import SHAPES  # noqa: E402
from throughput import read_bandwidth_gbs  # noqa: E402  (the floor throughput.py uses)


def linear_shapes(cfg: dict) -> list[tuple[str, int, int]]:
    """(name, out_features N, in_features K) of one layer's linears plus the lm_head."""
    h, d = cfg["hidden_size"], cfg.get("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"])
    hq, hkv, inter = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["intermediate_size"]
    return [("qkv", (hq + 2 * hkv) * d, h), ("o", h, hq * d), ("gate_up", 2 * inter, h),
            ("down", h, inter), ("lm_head", cfg["vocab_size"], h)]


def time_graph(fn, calls: int = 20, reps: int = 7) -> float:
    """Median µs per call of `fn` replayed `calls` times back to back inside one CUDA graph."""
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3 / calls)
    return sorted(times)[reps // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", nargs="+", default=["qwen3-0.6b", "qwen3-8b"], choices=sorted(SHAPES))
    p.add_argument("--batch", type=int, nargs="+", default=[16, 64, 144, 256])
    p.add_argument("--backends", nargs="+", default=["cublas", "cublaslt"])
    p.add_argument("--split-k", type=int, nargs="*", default=[2, 4, 8],
                   help="also time split-K as a batched GEMM with fp32 partials, s splits")
    p.add_argument("--cycle-mb", type=int, default=160,
                   help="cycle through copies of each weight totalling at least this many MiB "
                        "(more than the L2), so the timing reads weights from HBM")
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    args = p.parse_args()

    bw = read_bandwidth_gbs()
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, read bandwidth {bw:.0f} GB/s")
    rows = []
    for shape in args.shape:
        for name, n, k in linear_shapes(SHAPES[shape]):
            # Copies of the weight, cycled through call by call, so that the calls of one timing
            # read more than the L2 holds (a decode step reads each layer's weights from HBM).
            copies = max(1, -(-args.cycle_mb * 2 ** 20 // (n * k * 2)))
            weights = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
                       for _ in range(copies)]
            order = itertools.cycle(range(copies))
            calls = max(20, copies)  # one timed graph reads every copy
            for m in args.batch:
                x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
                out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
                floor_us = (n * k * 2 + m * (k + n) * 2) / bw / 1e3
                line = f"{shape:11s} {name:8s} M={m:4d} N={n:6d} K={k:5d} floor {floor_us:7.1f} µs |"
                for backend in args.backends:
                    torch.backends.cuda.preferred_blas_library(backend)
                    us = time_graph(lambda: torch.matmul(x, weights[next(order)].t(), out=out), calls)
                    rows.append(dict(shape=shape, linear=name, m=m, n=n, k=k, backend=backend,
                                     us=round(us, 2), floor_us=round(floor_us, 2)))
                    line += f" {backend} {us:7.1f} µs {floor_us / us:5.1%} |"
                for splits in args.split_k:
                    if k % splits:
                        continue
                    # Split-K as a strided batched GEMM: batch entry i multiplies columns
                    # [i K/s, (i+1) K/s) of x and w into fp32 partials [s, M, N]; no weight copy.
                    xs = x.view(m, splits, k // splits).transpose(0, 1)        # [s, M, K/s]
                    ws = [c.view(n, splits, k // splits).permute(1, 2, 0)      # [s, K/s, N]
                          for c in weights]
                    try:
                        us = time_graph(lambda: torch.bmm(xs, ws[next(order)], out_dtype=torch.float32), calls)
                        us_sum = time_graph(lambda: torch.bmm(xs, ws[next(order)], out_dtype=torch.float32)
                                            .sum(0).to(torch.bfloat16), calls)
                    except (RuntimeError, TypeError, NotImplementedError) as e:
                        line += f" splitk{splits} failed: {str(e)[:60]} |"
                        continue
                    rows.append(dict(shape=shape, linear=name, m=m, n=n, k=k, backend=f"splitk{splits}",
                                     us=round(us, 2), us_with_sum=round(us_sum, 2), floor_us=round(floor_us, 2)))
                    line += f" sk{splits} {us:5.1f} (+sum {us_sum:5.1f}) {floor_us / us:5.1%} |"
                print(line, flush=True)
    torch.backends.cuda.preferred_blas_library("cublas")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(), read_gbs=round(bw, 1), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
