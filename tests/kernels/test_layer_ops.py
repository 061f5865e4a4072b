"""rms_norm, fused_add_rms_norm, rotary_embedding and silu_and_mul vs the torch reference.

Fresh random inputs per case, outputs poisoned with NaN first. The reference rounds its result
to the dtype, so kernel and reference may differ by an ulp of the dtype here and there.
"""
from __future__ import annotations

import pytest
import torch

import pagedllm.ops as ops
from pagedllm import _C
from pagedllm.ops import reference as ref

HAS_CUDA = torch.cuda.is_available() and bool(_C.with_cuda)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def requires_gpu(fn):
    return pytest.mark.gpu(pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")(fn))


DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not HAS_CUDA, reason="needs a CUDA device")])]


@pytest.fixture(autouse=True)
def cpu_twins_on(monkeypatch):
    """Route CPU tensors to the C++ twins even where the dispatcher prefers torch."""
    monkeypatch.setattr(ops, "_CPU_TWIN", {name: True for name in ops._CPU_TWIN})


def rel_err(out: torch.Tensor, expect: torch.Tensor) -> float:
    out, expect = out.double().cpu(), expect.double().cpu()
    assert not torch.isnan(out).any(), "output has NaN (an element was not written)"
    return float((out - expect).norm() / expect.norm().clamp_min(1e-30))


