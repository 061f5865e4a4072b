"""pagedllm's kernels behind one set of functions (signatures and semantics: ops/reference.py).

Each op dispatches on its tensors' device: CUDA tensors go to the CUDA kernels of
`pagedllm._C.ops` (launched on torch's current stream, so streams and CUDA graphs compose), CPU
tensors to the C++ CPU twins where those are faster than torch (measured: see _CPU_TWIN), and
anything the compiled kernels do not cover (other dtypes, odd layouts, a build without CUDA)
to the torch reference. The binding validates shapes, dtypes and contiguity and raises
ValueError before launching.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import reference as _ref

try:
    from pagedllm import _C as _C_module

    _ops = _C_module.ops
    _WITH_CUDA: bool = bool(_C_module.with_cuda)
except ImportError:  # pure-Python checkout without the extension: the reference serves all
    _ops = None
    _WITH_CUDA = False

# Query chunks at least this long take the tensor-core attention kernel on CUDA (fp16 / bf16);
# shorter ones (decode rows, short extends) the token kernel. See short_chunk_tokens.
PREFILL_KERNEL_MIN_QUERY_LEN: int = getattr(_ops, "PREFILL_KERNEL_MIN_QUERY_LEN", 16)

__all__ = [
    "fused_add_rms_norm",
    "paged_attention",
    "reshape_and_cache",
    "rms_norm",
    "rotary_embedding",
    "silu_and_mul",
]

# Codes of kernels::DType (csrc/kernels/kernel_args.h).
_DTYPE_CODES = {
    torch.float32: 0,
    torch.float16: 1,
    torch.bfloat16: 2,
    torch.int32: 3,
    torch.int64: 4,
}
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Ops whose CPU twin beats the torch reference on CPU tensors, measured with
# benchmarks/kernels/cpu_twins.py (2-core x86, torch 2.13, 2 threads; twin vs torch speed-up):
# reshape_and_cache 10x, paged_attention 2-16x (0.9x for fp32 chunks on long prefixes, kept for
# one path that releases the GIL), rotary 3x; rms_norm 0.95x, fused_add_rms_norm 0.5x and
# silu_and_mul 0.03-0.3x (scalar exp) stay on the torch reference.
_CPU_TWIN = {
    "reshape_and_cache": True,
    "paged_attention": True,
    "rotary_embedding": True,
    "rms_norm": False,
    "fused_add_rms_norm": False,
    "silu_and_mul": False,
    # Scalar Philox + two logs per element: slower than torch's vectorised noise on the CPU, so
    # the CPU sampler keeps its torch path (the twin is the kernel's reference in the tests).
    "exponential_race_sample": False,
}


def _desc(t: torch.Tensor) -> tuple:
    """The binding's tensor descriptor: (data_ptr, shape, strides, dtype_code, device_index)."""
    return (t.data_ptr(), tuple(t.shape), t.stride(), _DTYPE_CODES[t.dtype],
            t.device.index if t.is_cuda else -1)


def _stream(t: torch.Tensor) -> int:
    return torch.cuda.current_stream(t.device).cuda_stream if t.is_cuda else 0


def _use_kernel(op: str, t: torch.Tensor) -> bool:
    """Whether the compiled kernel can serve tensors on t's device."""
    if _ops is None:
        return False
    if t.is_cuda:
        return _WITH_CUDA
    return t.device.type == "cpu" and _CPU_TWIN[op]


def reshape_and_cache(
    key: torch.Tensor,           # [T, Hkv, D]
    value: torch.Tensor,         # [T, Hkv, D]
    kv_cache: torch.Tensor,      # [2, NB, BS, Hkv, D]
    slot_mapping: torch.Tensor,  # [T] int32
) -> None:
    """Write each token's K and V into the paged cache at its slot (in place)."""
    if (not _use_kernel("reshape_and_cache", kv_cache) or key.dtype != kv_cache.dtype
            or value.dtype != kv_cache.dtype or kv_cache.dtype not in _FLOAT_DTYPES
            or slot_mapping.dtype != torch.int32):
        return _ref.reshape_and_cache(key, value, kv_cache, slot_mapping)
    _ops.reshape_and_cache(_desc(key), _desc(value), _desc(kv_cache), _desc(slot_mapping),
                           stream=_stream(kv_cache))


_HEAD_DIMS_CUDA = (64, 80, 96, 128, 256)


