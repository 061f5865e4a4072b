"""Qwen mixture-of-experts decoders: Qwen2-MoE (Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B: q/k/v bias
and a shared expert behind a sigmoid gate) and Qwen3-MoE (Qwen3-30B-A3B, Qwen3-235B-A22B:
per-head q/k RMSNorm, no shared expert).

Llama's blocks (models/llama.py) with an expert block (layers/moe.py) as the MLP of layer i,
unless i is in mlp_only_layers or i + 1 is not a multiple of decoder_sparse_step: those keep a
dense MLP of intermediate_size. Checkpoints store each expert's gate_proj / up_proj / down_proj
apart (what save_pretrained writes too); transformers' stacked experts.gate_up_proj /
experts.down_proj load as they are.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from pagedllm.layers.linear import ReplicatedLinear
from pagedllm.layers.moe import SparseMoeBlock, expert_checkpoint_names
from pagedllm.models.llama import DecoderOptions, LlamaForCausalLM, LlamaMLP
from pagedllm.models.qwen import qwen_sliding_windows


def is_sparse_layer(config: Any, layer_idx: int) -> bool:
    """Whether layer `layer_idx` has experts (else a dense MLP), by transformers' rule."""
    return (layer_idx not in (getattr(config, "mlp_only_layers", None) or ())
            and config.num_experts > 0 and (layer_idx + 1) % config.decoder_sparse_step == 0)


class QwenMoeBlock(SparseMoeBlock):
    """The routed experts of a Qwen MoE layer (all of Qwen3-MoE's MLP); norm_topk_prob says
    whether the top-k weights are renormalized (Qwen3-MoE: yes, Qwen1.5-MoE: no)."""

    def __init__(self, config: Any, tp_rank: int, tp_size: int):
        super().__init__(config.hidden_size, config.num_experts, config.num_experts_per_tok,
                         config.moe_intermediate_size, renormalize=config.norm_topk_prob,
                         hidden_act=config.hidden_act, tp_rank=tp_rank, tp_size=tp_size)


class QwenMoeForCausalLM(LlamaForCausalLM):
    """What the two generations share: the layer plan and the checkpoint's expert names."""

    expert_params = expert_checkpoint_names("gate_proj", "up_proj", "down_proj")
    expert_block = QwenMoeBlock

    def make_mlp(self, config: Any, layer_idx: int, tp_rank: int,
                 tp_size: int) -> Optional[nn.Module]:
        if not is_sparse_layer(config, layer_idx):
            return None   # LlamaMLP of config.intermediate_size
        return self.expert_block(config, tp_rank, tp_size)


class Qwen3MoeForCausalLM(QwenMoeForCausalLM):
    options = DecoderOptions(qk_norm=True)

    @staticmethod
    def sliding_windows(config: Any) -> list[Optional[int]]:
        # With use_sliding_window every layer is windowed (transformers 5 keeps sliding_window
        # only then; older configs carry a value either way).
        window = config.sliding_window if getattr(config, "use_sliding_window", False) else None
        return [window or None] * config.num_hidden_layers


class Qwen2MoeSharedExpert(LlamaMLP):
    # Its output is added to the experts' before any norm: no split-K partials.
    output_into_fused_norm = False


class Qwen2MoeBlock(QwenMoeBlock):
    """Qwen2-MoE's MLP: the routed experts plus a shared expert every token goes through, scaled
    by sigmoid(shared_expert_gate(x)); one all-reduce for both under tensor parallelism."""

    def __init__(self, config: Any, tp_rank: int, tp_size: int):
        super().__init__(config, tp_rank, tp_size)
        self.shared_expert = Qwen2MoeSharedExpert(
            config, tp_rank, tp_size, intermediate_size=config.shared_expert_intermediate_size,
            reduce_results=False)
        self.shared_expert_gate = ReplicatedLinear(config.hidden_size, 1, bias=False)

    def partial_output(self, x: torch.Tensor) -> torch.Tensor:
        # The gate scales each token's row, so it may scale the ranks' partial sums.
        shared = torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return super().partial_output(x) + shared


class Qwen2MoeForCausalLM(QwenMoeForCausalLM):
    # Windowed layers as Qwen2's, by config.layer_types (Qwen2-MoE's own pattern).
    sliding_windows = staticmethod(qwen_sliding_windows)
    expert_block = Qwen2MoeBlock

    def decoder_options(self, config: Any) -> DecoderOptions:
        return DecoderOptions(qkv_bias=getattr(config, "qkv_bias", True))
