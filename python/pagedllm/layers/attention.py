"""Attention over the paged KV cache: write this step's K/V, then attend (pagedllm.ops)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from pagedllm import ops
from pagedllm.worker.attention_metadata import AttentionMetadata


class Attention(nn.Module):
    def __init__(self, num_heads: int, head_dim: int, scale: float, num_kv_heads: int,
                 sliding_window: Optional[int] = None):
        super().__init__()
        if num_heads % num_kv_heads != 0:
            raise ValueError(f"num_key_value_heads: {num_kv_heads} does not divide "
                             f"num_attention_heads {num_heads}")
        self.num_heads, self.head_dim, self.num_kv_heads = num_heads, head_dim, num_kv_heads
        self.scale = scale
        self.sliding_window = sliding_window if sliding_window else -1

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor,
                meta: AttentionMetadata, kv_written: bool = False) -> torch.Tensor:
        """q [T, Hq * D], k and v [T, Hkv * D]; kv_cache [2, NB, BS, Hkv, D]. kv_written: this
        step's k and v are already in the cache at meta.slot_mapping (written by the rotary
        kernel). Returns [T, Hq * D]."""
        num_tokens = q.shape[0]
        q = q.view(num_tokens, self.num_heads, self.head_dim)
        if not kv_written:
            k = k.view(num_tokens, self.num_kv_heads, self.head_dim)
            v = v.view(num_tokens, self.num_kv_heads, self.head_dim)
            ops.reshape_and_cache(k, v, kv_cache, meta.slot_mapping)
        out = ops.paged_attention(q, kv_cache, meta.block_table, meta.query_start_loc,
                                  meta.seq_lens, self.scale, meta.max_query_len, meta.max_seq_len,
                                  sliding_window=self.sliding_window,
                                  token_order=meta.token_order,
                                  short_chunk_tokens=meta.short_chunk_tokens)
        return out.view(num_tokens, self.num_heads * self.head_dim)