def cuda_attention_supported(head_dim: int, dtype: torch.dtype) -> bool:
    """Whether paged_attention on CUDA tensors of this head size and dtype runs the compiled
    kernel (graph-capturable) rather than the torch reference (host syncs: not capturable)."""
    return _WITH_CUDA and _ops is not None and head_dim in _HEAD_DIMS_CUDA \
        and dtype in _FLOAT_DTYPES


def paged_attention(
    query: torch.Tensor,            # [T, Hq, D]
    kv_cache: torch.Tensor,         # [2, NB, BS, Hkv, D]
    block_table: torch.Tensor,      # [S, max_blocks] int32
    query_start_loc: torch.Tensor,  # [S + 1] int32
    seq_lens: torch.Tensor,         # [S] int32
    scale: float,
    max_query_len: int = 0,         # upper bounds; on CUDA 0 means "compute" (a host sync)
    max_seq_len: int = 0,
    out: Optional[torch.Tensor] = None,  # [T, Hq, D]
    sliding_window: int = -1,       # > 0: a query at position p sees keys in (p - window, p]
    token_order: Optional[torch.Tensor] = None,  # [T] int32 permutation of the tokens
    short_chunk_tokens: int = -1,   # see below; -1: unknown
) -> torch.Tensor:
    """Causal attention of each sequence's query chunk over its whole cached context.

    On CUDA the grids are sized from max_query_len and max_seq_len: pass fixed upper bounds
    when capturing a CUDA graph. token_order (a permutation of 0..T-1, e.g. from
    longest_first_token_order) is the order the CUDA token kernel starts the tokens in; it never
    changes the result. short_chunk_tokens = n >= 0 promises that every token of a chunk shorter
    than PREFILL_KERNEL_MIN_QUERY_LEN has a rank below n in token_order (in the batch without
    it): the token kernel then covers only those ranks instead of giving every token of the long
    chunks an empty CTA (~140 us for 8,192 prompt tokens on an H200). Checked on the CPU path.
    """
    usable = (_use_kernel("paged_attention", kv_cache) and kv_cache.dtype in _FLOAT_DTYPES
              and query.dtype == kv_cache.dtype and query.dim() == 3
              and all(t.dtype == torch.int32 for t in (block_table, query_start_loc, seq_lens)))
    if usable and kv_cache.is_cuda and kv_cache.shape[4] not in _HEAD_DIMS_CUDA:
        usable = False
    if not usable:
        return _ref.paged_attention(query, kv_cache, block_table, query_start_loc, seq_lens,
                                    scale, max_query_len, max_seq_len, out, sliding_window)
    # Heads must be dense; on CUDA rows must also start on 16-byte boundaries (the kernels move
    # 16-byte words). Anything else is copied.
    if (query.stride(-1) != 1 or query.stride(1) != query.shape[2]
            or (query.is_cuda and (query.data_ptr() % 16 or query.stride(0) * query.element_size() % 16))):
        query = query.clone(memory_format=torch.contiguous_format)
    target = out
    if (out is None or not out.is_contiguous() or out.dtype != query.dtype
            or (out.is_cuda and out.data_ptr() % 16)):
        target = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    if kv_cache.is_cuda:
        if max_query_len <= 0:
            max_query_len = int((query_start_loc[1:] - query_start_loc[:-1]).max().item()) \
                if seq_lens.numel() else 1
        if max_seq_len <= 0:
            max_seq_len = int(seq_lens.max().item()) if seq_lens.numel() else 1
        max_query_len, max_seq_len = max(max_query_len, 1), max(max_seq_len, 1)
    args = (_desc(target), _desc(query), _desc(kv_cache), _desc(block_table),
            _desc(query_start_loc), _desc(seq_lens), float(scale), int(max_query_len),
            int(max_seq_len), int(sliding_window))
    workspace, ws_bytes = None, 0
    if kv_cache.is_cuda:
        ws_bytes = _ops.paged_attention_workspace_bytes(*args)
        if ws_bytes > 0:
            workspace = torch.empty(ws_bytes, dtype=torch.uint8, device=kv_cache.device)
    _ops.paged_attention(*args, workspace=workspace.data_ptr() if workspace is not None else 0,
                         workspace_bytes=ws_bytes, stream=_stream(kv_cache),
                         token_order=_desc(token_order) if token_order is not None else None,
                         short_chunk_tokens=int(short_chunk_tokens))
    if out is not None and target is not out:
        out.copy_(target)
        return out
    return target


