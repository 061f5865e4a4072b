"""Real model shapes for dummy-weight benchmarks, written as config-only model directories.

No hub access is needed: each entry is the published architecture of the named model, so
`load_format="dummy"` builds random weights of the real sizes.
"""
from __future__ import annotations

import json
import os
import tempfile

_QWEN3_COMMON = dict(
    architectures=["Qwen3ForCausalLM"], model_type="qwen3", vocab_size=151936, head_dim=128,
    num_key_value_heads=8, rms_norm_eps=1e-6, rope_theta=1_000_000.0, hidden_act="silu",
    max_position_embeddings=40960, attention_bias=False, bos_token_id=151643,
    eos_token_id=151645, torch_dtype="bfloat16",
)

SHAPES: dict[str, dict] = {
    "qwen3-0.6b": dict(_QWEN3_COMMON, hidden_size=1024, intermediate_size=3072,
                       num_hidden_layers=28, num_attention_heads=16, tie_word_embeddings=True),
    "qwen3-8b": dict(_QWEN3_COMMON, hidden_size=4096, intermediate_size=12288,
                     num_hidden_layers=36, num_attention_heads=32, tie_word_embeddings=False),
    # 128 experts of intermediate 768, 8 per token, in all 48 layers: 30.5B parameters, 3.3B
    # active per token.
    "qwen3-30b-a3b": dict(_QWEN3_COMMON, architectures=["Qwen3MoeForCausalLM"],
                          model_type="qwen3_moe", hidden_size=2048, intermediate_size=6144,
                          num_hidden_layers=48, num_attention_heads=32, num_key_value_heads=4,
                          num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768,
                          norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
                          tie_word_embeddings=False),
    "llama-3.1-8b": dict(
        architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=128256,
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, rms_norm_eps=1e-5, rope_theta=500000.0, hidden_act="silu",
        max_position_embeddings=131072, tie_word_embeddings=False, bos_token_id=128000,
        eos_token_id=128001, torch_dtype="bfloat16",
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                          high_freq_factor=4.0, original_max_position_embeddings=8192),
    ),
}


def write_shape_dir(name: str, root: str | None = None) -> str:
    """Write `config.json` for the named shape into a directory and return its path."""
    if name not in SHAPES:
        raise ValueError(f"unknown shape {name!r}; known: {sorted(SHAPES)}")
    path = os.path.join(root or tempfile.gettempdir(), f"pagedllm-shape-{name}")
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(SHAPES[name], f, indent=1)
    return path
