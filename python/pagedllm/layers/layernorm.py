"""RMSNorm through pagedllm.ops (fused residual add when a residual is given), and LayerNorm."""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from pagedllm import ops
from pagedllm.layers.linear import SplitKPartials


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6,
                 params_dtype: Optional[torch.dtype] = None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=params_dtype or
                                              torch.get_default_dtype()), requires_grad=False)

    def forward(self, x: Union[torch.Tensor, SplitKPartials],
                residual: Optional[torch.Tensor] = None):
        """Without residual: returns rms_norm(x) ([..., H]).
        With residual: returns (rms_norm(x + residual), x + residual); x and residual are
        overwritten in place (the fused kernel's contract), so callers pass tensors they own.
        x may be a split-K linear's partial products (with a residual only): the kernel sums
        them, and the normalized output is a new tensor."""
        if isinstance(x, SplitKPartials):
            if residual is None:
                return ops.rms_norm(x.sum(), self.weight, self.eps)
            out = torch.empty(x.partials.shape[1:], dtype=x.dtype, device=x.partials.device)
            ops.fused_add_rms_norm(out, residual, self.weight, self.eps, partials=x.partials)
            return out, residual
        if residual is None:
            return ops.rms_norm(x, self.weight, self.eps)
        ops.fused_add_rms_norm(x, residual, self.weight, self.eps)
        return x, residual
