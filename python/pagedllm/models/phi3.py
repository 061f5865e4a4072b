"""Phi-3 family (Phi-3-mini / -medium, Phi-3.5-mini, Phi-4, Phi-4-mini): Llama's blocks.

What differs is the checkpoint and the config: q/k/v and gate/up come already fused (qkv_proj
rows [q | k | v], gate_up_proj rows [gate | up]), a `sliding_window` applies to every layer when
set, Phi-4-mini rotates only part of each head (partial_rotary_factor 0.75, which
make_rotary_embedding reads), and the 128k variants use LongRoPE (see
layers/rotary_embedding.py for which factors the table takes).
"""
from __future__ import annotations

from pagedllm.models.llama import LlamaForCausalLM, MistralForCausalLM, head_dim_of


class Phi3ForCausalLM(LlamaForCausalLM):
    stacked_params = ()   # nothing to stack: the checkpoint's tensors are fused already
    # As Mistral: transformers masks every layer with config.sliding_window when it is set.
    sliding_windows = staticmethod(MistralForCausalLM.sliding_windows)

    def fused_checkpoint_params(self) -> tuple:
        # Full (all ranks') row counts: the weight loaders take this rank's slice of each part.
        config = self.config
        head_dim = head_dim_of(config)
        q_rows = config.num_attention_heads * head_dim
        kv_rows = (getattr(config, "num_key_value_heads", None)
                   or config.num_attention_heads) * head_dim
        inter = config.intermediate_size
        return ((".qkv_proj.", (("q", q_rows), ("k", kv_rows), ("v", kv_rows))),
                (".gate_up_proj.", ((0, inter), (1, inter))))
