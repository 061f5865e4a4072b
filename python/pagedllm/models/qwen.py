"""Qwen2 (q/k/v bias) and Qwen3 (per-head q/k RMSNorm): Llama's blocks with those options."""
from __future__ import annotations

from typing import Any, Optional

from pagedllm.models.llama import DecoderOptions, LlamaForCausalLM


def qwen_sliding_windows(config: Any) -> list[Optional[int]]:
    # Qwen configs carry a sliding_window value but only use it when use_sliding_window is set,
    # and then only on the layers marked "sliding_attention".
    num_layers = config.num_hidden_layers
    if not getattr(config, "use_sliding_window", False) or not getattr(config, "sliding_window",
                                                                        None):
        return [None] * num_layers
    types = getattr(config, "layer_types", None)
    if types is None:
        first_full = getattr(config, "max_window_layers", num_layers)
        types = ["full_attention" if i < first_full else "sliding_attention"
                 for i in range(num_layers)]
    return [config.sliding_window if t == "sliding_attention" else None for t in types]


class Qwen2ForCausalLM(LlamaForCausalLM):
    options = DecoderOptions(qkv_bias=True)
    sliding_windows = staticmethod(qwen_sliding_windows)


class Qwen3ForCausalLM(LlamaForCausalLM):
    options = DecoderOptions(qk_norm=True)
    sliding_windows = staticmethod(qwen_sliding_windows)
