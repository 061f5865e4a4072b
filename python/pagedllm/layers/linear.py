"""Linear layers, written tensor-parallel-ready.

Column-parallel layers split the output features across `tp_size` ranks, row-parallel layers split
the input features and sum the partial results. With tp_size == 1 (the only size run today) both
are plain linears. Each parameter carries a `weight_loader(param, loaded_weight, shard_id=None)`
that copies this rank's slice of a full checkpoint tensor into it, so models never slice weights.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def check_divisible(total: int, tp_size: int, what: str) -> int:
    if total % tp_size != 0:
        raise ValueError(f"tensor_parallel_size: {what}={total} is not divisible by {tp_size}")
    return total // tp_size


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sums the ranks' partial outputs (row-parallel linears, MoE experts) in place."""
    torch.distributed.all_reduce(x)
    return x


class LinearBase(nn.Module):
    def __init__(self, input_size: int, output_size: int, bias: bool,
                 tp_rank: int = 0, tp_size: int = 1, params_dtype: Optional[torch.dtype] = None):
        super().__init__()
        self.input_size = input_size
        self.output_size = output_size
        self.tp_rank = tp_rank
        self.tp_size = tp_size
        self.params_dtype = params_dtype or torch.get_default_dtype()

    def _make_params(self, out_features: int, in_features: int, bias: bool) -> None:
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=self.params_dtype),
                                   requires_grad=False)   # [out, in]
        self.weight.weight_loader = self.weight_loader
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, dtype=self.params_dtype),
                                     requires_grad=False)  # [out]
            self.bias.weight_loader = self.weight_loader
        else:
            self.register_parameter("bias", None)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor,
                      shard_id: object = None) -> None:
        raise NotImplementedError


