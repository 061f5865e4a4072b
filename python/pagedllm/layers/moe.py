"""Mixture-of-experts MLP (Qwen2-MoE, Qwen3-MoE, Mixtral): a linear router scores E experts for
each token, the top_k of them run (each a SiLU-gated MLP) and their outputs are summed with the
routing weights.

Torch ops on every device. The (token, expert) pairs are sorted by expert, so each expert reads
its tokens as one contiguous block; then the rows go back to token order, are weighted, and
each token sums its k rows. The experts' matmuls run one of two ways:
- grouped (torch's F.grouped_mm, given each expert's end row in the sorted pairs as a device
  tensor): two kernels per layer whatever the routing, no host sync, so decode CUDA graphs can
  capture the block. Used where torch runs it on the device: CPU, and bf16 on sm90 / sm100
  (torch's CUTLASS kernels; its CUDA fallback for other dtypes and chips copies the offsets to
  the host).
- a loop elsewhere (float32 / fp16 on CUDA, older torch): the per-expert counts are read on the
  host (one sync per layer) and size one gate/up and one down matmul per expert that received
  tokens. Those shapes follow the routing, so such a block reports supports_cuda_graphs False
  and the model decodes eagerly.

Tensor parallelism: every rank holds every expert with its intermediate dimension split as in
LlamaMLP (gate/up rows column-parallel, down columns row-parallel); the weighted sum of a rank's
partial outputs is all-reduced once per layer.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from pagedllm.layers.activation import SiluAndMul
from pagedllm.layers.linear import ReplicatedLinear, all_reduce, check_divisible, copy_checked

# The parts of one expert's weights: shard ids (expert id, part) of the stacked parameters.
GATE, UP, DOWN = "gate", "up", "down"


def route(router_logits: torch.Tensor, top_k: int,
          renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Routing weights [T, k] float32 and expert ids [T, k] int64 from router logits [T, E]:
    softmax over all E experts in float32, the k largest, rescaled to sum to 1 when
    `renormalize` (Mixtral always, which makes them a softmax over the k selected logits; Qwen
    MoE models when norm_topk_prob)."""
    probs = torch.softmax(router_logits, dim=-1, dtype=torch.float32)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids


def expert_checkpoint_names(gate: str, up: str, down: str) -> tuple[tuple[str, str, str], ...]:
    """For checkpoints that store each expert's matrices apart (`...experts.{e}.<name>`): (our
    stacked parameter under `experts.`, the checkpoint's name under `experts.{e}.`, part), given
    the checkpoint's names of the gate, up and down projections."""
    return (("gate_up_proj", f"{gate}.weight", GATE), ("gate_up_proj", f"{up}.weight", UP),
            ("down_proj", f"{down}.weight", DOWN))


