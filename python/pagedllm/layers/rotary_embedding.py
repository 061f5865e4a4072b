"""Rotary position embedding: a cos/sin table per position, applied in place by pagedllm.ops.

Supported scalings: none ("default"), "linear", "llama3" (Llama 3.1+ frequency smoothing) and
"freq_factors" (the same smoothing as GGUF files store it: one divisor per frequency).
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import nn

from pagedllm import ops

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "freq_factors")


def rope_parameters_from_config(hf_config: Any) -> dict:
    """{"rope_theta": float, "rope_type": str, ...scaling fields} from a transformers config of
    any version (5.x folds rope_theta/rope_scaling into `rope_parameters`)."""
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
    return params


def _inverse_frequencies(rotary_dim: int, params: dict) -> torch.Tensor:
    base = float(params["rope_theta"])
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim
    inv_freq = 1.0 / (base ** exponents)  # [rotary_dim / 2] float32
    rope_type = params["rope_type"]
    if rope_type == "default":
        return inv_freq
    if rope_type == "freq_factors":
        factors = torch.tensor(params["freq_factors"], dtype=torch.float32)
        if factors.shape != inv_freq.shape:
            raise ValueError(f"rope_scaling: {factors.numel()} GGUF rope_freqs factors for "
                             f"{inv_freq.numel()} frequencies")
        return inv_freq / factors
    if rope_type == "linear":
        return inv_freq / float(params["factor"])
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
        return torch.where(wavelen < old_context / high_factor, inv_freq, out)
    raise ValueError(f"rope_scaling: unsupported rope type {rope_type!r}; "
                     f"supported: {SUPPORTED_ROPE_TYPES}")


class RotaryEmbedding(nn.Module):
    def __init__(self, head_size: int, rotary_dim: int, max_position: int, rope_params: dict,
                 is_neox_style: bool = True, dtype: Optional[torch.dtype] = None):
        super().__init__()
        self.head_size = head_size
        self.rotary_dim = rotary_dim
        self.is_neox_style = is_neox_style
        inv_freq = _inverse_frequencies(rotary_dim, rope_params)
        positions = torch.arange(max_position, dtype=torch.float32)
        freqs = torch.outer(positions, inv_freq)                    # [max_position, rot/2]
        cache = torch.cat((freqs.cos(), freqs.sin()), dim=-1)       # [max_position, rot]
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
