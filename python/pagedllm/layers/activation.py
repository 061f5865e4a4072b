"""Activations through pagedllm.ops (or torch where no kernel exists yet)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pagedllm import ops


class SiluAndMul(nn.Module):
    """[T, 2 * I] (gate then up) -> silu(gate) * up, [T, I]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.silu_and_mul(x)


class GeluTanhAndMul(nn.Module):
    """[T, 2 * I] (gate then up) -> gelu_tanh(gate) * up, [T, I] (Gemma's gated MLP).

    Torch ops on every device: two kernels and an intermediate on CUDA where silu_and_mul takes
    one; a fused gelu_tanh_and_mul kernel is a follow-up. Computed as transformers does, the GELU
    rounded to x's dtype before the product, so 16-bit results match it bit for bit."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = x.chunk(2, dim=-1)
        return F.gelu(gate, approximate="tanh") * up