class ReplicatedLinear(LinearBase):
    """The full weight on every rank."""

    def __init__(self, input_size: int, output_size: int, bias: bool = True, **kwargs):
        super().__init__(input_size, output_size, bias, **kwargs)
        self._make_params(output_size, input_size, bias)

    def weight_loader(self, param, loaded, shard_id=None):
        copy_checked(param.data, loaded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class ColumnParallelLinear(LinearBase):
    """y = x W^T + b with W's rows (output features) split across ranks; output stays split."""

    def __init__(self, input_size: int, output_size: int, bias: bool = True, **kwargs):
        super().__init__(input_size, output_size, bias, **kwargs)
        self.output_size_per_rank = check_divisible(output_size, self.tp_size, "output_size")
        self._make_params(self.output_size_per_rank, input_size, bias)

    def weight_loader(self, param, loaded, shard_id=None):
        n = param.shape[0]
        copy_checked(param.data, loaded.narrow(0, self.tp_rank * n, n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel linears sharing an input, stored as one matrix (e.g. gate and up).
    Checkpoint tensors arrive one at a time with shard_id = their index in `output_sizes`."""

    def __init__(self, input_size: int, output_sizes: Sequence[int], bias: bool = True, **kwargs):
        self.output_sizes = list(output_sizes)
        super().__init__(input_size, sum(output_sizes), bias, **kwargs)

    def weight_loader(self, param, loaded, shard_id=None):
        if not isinstance(shard_id, int) or not 0 <= shard_id < len(self.output_sizes):
            raise ValueError(f"shard_id must be an index into {self.output_sizes}, "
                             f"got {shard_id!r}")
        sizes = [s // self.tp_size for s in self.output_sizes]
        offset = sum(sizes[:shard_id])
        n = sizes[shard_id]
        copy_checked(param.data.narrow(0, offset, n), loaded.narrow(0, self.tp_rank * n, n))


class QKVParallelLinear(ColumnParallelLinear):
    """Q, K and V projections as one matrix; rows are [q heads | k heads | v heads] of this rank.
    KV heads are split across ranks when there are at least tp_size of them, else replicated."""

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int,
                 bias: bool = True, tp_rank: int = 0, tp_size: int = 1,
                 params_dtype: Optional[torch.dtype] = None):
        self.head_dim = head_dim
        self.num_heads = check_divisible(num_heads, tp_size, "num_attention_heads")
        if num_kv_heads >= tp_size:
            self.num_kv_heads = check_divisible(num_kv_heads, tp_size, "num_key_value_heads")
            self.kv_replicas = 1
        else:
            self.num_kv_heads = 1
            self.kv_replicas = check_divisible(tp_size, num_kv_heads, "tp_size over kv heads")
        # Sized so that output_size / tp_size is exactly this rank's rows.
        total = (self.num_heads + 2 * self.num_kv_heads) * head_dim * tp_size
        super().__init__(hidden_size, total, bias, tp_rank=tp_rank, tp_size=tp_size,
                         params_dtype=params_dtype)

    def weight_loader(self, param, loaded, shard_id=None):
        q_rows = self.num_heads * self.head_dim
        kv_rows = self.num_kv_heads * self.head_dim
        if shard_id == "q":
            offset, n, src = 0, q_rows, self.tp_rank
        elif shard_id == "k":
            offset, n, src = q_rows, kv_rows, self.tp_rank // self.kv_replicas
        elif shard_id == "v":
            offset, n, src = q_rows + kv_rows, kv_rows, self.tp_rank // self.kv_replicas
        else:
            raise ValueError(f"shard_id must be 'q', 'k' or 'v', got {shard_id!r}")
        copy_checked(param.data.narrow(0, offset, n), loaded.narrow(0, src * n, n))


# Split-K for the skinny GEMMs of a decode step whose output feeds a residual-add + RMSNorm.
# A decode batch's M is small, and for a narrow output (N = 1024 in Qwen3-0.6B's o_proj and
# down_proj) cuBLAS launches a few dozen CTAs that each walk all of K: 5.2 / 6.8 us at M = 64
# for 4 / 6 MB of weights on an H200 (~22% of the read bandwidth). Cut K into S slices as one
# strided batched GEMM (no weight copy) with float32 partial products; the fused residual-add +
# RMSNorm sums them in place of reading the GEMM output, so the split adds no kernel. Measured
# with benchmarks/kernels/linear_shapes.py (RESULTS.md): 3.7 / 4.1 us at S = 4 for those two.
# (Those figures had the weights warm in L2; read from HBM, as in a step: cuBLAS 5.9 / 8.0 us,
# split-K 4.4 / 5.1 us, eleventh session.)
# The norm pays for it in reads (S float32 planes instead of one bf16 plane): at 144-256 rows
# the two cancel out end to end (W-nano on the H200, RESULTS.md), hence the row limit. Measured
# again in the fourteenth session (faster norm; split-K predicted 1.3 us per layer ahead at 244
# rows by linear_shapes.py + norm_shapes.py): 256 vs 128 rows, W-nano 25,240 / 25,459 against
# 25,472 / 25,360 tok/s, equal mean step; the limit stays. And for Qwen3-8B on an H100 (21st
# session): down_proj split up to 256 rows is 4.5 us faster in the graph at 192 rows, yet W-8B
# 6,262 vs 6,257 tok/s (the next GEMM and the norm gave it back).
SPLIT_K_MAX_ROWS = 128
# Outputs wider than 2048 are split (in 2) only when K >= this many times N: a deep, narrow GEMM
# (Qwen3-8B's down_proj) gained, a square one (its o_proj, 4096 x 4096) did not at M = 64.
SPLIT_K_WIDE_MIN_K_OVER_N = 2
_BMM_HAS_OUT_DTYPE = hasattr(torch.ops.aten.bmm, "dtype")  # torch.bmm(..., out_dtype=)


def split_k_slices(rows: int, out_features: int, in_features: int) -> int:
    """Slices of K for a [rows, in_features] x [in_features, out_features] GEMM; 1 = no split.
    N <= 2048: 4 slices (N = 1024 shapes: 1.4-1.8x faster at M <= 128). Wider outputs only when
    K >= SPLIT_K_WIDE_MIN_K_OVER_N * N (2), in 2 slices (Qwen3-8B's down_proj: 33.0 -> 30.6 us
    at M = 64); a square 4096 x 4096 gained nothing at M = 64 (H200 figures, RESULTS.md)."""
    if rows > SPLIT_K_MAX_ROWS or rows == 0:
        return 1
    if out_features <= 2048:
        slices = 4
    elif in_features >= SPLIT_K_WIDE_MIN_K_OVER_N * out_features:
        slices = 2
    else:
        return 1
    if in_features % slices or (in_features // slices) % 64:
        return 1
    return slices


class SplitKPartials:
    """A linear's output left as float32 partial products [S, T, N] (their sum over S is
    x W^T), for RMSNorm's fused residual add to sum; `dtype` is the output's (the model's)."""

    def __init__(self, partials: torch.Tensor, dtype: torch.dtype):
        self.partials = partials   # [S, T, N] float32, contiguous
        self.dtype = dtype

    def sum(self) -> torch.Tensor:
        """The plain output [T, N]: what the unsplit linear returns."""
        return self.partials.sum(0).to(self.dtype)


class RowParallelLinear(LinearBase):
    """y = x W^T + b with W's columns (input features) split across ranks; the partial products
    are summed across ranks and the bias is added once, after the sum."""

    def __init__(self, input_size: int, output_size: int, bias: bool = True,
                 reduce_results: bool = True, **kwargs):
        super().__init__(input_size, output_size, bias, **kwargs)
        self.input_size_per_rank = check_divisible(input_size, self.tp_size, "input_size")
        self.reduce_results = reduce_results
        self._make_params(output_size, self.input_size_per_rank, bias)

    def weight_loader(self, param, loaded, shard_id=None):
        if param.dim() == 1:   # bias: full on every rank
            copy_checked(param.data, loaded)
            return
        n = param.shape[1]
        copy_checked(param.data, loaded.narrow(1, self.tp_rank * n, n))

    def forward(self, x: torch.Tensor, into_fused_norm: bool = False):
        """x [T, K] -> [T, N]. into_fused_norm: the caller hands the result straight to
        RMSNorm(x, residual), which also takes SplitKPartials: returned when the split pays."""
        if into_fused_norm:
            partials = self._split_k(x)
            if partials is not None:
                return partials
        if self.tp_size == 1:
            return F.linear(x, self.weight, self.bias)
        out = F.linear(x, self.weight)
        if self.reduce_results:
            out = all_reduce(out)
        if self.bias is not None:
            out = out + self.bias
        return out

    def _split_k(self, x: torch.Tensor) -> Optional[SplitKPartials]:
        if not (_BMM_HAS_OUT_DTYPE and self.tp_size == 1 and self.bias is None and x.is_cuda
                and x.dtype in (torch.float16, torch.bfloat16) and x.dim() == 2
                and x.is_contiguous()):
            return None
        m, k = x.shape
        n = self.weight.shape[0]
        slices = split_k_slices(m, n, k)
        if slices == 1:
            return None
        xs = x.view(m, slices, k // slices).transpose(0, 1)                 # [S, M, K/S]
        ws = self.weight.view(n, slices, k // slices).permute(1, 2, 0)      # [S, K/S, N]
        return SplitKPartials(torch.bmm(xs, ws, out_dtype=torch.float32), x.dtype)


def copy_checked(dst: torch.Tensor, src: torch.Tensor) -> None:
    if dst.shape != src.shape:
        raise ValueError(f"checkpoint tensor of shape {tuple(src.shape)} does not fit parameter "
                         f"slice of shape {tuple(dst.shape)}")
    dst.copy_(src.to(dst.dtype))


def default_weight_loader(param: nn.Parameter, loaded: torch.Tensor,
                          shard_id: object = None) -> None:
    """For parameters without a layer-specific loader (norms, OPT's positional table)."""
    copy_checked(param.data, loaded)
