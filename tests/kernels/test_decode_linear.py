"""decode_linear (the decode-step GEMM, kernels/decode_linear.h) vs its float32 reference.

The plan is host arithmetic and is tested everywhere; the kernel needs an sm_90 GPU. Outputs are
poisoned with NaN first; kernel and reference both accumulate in float32 and round once, so they
differ by the summation order (far below an ulp of the dtype) and, rarely, one ulp after rounding.
"""
from __future__ import annotations

import pytest
import torch

import pagedllm.ops as ops
from pagedllm import _C
from pagedllm.layers import linear as linear_mod
from pagedllm.ops import reference as ref

HAS_KERNEL = (torch.cuda.is_available() and bool(_C.with_cuda)
              and _C.ops.decode_linear_available(torch.cuda.current_device()))
MAX_ROWS = _C.ops.DECODE_LINEAR_MAX_ROWS
# (out_features, in_features): Qwen3-0.6B's qkv / o / gate_up / down, small odd-sliced ones, and
# Qwen3-8B's qkv and o (6 K slices of 5-6 groups).
SHAPES = [(4096, 1024), (1024, 2048), (6144, 1024), (1024, 3072), (64, 128), (192, 640),
          (6144, 4096), (4096, 4096)]


def requires_kernel(fn):
    return pytest.mark.gpu(pytest.mark.skipif(not HAS_KERNEL, reason="needs an sm_90+ GPU")(fn))


def rand(*shape, dtype, seed, scale=1.0, device="cuda"):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype=dtype, device=device)


def assert_close_to_reference(out, x, w, bias):
    expect = (x.double() @ w.double().t() + (0 if bias is None else bias.double())).cpu()
    got = out.double().cpu()
    assert not torch.isnan(got).any(), "an output element was not written"
    ulp = 2.0 ** -7 if out.dtype == torch.bfloat16 else 2.0 ** -10
    # One rounding to the dtype (half an ulp) plus float32 summation order.
    tol = ulp * expect.abs() + 1e-3 * expect.abs().mean()
    bad = (got - expect).abs() > tol
    assert not bad.any(), f"{int(bad.sum())} elements off, worst {float((got - expect).abs().max()):.4g}"


# ---- the plan (host arithmetic, no GPU) -------------------------------------------------------

