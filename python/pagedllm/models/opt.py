"""OPT (facebook/opt-*) over the paged KV cache: learned positions (offset 2), LayerNorm, ReLU.

Supports pre- and post-LayerNorm variants (do_layer_norm_before) and a word-embedding width
different from the hidden size (project_in / project_out, as opt-350m has).
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from pagedllm.layers.attention import Attention
from pagedllm.layers.linear import (ColumnParallelLinear, QKVParallelLinear, ReplicatedLinear,
                                    RowParallelLinear)
from pagedllm.layers.vocab_embedding import ParallelLMHead, VocabParallelEmbedding
from pagedllm.models.llama import load_named_weights

# OPT's learned position table reserves its first two rows (a fairseq padding convention).
POSITION_OFFSET = 2


class OPTAttention(nn.Module):
    def __init__(self, config: Any, tp_rank: int, tp_size: int):
        super().__init__()
        hidden, heads = config.hidden_size, config.num_attention_heads
        self.head_dim = hidden // heads
        bias = config.enable_bias
        self.qkv_proj = QKVParallelLinear(hidden, self.head_dim, heads, heads, bias=bias,
                                          tp_rank=tp_rank, tp_size=tp_size)
        self.q_size = self.qkv_proj.num_heads * self.head_dim
        self.out_proj = RowParallelLinear(hidden, hidden, bias=bias, tp_rank=tp_rank,
                                          tp_size=tp_size)
        self.attn = Attention(self.qkv_proj.num_heads, self.head_dim, self.head_dim ** -0.5,
                              self.qkv_proj.num_heads)

    def forward(self, hidden, kv_cache, meta):
        qkv = self.qkv_proj(hidden)                            # [T, 3 * H]
        q, k, v = qkv.split([self.q_size] * 3, dim=-1)           # row-strided views
        return self.out_proj(self.attn(q, k, v, kv_cache, meta))


class OPTDecoderLayer(nn.Module):
    def __init__(self, config: Any, tp_rank: int, tp_size: int):
        super().__init__()
        if config.activation_function != "relu":
            raise ValueError(f"activation_function: only 'relu' is supported for OPT, "
                             f"got {config.activation_function!r}")
        hidden = config.hidden_size
        affine = getattr(config, "layer_norm_elementwise_affine", True)
        self.pre_norm = config.do_layer_norm_before
        self.self_attn = OPTAttention(config, tp_rank, tp_size)
        self.self_attn_layer_norm = nn.LayerNorm(hidden, elementwise_affine=affine)
        self.fc1 = ColumnParallelLinear(hidden, config.ffn_dim, bias=config.enable_bias,
                                        tp_rank=tp_rank, tp_size=tp_size)
        self.fc2 = RowParallelLinear(config.ffn_dim, hidden, bias=config.enable_bias,
                                     tp_rank=tp_rank, tp_size=tp_size)
        self.final_layer_norm = nn.LayerNorm(hidden, elementwise_affine=affine)

    def forward(self, hidden, kv_cache, meta):
        residual = hidden
        if self.pre_norm:
            hidden = self.self_attn_layer_norm(hidden)
        hidden = residual + self.self_attn(hidden, kv_cache, meta)
        if not self.pre_norm:
            hidden = self.self_attn_layer_norm(hidden)
        residual = hidden
        if self.pre_norm:
            hidden = self.final_layer_norm(hidden)
        hidden = residual + self.fc2(F.relu(self.fc1(hidden)))
        if not self.pre_norm:
            hidden = self.final_layer_norm(hidden)
        return hidden


class OPTDecoder(nn.Module):
    def __init__(self, config: Any, tp_rank: int, tp_size: int):
        super().__init__()
        proj_dim, hidden = config.word_embed_proj_dim, config.hidden_size
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, proj_dim,
                                                   tp_rank=tp_rank, tp_size=tp_size)
        self.embed_positions = nn.Embedding(config.max_position_embeddings + POSITION_OFFSET,
                                            hidden)
        self.embed_positions.weight.requires_grad_(False)
        self.project_in = (ReplicatedLinear(proj_dim, hidden, bias=False)
                           if proj_dim != hidden else None)
        self.project_out = (ReplicatedLinear(hidden, proj_dim, bias=False)
                            if proj_dim != hidden else None)
        has_final_norm = (config.do_layer_norm_before
                          and not getattr(config, "_remove_final_layer_norm", False))
        self.final_layer_norm = (
            nn.LayerNorm(hidden, elementwise_affine=getattr(config, "layer_norm_elementwise_affine",
                                                            True))
            if has_final_norm else None)
        self.layers = nn.ModuleList(OPTDecoderLayer(config, tp_rank, tp_size)
                                    for _ in range(config.num_hidden_layers))

    def forward(self, input_ids, positions, kv_caches, meta):
        hidden = self.embed_tokens(input_ids)                  # [T, word_embed_proj_dim]
        if self.project_in is not None:
            hidden = self.project_in(hidden)
        hidden = hidden + self.embed_positions(positions.long() + POSITION_OFFSET)
        for layer, kv_cache in zip(self.layers, kv_caches):
            hidden = layer(hidden, kv_cache, meta)
        if self.final_layer_norm is not None:
            hidden = self.final_layer_norm(hidden)
        if self.project_out is not None:
            hidden = self.project_out(hidden)
        return hidden


class OPTModel(nn.Module):
    def __init__(self, config: Any, tp_rank: int, tp_size: int):
        super().__init__()
        self.decoder = OPTDecoder(config, tp_rank, tp_size)


class OPTForCausalLM(nn.Module):
    stacked_params = ((".qkv_proj.", ".q_proj.", "q"), (".qkv_proj.", ".k_proj.", "k"),
                      (".qkv_proj.", ".v_proj.", "v"))

    def __init__(self, config: Any, tp_rank: int = 0, tp_size: int = 1):
        super().__init__()
        self.config = config
        self.model = OPTModel(config, tp_rank, tp_size)
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", True))
        self.lm_head = ParallelLMHead(config.vocab_size, config.word_embed_proj_dim,
                                      tp_rank=tp_rank, tp_size=tp_size)
        if self.tie_word_embeddings:
            self.lm_head.tie_to(self.model.decoder.embed_tokens)

    def forward(self, input_ids, positions, kv_caches, meta):
        return self.model.decoder(input_ids, positions, kv_caches, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head.compute_logits(hidden)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        def renamed():
            for name, tensor in weights:
                # The original facebook/opt-* checkpoints omit the leading "model.".
                yield ("model." + name if name.startswith("decoder.") else name), tensor

        load_named_weights(self, renamed(), self.stacked_params,
                           skip=lambda n: self.tie_word_embeddings and n.startswith("lm_head."))
