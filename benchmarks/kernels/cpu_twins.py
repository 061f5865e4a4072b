"""CPU twins vs the torch reference on CPU tensors: decides pagedllm.ops._CPU_TWIN.

Shapes of a small model on the CPU engine (hidden 2048, 16 query / 8 KV heads of 64, bf16
and fp32). Prints the median milliseconds of each and the ratio.

  python benchmarks/kernels/cpu_twins.py
"""
from __future__ import annotations

import statistics
import time

import torch

import pagedllm.ops as ops
from pagedllm.ops import reference as ref


def median_ms(fn, repeats: int = 7) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def paged_case(q_lens, ctx_lens, dtype):
    hq, hkv, d, bs = 16, 8, 64, 16
    blocks = [-(-c // bs) for c in ctx_lens]
    nb = sum(blocks) + 1
    kv = torch.randn(2, nb, bs, hkv, d).to(dtype)
    table = torch.zeros(len(q_lens), max(blocks), dtype=torch.int32)
    used = 1
    for i, n in enumerate(blocks):
        table[i, :n] = torch.arange(used, used + n, dtype=torch.int32)
        used += n
    q = torch.randn(sum(q_lens), hq, d).to(dtype)
    qsl = torch.tensor([0] + list(torch.cumsum(torch.tensor(q_lens), 0)), dtype=torch.int32)
    lens = torch.tensor(ctx_lens, dtype=torch.int32)
    args = (q, kv, table, qsl, lens, 0.125)
    return lambda: ops.paged_attention(*args), lambda: ref.paged_attention(*args)


def main() -> None:
    torch.manual_seed(0)
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(64, 2048).to(dtype)
        w = torch.randn(2048).to(dtype)
        rows.append(("rms_norm 64x2048", dtype, lambda: ops.rms_norm(x, w, 1e-6),
                     lambda: ref.rms_norm(x, w, 1e-6)))
        r = torch.randn(64, 2048).to(dtype)
        rows.append(("fused_add_rms_norm 64x2048", dtype,
                     lambda: ops.fused_add_rms_norm(x, r, w, 1e-6),
                     lambda: ref.fused_add_rms_norm(x, r, w, 1e-6)))
        g = torch.randn(64, 2 * 5632).to(dtype)
        rows.append(("silu_and_mul 64x5632", dtype, lambda: ops.silu_and_mul(g),
                     lambda: ref.silu_and_mul(g)))
        pos = torch.arange(64)
        cache = torch.randn(4096, 64)
        q, k = torch.randn(64, 16 * 64).to(dtype), torch.randn(64, 8 * 64).to(dtype)
        rows.append(("rotary 64 tok", dtype, lambda: ops.rotary_embedding(pos, q, k, 64, cache, True),
                     lambda: ref.rotary_embedding(pos, q, k, 64, cache, True)))
        kvc = torch.zeros(2, 64, 16, 8, 64).to(dtype)
        kk = torch.randn(64, 8, 64).to(dtype)
        slots = torch.randperm(1024)[:64].to(torch.int32)
        rows.append(("reshape_and_cache 64 tok", dtype,
                     lambda: ops.reshape_and_cache(kk, kk, kvc, slots),
                     lambda: ref.reshape_and_cache(kk, kk, kvc, slots)))
        rows.append(("attention decode 32x512", dtype, *paged_case([1] * 32, [512] * 32, dtype)))
        rows.append(("attention prefill 1x512", dtype, *paged_case([512], [512], dtype)))
        rows.append(("attention chunk 256 on 1024", dtype, *paged_case([256], [1024], dtype)))
    print(f"torch threads {torch.get_num_threads()}")
    print(f"{'op':32} {'dtype':9} {'twin ms':>8} {'torch ms':>9} {'ratio':>6}")
    for name, dtype, twin, torch_ref in rows:
        a, b = median_ms(twin), median_ms(torch_ref)
        print(f"{name:32} {str(dtype)[6:]:9} {a:8.3f} {b:9.3f} {b / a:6.2f}")


if __name__ == "__main__":
    main()
