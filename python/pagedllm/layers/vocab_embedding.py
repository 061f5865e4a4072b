"""Token embedding and LM head, vocab-parallel-ready.

Rank r holds vocabulary rows [r * V/tp, (r+1) * V/tp) (the vocabulary is padded to a multiple of
tp_size). With tp_size == 1, the only size run today, these are a plain embedding and a matmul.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class VocabParallelEmbedding(nn.Module):
    def __init__(self, num_embeddings: int, embedding_dim: int, tp_rank: int = 0, tp_size: int = 1,
                 params_dtype: Optional[torch.dtype] = None):
        super().__init__()
        self.num_embeddings = num_embeddings
        self.tp_rank, self.tp_size = tp_rank, tp_size
        padded = (num_embeddings + tp_size - 1) // tp_size * tp_size
        self.rows_per_rank = padded // tp_size
        self.vocab_start = tp_rank * self.rows_per_rank
        self.weight = nn.Parameter(
            torch.zeros(self.rows_per_rank, embedding_dim,
                        dtype=params_dtype or torch.get_default_dtype()),
            requires_grad=False)  # [V / tp, H]
        self.weight.weight_loader = self.weight_loader

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
        if loaded.shape[1:] != param.shape[1:]:
            raise ValueError(f"embedding of shape {tuple(loaded.shape)} does not fit "
                             f"{tuple(param.shape)}")
        rows = loaded[self.vocab_start: self.vocab_start + self.rows_per_rank]
        param.data[: rows.shape[0]].copy_(rows.to(param.dtype))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # [T] -> [T, H]
        if self.tp_size == 1:
            return F.embedding(input_ids, self.weight)
        # UNTESTED until the tensor-parallel issue: ids outside this rank's rows embed to zero,
        # and the all-reduce adds the one rank that owns each id.
        local = input_ids - self.vocab_start
        inside = (local >= 0) & (local < self.rows_per_rank)
        out = F.embedding(local.clamp(0, self.rows_per_rank - 1), self.weight)
        out = out * inside.unsqueeze(-1).to(out.dtype)
        torch.distributed.all_reduce(out)
        return out


class ParallelLMHead(VocabParallelEmbedding):
    """Projects hidden states to vocabulary logits; `tie_to(embedding)` shares the embedding."""

    def __init__(self, num_embeddings: int, embedding_dim: int, bias: bool = False, **kwargs):
        super().__init__(num_embeddings, embedding_dim, **kwargs)
        if bias:
            self.bias = nn.Parameter(torch.zeros(self.rows_per_rank, dtype=self.weight.dtype),
                                     requires_grad=False)
        else:
            self.register_parameter("bias", None)

    def tie_to(self, embedding: VocabParallelEmbedding) -> None:
        self.weight = embedding.weight

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[N, H] -> [N, V] in the weights' dtype (padding rows of the vocabulary dropped)."""
        logits = F.linear(hidden, self.weight, self.bias)  # [N, V / tp]
        if self.tp_size > 1:
            # UNTESTED until the tensor-parallel issue.
            parts = [torch.empty_like(logits) for _ in range(self.tp_size)]
            torch.distributed.all_gather(parts, logits)
            logits = torch.cat(parts, dim=-1)
        return logits[:, : self.num_embeddings]
