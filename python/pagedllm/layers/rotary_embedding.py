"""Rotary position embedding: a cos/sin table per position, applied in place by pagedllm.ops.

Supported scalings: none ("default"), "linear", "llama3" (Llama 3.1+ frequency smoothing),
"freq_factors" (the same smoothing as GGUF files store it: one divisor per frequency), "yarn"
(Qwen2.5 / Qwen3 long context), "longrope" (Phi-3) and "dynamic" (NTK). Each becomes one fixed
table, as transformers computes it; where transformers changes the frequencies with the sequence
length ("dynamic", "longrope") the docstrings of those branches say what the table matches.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import nn

from pagedllm import ops

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "freq_factors", "yarn", "longrope",
                        "dynamic")
# Scalings measured against the context length the model was pretrained with.
_NEEDS_ORIGINAL_CONTEXT = ("llama3", "yarn", "longrope")


def rope_parameters_from_config(hf_config: Any) -> dict:
    """{"rope_theta": float, "rope_type": str, ...scaling fields} from a transformers config of
    any version (5.x folds rope_theta/rope_scaling into `rope_parameters`), plus
    "max_position_embeddings" and "max_model_len" (the longest sequence the engine serves: the
    loader's `engine_max_model_len`, else max_position_embeddings), which some scalings read."""
    params = getattr(hf_config, "rope_parameters", None)
    if isinstance(params, dict) and "rope_theta" in params:
        params = dict(params)
    else:
        params = dict(getattr(hf_config, "rope_scaling", None) or {})
        params["rope_theta"] = getattr(hf_config, "rope_theta", 10000.0)
    params["rope_type"] = params.get("rope_type", params.get("type", "default")) or "default"
    factors = getattr(hf_config, "gguf_rope_freq_factors", None)
    if factors:   # set by the GGUF loader; replaces any other scaling
        params["rope_type"] = "freq_factors"
        params["freq_factors"] = list(factors)
    max_positions = getattr(hf_config, "max_position_embeddings", None)
    if params["rope_type"] in _NEEDS_ORIGINAL_CONTEXT:
        # transformers' rule: a config-level value (Phi-3 keeps it there) wins over the rope
        # dict's, and without either the model's own maximum is the pretrained one.
        config_level = getattr(hf_config, "original_max_position_embeddings", None)
        if config_level:
            params["original_max_position_embeddings"] = config_level
        elif params.get("original_max_position_embeddings") is None:
            params["original_max_position_embeddings"] = max_positions
    params["max_position_embeddings"] = max_positions
    params["max_model_len"] = getattr(hf_config, "engine_max_model_len", None) or max_positions
    return params


def rope_scaled_max_positions(params: dict) -> Optional[int]:
    """Positions a scaling is made to reach beyond max_position_embeddings, or None. YaRN
    configs keep the pretrained maximum there (Qwen's recipe adds only `rope_scaling`) and reach
    original_max_position_embeddings * factor, the length vLLM serves them at; transformers
    itself has no limit, and its YaRN table does not depend on the sequence length."""
    if params["rope_type"] != "yarn":
        return None
    factor = _yarn_factor(params)
    return int(params["original_max_position_embeddings"] * factor)


def _yarn_factor(params: dict) -> float:
    factor = params.get("factor")
    if factor is None:   # DeepSeek-style configs: the ratio of the two maxima
        return params["max_position_embeddings"] / params["original_max_position_embeddings"]
    return float(factor)


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN's magnitude correction 0.1 * mscale * ln(scale) + 1 (none without stretching)."""
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn(base: float, rotary_dim: int, params: dict) -> tuple[torch.Tensor, float]:
    """YaRN: high frequencies (many turns within the pretrained context) keep their value, low
    ones are divided by `factor`, and a linear ramp over the frequency index blends the two
    between the dims that turn beta_fast and beta_slow times; cos and sin are scaled by the
    attention factor. Same float32 operations, in the same order, as transformers."""
    factor = _yarn_factor(params)
    attention_factor = params.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")
        if mscale and mscale_all_dim:   # DeepSeek's pair; either alone is ignored, as in HF
            attention_factor = _yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all_dim)
        else:
            attention_factor = _yarn_mscale(factor)
    beta_fast = params.get("beta_fast") or 32   # `or`: a 0 / None in a config means the default
    beta_slow = params.get("beta_slow") or 1
    old_context = params["original_max_position_embeddings"]

    def dim_turning(turns: float) -> float:
        # The (fractional) dim index whose wavelength fits `turns` times into old_context.
        return rotary_dim * math.log(old_context / (turns * 2 * math.pi)) / (2 * math.log(base))

    low, high = dim_turning(beta_fast), dim_turning(beta_slow)
    if params.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    # The upper clamp is rotary_dim - 1 although the ramp has rotary_dim / 2 entries: what
    # transformers (and the YaRN reference code) do.
    low, high = max(low, 0), min(high, rotary_dim - 1)
    if low == high:
        high += 0.001   # a one-step ramp instead of a division by zero
    ramp = ((torch.arange(rotary_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp                     # weight of the unscaled (extrapolated) frequency
    powers = base ** (torch.arange(0, rotary_dim, 2).to(torch.float32) / rotary_dim)
    inv_freq = (1.0 / (factor * powers)) * (1 - keep) + (1.0 / powers) * keep
    return inv_freq, float(attention_factor)


def _longrope(base: float, rotary_dim: int, params: dict) -> tuple[torch.Tensor, float]:
    """Phi-3's LongRoPE: one rescale factor per frequency, `short_factor` within the pretrained
    context and `long_factor` beyond it, with cos and sin scaled by the attention factor.

    transformers picks the list per forward pass from the longest position in it, and its Phi-3
    generate() recomputes the whole cache with the long list once a sequence grows past
    original_max_position_embeddings. A table per position cannot follow that switch, so (as
    vLLM does) the list follows the longest sequence the engine serves: short when max_model_len
    <= original_max_position_embeddings, which equals transformers for every sequence; long
    otherwise, which equals transformers for prompts longer than
    original_max_position_embeddings and differs (slightly) from it on shorter sequences."""
    old_context = params["original_max_position_embeddings"]
    factor = params.get("factor")
    if factor is None:   # Phi-3: the ratio of the two maxima
        factor = params["max_position_embeddings"] / old_context
    attention_factor = params.get("attention_factor")
    if attention_factor is None:
        attention_factor = (1.0 if factor <= 1.0
                            else math.sqrt(1 + math.log(factor) / math.log(old_context)))
    use_long = params["max_model_len"] > old_context
    name = "long_factor" if use_long else "short_factor"
    rescale = torch.tensor(params[name], dtype=torch.float32)
    if rescale.shape != (rotary_dim // 2,):
        raise ValueError(f"rope_scaling: {name} has {rescale.numel()} entries for "
                         f"{rotary_dim // 2} frequencies")
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim
    return 1.0 / (rescale * base ** exponents), float(attention_factor)


def _dynamic_ntk(base: float, rotary_dim: int, params: dict) -> torch.Tensor:
    """Dynamic NTK: transformers raises the base only once a sequence grows past
    max_position_embeddings, and the engine never serves one that long (max_model_len is capped
    there), so this is transformers' table at that length: the plain one, computed with its
    formula so that even the rounding matches. (vLLM instead scales the base for every position
    and serves max_position_embeddings * factor.)"""
    factor = float(params["factor"])
    max_positions = params["max_position_embeddings"]
    seq_len = max_positions
    base = base * ((factor * seq_len / max_positions) - (factor - 1)) ** (
        rotary_dim / (rotary_dim - 2))
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim
    return 1.0 / (base ** exponents)


def _inverse_frequencies(rotary_dim: int, params: dict) -> tuple[torch.Tensor, float]:
    """[rotary_dim / 2] float32 inverse frequencies and the factor cos and sin are scaled by."""
    base = float(params["rope_theta"])
    rope_type = params["rope_type"]
    if rope_type == "yarn":
        return _yarn(base, rotary_dim, params)
    if rope_type == "longrope":
        return _longrope(base, rotary_dim, params)
    if rope_type == "dynamic":
        return _dynamic_ntk(base, rotary_dim, params), 1.0
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim
    inv_freq = 1.0 / (base ** exponents)  # [rotary_dim / 2] float32
    if rope_type == "default":
        return inv_freq, 1.0
    if rope_type == "freq_factors":
        factors = torch.tensor(params["freq_factors"], dtype=torch.float32)
        if factors.shape != inv_freq.shape:
            raise ValueError(f"rope_scaling: {factors.numel()} GGUF rope_freqs factors for "
                             f"{inv_freq.numel()} frequencies")
        return inv_freq / factors, 1.0
    if rope_type == "linear":
        return inv_freq / float(params["factor"]), 1.0
    if rope_type == "llama3":
        factor = float(params["factor"])
        low_factor = float(params["low_freq_factor"])
        high_factor = float(params["high_freq_factor"])
        old_context = float(params["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv_freq
        # Long wavelengths (low frequencies) are stretched by `factor`, short ones kept, and the
        # band between is interpolated linearly in old_context / wavelen.
        smooth = (old_context / wavelen - low_factor) / (high_factor - low_factor)
        blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        out = torch.where(wavelen > old_context / low_factor, inv_freq / factor, blended)
        return torch.where(wavelen < old_context / high_factor, inv_freq, out), 1.0
    raise ValueError(f"rope_scaling: unsupported rope type {rope_type!r}; "
                     f"supported: {SUPPORTED_ROPE_TYPES}")


class RotaryEmbedding(nn.Module):
    def __init__(self, head_size: int, rotary_dim: int, max_position: int, rope_params: dict,
                 is_neox_style: bool = True, dtype: Optional[torch.dtype] = None):
        super().__init__()
        self.head_size = head_size
        self.rotary_dim = rotary_dim
        self.is_neox_style = is_neox_style
        inv_freq, attention_factor = _inverse_frequencies(rotary_dim, rope_params)
        positions = torch.arange(max_position, dtype=torch.float32)
        freqs = torch.outer(positions, inv_freq)                    # [max_position, rot/2]
        cos, sin = freqs.cos(), freqs.sin()
        if attention_factor != 1.0:   # YaRN / LongRoPE: scales q.k (twice: q and k rotate)
            cos, sin = cos * attention_factor, sin * attention_factor
        cache = torch.cat((cos, sin), dim=-1)                       # [max_position, rot]
        # float32 keeps positions past 2^8 exact in bf16 models; kernels read it as float.
        self.register_buffer("cos_sin_cache", cache.to(dtype or torch.float32), persistent=False)

    def forward(self, positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor,
                q_norm: Optional[nn.Module] = None, k_norm: Optional[nn.Module] = None,
                value: Optional[torch.Tensor] = None, kv_cache: Optional[torch.Tensor] = None,
                slot_mapping: Optional[torch.Tensor] = None):
        """positions [T]; query [T, Hq * D], key [T, Hkv * D]; rotated in place and returned.
        q_norm / k_norm (RMSNorm over one head, Qwen3): applied to every head first, in the
        same kernel (no copies of the strided q / k views, two launches fewer per layer).
        value [T, Hkv * D], kv_cache [2, NB, BS, Hkv, D], slot_mapping [T]: the rotated key and
        the value are also written into the paged cache, by the same kernel on CUDA."""
        ops.rotary_embedding(positions, query, key, self.head_size, self.cos_sin_cache,
                             self.is_neox_style,
                             q_norm_weight=q_norm.weight if q_norm is not None else None,
                             k_norm_weight=k_norm.weight if k_norm is not None else None,
                             norm_eps=q_norm.eps if q_norm is not None else 1e-6,
                             value=value, kv_cache=kv_cache, slot_mapping=slot_mapping)
        return query, key