def rand(*shape, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype=dtype, device=device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,hidden", [(1, 64), (7, 80), (256, 4096), (3, 5000)])
def test_rms_norm(device, dtype, rows, hidden):
    x = rand(rows, hidden, dtype=dtype, device=device, seed=rows)
    w = rand(hidden, dtype=dtype, device=device, seed=hidden)
    out = torch.full_like(x, float("nan"))
    got = ops.rms_norm(x, w, 1e-6, out=out)
    assert got.data_ptr() == out.data_ptr()
    assert rel_err(out, ref.rms_norm(x, w, 1e-6)) < TOL[dtype]


@pytest.mark.parametrize("device", DEVICES)
def test_rms_norm_3d_and_strided_rows(device):
    base = rand(4, 6, 256, dtype=torch.bfloat16, device=device, seed=1)
    w = rand(128, dtype=torch.bfloat16, device=device, seed=2)
    x = base[..., 64:192]  # rows with a stride: a slice of a wider activation
    got = ops.rms_norm(x, w, 1e-5)
    assert got.shape == x.shape
    assert rel_err(got, ref.rms_norm(x, w, 1e-5)) < TOL[torch.bfloat16]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,hidden", [(1, 64), (5, 80), (256, 2048), (3, 16384)])
def test_fused_add_rms_norm(device, dtype, rows, hidden):
    x = rand(rows, hidden, dtype=dtype, device=device, seed=3)
    res = rand(rows, hidden, dtype=dtype, device=device, seed=4)
    w = rand(hidden, dtype=dtype, device=device, seed=5)
    x_ref, res_ref = x.clone(), res.clone()
    ref.fused_add_rms_norm(x_ref, res_ref, w, 1e-6)
    ops.fused_add_rms_norm(x, res, w, 1e-6)
    assert rel_err(res, res_ref) < TOL[dtype] / 4
    assert rel_err(x, x_ref) < TOL[dtype]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("slices", (1, 2, 4))
@pytest.mark.parametrize("rows,hidden", [(1, 64), (5, 80), (256, 1024), (3, 4100), (2, 16384)])
def test_fused_add_rms_norm_sums_split_k_partials(device, dtype, slices, rows, hidden):
    # A split-K GEMM's float32 partial products stand in for x: the kernel adds their sum,
    # rounded to the dtype, and writes x without reading it.
    partials = rand(slices, rows, hidden, dtype=torch.float32, device=device, seed=slices) * 2
    res = rand(rows, hidden, dtype=dtype, device=device, seed=4)
    w = rand(hidden, dtype=dtype, device=device, seed=5)
    x_ref, res_ref = torch.empty_like(res), res.clone()
    ref.fused_add_rms_norm(x_ref, res_ref, w, 1e-6, partials=partials)
    # The reference is the plain fused op on the summed, rounded GEMM output.
    x_plain, res_plain = partials.sum(0).to(dtype), res.clone()
    ref.fused_add_rms_norm(x_plain, res_plain, w, 1e-6)
    assert torch.equal(res_ref, res_plain) and torch.equal(x_ref, x_plain)
    x = torch.full_like(res, float("nan"))
    ops.fused_add_rms_norm(x, res, w, 1e-6, partials=partials)
    assert rel_err(res, res_ref) < TOL[dtype] / 4
    assert rel_err(x, x_ref) < TOL[dtype]


def test_fused_add_rms_norm_rejects_bad_partials():
    d = ops._desc
    x, res, w = torch.empty(4, 64), torch.randn(4, 64), torch.ones(64)
    with pytest.raises(ValueError, match="float32"):
        _C.ops.fused_add_rms_norm(d(x), d(res), d(w), 1e-6, partials=d(torch.randn(2, 4, 64).half()))
    with pytest.raises(ValueError, match="num_rows"):
        _C.ops.fused_add_rms_norm(d(x), d(res), d(w), 1e-6, partials=d(torch.randn(2, 3, 64)))
    with pytest.raises(ValueError, match="hidden"):
        _C.ops.fused_add_rms_norm(d(x), d(res), d(w), 1e-6, partials=d(torch.randn(2, 4, 32)))
    with pytest.raises(ValueError, match="contiguous"):
        _C.ops.fused_add_rms_norm(d(x), d(res), d(w), 1e-6,
                                  partials=d(torch.randn(4, 2, 64).transpose(0, 1)))
    with pytest.raises(ValueError, match="at least one"):
        _C.ops.fused_add_rms_norm(d(x), d(res), d(w), 1e-6, partials=d(torch.randn(0, 4, 64)))
    with pytest.raises(ValueError, match="rank|dim"):
        _C.ops.fused_add_rms_norm(d(x), d(res), d(w), 1e-6, partials=d(torch.randn(4, 64)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("is_neox", (True, False))
# (128, 96): Phi-4-mini's partial rotary (factor 0.75).
@pytest.mark.parametrize("head_size,rot_dim", [(64, 64), (128, 128), (80, 40), (128, 96)])
def test_rotary_embedding(device, dtype, is_neox, head_size, rot_dim):
    tokens, hq, hkv, max_pos = 37, 8, 2, 4096
    inv_freq = 1.0 / (10000 ** (torch.arange(0, rot_dim, 2).float() / rot_dim))
    freqs = torch.outer(torch.arange(max_pos).float(), inv_freq)
    cache = torch.cat((freqs.cos(), freqs.sin()), dim=-1).to(device)  # [max_pos, rot_dim]
    g = torch.Generator().manual_seed(head_size)
    positions = torch.randint(0, max_pos, (tokens,), generator=g).to(device)
    # query and key as column slices of one fused qkv output (row stride > width).
    qkv = rand(tokens, (hq + 2 * hkv) * head_size, dtype=dtype, device=device, seed=6)
    q = qkv[:, : hq * head_size]
    k = qkv[:, hq * head_size: (hq + hkv) * head_size]
    q_ref, k_ref = q.clone(), k.clone()
    ref.rotary_embedding(positions, q_ref, k_ref, head_size, cache, is_neox)
    ops.rotary_embedding(positions.to(torch.int32), q, k, head_size, cache, is_neox)
    assert rel_err(q, q_ref) < TOL[dtype]
    assert rel_err(k, k_ref) < TOL[dtype]
    # The value columns are not touched.
    untouched = qkv[:, (hq + hkv) * head_size:]
    assert torch.equal(untouched, rand(tokens, (hq + 2 * hkv) * head_size, dtype=dtype,
                                       device=device, seed=6)[:, (hq + hkv) * head_size:])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("is_neox", (True, False))
@pytest.mark.parametrize("head_size,rot_dim,hq,hkv", [(128, 128, 16, 8), (64, 64, 4, 4),
                                                      (80, 40, 40, 8), (256, 256, 3, 1)])
def test_rotary_with_per_head_norm(device, dtype, is_neox, head_size, rot_dim, hq, hkv):
    # Qwen3's q_norm / k_norm fused into the rotation, in place in a fused qkv output.
    tokens, max_pos = 29, 2048
    inv_freq = 1.0 / (10000 ** (torch.arange(0, rot_dim, 2).float() / rot_dim))
    freqs = torch.outer(torch.arange(max_pos).float(), inv_freq)
    cache = torch.cat((freqs.cos(), freqs.sin()), dim=-1).to(device)  # [max_pos, rot_dim]
    positions = torch.randint(0, max_pos, (tokens,),
                              generator=torch.Generator().manual_seed(rot_dim)).to(device)
    width = (hq + 2 * hkv) * head_size
    qkv = rand(tokens, width, dtype=dtype, device=device, seed=head_size) * 3
    q, k = qkv[:, : hq * head_size], qkv[:, hq * head_size: (hq + hkv) * head_size]
    q_w = rand(head_size, dtype=dtype, device=device, seed=1) + 1
    k_w = rand(head_size, dtype=dtype, device=device, seed=2) + 1
    # Reference: the separate per-head rms_norm (float32 in, rounded out), then the rotation.
    q_ref = ref.rms_norm(q.reshape(-1, head_size), q_w, 1e-6).view(tokens, -1)
    k_ref = ref.rms_norm(k.reshape(-1, head_size), k_w, 1e-6).view(tokens, -1)
    ref.rotary_embedding(positions, q_ref, k_ref, head_size, cache, is_neox)
    values = qkv[:, (hq + hkv) * head_size:].clone()
    ops.rotary_embedding(positions, q, k, head_size, cache, is_neox, q_norm_weight=q_w,
                         k_norm_weight=k_w, norm_eps=1e-6)
    assert rel_err(q, q_ref) < TOL[dtype]
    assert rel_err(k, k_ref) < TOL[dtype]
    assert torch.equal(qkv[:, (hq + hkv) * head_size:], values)  # V untouched
    # The two norms are not swapped: with k's weight on q the answer is different.
    if dtype == torch.float32:
        swapped = qkv.clone()
        ops.rotary_embedding(positions, swapped[:, : hq * head_size],
                             swapped[:, hq * head_size: (hq + hkv) * head_size], head_size, cache,
                             is_neox, q_norm_weight=k_w, k_norm_weight=q_w)
        assert not torch.allclose(swapped[:, : hq * head_size], q)


def _rope_table(rot_dim: int, max_pos: int, device) -> torch.Tensor:
    inv_freq = 1.0 / (10000 ** (torch.arange(0, rot_dim, 2).float() / rot_dim))
    freqs = torch.outer(torch.arange(max_pos).float(), inv_freq)
    return torch.cat((freqs.cos(), freqs.sin()), dim=-1).to(device)  # [max_pos, rot_dim]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("is_neox", (True, False))
@pytest.mark.parametrize("norm", (False, True))
@pytest.mark.parametrize("tokens,head_size,rot_dim,hq,hkv", [
    (37, 128, 128, 16, 8), (5, 64, 64, 4, 4), (23, 80, 40, 40, 8), (300, 128, 128, 32, 8),
    (19, 128, 96, 24, 8)])
def test_rotary_writes_the_kv_cache(device, dtype, is_neox, norm, tokens, head_size, rot_dim,
                                    hq, hkv):
    # The layer's path: q, k, v as column slices of one qkv output; the rotated key and the value
    # go into the paged cache in the same kernel. Expected: exactly what the rotation without a
    # cache leaves in q and k, and what reshape_and_cache then writes.
    max_pos, block_size, num_blocks = 2048, 16, 40
    table = _rope_table(rot_dim, max_pos, device)
    g = torch.Generator().manual_seed(tokens + head_size)
    positions = torch.randint(0, max_pos, (tokens,), generator=g).to(device)
    slots = torch.randperm(num_blocks * block_size, generator=g)[:tokens].to(torch.int32)
    slots[::7] = -1  # padding rows: nothing written
    slots = slots.to(device)
    qkv = rand(tokens, (hq + 2 * hkv) * head_size, dtype=dtype, device=device, seed=tokens) * 3
    q_w = rand(head_size, dtype=dtype, device=device, seed=1) + 1 if norm else None
    k_w = rand(head_size, dtype=dtype, device=device, seed=2) + 1 if norm else None

    def split(t):
        return (t[:, : hq * head_size], t[:, hq * head_size: (hq + hkv) * head_size],
                t[:, (hq + hkv) * head_size:])

    expect_qkv = qkv.clone()
    eq, ek, ev = split(expect_qkv)
    ops.rotary_embedding(positions, eq, ek, head_size, table, is_neox, q_norm_weight=q_w,
                         k_norm_weight=k_w)
    expect_cache = torch.full((2, num_blocks, block_size, hkv, head_size), float("nan"),
                              dtype=dtype, device=device)
    ops.reshape_and_cache(ek.view(tokens, hkv, head_size), ev.view(tokens, hkv, head_size),
                          expect_cache, slots)

    kv_cache = torch.full_like(expect_cache, float("nan"))
    q, k, v = split(qkv)
    ops.rotary_embedding(positions, q, k, head_size, table, is_neox, q_norm_weight=q_w,
                         k_norm_weight=k_w, value=v, kv_cache=kv_cache, slot_mapping=slots)
    assert torch.equal(qkv, expect_qkv)  # q and k rotated as without the cache, v untouched
    # Written slots equal, unwritten ones still poisoned (equal_nan compares those).
    assert torch.allclose(kv_cache, expect_cache, rtol=0, atol=0, equal_nan=True)
    assert int(torch.isnan(kv_cache[0]).all(-1).all(-1).sum()) == \
        num_blocks * block_size - int((slots >= 0).sum())
    # And the rotation itself against the torch reference.
    src = rand(tokens, (hq + 2 * hkv) * head_size, dtype=dtype, device=device, seed=tokens) * 3
    rq, rk, _ = split(src)
    if norm:
        rq = ref.rms_norm(rq.reshape(-1, head_size), q_w, 1e-6).view(tokens, -1)
        rk = ref.rms_norm(rk.reshape(-1, head_size), k_w, 1e-6).view(tokens, -1)
    else:
        rq, rk = rq.clone(), rk.clone()
    ref.rotary_embedding(positions, rq, rk, head_size, table, is_neox)
    assert rel_err(q, rq) < TOL[dtype] and rel_err(k, rk) < TOL[dtype]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("is_neox", (True, False))
@pytest.mark.parametrize("offset", (0, 1))
def test_rotary_on_views_off_the_vector_word(device, dtype, is_neox, offset):
    # The CUDA op rotates whole heads of 32 * E dims with one vector word per lane when every
    # pointer and row stride is aligned to that word; here q, k and v start `offset` elements into
    # a buffer whose rows are one element wider than the heads (odd stride: never aligned), so
    # it takes its general kernel. Both ways: the reference's answer, and the same cache rows.
    tokens, head_size, hq, hkv, max_pos, block_size = 19, 128, 4, 2, 512, 16
    table = _rope_table(head_size, max_pos, device)
    positions = torch.randint(0, max_pos, (tokens,), generator=torch.Generator().manual_seed(3))
    positions = positions.to(device)
    slots = torch.arange(tokens, dtype=torch.int32, device=device) * 3
    width = (hq + 2 * hkv) * head_size
    buf = rand(tokens, width + 1, dtype=dtype, device=device, seed=11) * 3
    qkv = buf[:, offset: offset + width]
    q, k = qkv[:, : hq * head_size], qkv[:, hq * head_size: (hq + hkv) * head_size]
    v = qkv[:, (hq + hkv) * head_size:]
    q_w = rand(head_size, dtype=dtype, device=device, seed=1) + 1
    k_w = rand(head_size, dtype=dtype, device=device, seed=2) + 1
    rq = ref.rms_norm(q.reshape(-1, head_size), q_w, 1e-6).view(tokens, -1)
    rk = ref.rms_norm(k.reshape(-1, head_size), k_w, 1e-6).view(tokens, -1)
    ref.rotary_embedding(positions, rq, rk, head_size, table, is_neox)
    kv_cache = torch.full((2, 4 * tokens // block_size + 1, block_size, hkv, head_size),
                          float("nan"), dtype=dtype, device=device)
    ops.rotary_embedding(positions, q, k, head_size, table, is_neox, q_norm_weight=q_w,
                         k_norm_weight=k_w, value=v, kv_cache=kv_cache, slot_mapping=slots)
    assert rel_err(q, rq) < TOL[dtype] and rel_err(k, rk) < TOL[dtype]
    written = kv_cache.view(2, -1, hkv * head_size)[:, slots.long()]
    assert torch.equal(written[0], k) and torch.equal(written[1], v)


@pytest.mark.parametrize("device", DEVICES)
def test_rotary_cache_write_in_another_dtype_falls_back(device):
    # A float32 cache under a bfloat16 model is outside the fused kernel: the op still rotates
    # with its kernel and writes the cache through reshape_and_cache's reference (converting).
    dtype, head_size, tokens, hkv = torch.bfloat16, 64, 9, 2
    table = _rope_table(head_size, 64, device)
    positions = torch.arange(tokens, device=device)
    q = rand(tokens, 4 * head_size, dtype=dtype, device=device, seed=3)
    k = rand(tokens, hkv * head_size, dtype=dtype, device=device, seed=4)
    v = rand(tokens, hkv * head_size, dtype=dtype, device=device, seed=5)
    slots = torch.arange(tokens, dtype=torch.int32, device=device) * 2
    kv_cache = torch.full((2, 2, 16, hkv, head_size), float("nan"), device=device)
    q_ref, k_ref = q.clone(), k.clone()
    ref.rotary_embedding(positions, q_ref, k_ref, head_size, table, True)
    ops.rotary_embedding(positions, q, k, head_size, table, True, value=v, kv_cache=kv_cache,
                         slot_mapping=slots)
    written = kv_cache.view(2, -1, hkv * head_size)[:, slots.long()]
    assert torch.equal(written[0], k.float()) and torch.equal(written[1], v.float())
    assert rel_err(k, k_ref) < TOL[dtype]
    # A value whose rows are not dense (column-major here) cannot ride the kernel either.
    v_cols = v.t().contiguous().t()
    same_dtype_cache = torch.full((2, 2, 16, hkv, head_size), float("nan"), dtype=dtype,
                                  device=device)
    ops.rotary_embedding(positions, q, k, head_size, table, True, value=v_cols,
                         kv_cache=same_dtype_cache, slot_mapping=slots)
    written = same_dtype_cache.view(2, -1, hkv * head_size)[:, slots.long()]
    assert torch.equal(written[1], v)


@pytest.mark.parametrize("device", DEVICES)
def test_rotary_3d_views_and_model_dtype_cache(device):
    dtype, head_size = torch.bfloat16, 64
    cache = rand(128, 64, dtype=dtype, device=device, seed=7)
    positions = torch.arange(10, device=device)
    q = rand(10, 4, head_size, dtype=dtype, device=device, seed=8)
    k = rand(10, 1, head_size, dtype=dtype, device=device, seed=9)
    q_ref, k_ref = q.clone(), k.clone()
    ref.rotary_embedding(positions, q_ref, k_ref, head_size, cache, True)
    ops.rotary_embedding(positions, q, k, head_size, cache, True)
    assert rel_err(q, q_ref) < TOL[dtype] and rel_err(k, k_ref) < TOL[dtype]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,d", [(1, 64), (9, 100), (256, 8192)])
def test_silu_and_mul(device, dtype, rows, d):
    x = rand(rows, 2 * d, dtype=dtype, device=device, seed=d)
    out = torch.full((rows, d), float("nan"), dtype=dtype, device=device)
    got = ops.silu_and_mul(x, out=out)
    assert got.data_ptr() == out.data_ptr()
    assert rel_err(out, ref.silu_and_mul(x)) < TOL[dtype]


def test_layer_bindings_reject_bad_inputs():
    d = ops._desc
    x = torch.randn(4, 64)
    with pytest.raises(ValueError, match="hidden"):
        _C.ops.rms_norm(d(torch.empty(4, 64)), d(x), d(torch.ones(32)), 1e-6)
    with pytest.raises(ValueError, match="dtype"):
        _C.ops.rms_norm(d(torch.empty(4, 64)), d(x), d(torch.ones(64).half()), 1e-6)
    with pytest.raises(ValueError, match="contiguous"):
        _C.ops.rms_norm(d(torch.empty(64, 4)), d(x.t()), d(torch.ones(4)), 1e-6)
    with pytest.raises(ValueError, match="even"):
        _C.ops.silu_and_mul(d(torch.empty(4, 2)), d(torch.randn(4, 5)))
    with pytest.raises(ValueError, match="num_rows"):
        _C.ops.fused_add_rms_norm(d(x), d(torch.randn(3, 64)), d(torch.ones(64)), 1e-6)
    cache = torch.randn(16, 32)
    pos = torch.tensor([0, 16], dtype=torch.int32)  # 16 is past the cache
    q, k = torch.randn(2, 64), torch.randn(2, 64)
    with pytest.raises(ValueError, match="outside cos_sin_cache"):
        _C.ops.rotary_embedding(d(pos), d(q), d(k), 64, d(cache), True)
    with pytest.raises(ValueError, match="head_size"):
        _C.ops.rotary_embedding(d(pos), d(q), d(k), 48, d(cache), True)
    with pytest.raises(ValueError, match="int32 or int64"):
        _C.ops.rotary_embedding(d(pos.float()), d(q), d(k), 64, d(cache), True)
    pos = torch.tensor([0, 15], dtype=torch.int32)
    w64, w32, w_half = torch.ones(64), torch.ones(32), torch.ones(64).half()
    _C.ops.rotary_embedding(d(pos), d(q), d(k), 64, d(cache), True, q_norm_weight=d(w64),
                            k_norm_weight=d(w64))  # valid
    with pytest.raises(ValueError, match="both or neither"):
        _C.ops.rotary_embedding(d(pos), d(q), d(k), 64, d(cache), True, q_norm_weight=d(w64))
    with pytest.raises(ValueError, match="head_size"):
        _C.ops.rotary_embedding(d(pos), d(q), d(k), 64, d(cache), True, q_norm_weight=d(w64),
                                k_norm_weight=d(w32))
    with pytest.raises(ValueError, match="dtype"):
        _C.ops.rotary_embedding(d(pos), d(q), d(k), 64, d(cache), True, q_norm_weight=d(w_half),
                                k_norm_weight=d(w64))
    # The fused cache write: all three of value, kv_cache, slot_mapping, each checked.
    kv = torch.zeros(2, 4, 16, 1, 64)
    v, slots = torch.randn(2, 64), torch.tensor([3, -1], dtype=torch.int32)
    _C.ops.rotary_embedding(d(pos), d(q), d(k), 64, d(cache), True, value=d(v), kv_cache=d(kv),
                            slot_mapping=d(slots))  # valid
    assert torch.equal(kv[0].view(-1, 64)[3], k[0]) and torch.equal(kv[1].view(-1, 64)[3], v[0])
    with pytest.raises(ValueError, match="all three or none"):
        _C.ops.rotary_embedding(d(pos), d(q), d(k), 64, d(cache), True, value=d(v), kv_cache=d(kv))
    kv_half = kv.half()
    with pytest.raises(ValueError, match="dtype"):
        _C.ops.rotary_embedding(d(pos), d(q), d(k), 64, d(cache), True, value=d(v),
                                kv_cache=d(kv_half), slot_mapping=d(slots))
    with pytest.raises(ValueError, match="num_kv_heads"):
        wide_v = torch.randn(2, 128)
        _C.ops.rotary_embedding(d(pos), d(q), d(k), 64, d(cache), True, value=d(wide_v),
                                kv_cache=d(kv), slot_mapping=d(slots))
    past_the_cache = torch.tensor([0, 64], dtype=torch.int32)  # 4 blocks of 16 slots
    with pytest.raises(ValueError, match="outside the cache"):
        _C.ops.rotary_embedding(d(pos), d(q), d(k), 64, d(cache), True, value=d(v), kv_cache=d(kv),
                                slot_mapping=d(past_the_cache))
    with pytest.raises(ValueError, match="all three or none"):
        ops.rotary_embedding(pos, q, k, 64, cache, True, kv_cache=kv)
    # The CUDA kernel stages a head in shared memory: huge heads are refused on every device.
    big = _C.ops.MAX_NORM_ROTARY_HEAD_SIZE * 2
    qb, kb, wb = torch.randn(2, big), torch.randn(2, big), torch.ones(big)
    with pytest.raises(ValueError, match="at most"):
        _C.ops.rotary_embedding(d(pos), d(qb), d(kb), big, d(cache), True, q_norm_weight=d(wb),
                                k_norm_weight=d(wb))



@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a usable GPU")
def test_cuda_descriptors_without_gpu_raise_runtime_error():
    # A CPU-only build says it has no CUDA kernels; a CUDA build on a machine without a GPU
    # reports the launch failure. Either way a clear RuntimeError, no crash. (Host memory is
    # passed as "device 0": neither path dereferences it.)
    x = torch.randn(4, 64)
    fake_cuda = ops._desc(x)[:4] + (0,)
    w = ops._desc(torch.ones(64))[:4] + (0,)
    with pytest.raises(RuntimeError, match="CUDA"):
        _C.ops.rms_norm(fake_cuda, fake_cuda, w, 1e-6)
