"""Reading a PEFT LoRA adapter and packing it into this rank's layers.

A PEFT adapter directory holds adapter_config.json (r, lora_alpha, target_modules, use_rslora,
bias, ...) and adapter_model.safetensors with, per adapted module of the Hugging Face model,
  base_model.model.<module path>.lora_A.weight  [r, in]
  base_model.model.<module path>.lora_B.weight  [out, r]
and the module computes W x + scale * B A x with scale = lora_alpha / r (/ sqrt(r) with rsLoRA).

Our layers fuse some Hugging Face modules (q/k/v -> qkv_proj, gate/up -> gate_up_proj; Phi-3's
checkpoint is fused already), named by the model's own `stacked_params` /
`fused_checkpoint_params`, the tables its weight loading uses; each piece goes through the
layer's weight loader, so an adapter is sharded across tensor-parallel ranks exactly as the base
weights are (layers.py says how A and B are packed).

Checking an adapter (check=True) runs the same code on "meta" tensors built from the
safetensors header: every error a load would raise, without reading the weights.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from pagedllm.lora.layers import (
    LoRALayer,
    PackedWeights,
    full_output_rows,
    is_row_parallel,
    local_sizes,
)
from pagedllm.lora.request import LoRARequest

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_KEY_PREFIX = "base_model.model."
_A_SUFFIX, _B_SUFFIX = ".lora_A.weight", ".lora_B.weight"

# Shards of one of our layers that a checkpoint module loads: ((shard id, full rows), ...);
# several for a checkpoint tensor that is fused already (Phi-3's qkv_proj).
Shards = tuple[tuple[object, int], ...]


@dataclass(frozen=True)
class LoRATarget:
    """Where a Hugging Face module's LoRA goes: our layer and the shards of it that it feeds."""

    module: str     # our module name, e.g. model.layers.0.self_attn.qkv_proj
    shards: Shards


@dataclass
class PeftSettings:
    """The adapter_config.json fields pagedllm reads."""

    rank: int
    alpha: float
    use_rslora: bool
    target_modules: Any    # list of module names, a regex string or None

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)


@dataclass
class LoRAAdapter:
    """One adapter, packed for this rank: weights[our module] = (A [R, K_rank], B [N_rank, R])."""

    lora_int_id: int
    lora_name: str
    lora_path: str
    rank: int
    scaling: float
    weights: PackedWeights = field(repr=False)

    def num_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for pair in self.weights.values() for t in pair)


class LoRAAdapterError(ValueError):
    """An adapter that cannot be served (missing files, unsupported settings, wrong shapes)."""


def lora_targets(model: nn.Module, layers: dict[str, LoRALayer]) -> dict[str, LoRATarget]:
    """Hugging Face module path -> where its LoRA goes, for every layer that takes LoRA."""
    stacked = getattr(model, "stacked_params", ())
    fused_fn = getattr(model, "fused_checkpoint_params", None)
    fused = fused_fn() if fused_fn is not None else ()
    targets: dict[str, LoRATarget] = {}
    for name, layer in layers.items():
        key = name + "."    # the tables' fragments are dot-delimited
        pieces = [(key.replace(ours, theirs)[:-1], shard)
                  for ours, theirs, shard in stacked if ours in key]
        if pieces:
            for hf_name, shard in pieces:
                targets[hf_name] = LoRATarget(name, ((shard, full_output_rows(layer, shard)),))
            continue
        shards = next((s for fragment, s in fused if fragment in key), None)
        if shards is None:
            shards = ((None, full_output_rows(layer, None)),)
        targets[name] = LoRATarget(name, tuple(shards))
    return targets


