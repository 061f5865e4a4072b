"""Paged-attention kernel benchmark: decode GB/s vs copy bandwidth, prefill TFLOP/s vs SDPA.

Decode: B in {1, 16, 64, 256} x L in {512, 4096, 16384}, Hkv=8, Hq=32, D=128, bf16, block 16
(each can be changed by a flag, as can the block order and FlashInfer's cache layout).
Bytes counted = K and V of every context token read once (+ q and out, negligible). Peers in
the same run: FlashInfer's BatchDecodeWithPagedKVCacheWrapper on the same paged cache (skipped
if it does not import or build) and torch SDPA on pre-gathered contiguous KV (gather not timed).
Small caches are rotated across several copies so repeated calls do not hit in L2. Each
measurement replays a CUDA graph of `--calls` launches when capture works (eager otherwise) and
reports the median per call.

Prefill: full causal prefill (q_len = ctx) through pagedllm.ops.paged_attention vs
torch SDPA (flash backend) on the same non-paged shapes; TFLOP/s counts causal FLOPs. The
call passes short_chunk_tokens=0 (no short chunk), as the engine does for such a batch; the
time without that hint is printed beside it.

  python benchmarks/kernels/paged_attention.py --out results.json --png decode_gbps.png
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

import pagedllm.ops as ops
from pagedllm.worker.input_buffers import longest_first_token_order

HKV, HQ, D, BS = 8, 32, 128, 16
HINT_LEN = 0  # --hint-len
WITH_SDPA = True  # --no-sdpa
DTYPE = torch.bfloat16
SEQUENTIAL_BLOCKS = False  # --block-order sequential
FI_LAYOUT = "NHD"  # --fi-layout: FlashInfer reads a copy of the cache in this layout


def time_fn(fn, calls: int, repeats: int) -> tuple[float, str]:
    """Median microseconds per call, and 'graph' or 'eager' for how it was launched."""
    fn()
    torch.cuda.synchronize()
    mode = "graph"
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(calls):
                fn()
        run = graph.replay
    except Exception:  # noqa: BLE001 - a peer that cannot be captured is timed eagerly
        torch.cuda.synchronize()
        mode = "eager"

        def run():
            for _ in range(calls):
                fn()
    run()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    return statistics.median(times), mode


def copy_bandwidth_gbs() -> float:
    n = 1 << 30  # 2 GiB of bf16
    src = torch.randn(n, device="cuda", dtype=DTYPE)
    dst = torch.empty_like(src)
    us, _ = time_fn(lambda: dst.copy_(src), calls=5, repeats=10)
    del src, dst
    return 2 * n * 2 / (us * 1e-6) / 1e9


def try_flashinfer():
    try:
        import flashinfer  # noqa: F401
        return flashinfer
    except Exception as e:  # noqa: BLE001
        print(f"flashinfer unavailable: {type(e).__name__}: {e}")
        return None


def decode_case(batch: int, ctx: int, flashinfer, calls: int, repeats: int,
                ctx_min: int = 0) -> dict:
    """Decode attention for `batch` sequences of `ctx` tokens, or, with ctx_min > 0, of lengths
    uniform in [ctx_min, ctx] (ragged, as in a real decode batch; seeded)."""
    blocks_per_seq = math.ceil(ctx / BS)
    if ctx_min > 0:
        gen = torch.Generator().manual_seed(batch * 7919 + ctx)
        lens_list = torch.randint(ctx_min, ctx + 1, (batch,), generator=gen).tolist()
    else:
        lens_list = [ctx] * batch
    kv_bytes = 2 * sum(lens_list) * HKV * D * 2
    copies = max(1, min(16, math.ceil(256e6 / kv_bytes)))  # > L2 in total
    num_blocks = copies * batch * blocks_per_seq + 1
    kv = torch.randn(2, num_blocks, BS, HKV, D, device="cuda", dtype=DTYPE)
    if SEQUENTIAL_BLOCKS:  # each sequence's blocks adjacent in memory (a fresh cache)
        perm = torch.arange(1, num_blocks, device="cuda", dtype=torch.int32)
    else:  # scattered, as in a cache that has served for a while
        perm = torch.randperm(num_blocks - 1, device="cuda", dtype=torch.int32) + 1
    tables = perm[: copies * batch * blocks_per_seq].view(copies, batch, blocks_per_seq)
    query = torch.randn(batch, HQ, D, device="cuda", dtype=DTYPE)
    out = torch.empty_like(query)
    qsl = torch.arange(batch + 1, device="cuda", dtype=torch.int32)
    lens = torch.tensor(lens_list, device="cuda", dtype=torch.int32)
    scale = D ** -0.5
    # The token order the engine passes (input_buffers): longest context first.
    order_np = np.empty(batch, np.int32)
    longest_first_token_order(np.arange(batch + 1, dtype=np.int32), np.array(lens_list, np.int32),
                              order_np)
    order = torch.from_numpy(order_np).cuda()
    step = [0]

    def ours(token_order=order):
        t = tables[step[0] % copies]
        step[0] += 1
        ops.paged_attention(query, kv, t, qsl, lens, scale, 1, max(ctx, HINT_LEN), out=out,
                            token_order=token_order)

    res = {"batch": batch, "ctx": ctx, "ctx_min": ctx_min, "kv_bytes": kv_bytes}
    res["pagedllm_us"], res["pagedllm_mode"] = time_fn(ours, calls, repeats)
    if ctx_min > 0:  # what the longest-first order buys on a ragged batch
        res["pagedllm_plan_order_us"], _ = time_fn(lambda: ours(None), calls, repeats)

    # Correctness spot check against the reference on a few sequences.
    ops.paged_attention(query, kv, tables[0], qsl, lens, scale, 1, ctx, out=out)
    from pagedllm.ops import reference as ref
    k = min(batch, 4)
    expect = ref.paged_attention(query[:k].float(), kv, tables[0][:k], qsl[: k + 1], lens[:k], scale)
    res["rel_err"] = float((out[:k].float() - expect.float()).norm() / expect.float().norm())

    if flashinfer is not None:
        try:
            # CUDA-graph mode wrappers (fixed index buffers), planned outside the capture.
            wrappers = []
            # HND: [NB, Hkv, BS, D] per K and V, a head's rows of a block adjacent.
            fi_kv = kv if FI_LAYOUT == "NHD" else kv.transpose(2, 3).contiguous()
            nblocks = [math.ceil(n / BS) for n in lens_list]
            for c in range(min(copies, 4)):  # a few planned copies suffice to defeat L2
                indptr = torch.tensor([0] + nblocks, dtype=torch.int32).cumsum(0).to(torch.int32).cuda()
                indices = torch.cat([tables[c][i, :nb] for i, nb in enumerate(nblocks)]).contiguous()
                last = torch.tensor([n - (nb - 1) * BS for n, nb in zip(lens_list, nblocks)],
                                    device="cuda", dtype=torch.int32)
                ws = torch.empty(128 << 20, dtype=torch.uint8, device="cuda")
                w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
                    ws, FI_LAYOUT, use_cuda_graph=True, paged_kv_indptr_buffer=indptr,
                    paged_kv_indices_buffer=indices, paged_kv_last_page_len_buffer=last)
                w.plan(indptr, indices, last, HQ, HKV, D, BS, q_data_type=DTYPE, kv_data_type=DTYPE)
                wrappers.append((w, ws, indptr, indices, last))
            fstep = [0]

            def theirs():
                w = wrappers[fstep[0] % len(wrappers)][0]
                fstep[0] += 1
                w.run(query, (fi_kv[0], fi_kv[1]))

            ops.paged_attention(query, kv, tables[0], qsl, lens, scale, 1, ctx, out=out)
            fi_out = wrappers[0][0].run(query, (fi_kv[0], fi_kv[1]))
            res["flashinfer_rel_err"] = float((fi_out.float() - out.float()).norm() / out.float().norm())
            res["flashinfer_us"], res["flashinfer_mode"] = time_fn(theirs, calls, repeats)
            del wrappers, fi_kv
        except Exception as e:  # noqa: BLE001
            res["flashinfer_error"] = f"{type(e).__name__}: {str(e)[:300]}"
            print(res["flashinfer_error"], flush=True)

    if kv_bytes <= 9e9 and ctx_min == 0 and WITH_SDPA:
        kg = kv[0][tables[0].long()].view(batch, blocks_per_seq * BS, HKV, D)[:, :ctx].transpose(1, 2).contiguous()
        vg = kv[1][tables[0].long()].view(batch, blocks_per_seq * BS, HKV, D)[:, :ctx].transpose(1, 2).contiguous()
        q4 = query.view(batch, HQ, 1, D)

        def sdpa():
            F.scaled_dot_product_attention(q4, kg, vg, scale=scale, enable_gqa=True)

        try:
            res["sdpa_us"], res["sdpa_mode"] = time_fn(sdpa, calls, repeats)
        except Exception as e:  # noqa: BLE001
            res["sdpa_error"] = f"{type(e).__name__}: {str(e)[:200]}"
        del kg, vg
    for name in ("pagedllm", "flashinfer", "sdpa"):
        if f"{name}_us" in res:
            res[f"{name}_gbs"] = kv_bytes / (res[f"{name}_us"] * 1e-6) / 1e9
    del kv, tables
    torch.cuda.empty_cache()
    return res


def prefill_case(batch: int, length: int, calls: int, repeats: int) -> dict:
    scale = D ** -0.5
    blocks_per_seq = math.ceil(length / BS)
    num_blocks = batch * blocks_per_seq + 1
    kv = torch.randn(2, num_blocks, BS, HKV, D, device="cuda", dtype=DTYPE)
    table = (torch.randperm(num_blocks - 1, device="cuda", dtype=torch.int32) + 1).view(batch, blocks_per_seq)
    query = torch.randn(batch * length, HQ, D, device="cuda", dtype=DTYPE)
    out = torch.empty_like(query)
    qsl = torch.arange(batch + 1, device="cuda", dtype=torch.int32) * length
    lens = torch.full((batch,), length, device="cuda", dtype=torch.int32)

    def ours(short_chunk_tokens=0):  # no chunk is short: the token kernel is not launched
        ops.paged_attention(query, kv, table, qsl, lens, scale, length, length, out=out,
                            short_chunk_tokens=short_chunk_tokens)

    flops = 4 * batch * HQ * D * length * (length + 1) / 2  # causal: half the square (+ diagonal)
    res = {"batch": batch, "len": length}
    res["pagedllm_us"], _ = time_fn(ours, calls, repeats)
    # Without the hint every token also gets an (empty) token-kernel CTA per KV head.
    res["pagedllm_unhinted_us"], _ = time_fn(lambda: ours(-1), calls, repeats)
    kg = kv[0][table.long()].view(batch, -1, HKV, D)[:, :length].transpose(1, 2).contiguous()
    vg = kv[1][table.long()].view(batch, -1, HKV, D)[:, :length].transpose(1, 2).contiguous()
    q4 = query.view(batch, length, HQ, D).transpose(1, 2).contiguous()
    expect = F.scaled_dot_product_attention(q4, kg, vg, scale=scale, is_causal=True, enable_gqa=True)
    got = out.view(batch, length, HQ, D).transpose(1, 2)
    res["rel_err_vs_sdpa"] = float((got.float() - expect.float()).norm() / expect.float().norm())

    def sdpa():
        F.scaled_dot_product_attention(q4, kg, vg, scale=scale, is_causal=True, enable_gqa=True)

    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        try:
            res["sdpa_us"], _ = time_fn(sdpa, calls, repeats)
        except Exception as e:  # noqa: BLE001
            res["sdpa_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    res["pagedllm_tflops"] = flops / (res["pagedllm_us"] * 1e-6) / 1e12
    if "sdpa_us" in res:
        res["sdpa_tflops"] = flops / (res["sdpa_us"] * 1e-6) / 1e12
        res["ratio_vs_sdpa"] = res["pagedllm_tflops"] / res["sdpa_tflops"]
    del kv, query, out, kg, vg, q4
    torch.cuda.empty_cache()
    return res


def plot(results: dict, path: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:  # noqa: BLE001
        print(f"no plot: {e}")
        return
    fig, ax = plt.subplots(figsize=(8, 5))
    styles = {"pagedllm": "-o", "flashinfer": "--s", "sdpa": ":^"}
    for batch in sorted({r["batch"] for r in results["decode"]}):
        rows = [r for r in results["decode"] if r["batch"] == batch and not r.get("ctx_min")]
        for name, style in styles.items():
            pts = [(r["ctx"], r[f"{name}_gbs"]) for r in rows if f"{name}_gbs" in r]
            if pts:
                ax.plot(*zip(*pts), style, label=f"{name} B={batch}")
    ax.axhline(results["copy_gbs"], color="k", lw=0.8, label="device copy")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("KV read bandwidth (GB/s)")
    ax.set_title(f"decode attention, Hq={results.get('num_q_heads', 32)} Hkv={results.get('num_kv_heads', 8)} D=128 bf16 — {results['device']}")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="paged_attention_bench.json")
    p.add_argument("--png", default=None)
    p.add_argument("--batches", default="1,16,64,256")
    p.add_argument("--contexts", default="512,4096,16384")
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--no-flashinfer", action="store_true")
    p.add_argument("--no-sdpa", action="store_true", help="skip the SDPA-on-gathered-KV column")
    p.add_argument("--cases", default="",
                   help="uniform decode cases BxL, e.g. 64x4096,256x512 (instead of batches x contexts)")
    p.add_argument("--hint-len", type=int, default=0,
                   help="max_seq_len hint given to pagedllm's decode (default: the context), e.g. "
                   "the max_model_len a CUDA graph was captured with")
    p.add_argument("--num-q-heads", type=int, default=HQ,
                   help="query heads (8 KV heads): 32 = group 4 (Qwen3-8B), 16 = group 2 (Qwen3-0.6B)")
    p.add_argument("--num-kv-heads", type=int, default=HKV)
    p.add_argument("--block-size", type=int, default=BS, help="tokens per KV block (a power of two)")
    p.add_argument("--block-order", choices=("random", "sequential"), default="random",
                   help="block tables: a random permutation of the cache (default) or in order")
    p.add_argument("--fi-layout", choices=("NHD", "HND"), default="NHD",
                   help="FlashInfer's cache layout (HND: a copy of ours with heads outside tokens)")
    p.add_argument("--prefill", default="1x2048,4x2048,1x8192,8x1024")
    p.add_argument("--ragged", default="256x100-1100,128x1000-3000",
                   help="decode cases BxLO-HI with lengths uniform in [LO, HI] ('' for none)")
    args = p.parse_args()
    globals()["HQ"] = args.num_q_heads  # the cases read the module constants
    globals()["HKV"] = args.num_kv_heads
    globals()["BS"] = args.block_size
    globals()["SEQUENTIAL_BLOCKS"] = args.block_order == "sequential"
    globals()["FI_LAYOUT"] = args.fi_layout
    globals()["HINT_LEN"] = args.hint_len
    globals()["WITH_SDPA"] = not args.no_sdpa
    torch.manual_seed(0)
    results = {"num_q_heads": HQ, "num_kv_heads": HKV, "block_size": BS, "block_order": args.block_order,
               "fi_layout": FI_LAYOUT, "hint_len": HINT_LEN, "device": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "torch": torch.__version__}
    results["copy_gbs"] = copy_bandwidth_gbs()
    print(f"device {results['device']}  copy bandwidth {results['copy_gbs']:.0f} GB/s", flush=True)
    flashinfer = None if args.no_flashinfer else try_flashinfer()
    results["decode"] = []
    if args.cases:
        uniform = [tuple(map(int, c.split("x"))) for c in args.cases.split(",")]
    else:
        uniform = [(b, L) for b in map(int, filter(None, args.batches.split(",")))
                   for L in map(int, filter(None, args.contexts.split(",")))]
    for b, L in uniform:
        r = decode_case(b, L, flashinfer, args.calls, args.repeats)
        results["decode"].append(r)
        print(json.dumps(r), flush=True)
        with open(args.out, "w") as f:  # after every case: a timeout keeps what ran
            json.dump(results, f, indent=1)
    for spec in filter(None, args.ragged.split(",")):
        b, span = spec.split("x")
        lo, hi = map(int, span.split("-"))
        r = decode_case(int(b), hi, flashinfer, args.calls, args.repeats, ctx_min=lo)
        results["decode"].append(r)
        print(json.dumps(r), flush=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    results["prefill"] = []
    for spec in filter(None, args.prefill.split(",")):
        b, L = map(int, spec.split("x"))
        r = prefill_case(b, L, max(2, args.calls // 4), args.repeats)
        results["prefill"].append(r)
        print(json.dumps(r), flush=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    if args.png:
        plot(results, args.png)

    copy = results["copy_gbs"]
    print(f"\n{results['date']}  {results['device']}  copy {copy:.0f} GB/s")
    print(f"{'B':>4} {'L':>9} | {'ours us':>9} {'GB/s':>6} {'%copy':>6} | {'FI us':>9} {'GB/s':>6} | {'SDPA us':>9} {'GB/s':>6} | err")
    for r in results["decode"]:
        fi = (f"{r['flashinfer_us']:9.1f} {r['flashinfer_gbs']:6.0f}" if "flashinfer_us" in r else f"{'-':>9} {'-':>6}")
        sd = (f"{r['sdpa_us']:9.1f} {r['sdpa_gbs']:6.0f}" if "sdpa_us" in r else f"{'-':>9} {'-':>6}")
        ctx = f"{r['ctx_min']}-{r['ctx']}" if r.get("ctx_min") else str(r["ctx"])
        print(f"{r['batch']:>4} {ctx:>9} | {r['pagedllm_us']:9.1f} {r['pagedllm_gbs']:6.0f} "
              f"{100 * r['pagedllm_gbs'] / copy:5.1f}% | {fi} | {sd} | {r['rel_err']:.1e}"
              + (f"  (plan order: {r['pagedllm_plan_order_us']:.1f} us)"
                 if "pagedllm_plan_order_us" in r else ""))
    print(f"\n{'B':>4} {'L':>6} | {'ours us':>9} {'TFLOP/s':>8} | {'SDPA us':>9} {'TFLOP/s':>8} | ratio | err"
          f"      | ours, no short_chunk_tokens hint")
    for r in results["prefill"]:
        sd = (f"{r['sdpa_us']:9.1f} {r['sdpa_tflops']:8.1f} | {r['ratio_vs_sdpa']:5.2f}" if "sdpa_us" in r
              else f"{'-':>9} {'-':>8} | {'-':>5}")
        print(f"{r['batch']:>4} {r['len']:>6} | {r['pagedllm_us']:9.1f} {r['pagedllm_tflops']:8.1f} | {sd} | "
              f"{r['rel_err_vs_sdpa']:.1e} | {r['pagedllm_unhinted_us']:9.1f} us")


if __name__ == "__main__":
    main()
