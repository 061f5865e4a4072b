"""LoRAManager: one model runner's (one rank's) LoRA state.

It wraps the model's linear layers once, holds the adapters loaded on this rank, and before
each forward that uses adapters turns the plan's per-sequence adapter ids into the LoRABatch the
layers read: per adapter, the token rows of its sequences (a sequence's tokens are contiguous in
a step, so adjacent sequences of one adapter merge into one range).
Which adapters are loaded is decided by the engine (lora/slots.py), the same for every rank.
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import torch
from torch import nn

from pagedllm.config import LoRAConfig
from pagedllm.lora.adapter import LoRAAdapter, load_adapter, lora_targets
from pagedllm.lora.layers import LoRABatch, local_sizes, rows_on_device, wrap_lora_layers
from pagedllm.lora.request import LoRARequest

logger = logging.getLogger(__name__)


class LoRAManager:
    def __init__(self, model: nn.Module, lora_config: LoRAConfig, device: torch.device,
                 dtype: torch.dtype) -> None:
        self.model = model
        self.config = lora_config
        self.device = device
        self.dtype = dtype
        self.batch = LoRABatch()
        self.layers = wrap_lora_layers(model, self.batch)     # our name -> base layer
        self.targets = lora_targets(model, self.layers)       # HF module -> our layer
        self.adapters: dict[int, LoRAAdapter] = {}

    # ---- adapters ------------------------------------------------------------------------------

    def check(self, request: LoRARequest) -> None:
        """Raise LoRAAdapterError (a ValueError) if `request`'s adapter cannot be served here;
        reads only its config and tensor headers."""
        self._load(request, check=True)

    def add(self, request: LoRARequest) -> None:
        """Load the adapter onto this rank (no-op if its id is loaded)."""
        if request.lora_int_id in self.adapters:
            return
        adapter = self._load(request, check=False)
        self.adapters[request.lora_int_id] = adapter
        logger.info("LoRA adapter %r (id %d, rank %d) loaded: %.1f MiB", request.lora_name,
                    request.lora_int_id, adapter.rank, adapter.num_bytes() / 2**20)

    def remove(self, lora_int_id: int) -> bool:
        return self.adapters.pop(lora_int_id, None) is not None

    def _load(self, request: LoRARequest, check: bool) -> LoRAAdapter:
        return load_adapter(request, self.model, self.layers, self.targets,
                            self.config.max_lora_rank, self.device, self.dtype, check=check)

    def max_memory_bytes(self) -> int:
        """An upper bound of the memory max_cpu_loras adapters of rank max_lora_rank take, each
        adapting every layer with every module that maps onto it (for the KV cache sizing)."""
        pieces: dict[str, int] = {}
        for target in self.targets.values():
            pieces[target.module] = pieces.get(target.module, 0) + 1
        elements = 0
        for name, count in pieces.items():
            in_local, out_local = local_sizes(self.layers[name])
            elements += (in_local + out_local) * count * self.config.max_lora_rank
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        return elements * itemsize * int(self.config.max_cpu_loras)

    # ---- one step ------------------------------------------------------------------------------

    def begin_step(self, query_start_loc: np.ndarray, lora_ids: np.ndarray) -> None:
        """query_start_loc [S + 1], lora_ids [S] (0: no adapter): fill the layers' batch.
        Host work only: index rows go to the device without a sync."""
        spans: dict[int, list[tuple[int, int]]] = {}
        for i in np.flatnonzero(lora_ids).tolist():
            start, end = int(query_start_loc[i]), int(query_start_loc[i + 1])
            if start == end:
                continue
            runs = spans.setdefault(int(lora_ids[i]), [])
            if runs and runs[-1][1] == start:
                runs[-1] = (runs[-1][0], end)
            else:
                runs.append((start, end))
        groups = []
        for lora_id, runs in spans.items():
            adapter = self.adapters.get(lora_id)
            if adapter is None:
                raise RuntimeError(f"LoRA adapter id {lora_id} is in the step but not loaded")
            groups.append((adapter.weights, rows_on_device(runs, self.device)))
        self.batch.set(groups)

    def end_step(self) -> None:
        self.batch.clear()

    def loaded_ids(self) -> list[int]:
        return sorted(self.adapters)

    def adapter(self, lora_int_id: int) -> Optional[LoRAAdapter]:
        return self.adapters.get(lora_int_id)