def read_peft_settings(request: LoRARequest, max_lora_rank: int) -> PeftSettings:
    """adapter_config.json, refused (LoRAAdapterError) where pagedllm cannot serve it."""
    where = _where(request)
    path = os.path.join(request.lora_path, CONFIG_FILE)
    if not os.path.isdir(request.lora_path):
        raise LoRAAdapterError(f"{where}: no such directory")
    if not os.path.isfile(path):
        raise LoRAAdapterError(f"{where}: no {CONFIG_FILE} (a PEFT adapter directory is needed)")
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        raise LoRAAdapterError(f"{where}: cannot read {CONFIG_FILE}: {e}") from e
    peft_type = str(cfg.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise LoRAAdapterError(f"{where}: peft_type {peft_type!r} is not LoRA")
    rank = cfg.get("r")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise LoRAAdapterError(f"{where}: r must be a positive integer, got {rank!r}")
    if rank > max_lora_rank:
        raise LoRAAdapterError(f"{where}: LoRA rank {rank} is larger than max_lora_rank "
                               f"{max_lora_rank} (raise --max-lora-rank)")
    unsupported = {
        "bias": cfg.get("bias", "none") not in ("none", None),
        "use_dora": bool(cfg.get("use_dora")),
        "modules_to_save": bool(cfg.get("modules_to_save")),
        "fan_in_fan_out": bool(cfg.get("fan_in_fan_out")),
        "rank_pattern": bool(cfg.get("rank_pattern")),
        "alpha_pattern": bool(cfg.get("alpha_pattern")),
    }
    for key, bad in unsupported.items():
        if bad:
            raise LoRAAdapterError(f"{where}: {key}={cfg.get(key)!r} is not supported "
                                   "(plain LoRA on linear layers only)")
    alpha = cfg.get("lora_alpha", 8)   # PEFT's default
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise LoRAAdapterError(f"{where}: lora_alpha must be a number, got {alpha!r}")
    return PeftSettings(rank, float(alpha), bool(cfg.get("use_rslora", False)),
                        cfg.get("target_modules"))


def load_adapter(request: LoRARequest, model: nn.Module, layers: dict[str, LoRALayer],
                 targets: dict[str, LoRATarget], max_lora_rank: int, device: torch.device,
                 dtype: torch.dtype, check: bool = False) -> LoRAAdapter:
    """Read and pack `request`'s adapter for this rank's `layers` (on `device`, in `dtype`).
    check=True: validate only (meta tensors, nothing read but headers). LoRAAdapterError
    (a ValueError) says what is wrong with the adapter."""
    settings = read_peft_settings(request, max_lora_rank)
    _check_target_names(request, settings, targets)
    tensors = _read_tensors(request, check)
    pieces = _pair_tensors(request, model, layers, tensors, targets, settings.rank)
    if check:
        device = torch.device("meta")
    weights: PackedWeights = {}
    by_module: dict[str, list[tuple[LoRATarget, torch.Tensor, torch.Tensor]]] = {}
    for target, a, b in pieces:
        by_module.setdefault(target.module, []).append((target, a, b))
    for module, module_pieces in by_module.items():
        weights[module] = _pack(request, layers[module], module_pieces, settings.scaling,
                                device, dtype)
    return LoRAAdapter(request.lora_int_id, request.lora_name, request.lora_path,
                       settings.rank, settings.scaling, weights)


def _where(request: LoRARequest) -> str:
    return f"LoRA adapter {request.lora_name!r} ({request.lora_path})"


def _check_target_names(request: LoRARequest, settings: PeftSettings,
                        targets: dict[str, LoRATarget]) -> None:
    """At least one listed target module is a layer that takes LoRA here. As in PEFT, names
    that match nothing in this model are allowed next to ones that do (a regex or "all-linear"
    string is left to the tensors' check, which is exact)."""
    names = settings.target_modules
    if not isinstance(names, (list, tuple, set)):
        return
    if not any(hf_name == name or hf_name.endswith("." + name)
               for name in names for hf_name in targets):
        raise LoRAAdapterError(f"{_where(request)}: target modules {sorted(names)} are not "
                               f"supported for this model (LoRA applies to: "
                               f"{_supported(targets)})")


def _supported(targets: dict[str, LoRATarget]) -> str:
    return ", ".join(sorted({hf_name.rsplit(".", 1)[-1] for hf_name in targets}))


def _read_tensors(request: LoRARequest, check: bool) -> dict[str, torch.Tensor]:
    """The adapter's tensors (meta tensors of the stored shapes when only checking)."""
    from safetensors import safe_open

    path = os.path.join(request.lora_path, WEIGHTS_FILE)
    if not os.path.isfile(path):
        raise LoRAAdapterError(f"{_where(request)}: no {WEIGHTS_FILE} (only safetensors "
                               "adapters are supported)")
    try:
        with safe_open(path, framework="pt") as f:
            if check:
                return {k: torch.empty(f.get_slice(k).get_shape(), device="meta")
                        for k in f.keys()}  # noqa: SIM118 - a safe_open handle
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - a safe_open handle
    except Exception as e:  # noqa: BLE001 - a corrupt file: say which adapter
        raise LoRAAdapterError(f"{_where(request)}: cannot read {WEIGHTS_FILE}: {e}") from e


def _module_path(model: nn.Module, key: str) -> Optional[str]:
    """The Hugging Face module path a tensor name refers to, under our model's naming (Gemma 3
    vision-language checkpoints rename their language model); None when the model skips it."""
    name = key.removeprefix(_KEY_PREFIX)
    rename = getattr(model, "language_model_weights", None)
    if rename is not None:
        renamed = list(rename([(name, None)]))
        if not renamed:
            return None
        name = renamed[0][0]
    for suffix in (_A_SUFFIX, _B_SUFFIX):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def _pair_tensors(request: LoRARequest, model: nn.Module, layers: dict[str, LoRALayer],
                  tensors: dict[str, torch.Tensor], targets: dict[str, LoRATarget],
                  rank: int) -> list[tuple[LoRATarget, torch.Tensor, torch.Tensor]]:
    """(target, A, B) per adapted module, shapes checked against the target layer."""
    where = _where(request)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        if not key.endswith((_A_SUFFIX, _B_SUFFIX)):
            raise LoRAAdapterError(f"{where}: tensor {key!r} is not a LoRA A/B weight "
                                   "(embedding LoRA, DoRA and biases are not supported)")
        module = _module_path(model, key)
        if module is None or module not in targets:
            raise LoRAAdapterError(f"{where}: tensor {key!r} adapts module "
                                   f"{module or key!r}, which is not supported for this model "
                                   f"(LoRA applies to: {_supported(targets)})")
        pairs.setdefault(module, {})["A" if key.endswith(_A_SUFFIX) else "B"] = tensor
    if not pairs:
        raise LoRAAdapterError(f"{where}: {WEIGHTS_FILE} holds no LoRA weights")
    pieces = []
    for module, pair in sorted(pairs.items()):
        if set(pair) != {"A", "B"}:
            missing = "lora_B" if "A" in pair else "lora_A"
            raise LoRAAdapterError(f"{where}: {module} has no {missing} weight")
        a, b = pair["A"], pair["B"]
        target = targets[module]
        rows = sum(n for _, n in target.shards)
        # A of a row-parallel layer spans all ranks' input features, like the checkpoint's W.
        layer_in = layers[target.module].input_size
        if a.dim() != 2 or tuple(a.shape) != (rank, layer_in):
            raise LoRAAdapterError(f"{where}: {module}.lora_A has shape {tuple(a.shape)}, "
                                   f"expected ({rank}, {layer_in}) (r={rank})")
        if b.dim() != 2 or tuple(b.shape) != (rows, rank):
            raise LoRAAdapterError(f"{where}: {module}.lora_B has shape {tuple(b.shape)}, "
                                   f"expected ({rows}, {rank}) (r={rank})")
        pieces.append((target, a, b))
    return pieces


def _pack(request: LoRARequest, layer: LoRALayer,
          pieces: list[tuple[LoRATarget, torch.Tensor, torch.Tensor]], scaling: float,
          device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's (A [R, K_rank], B [N_rank, R]) from its pieces (layers.py's layout), each
    shard through the layer's weight loader: this rank's rows of B (column-parallel) or
    columns of A (row-parallel)."""
    in_local, out_local = local_sizes(layer)
    total_rank = sum(a.shape[0] for _, a, _ in pieces)
    try:
        if is_row_parallel(layer):
            # One checkpoint module per row-parallel layer: nothing to stack.
            (_, a, b), = pieces
            packed_a = torch.empty(total_rank, in_local, dtype=dtype, device=device)
            layer.weight_loader(packed_a, a.to(device))
            packed_b = (b.to(device).float() * scaling).to(dtype)
            return packed_a, packed_b
        packed_a = torch.cat([a.to(device) for _, a, _ in pieces]).to(dtype)
        packed_b = torch.zeros(out_local, total_rank, dtype=dtype, device=device)
        col = 0
        for target, a, b in pieces:
            r = a.shape[0]
            block = packed_b[:, col: col + r]    # a view: the loader writes into packed_b
            parts = (b.to(device).float() * scaling).split([n for _, n in target.shards])
            for (shard_id, _), part in zip(target.shards, parts):
                if shard_id is None:
                    layer.weight_loader(block, part)
                else:
                    layer.weight_loader(block, part, shard_id)
            col += r
        return packed_a, packed_b
    except ValueError as e:
        raise LoRAAdapterError(f"{_where(request)}: {e}") from e
