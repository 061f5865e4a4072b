"""paged_attention and reshape_and_cache vs the torch reference (ops/reference.py).

Fresh random inputs every case, outputs poisoned with NaN first, error measured as
||out - ref|| / ||ref|| against the reference run in float32 on upcast inputs. CPU cases use a
reduced matrix (the CPU twin is the CPU engine's path); GPU cases (marker gpu) the full one.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import pagedllm.ops as ops
from pagedllm import _C
from pagedllm.ops import reference as ref
from pagedllm.worker.input_buffers import longest_first_token_order

HAS_CUDA = torch.cuda.is_available() and bool(_C.with_cuda)


def requires_gpu(fn):
    """Marker gpu, skipped without a CUDA device or a CUDA build."""
    return pytest.mark.gpu(pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")(fn))

# Relative error allowed per dtype (bf16/fp16 operands; fp32 is exact up to summation order).
TOL = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 2e-2}
CONTEXTS = (1, 15, 16, 17, 1000, 4097)


def rel_err(out: torch.Tensor, expect: torch.Tensor) -> float:
    out, expect = out.double().cpu(), expect.double().cpu()
    assert not torch.isnan(out).any(), "output has NaN (a row was not written)"
    return float((out - expect).norm() / expect.norm().clamp_min(1e-30))


def make_batch(chunks, num_kv_heads, group, head_dim, block_size, dtype, device, seed):
    """Random paged cache and queries for sequences given as (q_len, ctx_len) pairs.

    Block ids are a random permutation (block 0 stays the null block) so page order matters.
    """
    g = torch.Generator().manual_seed(seed)
    blocks_per_seq = [math.ceil(ctx / block_size) for _, ctx in chunks]
    max_blocks = max(blocks_per_seq) + 1
    num_blocks = sum(blocks_per_seq) + 3
    perm = (torch.randperm(num_blocks - 1, generator=g) + 1).tolist()
    table = torch.zeros(len(chunks), max_blocks, dtype=torch.int32)  # [S, max_blocks]
    used = 0
    for i, n in enumerate(blocks_per_seq):
        table[i, :n] = torch.tensor(perm[used:used + n], dtype=torch.int32)
        used += n
    num_q_heads = num_kv_heads * group
    total = sum(q for q, _ in chunks)
    kv = torch.randn(2, num_blocks, block_size, num_kv_heads, head_dim, generator=g)
    query = torch.randn(total, num_q_heads, head_dim, generator=g)
    qsl = torch.zeros(len(chunks) + 1, dtype=torch.int32)                # [S + 1]
    qsl[1:] = torch.cumsum(torch.tensor([q for q, _ in chunks]), 0)
    lens = torch.tensor([c for _, c in chunks], dtype=torch.int32)      # [S]
    to = dict(device=device)
    return (query.to(dtype=dtype, **to), kv.to(dtype=dtype, **to), table.to(**to), qsl.to(**to),
            lens.to(**to))


def check_attention(chunks, num_kv_heads, group, head_dim, block_size, dtype, device, seed,
                    sliding_window=-1, max_seq_len_hint=0):
    query, kv, table, qsl, lens = make_batch(chunks, num_kv_heads, group, head_dim, block_size,
                                             dtype, device, seed)
    scale = head_dim ** -0.5
    out = torch.full_like(query, float("nan"))
    max_q = max(q for q, _ in chunks)
    max_ctx = max(max(c for _, c in chunks), max_seq_len_hint)
    result = ops.paged_attention(query, kv, table, qsl, lens, scale, max_q, max_ctx, out=out,
                                 sliding_window=sliding_window)
    assert result.data_ptr() == out.data_ptr()
    expect = ref.paged_attention(query.float(), kv.float(), table, qsl, lens, scale,
                                 sliding_window=sliding_window)
    err = rel_err(out, expect)
    assert err < TOL[dtype], f"relative error {err:.2e} for chunks {chunks[:4]}..."
    # The order CTAs start in must not change a bit of the result.
    order = torch.randperm(query.shape[0], generator=torch.Generator().manual_seed(seed))
    reordered = torch.full_like(query, float("nan"))
    ops.paged_attention(query, kv, table, qsl, lens, scale, max_q, max_ctx, out=reordered,
                        sliding_window=sliding_window,
                        token_order=order.to(dtype=torch.int32, device=device))
    assert torch.equal(reordered, out), "token_order changed the result"
    # Told where the short chunks are, the token kernel skips the long chunks' tokens: same bits.
    short_first = np.empty(query.shape[0], np.int32)
    n_short = longest_first_token_order(qsl.cpu().numpy(), lens.cpu().numpy(), short_first)
    hinted = torch.full_like(query, float("nan"))
    ops.paged_attention(query, kv, table, qsl, lens, scale, max_q, max_ctx, out=hinted,
                        sliding_window=sliding_window,
                        token_order=torch.from_numpy(short_first).to(device),
                        short_chunk_tokens=n_short)
    assert torch.equal(hinted, out), "short_chunk_tokens changed the result"
    is_short = [q < ops.PREFILL_KERNEL_MIN_QUERY_LEN for q, _ in chunks]
    if is_short == sorted(is_short, reverse=True):  # short chunks lead the batch itself
        lead = sum(q for q, _ in chunks if q < ops.PREFILL_KERNEL_MIN_QUERY_LEN)
        hinted.fill_(float("nan"))
        ops.paged_attention(query, kv, table, qsl, lens, scale, max_q, max_ctx, out=hinted,
                            sliding_window=sliding_window, short_chunk_tokens=lead)
        assert torch.equal(hinted, out), "short_chunk_tokens without token_order changed the result"


DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# ---------------------------------------------------------------------------------------- CPU
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group", (1, 4))
@pytest.mark.parametrize("block_size", (16, 32))
def test_decode_cpu(dtype, group, block_size):
    for i, ctx in enumerate((1, 15, 16, 17, 100)):
        check_attention([(1, ctx)], 2, group, 64, block_size, dtype, "cpu", seed=i)
    batch = [(1, (1, 15, 16, 17, 100)[i % 5]) for i in range(24)]
    check_attention(batch, 2, group, 64, block_size, dtype, "cpu", seed=99)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
@pytest.mark.parametrize("group", (1, 8))
def test_prefill_mixed_cpu(dtype, group):
    # Full prefills, a prefix-cache hit (q < ctx), a chunked prefill and decode rows together.
    chunks = [(17, 17), (1, 40), (20, 50), (16, 16), (3, 33), (1, 1)]
    check_attention(chunks, 1, group, 32, 16, dtype, "cpu", seed=7)


def test_sliding_window_cpu():
    chunks = [(1, 100), (30, 70), (5, 5)]
    check_attention(chunks, 2, 2, 64, 16, torch.float32, "cpu", seed=3, sliding_window=20)


def test_head_dims_cpu():
    for d in (80, 96, 128):
        check_attention([(1, 33), (9, 40)], 1, 2, d, 16, torch.bfloat16, "cpu", seed=d)


def test_cpu_out_allocated_when_missing():
    query, kv, table, qsl, lens = make_batch([(2, 5)], 1, 2, 32, 16, torch.float32, "cpu", 0)
    got = ops.paged_attention(query, kv, table, qsl, lens, 0.2)
    expect = ref.paged_attention(query, kv, table, qsl, lens, 0.2)
    assert rel_err(got, expect) < 1e-5


# ---------------------------------------------------------------------------------------- GPU
GPU_CONFIGS = [(dt, d, bs, g) for dt in DTYPES for d in (64, 128) for bs in (16, 32)
               for g in (1, 4, 8)]
GPU_CONFIGS += [(torch.bfloat16, d, 16, 4) for d in (80, 96, 256)]
GPU_CONFIGS += [(torch.float16, d, 32, 2) for d in (80, 96, 256)]
# Groups that are not a power of two: slices of 8 (or 4) heads, the last one partly padding.
GPU_CONFIGS += [(torch.bfloat16, 128, 16, 6), (torch.float16, 64, 16, 12), (torch.float32, 128, 16, 6)]


@pytest.mark.parametrize("dtype,head_dim,block_size,group", GPU_CONFIGS)
@requires_gpu
def test_decode_gpu(dtype, head_dim, block_size, group):
    for i, ctx in enumerate(CONTEXTS):
        check_attention([(1, ctx)], 2, group, head_dim, block_size, dtype, "cuda", seed=i)
    batch = [(1, CONTEXTS[i % len(CONTEXTS)]) for i in range(256)]
    check_attention(batch, 2, group, head_dim, block_size, dtype, "cuda", seed=1234)


@pytest.mark.parametrize("dtype,head_dim,block_size,group", GPU_CONFIGS)
@requires_gpu
def test_prefill_mixed_gpu(dtype, head_dim, block_size, group):
    # Decode rows, short chunks (token kernel) and long chunks (tensor cores), prefix hits.
    chunks = [(1, 1), (15, 15), (16, 16), (17, 17), (1, 1000), (100, 1000), (64, 4097),
              (40, 40), (1, 17), (300, 300)]
    check_attention(chunks, 2, group, head_dim, block_size, dtype, "cuda", seed=5)


@pytest.mark.parametrize("dtype,head_dim,group", [(torch.bfloat16, 128, 4), (torch.float16, 64, 2),
                                                   (torch.float32, 128, 4), (torch.bfloat16, 256, 2)])
@requires_gpu
def test_prefill_long_chunks_only_gpu(dtype, head_dim, group):
    # No short chunk: short_chunk_tokens = 0 launches no token kernel (fp32 and head_dim 256,
    # which have no tensor-core kernel, must ignore it and still compute every row).
    chunks = [(16, 16), (300, 300), (17, 1000), (64, 4097), (129, 129)]
    check_attention(chunks, 2, group, head_dim, 16, dtype, "cuda", seed=21)


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16))
@requires_gpu
def test_prefill_batch256_gpu(dtype):
    chunks = [((i % 40) + 1, (i % 40) + 1 + (i % 7) * 13) for i in range(256)]
    check_attention(chunks, 2, 4, 128, 16, dtype, "cuda", seed=11)


@pytest.mark.parametrize("window", (1, 16, 300))
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
@requires_gpu
def test_sliding_window_gpu(window, dtype):
    chunks = [(1, 4097), (1, 17), (64, 1000), (16, 16), (5, 600)]
    check_attention(chunks, 2, 4, 128, 16, dtype, "cuda", seed=window, sliding_window=window)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
@requires_gpu
def test_decode_with_a_loose_max_seq_len_hint_gpu(dtype):
    # As in a CUDA graph captured with max_model_len: the hint is far above every context, the
    # split count comes from it and the batch, and each query cuts its own context.
    for batch in ([(1, 5)], [(1, 700), (1, 3000), (1, 64), (1, 65)], [(1, 1 + i * 37) for i in range(20)]):
        check_attention(batch, 2, 4, 128, 16, dtype, "cuda", seed=len(batch),
                        max_seq_len_hint=40960)
    check_attention([(1, 4097), (1, 17)], 2, 4, 128, 16, dtype, "cuda", seed=3,
                    sliding_window=300, max_seq_len_hint=40960)


@requires_gpu
def test_decode_on_side_stream_and_graph_gpu():
    query, kv, table, qsl, lens = make_batch([(1, 700), (1, 3000), (1, 5)], 2, 4, 128, 16,
                                             torch.bfloat16, "cuda", 21)
    scale = 128 ** -0.5
    expect = ref.paged_attention(query.float(), kv.float(), table, qsl, lens, scale)
    out = torch.full_like(query, float("nan"))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        ops.paged_attention(query, kv, table, qsl, lens, scale, 1, 4096, out=out)
    torch.cuda.current_stream().wait_stream(side)
    assert rel_err(out, expect) < TOL[torch.bfloat16]

    out.fill_(float("nan"))
    graph = torch.cuda.CUDAGraph()
    warm = torch.cuda.Stream()
    warm.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(warm):
        ops.paged_attention(query, kv, table, qsl, lens, scale, 1, 4096, out=out)
    torch.cuda.current_stream().wait_stream(warm)
    out.fill_(float("nan"))
    with torch.cuda.graph(graph):
        ops.paged_attention(query, kv, table, qsl, lens, scale, 1, 4096, out=out)
    graph.replay()
    torch.cuda.synchronize()
    assert rel_err(out, expect) < TOL[torch.bfloat16]


@requires_gpu
def test_misaligned_query_and_out_gpu():
    # Views whose data start off a 16-byte boundary: the op copies them to aligned memory; the
    # binding, called directly, refuses them instead of faulting in the kernel.
    query, kv, table, qsl, lens = make_batch([(1, 300), (1, 17)], 2, 4, 128, 16, torch.bfloat16,
                                             "cuda", 5)
    scale = 128 ** -0.5
    expect = ref.paged_attention(query.float(), kv.float(), table, qsl, lens, scale)
    flat_q = torch.empty(query.numel() + 1, dtype=query.dtype, device="cuda")
    shifted_q = flat_q[1:].view(query.shape)  # 2 bytes past an aligned allocation
    shifted_q.copy_(query)
    flat_out = torch.full((query.numel() + 1,), float("nan"), dtype=query.dtype, device="cuda")
    shifted_out = flat_out[1:].view(query.shape)
    got = ops.paged_attention(shifted_q, kv, table, qsl, lens, scale, 1, 300, out=shifted_out)
    assert got.data_ptr() == shifted_out.data_ptr()
    assert rel_err(shifted_out, expect) < TOL[torch.bfloat16]

    out = torch.empty_like(query)
    with pytest.raises(ValueError, match="16-byte aligned"):
        _C.ops.paged_attention(out=desc(out), query=desc(shifted_q), kv_cache=desc(kv),
                               block_table=desc(table), query_start_loc=desc(qsl),
                               seq_lens=desc(lens), scale=scale, max_query_len=1, max_seq_len=300)


# ------------------------------------------------------------------------- reshape_and_cache
def check_reshape_and_cache(dtype, device, num_tokens, block_size, strided):
    g = torch.Generator().manual_seed(num_tokens)
    hkv, d = 4, 64
    num_blocks = num_tokens // block_size + 8  # more slots than tokens
    cache = torch.randn(2, num_blocks, block_size, hkv, d, generator=g).to(dtype=dtype, device=device)
    expect = cache.clone()
    slots = torch.randperm(num_blocks * block_size, generator=g)[:num_tokens].to(torch.int32)
    slots[::5] = -1  # skipped tokens
    slots = slots.to(device)
    if strided:  # key/value as column slices of a fused qkv projection
        qkv = torch.randn(num_tokens, 3 * hkv * d, generator=g).to(dtype=dtype, device=device)
        key = qkv[:, hkv * d: 2 * hkv * d].view(num_tokens, hkv, d)
        value = qkv[:, 2 * hkv * d:].view(num_tokens, hkv, d)
    else:
        key = torch.randn(num_tokens, hkv, d, generator=g).to(dtype=dtype, device=device)
        value = torch.randn(num_tokens, hkv, d, generator=g).to(dtype=dtype, device=device)
    ops.reshape_and_cache(key, value, cache, slots)
    ref.reshape_and_cache(key, value, expect, slots)
    assert torch.equal(cache, expect)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("strided", (False, True))
def test_reshape_and_cache_cpu(dtype, strided):
    for n in (1, 17, 256):
        check_reshape_and_cache(dtype, "cpu", n, 16, strided)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block_size", (16, 32))
@pytest.mark.parametrize("strided", (False, True))
@requires_gpu
def test_reshape_and_cache_gpu(dtype, block_size, strided):
    for n in (1, 15, 16, 17, 256, 1000):
        check_reshape_and_cache(dtype, "cuda", n, block_size, strided)


# ------------------------------------------------------------------------ binding validation
def desc(t: torch.Tensor) -> tuple:
    return ops._desc(t)


def test_attention_binding_rejects_bad_inputs():
    query, kv, table, qsl, lens = make_batch([(1, 20), (3, 9)], 2, 2, 32, 16, torch.float32,
                                             "cpu", 0)
    out = torch.empty_like(query)

    def call(**over):
        args = dict(out=desc(out), query=desc(query), kv_cache=desc(kv), block_table=desc(table),
                    query_start_loc=desc(qsl), seq_lens=desc(lens), scale=0.1, max_query_len=3,
                    max_seq_len=20)
        args.update(over)
        _C.ops.paged_attention(**args)

    call()  # the unmodified call is valid
    with pytest.raises(ValueError, match="dtype"):
        call(query=desc(query.to(torch.bfloat16)))
    with pytest.raises(ValueError, match="int32"):
        call(seq_lens=desc(lens.long()))
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        call(query=desc(query[:, :3].contiguous()), out=desc(out[:, :3].contiguous()))
    with pytest.raises(ValueError, match="contiguous"):
        call(kv_cache=desc(kv.transpose(3, 4)))
    with pytest.raises(ValueError, match="num_seqs"):
        call(block_table=desc(table[:1].contiguous()))
    bad_table = table.clone()
    bad_table[0, 0] = kv.shape[1]
    with pytest.raises(ValueError, match="block id"):
        call(block_table=desc(bad_table))
    short = lens.clone()
    short[1] = 2  # fewer cached tokens than queries
    with pytest.raises(ValueError, match="seq_lens"):
        call(seq_lens=desc(short))
    with pytest.raises(ValueError, match="same device"):
        call(out=desc(out)[:4] + (0,))
    orders = {  # kept alive: a descriptor holds only the data pointer
        "valid": torch.tensor([3, 0, 2, 1], dtype=torch.int32),
        "repeat": torch.tensor([3, 0, 3, 1], dtype=torch.int32),
        "range": torch.tensor([0, 1, 2, 4], dtype=torch.int32),
        "short": torch.arange(3, dtype=torch.int32),
        "int64": torch.arange(4),
    }
    call(token_order=desc(orders["valid"]))
    for name, match in (("repeat", "permutation"), ("range", "permutation"),
                        ("short", "num_tokens"), ("int64", "int32")):
        with pytest.raises(ValueError, match=match):
            call(token_order=desc(orders[name]))
    # Both chunks are short: all 4 tokens must rank below short_chunk_tokens.
    call(short_chunk_tokens=4)
    call(short_chunk_tokens=4, token_order=desc(orders["valid"]))
    with pytest.raises(ValueError, match="token 3 of a 3-token chunk has rank 3"):
        call(short_chunk_tokens=3)
    with pytest.raises(ValueError, match="token 0 of a 1-token chunk has rank 1"):
        call(short_chunk_tokens=1, token_order=desc(orders["valid"]))
    for bad in (-2, 5):
        with pytest.raises(ValueError, match="short_chunk_tokens: must be -1"):
            call(short_chunk_tokens=bad)


def test_cache_binding_rejects_bad_inputs():
    cache = torch.zeros(2, 4, 16, 2, 8)
    key = torch.randn(3, 2, 8)
    slots = torch.tensor([0, 5, 64], dtype=torch.int32)  # 64 is past the 4 * 16 slots
    with pytest.raises(ValueError, match="outside the cache"):
        _C.ops.reshape_and_cache(desc(key), desc(key), desc(cache), desc(slots))
    with pytest.raises(ValueError, match="head_dim"):
        _C.ops.reshape_and_cache(desc(key[..., :4].contiguous()), desc(key), desc(cache), desc(slots))
    with pytest.raises(ValueError, match="dtype"):
        _C.ops.reshape_and_cache(desc(key.half()), desc(key), desc(cache), desc(slots))
    with pytest.raises(ValueError, match="unknown dtype code"):
        _C.ops.reshape_and_cache(desc(key)[:3] + (9, -1), desc(key), desc(cache), desc(slots))
