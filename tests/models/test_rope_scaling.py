"""Rotary tables of the scalings that transformers computes per model (YaRN, dynamic NTK,
LongRoPE) against transformers' own rotary modules, the lengths the loader derives from them,
and clear errors for what is not supported."""
from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, Phi3Config, Qwen3Config
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding
from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

from pagedllm.layers.rotary_embedding import (RotaryEmbedding, rope_parameters_from_config,
                                              rope_scaled_max_positions)
from pagedllm.models.llama import make_rotary_embedding
from pagedllm.models.loader import derived_max_model_len


@torch.inference_mode()
def hf_cos_sin(rotary: torch.nn.Module, positions: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """transformers' cos and sin [P, rotary_dim / 2] (attention factor included) for positions
    run as one forward pass: the longest position picks LongRoPE's factors."""
    cos, sin = rotary(torch.zeros(1, dtype=torch.float32), positions[None])
    half = cos.shape[-1] // 2
    return cos[0, :, :half], sin[0, :, half:]


def assert_table_matches(ours: RotaryEmbedding, rotary: torch.nn.Module,
                         positions: torch.Tensor) -> None:
    cos, sin = hf_cos_sin(rotary, positions)
    half = ours.rotary_dim // 2
    assert cos.shape[-1] == half
    rows = ours.cos_sin_cache[positions]
    torch.testing.assert_close(rows[:, :half], cos, rtol=0, atol=1e-6)
    torch.testing.assert_close(rows[:, half:], sin, rtol=0, atol=1e-6)


YARN_CASES = {
    # Qwen3's long-context recipe: only rope_scaling is added to the config.
    "qwen3-recipe": dict(config=dict(max_position_embeddings=40960, rope_theta=1_000_000.0),
                         scaling=dict(rope_type="yarn", factor=4.0,
                                      original_max_position_embeddings=32768)),
    "betas-attention-factor-no-truncate": dict(
        config=dict(max_position_embeddings=8192, rope_theta=10000.0),
        scaling=dict(rope_type="yarn", factor=2.0, original_max_position_embeddings=4096,
                     beta_fast=16, beta_slow=2, attention_factor=0.8, truncate=False)),
    "mscale-pair": dict(config=dict(max_position_embeddings=16384, rope_theta=10000.0),
                        scaling=dict(rope_type="yarn", factor=40, mscale=0.707,
                                     mscale_all_dim=1.0, original_max_position_embeddings=4096)),
    "mscale-alone-is-ignored": dict(
        config=dict(max_position_embeddings=16384, rope_theta=10000.0),
        scaling=dict(rope_type="yarn", factor=8.0, mscale=2.0,
                     original_max_position_embeddings=2048)),
    "partial-rotary": dict(config=dict(max_position_embeddings=4096, rope_theta=500000.0),
                           scaling=dict(rope_type="yarn", factor=4.0, partial_rotary_factor=0.5,
                                        original_max_position_embeddings=1024)),
}


@pytest.mark.parametrize("case", sorted(YARN_CASES))
def test_yarn_table_matches_transformers(case):
    spec = YARN_CASES[case]
    config = Qwen3Config(hidden_size=512, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=128, rope_scaling=dict(spec["scaling"]), **spec["config"])
    ours = make_rotary_embedding(config)
    assert ours.rotary_dim == int(128 * spec["scaling"].get("partial_rotary_factor", 1.0))
    # The table reaches original_max_position_embeddings * factor where that is further.
    scaling = spec["scaling"]
    reach = int(scaling["original_max_position_embeddings"] * scaling["factor"])
    assert ours.cos_sin_cache.shape[0] == max(reach, config.max_position_embeddings)
    positions = torch.cat([torch.arange(0, 300), torch.arange(300, ours.cos_sin_cache.shape[0],
                                                               997)])
    assert_table_matches(ours, Qwen3RotaryEmbedding(config), positions)


def test_yarn_takes_a_config_level_original_max_position_embeddings():
    # transformers' rule: a config attribute wins over the value in the rope dict.
    config = LlamaConfig(hidden_size=256, num_attention_heads=2, head_dim=128,
                         max_position_embeddings=8192, original_max_position_embeddings=2048,
                         rope_scaling=dict(rope_type="yarn", factor=4.0,
                                           original_max_position_embeddings=4096))
    params = rope_parameters_from_config(config)
    assert params["original_max_position_embeddings"] == 2048
    ours = make_rotary_embedding(config)
    assert ours.cos_sin_cache.shape[0] == 8192
    assert_table_matches(ours, LlamaRotaryEmbedding(config), torch.arange(0, 8192, 7))


def test_yarn_extends_the_derived_max_model_len():
    config = Qwen3Config(max_position_embeddings=40960,
                         rope_scaling=dict(rope_type="yarn", factor=4.0,
                                           original_max_position_embeddings=32768))
    assert derived_max_model_len(config) == 131072
    assert rope_scaled_max_positions(rope_parameters_from_config(config)) == 131072
    plain = Qwen3Config(max_position_embeddings=40960)
    assert derived_max_model_len(plain) == 40960
    linear = Qwen3Config(max_position_embeddings=40960,
                         rope_scaling=dict(rope_type="linear", factor=4.0))
    assert derived_max_model_len(linear) == 40960


def test_dynamic_ntk_table_matches_transformers_up_to_max_positions():
    config = LlamaConfig(hidden_size=256, num_attention_heads=2, head_dim=128,
                         max_position_embeddings=2048, rope_theta=10000.0,
                         rope_scaling=dict(rope_type="dynamic", factor=3.0))
    ours = make_rotary_embedding(config)
    hf = LlamaRotaryEmbedding(config)
    assert_table_matches(ours, hf, torch.arange(2048))   # the longest sequence the engine runs
    assert derived_max_model_len(config) == 2048          # past it transformers rescales
    # Within max_position_embeddings the table is the plain one.
    plain = make_rotary_embedding(LlamaConfig(hidden_size=256, num_attention_heads=2,
                                              head_dim=128, max_position_embeddings=2048))
    torch.testing.assert_close(ours.cos_sin_cache, plain.cos_sin_cache, rtol=0, atol=0)


def _phi3_longrope_config(partial: float = 1.0, **rope) -> Phi3Config:
    rotary_half = int(96 * partial) // 2
    gen = torch.Generator().manual_seed(0)
    short = (1.0 + torch.rand(rotary_half, generator=gen)).tolist()
    long = (1.0 + 20 * torch.rand(rotary_half, generator=gen)).tolist()
    return Phi3Config(hidden_size=384, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=8192, original_max_position_embeddings=512,
                      partial_rotary_factor=partial, rope_theta=10000.0,
                      rope_scaling=dict(rope_type="longrope", short_factor=short,
                                        long_factor=long, **rope))


@pytest.mark.parametrize("partial", [1.0, 0.75])
@pytest.mark.parametrize("attention_factor", [None, 1.3])
def test_longrope_table_follows_max_model_len(partial, attention_factor):
    rope = {} if attention_factor is None else dict(attention_factor=attention_factor)
    config = _phi3_longrope_config(partial, **rope)
    hf = Phi3RotaryEmbedding(config)
    # max_model_len within the pretrained context: the short factors, as transformers uses for
    # every sequence that short.
    config.engine_max_model_len = 512
    short = make_rotary_embedding(config)
    assert short.rotary_dim == int(96 * partial)
    assert_table_matches(short, hf, torch.arange(512))
    # Longer: the long factors, as transformers uses once a sequence is longer than that.
    config.engine_max_model_len = 600
    long = make_rotary_embedding(config)
    assert_table_matches(long, hf, torch.arange(600))
    assert not torch.allclose(long.cos_sin_cache[:512], short.cos_sin_cache[:512])
    # The table has one row per served position.
    assert short.cos_sin_cache.shape[0] == 512 and long.cos_sin_cache.shape[0] == 600
    # Without the loader's value: max_position_embeddings (8192 > 512) rows, the long factors.
    del config.engine_max_model_len
    full = make_rotary_embedding(config).cos_sin_cache
    assert full.shape[0] == 8192
    torch.testing.assert_close(full[:600], long.cos_sin_cache, rtol=0, atol=0)


def test_longrope_factor_count_is_checked():
    params = dict(rope_theta=1e4, rope_type="longrope", short_factor=[1.0] * 3,
                  long_factor=[1.0] * 3, original_max_position_embeddings=16,
                  max_position_embeddings=64, max_model_len=16)
    with pytest.raises(ValueError, match="short_factor has 3 entries for 4 frequencies"):
        RotaryEmbedding(8, 8, 16, params)


def test_unsupported_rope_type_lists_the_supported_ones():
    with pytest.raises(ValueError, match="rope_scaling.*'proportional'.*yarn.*longrope"):
        RotaryEmbedding(64, 64, 16, {"rope_theta": 1e4, "rope_type": "proportional"})