class MoEExperts(nn.Module):
    """E SiLU-gated MLPs with stacked weights: gate_up_proj [E, 2 * I / tp, H] (each expert's
    rows [gate | up] of this rank) and down_proj [E, H, I / tp]. These are the names and layouts
    transformers 5 keeps in memory (and saves with save_original_format=False), loaded whole;
    checkpoints with one tensor per expert and part load through shard ids (expert id, part)."""

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int,
                 tp_rank: int = 0, tp_size: int = 1, params_dtype: Optional[torch.dtype] = None):
        super().__init__()
        self.num_experts = num_experts
        self.tp_rank, self.tp_size = tp_rank, tp_size
        inter = check_divisible(intermediate_size, tp_size, "moe intermediate_size")
        self.intermediate_per_rank = inter
        dtype = params_dtype or torch.get_default_dtype()
        self.gate_up_proj = nn.Parameter(
            torch.empty(num_experts, 2 * inter, hidden_size, dtype=dtype), requires_grad=False)
        self.down_proj = nn.Parameter(
            torch.empty(num_experts, hidden_size, inter, dtype=dtype), requires_grad=False)
        self.gate_up_proj.weight_loader = self.weight_loader
        self.down_proj.weight_loader = self.weight_loader
        self.act = SiluAndMul()
        self._expert_range: Optional[torch.Tensor] = None   # arange(E) on the weights' device

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor,
                      shard_id: Optional[tuple[int, str]] = None) -> None:
        """shard_id None: the stacked tensor of all experts, [E, 2 * I, H] (gate rows then up
        rows) or [E, H, I]; (expert, GATE / UP): one expert's [I, H]; (expert, DOWN): [H, I]."""
        n = self.intermediate_per_rank
        start = self.tp_rank * n                    # this rank's slice of the intermediate dim
        if shard_id is None:
            if param is self.down_proj:
                copy_checked(param.data, loaded.narrow(2, start, n))
                return
            inter = n * self.tp_size
            if loaded.dim() != 3 or loaded.shape[1] != 2 * inter:
                raise ValueError(f"stacked gate_up_proj of shape {tuple(loaded.shape)}: expected "
                                 f"[{self.num_experts}, {2 * inter}, hidden] (gate rows, up rows)")
            for offset, rows in zip((0, n), loaded.split(inter, dim=1)):
                copy_checked(param.data.narrow(1, offset, n), rows.narrow(1, start, n))
            return
        expert, part = shard_id
        if not 0 <= expert < self.num_experts:
            raise ValueError(f"expert {expert} is out of range: the layer has {self.num_experts} "
                             "experts")
        if part not in (GATE, UP, DOWN) or (part == DOWN) != (param is self.down_proj):
            raise ValueError(f"shard_id part {part!r} does not belong to this parameter")
        if part == DOWN:
            copy_checked(param.data[expert], loaded.narrow(1, start, n))
        else:
            offset = 0 if part == GATE else n
            copy_checked(param.data[expert].narrow(0, offset, n), loaded.narrow(0, start, n))

    @property
    def grouped(self) -> bool:
        """Whether the experts' matmuls run grouped on the device (module docstring). torch's
        grouped kernels also want 16-byte rows (hidden and intermediate sizes)."""
        weights = self.gate_up_proj
        row_bytes = (weights.shape[-1] * weights.element_size(),
                     self.intermediate_per_rank * weights.element_size())
        return (all(n % 16 == 0 for n in row_bytes)
                and grouped_mm_on_device(weights.device, weights.dtype))

    # Read by the model runner: only the grouped path has shapes independent of the routing.
    supports_cuda_graphs = grouped

    def forward(self, hidden: torch.Tensor, weights: torch.Tensor,
                expert_ids: torch.Tensor) -> torch.Tensor:
        """hidden [T, H], routing weights [T, k], expert ids [T, k] -> [T, H]: the weighted sum
        of each token's experts (this rank's partial sum under tensor parallelism)."""
        num_tokens, top_k = expert_ids.shape
        flat_ids = expert_ids.reshape(-1)                                   # [T * k]
        # The pairs grouped by expert; stable, so each expert's tokens stay in order.
        sorted_ids, order = torch.sort(flat_ids, stable=True)               # [T * k] each
        x = hidden.index_select(0, order // top_k)                          # [T * k, H]
        if self.grouped:
            expert_out = self._grouped_experts(x, sorted_ids)
        else:
            expert_out = self._expert_loop(x, sorted_ids)
        # Back to (token, k) order: `order` is a permutation, so this scatter writes each row
        # once (no atomics, unlike index_add_ onto the tokens, whose order of adds is not fixed
        # on CUDA). Then each row is weighted in float32 (the weights' dtype) and stored in the
        # model's dtype, and sum accumulates a token's k rows in float32, as transformers' default
        # grouped_mm experts do. (transformers in 16 bits: Qwen MoE rounds the weights first,
        # Mixtral only the sum. Alike in float32.)
        pairs = torch.empty_like(expert_out)
        pairs[order] = expert_out
        pairs = pairs.view(num_tokens, top_k, hidden.shape[-1])
        torch.mul(pairs, weights.unsqueeze(-1), out=pairs)
        return pairs.sum(dim=1)

    def _grouped_experts(self, x: torch.Tensor, sorted_ids: torch.Tensor) -> torch.Tensor:
        """x [P, H] (pairs sorted by expert), sorted_ids [P] -> unweighted outputs [P, H]."""
        if self._expert_range is None or self._expert_range.device != x.device:
            self._expert_range = torch.arange(self.num_experts, device=x.device)
        # Expert e's rows end where ids > e begin (empty groups repeat the previous end).
        ends = torch.searchsorted(sorted_ids, self._expert_range, right=True, out_int32=True)
        inner = self.act(F.grouped_mm(x, self.gate_up_proj.transpose(1, 2), offs=ends))
        return F.grouped_mm(inner, self.down_proj.transpose(1, 2), offs=ends)

    def _expert_loop(self, x: torch.Tensor, sorted_ids: torch.Tensor) -> torch.Tensor:
        """x [P, H] (pairs sorted by expert), sorted_ids [P] -> unweighted outputs [P, H]: one
        gate/up and one down matmul per expert with tokens, sized on the host."""
        counts = torch.bincount(sorted_ids, minlength=self.num_experts).tolist()  # host sync
        out = torch.empty_like(x)
        start = 0
        for expert, count in enumerate(counts):
            if count == 0:
                continue
            rows = slice(start, start + count)
            inner = self.act(F.linear(x[rows], self.gate_up_proj[expert]))   # [n, I / tp]
            torch.mm(inner, self.down_proj[expert].t(), out=out[rows])       # [n, H]
            start += count
        return out


@functools.lru_cache(maxsize=None)
def grouped_mm_on_device(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether torch's F.grouped_mm runs without reading its offsets on the host here (asked by
    every layer's forward, hence cached)."""
    if not hasattr(F, "grouped_mm"):
        return False
    if device.type == "cpu":
        return True
    return (device.type == "cuda" and dtype == torch.bfloat16
            and torch.cuda.get_device_capability(device)[0] in (9, 10))


class SparseMoeBlock(nn.Module):
    """The MLP of an MoE decoder layer: a router (`gate`, [E, H], replicated on every rank)
    and the experts. x [T, H] -> [T, H], summed over tensor-parallel ranks."""

    def __init__(self, hidden_size: int, num_experts: int, top_k: int, intermediate_size: int,
                 renormalize: bool, hidden_act: str = "silu", tp_rank: int = 0,
                 tp_size: int = 1):
        super().__init__()
        if hidden_act != "silu":
            raise ValueError(f"hidden_act: only 'silu' is supported, got {hidden_act!r}")
        if not 0 < top_k <= num_experts:
            raise ValueError(f"num_experts_per_tok: {top_k} must be in [1, {num_experts}] (the "
                             "number of experts)")
        self.top_k = top_k
        self.renormalize = renormalize
        self.tp_size = tp_size
        self.gate = ReplicatedLinear(hidden_size, num_experts, bias=False)
        self.experts = MoEExperts(num_experts, hidden_size, intermediate_size, tp_rank, tp_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.partial_output(x)
        return all_reduce(out) if self.tp_size > 1 else out

    def partial_output(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's share of the output, before the all-reduce (a shared expert adds its own
        partial output here: Qwen2-MoE)."""
        weights, expert_ids = route(self.gate(x), self.top_k, self.renormalize)
        return self.experts(x, weights, expert_ids)