def rms_norm(
    x: torch.Tensor,       # [..., H]
    weight: torch.Tensor,  # [H]
    eps: float,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """y = x / sqrt(mean(x^2) + eps) * weight, computed in float32."""
    if (not _use_kernel("rms_norm", x) or x.dtype not in _FLOAT_DTYPES
            or weight.dtype != x.dtype or x.dim() == 0 or x.stride(-1) != 1):
        return _ref.rms_norm(x, weight, eps, out)
    hidden = x.shape[-1]
    x2 = x.reshape(-1, hidden)                           # [N, H]
    target = out
    if out is None or out.dtype != x.dtype or not out.is_contiguous():
        target = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _ops.rms_norm(_desc(target.view(-1, hidden)), _desc(x2), _desc(weight), float(eps),
                  stream=_stream(x))
    if out is not None and target is not out:
        out.copy_(target)
        return out
    return target


def fused_add_rms_norm(
    x: torch.Tensor,         # [T, H], becomes the normalized output
    residual: torch.Tensor,  # [T, H], becomes x + residual
    weight: torch.Tensor,    # [H]
    eps: float,
    partials: Optional[torch.Tensor] = None,  # [S, T, H] float32: a split-K GEMM's products
) -> None:
    """In place: residual <- x + residual; x <- rms_norm(residual) * weight. With partials the
    added value is partials.sum(0) rounded to x's dtype (the unsplit GEMM's output) and x is
    only written."""
    if (not _use_kernel("fused_add_rms_norm", x) or x.dtype not in _FLOAT_DTYPES
            or residual.dtype != x.dtype or weight.dtype != x.dtype or x.dim() != 2
            or residual.dim() != 2 or x.stride(-1) != 1 or residual.stride(-1) != 1
            or (partials is not None and not partials.is_contiguous())):
        return _ref.fused_add_rms_norm(x, residual, weight, eps, partials)
    _ops.fused_add_rms_norm(_desc(x), _desc(residual), _desc(weight), float(eps),
                            stream=_stream(x),
                            partials=None if partials is None else _desc(partials))


def _rows_view(t: torch.Tensor) -> Optional[torch.Tensor]:
    """t as [T, width] sharing storage, or None when that needs a copy."""
    if t.dim() == 2:
        return t if t.stride(-1) == 1 else None
    try:
        v = t.view(t.shape[0], -1)
    except RuntimeError:
        return None
    return v if v.stride(-1) == 1 else None


def rotary_embedding(
    positions: torch.Tensor,      # [T] int32 or int64
    query: torch.Tensor,          # [T, Hq * D] (or [T, Hq, D]), rotated in place
    key: torch.Tensor,            # [T, Hkv * D] (or [T, Hkv, D]), rotated in place
    head_size: int,
    cos_sin_cache: torch.Tensor,  # [max_position, rot_dim]: cos in [:rot_dim/2], sin in the rest
    is_neox: bool,
    q_norm_weight: Optional[torch.Tensor] = None,  # [D]: per-head RMSNorm of query first
    k_norm_weight: Optional[torch.Tensor] = None,  # [D]: per-head RMSNorm of key first
    norm_eps: float = 1e-6,
    value: Optional[torch.Tensor] = None,         # [T, Hkv * D] (or [T, Hkv, D])
    kv_cache: Optional[torch.Tensor] = None,      # [2, NB, BS, Hkv, D]
    slot_mapping: Optional[torch.Tensor] = None,  # [T] int32; slot < 0: not written
) -> None:
    """Rotate the first rot_dim dims of every head (NeoX or GPT-J pairing), in place; with norm
    weights each head is RMS-normalized first (Qwen3's q_norm / k_norm in the same pass). With
    value, kv_cache and slot_mapping the rotated key and the value then go into the paged cache
    at their slots, as reshape_and_cache would write them (same pass on CUDA)."""
    if not (value is None) == (kv_cache is None) == (slot_mapping is None):
        raise ValueError("value, kv_cache and slot_mapping: give all three or none")
    q2, k2 = _rows_view(query), _rows_view(key)
    norms = (q_norm_weight, k_norm_weight)
    if (not _use_kernel("rotary_embedding", query) or q2 is None or k2 is None
            or query.dtype not in _FLOAT_DTYPES or key.dtype != query.dtype
            or cos_sin_cache.dtype not in (torch.float32, query.dtype)
            or positions.dtype not in (torch.int32, torch.int64)
            or not cos_sin_cache.is_contiguous() or not positions.is_contiguous()
            or any(w is not None and (w.dtype != query.dtype or not w.is_contiguous())
                   for w in norms)):
        _ref.rotary_embedding(positions, query, key, head_size, cos_sin_cache, is_neox,
                              q_norm_weight, k_norm_weight, norm_eps)
        return _write_rotated_kv(key, value, kv_cache, slot_mapping, head_size)
    v2 = _rows_view(value) if value is not None else None
    fused = (kv_cache is not None and v2 is not None and value.dtype == query.dtype
             and kv_cache.dtype == query.dtype and slot_mapping.dtype == torch.int32
             and kv_cache.is_contiguous() and slot_mapping.is_contiguous())
    descs = [_desc(w) if w is not None else None for w in norms]
    cache_args = {}
    if fused:
        cache_args = dict(value=_desc(v2), kv_cache=_desc(kv_cache), slot_mapping=_desc(slot_mapping))
    _ops.rotary_embedding(_desc(positions), _desc(q2), _desc(k2), int(head_size),
                          _desc(cos_sin_cache), bool(is_neox), stream=_stream(query),
                          q_norm_weight=descs[0], k_norm_weight=descs[1],
                          norm_eps=float(norm_eps), **cache_args)
    if not fused:
        _write_rotated_kv(key, value, kv_cache, slot_mapping, head_size)


def _write_rotated_kv(key, value, kv_cache, slot_mapping, head_size: int) -> None:
    """The cache write of rotary_embedding where it could not share the rotation's pass."""
    if kv_cache is not None:
        reshape_and_cache(_dense_heads(key, head_size), _dense_heads(value, head_size), kv_cache,
                          slot_mapping)


def _dense_heads(t: torch.Tensor, head_size: int) -> torch.Tensor:
    """t as [T, H, head_size] with each token's heads dense (a copy only when they are not)."""
    heads = t.reshape(t.shape[0], -1, head_size)
    dense = heads.stride(-1) == 1 and heads.stride(-2) == head_size
    return heads if dense else heads.contiguous()


def exponential_race_sample_supported(logits: torch.Tensor) -> bool:
    """Whether exponential_race_sample has a compiled kernel for these logits (see _CPU_TWIN)."""
    return (_use_kernel("exponential_race_sample", logits) and logits.dtype in _FLOAT_DTYPES
            and logits.dim() == 2 and logits.shape[1] > 0 and logits.stride(1) == 1)


def exponential_race_sample(
    logits: torch.Tensor,           # [N, V] float32 / float16 / bfloat16, rows dense
    inv_temperature: torch.Tensor,  # [N] float32, 1 / T (ignored on greedy rows)
    greedy: torch.Tensor,           # [N] int32, non-zero: plain argmax
    seed: int,                      # Philox key (64 bits)
    step: int,                      # a new draw per step (64 bits)
    out: Optional[torch.Tensor] = None,  # [N] int64
    force_twin: bool = False,       # tests: run the CPU twin even where torch is preferred
) -> torch.Tensor:
    """One token per row in one pass over the logits: argmax of logits (greedy rows) or of
    logits / T + Gumbel noise, i.e. a sample of softmax(logits / T) (kernels/sampling.h). The
    noise of (seed, step, row, token) is the same on the CPU and on CUDA."""
    if not (force_twin or exponential_race_sample_supported(logits)):
        raise ValueError("exponential_race_sample: no kernel for these logits "
                         "(check exponential_race_sample_supported first)")
    if out is None:
        out = torch.empty(logits.shape[0], dtype=torch.int64, device=logits.device)
    mask = (1 << 64) - 1
    _ops.exponential_race_sample(_desc(out), _desc(logits), _desc(inv_temperature),
                                 _desc(greedy), int(seed) & mask, int(step) & mask,
                                 stream=_stream(logits))
    return out


def silu_and_mul(
    x: torch.Tensor,  # [T, 2 * I]: gate then up
    out: Optional[torch.Tensor] = None,  # [T, I]
) -> torch.Tensor:
    """silu(x[:, :I]) * x[:, I:]."""
    if (not _use_kernel("silu_and_mul", x) or x.dtype not in _FLOAT_DTYPES or x.dim() == 0
            or x.shape[-1] % 2 != 0):
        return _ref.silu_and_mul(x, out)
    x = x.contiguous()
    d = x.shape[-1] // 2
    x2 = x.view(-1, 2 * d)                               # [N, 2I]
    shape = x.shape[:-1] + (d,)
    target = out
    if out is None or out.dtype != x.dtype or not out.is_contiguous():
        target = torch.empty(shape, dtype=x.dtype, device=x.device)
    _ops.silu_and_mul(_desc(target.view(-1, d)), _desc(x2), stream=_stream(x))
    if out is not None and target is not out:
        out.copy_(target)
        return out
    return target
