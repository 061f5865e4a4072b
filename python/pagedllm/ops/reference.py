"""Torch reference implementations of pagedllm's kernels: the definition every kernel must match.

These run anywhere torch runs (they are the CPU path until a faster CPU twin exists) and are the
oracle of the kernel tests. Layouts:
  kv_cache:    [2, num_blocks, block_size, num_kv_heads, head_dim]  (0 = keys, 1 = values)
  block_table: [num_seqs, max_blocks_per_seq] int32, padded with the null block 0
  slot:        block_id * block_size + offset_in_block; slot < 0 means "do not write"
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def reshape_and_cache(
    key: torch.Tensor,           # [T, Hkv, D]
    value: torch.Tensor,         # [T, Hkv, D]
    kv_cache: torch.Tensor,      # [2, NB, BS, Hkv, D]
    slot_mapping: torch.Tensor,  # [T] int32
) -> None:
    """Write each token's K and V into the paged cache at its slot (in place)."""
    block_size = kv_cache.shape[2]
    slots = slot_mapping.long()
    keep = slots >= 0
    slots = slots[keep]
    blocks, offsets = slots // block_size, slots % block_size
    kv_cache[0, blocks, offsets] = key[keep].to(kv_cache.dtype)
    kv_cache[1, blocks, offsets] = value[keep].to(kv_cache.dtype)


