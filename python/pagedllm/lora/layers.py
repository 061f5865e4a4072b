"""LoRA on the linear layers: y = x W^T + b + (x A^T) B^T for the tokens of each sequence that
runs with an adapter, in plain torch ops (no punica kernels).

With enable_lora the runner wraps every column- and row-parallel linear of the model
(wrap_lora_layers) after its weights are loaded. Each step it fills the one LoRABatch all the
wrappers share: per adapter in the step, its packed weights and the token rows it applies to.
An adapter's weights for one of our layers are packed as one pair (adapter.py):
  A [R, K_rank]  the LoRA A's of every checkpoint module mapped onto this layer, stacked
                 (q, k and v onto qkv_proj: R = 3r);
  B [N_rank, R]  block-diagonal: each module's B (scale folded in) in its own rows and columns,
so each (adapter, layer) costs one small matmul pair whatever the fused layer holds.
Tensor parallelism: a column-parallel layer keeps the full A and its rows of B; a row-parallel
layer keeps its columns of A and the full B, and its partial x_r A_r^T B^T is summed by the
layer's own all-reduce (the delta is added before it).
A step without adapters leaves the batch empty, and a wrapper then only calls its base layer.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from pagedllm.layers.linear import (
    ColumnParallelLinear,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
    all_reduce,
)

# Token rows of one adapter in a step: one contiguous range, or a [n] int64 index on the device.
Rows = Union[slice, torch.Tensor]
# One adapter's packed weights: our module name -> (A [R, K_rank], B [N_rank, R]).
PackedWeights = dict[str, tuple[torch.Tensor, torch.Tensor]]


class LoRABatch:
    """The adapters of the current step, read by every wrapped layer.

    Invariant: `modules` is the union of the groups' module names, so a layer no adapter of the
    step targets costs one set lookup."""

    def __init__(self) -> None:
        self.groups: list[tuple[PackedWeights, Rows]] = []
        self.modules: frozenset[str] = frozenset()

    def set(self, groups: list[tuple[PackedWeights, Rows]]) -> None:
        self.groups = groups
        self.modules = frozenset().union(*(weights.keys() for weights, _ in groups))

    def clear(self) -> None:
        self.groups = []
        self.modules = frozenset()

    def add_deltas(self, module: str, x: torch.Tensor, out: torch.Tensor) -> None:
        """out [T, N] += (x A^T) B^T on each adapter's rows, in place; x [T, K]."""
        for weights, rows in self.groups:
            pair = weights.get(module)
            if pair is None:
                continue
            a, b = pair
            if isinstance(rows, slice):
                out[rows].addmm_(x[rows] @ a.t(), b.t())
            else:
                out.index_add_(0, rows, (x.index_select(0, rows) @ a.t()) @ b.t())


class ColumnLoRALinear(nn.Module):
    """A column-parallel linear (also QKV / merged) plus its LoRA deltas."""

    def __init__(self, base_layer: ColumnParallelLinear, name: str, batch: LoRABatch) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.name = name
        self.batch = batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if self.name in self.batch.modules:
            self.batch.add_deltas(self.name, x, out)
        return out


class RowLoRALinear(nn.Module):
    """A row-parallel linear plus its LoRA deltas, added to this rank's partial sum before the
    all-reduce (and before the bias, which is added once)."""

    def __init__(self, base_layer: RowParallelLinear, name: str, batch: LoRABatch) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.name = name
        self.batch = batch

    def forward(self, x: torch.Tensor, into_fused_norm: bool = False):
        base = self.base_layer
        if self.name not in self.batch.modules:
            return base(x, into_fused_norm=into_fused_norm)
        # No split-K partials here: the delta is added to the plain output.
        if base.tp_size == 1:
            out = F.linear(x, base.weight, base.bias)
            self.batch.add_deltas(self.name, x, out)
            return out
        out = F.linear(x, base.weight)
        self.batch.add_deltas(self.name, x, out)
        if base.reduce_results:
            out = all_reduce(out)
        if base.bias is not None:
            out = out + base.bias
        return out


LoRALayer = Union[ColumnParallelLinear, RowParallelLinear]


def wrap_lora_layers(model: nn.Module, batch: LoRABatch) -> dict[str, LoRALayer]:
    """Put a LoRA wrapper around every column- and row-parallel linear of `model` (in place,
    after its weights are loaded: parameter names change). Returns our module name -> its base
    layer. Other layers (embeddings, LM head, MoE experts, routers) take no LoRA."""
    layers: dict[str, LoRALayer] = {}
    for name, module in list(model.named_modules()):
        if isinstance(module, RowParallelLinear):
            wrapper: nn.Module = RowLoRALinear(module, name, batch)
        elif isinstance(module, ColumnParallelLinear):
            wrapper = ColumnLoRALinear(module, name, batch)
        else:
            continue
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, wrapper)
        layers[name] = module
    return layers


def full_output_rows(layer: LoRALayer, shard_id: object) -> int:
    """Rows of the checkpoint tensor (all ranks') that shard `shard_id` of `layer` loads: the
    rows a LoRA B for that shard has."""
    if isinstance(layer, QKVParallelLinear):
        if shard_id == "q":
            return layer.num_heads * layer.tp_size * layer.head_dim
        # KV heads replicated over kv_replicas ranks: tp_size / kv_replicas distinct ones.
        return layer.num_kv_heads * layer.tp_size // layer.kv_replicas * layer.head_dim
    if isinstance(layer, MergedColumnParallelLinear):
        return layer.output_sizes[shard_id]
    return layer.output_size


def local_sizes(layer: LoRALayer) -> tuple[int, int]:
    """(input features, output features) of this rank's slice of `layer`."""
    if isinstance(layer, RowParallelLinear):
        return layer.input_size_per_rank, layer.output_size
    return layer.input_size, layer.output_size_per_rank


def is_row_parallel(layer: LoRALayer) -> bool:
    return isinstance(layer, RowParallelLinear)


def rows_on_device(spans: list[tuple[int, int]], device: torch.device) -> Optional[Rows]:
    """One adapter's token rows in a step: a slice for one contiguous span, else an index
    built on the host and copied without waiting for the device."""
    if not spans:
        return None
    if len(spans) == 1:
        return slice(*spans[0])
    index = torch.cat([torch.arange(s, e, dtype=torch.int64) for s, e in spans])
    if device.type == "cuda":
        return index.pin_memory().to(device, non_blocking=True)
    return index.to(device)