@pytest.mark.parametrize("n,k", SHAPES + [(151936, 1024), (24576, 4096)])
@pytest.mark.parametrize("sms", [132, 78, 16])
def test_plan_slices_do_not_depend_on_rows(n, k, sms):
    plans = [_C.ops.decode_linear_plan(rows, n, k, sms) for rows in range(1, MAX_ROWS + 1)]
    assert all(p["supported"] for p in plans), plans[0]["why_not"]
    assert len({(p["slices"], p["row_tiles"], p["groups"]) for p in plans}) == 1
    p = plans[-1]
    assert 1 <= p["slices"] <= min(8, p["groups"])
    assert p["row_tiles"] == n // 64 and p["groups"] == k // 128
    for rows, q in enumerate(plans, start=1):
        assert q["token_tiles"] * 8 >= rows and q["smem_bytes"] <= 200 * 1024
        # smem holds the x slice of the padded tokens: the longest slice plus the bank pad
        longest = -(-q["groups"] // q["slices"]) * 128
        assert q["smem_bytes"] == q["token_tiles"] * 8 * (longest + 32) * 2


def test_plan_fills_the_gpu_and_prefers_equal_slices():
    # Qwen3-0.6B's qkv on 132 SMs: 64 row tiles, 4 slices of 2 groups (256 CTAs), not 5 unequal.
    p = _C.ops.decode_linear_plan(64, 4096, 1024, 132)
    assert (p["slices"], p["row_tiles"]) == (4, 64)
    # A narrow output takes the most slices a cluster may have.
    assert _C.ops.decode_linear_plan(64, 1024, 3072, 132)["slices"] == 8
    # A wide one needs no slicing for the CTA count, only for shared memory at 128 rows.
    assert _C.ops.decode_linear_plan(64, 151936, 1024, 132)["slices"] == 2


@pytest.mark.parametrize("rows,n,k,why", [
    (0, 1024, 1024, "num_rows"), (MAX_ROWS + 1, 1024, 1024, "num_rows"),
    (8, 1000, 1024, "out_features"), (8, 1024, 1000, "in_features"),
    (8, 4096, 12288, "K slices"),   # Qwen3-8B's down_proj: the x slice does not fit at 128 rows
])
def test_plan_refuses_with_a_reason(rows, n, k, why):
    p = _C.ops.decode_linear_plan(rows, n, k, 132)
    assert not p["supported"] and why in p["why_not"]


def test_cpu_tensors_take_torch_linear():
    x = rand(5, 256, dtype=torch.bfloat16, seed=1, device="cpu")
    w = rand(128, 256, dtype=torch.bfloat16, seed=2, device="cpu")
    assert not ops.decode_linear_supported(x, w)
    torch.testing.assert_close(ops.decode_linear(x, w), torch.nn.functional.linear(x, w))
    with pytest.raises(ValueError, match="CUDA tensors only"):
        _C.ops.decode_linear(ops._desc(torch.empty(5, 128, dtype=torch.bfloat16)), ops._desc(x),
                             ops._desc(w))


# ---- the kernel ---------------------------------------------------------------------------

@requires_kernel
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("rows", [1, 7, 8, 17, 64, 100, MAX_ROWS])
def test_matches_reference(dtype, n, k, rows):
    x = rand(rows, k, dtype=dtype, seed=rows * 7 + k)
    w = rand(n, k, dtype=dtype, seed=n + k, scale=k ** -0.5)
    bias = rand(n, dtype=dtype, seed=n) if rows % 2 else None
    out = torch.full((rows, n), float("nan"), dtype=dtype, device="cuda")
    _C.ops.decode_linear(ops._desc(out), ops._desc(x), ops._desc(w),
                         bias=None if bias is None else ops._desc(bias),
                         stream=torch.cuda.current_stream().cuda_stream)
    assert_close_to_reference(out, x, w, bias)
    # the op (what the layers call) gives the same
    assert torch.equal(ops.decode_linear(x, w, bias), out)


@requires_kernel
def test_strided_rows_and_views():
    big = rand(40, 3 * 1024, dtype=torch.bfloat16, seed=3)
    x = big[:, 1024:2048]                          # row stride 3072: taken in place
    w = rand(4096, 1024, dtype=torch.bfloat16, seed=4, scale=1 / 32)
    assert_close_to_reference(ops.decode_linear(x, w), x, w, None)
    odd = big.view(-1)[8:8 + 33 * 1024].view(33, 1024)  # 16-byte aligned, dense
    assert_close_to_reference(ops.decode_linear(odd, w), odd, w, None)
    unaligned = big.view(-1)[1:1 + 9 * 1024].view(9, 1024)  # 2-byte offset: copied first
    assert_close_to_reference(ops.decode_linear(unaligned, w), unaligned, w, None)


@requires_kernel
@pytest.mark.parametrize("n,k", [(4096, 1024), (1024, 3072), (6144, 4096)])
def test_rows_do_not_depend_on_the_batch_and_repeat_exactly(n, k):
    x = rand(MAX_ROWS, k, dtype=torch.bfloat16, seed=5)
    w = rand(n, k, dtype=torch.bfloat16, seed=6, scale=k ** -0.5)
    full = ops.decode_linear(x, w)
    assert torch.equal(ops.decode_linear(x, w), full)
    for rows in (1, 5, 8, 37, 64, 127):
        assert torch.equal(ops.decode_linear(x[:rows], w), full[:rows]), rows
    # the same rows in another batch: a row's result is its own
    shuffled = torch.cat([x[64:], x[:64]])
    assert torch.equal(ops.decode_linear(shuffled, w), torch.cat([full[64:], full[:64]]))


@requires_kernel
def test_cuda_graph_replay_matches_eager():
    x = rand(48, 2048, dtype=torch.bfloat16, seed=7)
    w = rand(1024, 2048, dtype=torch.bfloat16, seed=8, scale=1 / 45)
    bias = rand(1024, dtype=torch.bfloat16, seed=9)
    eager = ops.decode_linear(x, w, bias)
    static_x = x.clone()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        ops.decode_linear(static_x, w, bias)  # warm-up off the capture (smem opt-in, queries)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = ops.decode_linear(static_x, w, bias)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(static_out, eager)
    static_x.copy_(rand(48, 2048, dtype=torch.bfloat16, seed=10))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(static_out, ops.decode_linear(static_x, w, bias))


@requires_kernel
def test_binding_rejects_bad_input():
    x = rand(8, 1024, dtype=torch.bfloat16, seed=11)
    w = rand(1024, 1024, dtype=torch.bfloat16, seed=12)
    out = torch.empty(8, 1024, dtype=torch.bfloat16, device="cuda")
    call = lambda o, x_, w_, **kw: _C.ops.decode_linear(ops._desc(o), ops._desc(x_), ops._desc(w_), **kw)
    with pytest.raises(ValueError, match="float16 or bfloat16"):
        call(out.float(), x.float(), w.float())
    with pytest.raises(ValueError, match="weight"):
        call(out, x, w.half())
    with pytest.raises(ValueError, match="in_features"):
        call(out, x[:, :512], w)
    with pytest.raises(ValueError, match="out_features"):
        call(out[:, :512], x, w)
    with pytest.raises(ValueError, match="16-byte"):
        base = rand(8 * 1024 + 8, dtype=torch.bfloat16, seed=16)
        call(out, base[1:1 + 8 * 1024].view(8, 1024), w)
    with pytest.raises(ValueError, match="contiguous"):
        call(out, x, w.t())
    with pytest.raises(ValueError, match="bias"):
        call(out, x, w, bias=ops._desc(torch.zeros(512, dtype=torch.bfloat16, device="cuda")))
    with pytest.raises(ValueError, match="num_rows"):
        big = rand(MAX_ROWS + 1, 1024, dtype=torch.bfloat16, seed=13)
        call(torch.empty(MAX_ROWS + 1, 1024, dtype=torch.bfloat16, device="cuda"), big, w)
    with pytest.raises(ValueError, match="multiple of 64"):
        call(out[:, :1000], x, w[:1000])


@requires_kernel
def test_linear_layers_route_decode_rows_to_the_kernel(monkeypatch):
    layer = linear_mod.RowParallelLinear(3072, 1024, bias=False, params_dtype=torch.bfloat16).cuda()
    layer.weight.data.copy_(rand(1024, 3072, dtype=torch.bfloat16, seed=14, scale=3072 ** -0.5))
    x = rand(64, 3072, dtype=torch.bfloat16, seed=15)
    out = layer(x, into_fused_norm=True)   # decode rows: one bf16 output, not split-K partials
    assert isinstance(out, torch.Tensor) and torch.equal(out, ops.decode_linear(x, layer.weight))
    monkeypatch.setattr(linear_mod, "DECODE_GEMM_MAX_ROWS", 0)
    split = layer(x, into_fused_norm=True)  # switched off: split-K partials as before
    assert isinstance(split, linear_mod.SplitKPartials)
    torch.testing.assert_close(split.sum().float(), out.float(), rtol=2 ** -7, atol=1e-2)