def paged_attention(
    query: torch.Tensor,            # [T, Hq, D]
    kv_cache: torch.Tensor,         # [2, NB, BS, Hkv, D]
    block_table: torch.Tensor,      # [S, max_blocks] int32
    query_start_loc: torch.Tensor,  # [S + 1] int32
    seq_lens: torch.Tensor,         # [S] int32
    scale: float,
    max_query_len: int = 0,         # hints for kernels; unused here
    max_seq_len: int = 0,
    out: Optional[torch.Tensor] = None,  # [T, Hq, D]
    sliding_window: int = -1,       # > 0: a query at position p sees keys in (p - window, p]
) -> torch.Tensor:
    """Causal attention of each sequence's query chunk over its whole cached context.

    Sequence i owns query rows query_start_loc[i] .. query_start_loc[i+1]-1 (q_len of them) and
    has seq_lens[i] tokens in the cache, its new tokens included (reshape_and_cache ran first).
    Query j of the chunk sits at position p = seq_lens[i] - q_len + j and attends to keys at
    positions 0..p. Query heads map to KV heads in groups: head h reads KV head h // (Hq // Hkv).
    Softmax in float32; the output has the query's dtype.
    """
    num_seqs = seq_lens.shape[0]
    _, _, block_size, num_kv_heads, head_dim = kv_cache.shape
    num_q_heads = query.shape[1]
    group = num_q_heads // num_kv_heads
    if out is None:
        out = torch.empty_like(query)
    qsl = query_start_loc.tolist()
    lens = seq_lens.tolist()
    for i in range(num_seqs):
        q_begin, q_end, ctx_len = qsl[i], qsl[i + 1], lens[i]
        q_len = q_end - q_begin
        if q_len == 0:
            continue
        num_blocks = (ctx_len + block_size - 1) // block_size
        blocks = block_table[i, :num_blocks].long()
        k = kv_cache[0, blocks].reshape(-1, num_kv_heads, head_dim)[:ctx_len]  # [L, Hkv, D]
        v = kv_cache[1, blocks].reshape(-1, num_kv_heads, head_dim)[:ctx_len]
        k = k.float().repeat_interleave(group, dim=1).transpose(0, 1)  # [Hq, L, D]
        v = v.float().repeat_interleave(group, dim=1).transpose(0, 1)
        q = query[q_begin:q_end].float().transpose(0, 1)                # [Hq, q_len, D]
        scores = torch.matmul(q, k.transpose(1, 2)) * scale             # [Hq, q_len, L]
        q_pos = torch.arange(ctx_len - q_len, ctx_len).unsqueeze(1)     # [q_len, 1]
        k_pos = torch.arange(ctx_len).unsqueeze(0)                      # [1, L]
        visible = k_pos <= q_pos
        if sliding_window > 0:
            visible &= k_pos > q_pos - sliding_window
        scores = scores.masked_fill(~visible.to(scores.device), float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out[q_begin:q_end] = torch.matmul(probs, v).transpose(0, 1).to(out.dtype)
    return out


def rms_norm(
    x: torch.Tensor,       # [..., H]
    weight: torch.Tensor,  # [H]
    eps: float,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """y = x / sqrt(mean(x^2) + eps) * weight, computed in float32."""
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    y = (y * weight.float()).to(x.dtype)
    if out is None:
        return y
    out.copy_(y)
    return out


def fused_add_rms_norm(
    x: torch.Tensor,         # [T, H], becomes the normalized output
    residual: torch.Tensor,  # [T, H], becomes x + residual
    weight: torch.Tensor,    # [H]
    eps: float,
    partials: Optional[torch.Tensor] = None,  # [S, T, H] float32: added in place of x
) -> None:
    """In place: residual <- x + residual; x <- rms_norm(residual) * weight. With partials (a
    split-K GEMM's float32 products) x's value is replaced by partials.sum(0) rounded to x's
    dtype."""
    if partials is not None:
        x = x.copy_(partials.sum(0).to(x.dtype))
    summed = (x.float() + residual.float()).to(residual.dtype)
    residual.copy_(summed)
    x.copy_(rms_norm(summed, weight, eps))


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
    slot_mapping: Optional[torch.Tensor] = None,  # [T] int32
) -> None:
    """Rotate the first rot_dim dims of every head. NeoX style pairs dim i with i + rot_dim/2;
    GPT-J style pairs dim 2i with 2i + 1. With norm weights each head is first replaced by
    rms_norm(head) * weight (Qwen3's q_norm / k_norm). With value, kv_cache and slot_mapping,
    reshape_and_cache(rotated key, value, kv_cache, slot_mapping) follows (one pass on CUDA)."""
    if (q_norm_weight is None) != (k_norm_weight is None):
        raise ValueError("q_norm_weight and k_norm_weight: give both or neither")
    if not (value is None) == (kv_cache is None) == (slot_mapping is None):
        raise ValueError("value, kv_cache and slot_mapping: give all three or none")
    if q_norm_weight is not None:
        for t, w in ((query, q_norm_weight), (key, k_norm_weight)):
            heads = t.view(t.shape[0], -1, head_size)
            heads.copy_(rms_norm(heads, w, norm_eps))
    rot_dim = cos_sin_cache.shape[1]
    cos_sin = cos_sin_cache[positions.long()].float()   # [T, rot_dim]
    cos, sin = cos_sin[:, : rot_dim // 2], cos_sin[:, rot_dim // 2:]
    for t in (query, key):
        x = t.view(t.shape[0], -1, head_size)
        rot = x[..., :rot_dim].float()
        c, s = cos.unsqueeze(1), sin.unsqueeze(1)         # [T, 1, rot_dim/2]
        if is_neox:
            x1, x2 = rot[..., : rot_dim // 2], rot[..., rot_dim // 2:]
            rotated = torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)
        else:
            x1, x2 = rot[..., 0::2], rot[..., 1::2]
            rotated = torch.stack((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).flatten(-2)
        x[..., :rot_dim] = rotated.to(t.dtype)
    if kv_cache is not None:
        heads = (key.shape[0], -1, head_size)
        reshape_and_cache(key.reshape(heads), value.reshape(heads), kv_cache, slot_mapping)


def silu_and_mul(
    x: torch.Tensor,  # [T, 2 * I]: gate then up
    out: Optional[torch.Tensor] = None,  # [T, I]
) -> torch.Tensor:
    """silu(x[:, :I]) * x[:, I:]."""
    d = x.shape[-1] // 2
    y = F.silu(x[..., :d].float()) * x[..., d:].float()
    y = y.to(x.dtype)
    if out is None:
        return y
    out.copy_(y)
    return out
