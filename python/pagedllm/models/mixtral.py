"""Mixtral (Mixtral-8x7B, -8x22B): Mistral's attention (every layer windowed when the config
sets sliding_window) and an expert block (layers/moe.py) as every layer's MLP, top-2 of 8 with
the two weights renormalized.

Hub checkpoints name the block `block_sparse_moe` and each expert's projections w1 (gate),
w3 (up) and w2 (down); transformers 5 names the block `mlp`, as we do, and stacks the experts
(mlp.experts.gate_up_proj / down_proj), which load as they are.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional

import torch
from torch import nn

from pagedllm.layers.moe import SparseMoeBlock, expert_checkpoint_names
from pagedllm.models.llama import LlamaForCausalLM, MistralForCausalLM


class MixtralForCausalLM(LlamaForCausalLM):
    sliding_windows = staticmethod(MistralForCausalLM.sliding_windows)
    expert_params = expert_checkpoint_names("w1", "w3", "w2")

    def make_mlp(self, config: Any, layer_idx: int, tp_rank: int,
                 tp_size: int) -> Optional[nn.Module]:
        return SparseMoeBlock(config.hidden_size, config.num_local_experts,
                              config.num_experts_per_tok, config.intermediate_size,
                              renormalize=True, hidden_act=config.hidden_act, tp_rank=tp_rank,
                              tp_size=tp_size)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        super().load_weights((name.replace(".block_sparse_moe.", ".mlp."), tensor)
                             for name, tensor in weights)
