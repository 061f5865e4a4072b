"""Activations through pagedllm.ops."""
from __future__ import annotations

import torch
from torch import nn

from pagedllm import ops


class SiluAndMul(nn.Module):
    """[T, 2 * I] (gate then up) -> silu(gate) * up, [T, I]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.silu_and_mul(x)
