"""The tensor-parallel process group of this process.

One group spans all ranks: NCCL on GPUs (activations: the row-parallel all-reduce, the LM head's
all-gather), gloo on CPU. A second gloo group carries the per-step plan broadcast, which lives in
host memory whatever the device.
"""
from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


def init_tensor_parallel(config: Any, store: Any, rank: int, world_size: int, local_rank: int,
                         timeout: timedelta) -> Any:
    """Join the group; returns the CPU group for plan broadcasts. On CUDA, pins this process to
    GPU `local_rank` first so the model and KV cache land there."""
    # NVLink multicast stays off on shared machines (it can take the host's GPUs down).
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    use_cuda = config.device_config.device == "cuda" or (
        config.device_config.device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)
    backend = "nccl" if use_cuda else "gloo"
    dist.init_process_group(backend, store=dist.PrefixStore("pg", store), rank=rank,
                            world_size=world_size, timeout=timeout)
    return dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else dist.group.WORLD
