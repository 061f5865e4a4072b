"""The paged KV cache: one tensor per layer, [2, num_blocks, block_size, num_kv_heads, head_dim]
(0 = keys, 1 = values), and how many blocks fit in memory. Block 0 is the null block that pads
block tables; it is allocated like any other and never written (slot -1 skips writes)."""
from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Any, Optional

import numpy as np
import torch

# CPU budget when kv_cache_space_bytes is not given, and the share of available RAM it may take.
DEFAULT_CPU_KV_CACHE_BYTES = 4 * 1024 ** 3
MAX_CPU_RAM_FRACTION = 0.25


@dataclass(frozen=True)
class KVCacheSpec:
    num_layers: int
    block_size: int
    num_kv_heads: int     # on this rank
    head_dim: int
    dtype: torch.dtype

    @property
    def bytes_per_block(self) -> int:
        """Bytes one block takes across all layers (keys and values)."""
        element = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.block_size * self.num_kv_heads * self.head_dim * element * self.num_layers


def kv_cache_spec(hf_config: Any, block_size: int, dtype: torch.dtype,
                  tp_size: int = 1) -> KVCacheSpec:
    heads = hf_config.num_attention_heads
    kv_heads = getattr(hf_config, "num_key_value_heads", None) or heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads
    # KV heads are split across ranks, or replicated when there are fewer than ranks.
    kv_per_rank = max(1, kv_heads // tp_size)
    return KVCacheSpec(hf_config.num_hidden_layers, block_size, kv_per_rank, head_dim, dtype)


def cpu_num_blocks(spec: KVCacheSpec, kv_cache_space_bytes: Optional[int],
                   max_useful_blocks: Optional[int] = None) -> int:
    """Blocks (null block included) fitting the CPU byte budget: kv_cache_space_bytes, or 4 GiB
    capped to a quarter of available RAM; never more than `max_useful_blocks`."""
    if kv_cache_space_bytes is not None:
        budget = kv_cache_space_bytes
    else:
        budget = min(DEFAULT_CPU_KV_CACHE_BYTES, int(_available_ram() * MAX_CPU_RAM_FRACTION))
    num_blocks = budget // spec.bytes_per_block
    if max_useful_blocks is not None:
        num_blocks = min(num_blocks, max_useful_blocks)
    if num_blocks < 2:
        raise ValueError(f"kv_cache_space_bytes: {budget} bytes hold {num_blocks} blocks of "
                         f"{spec.bytes_per_block} bytes; at least 2 are needed")
    return int(num_blocks)


def _available_ram() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return DEFAULT_CPU_KV_CACHE_BYTES * 4


def allocate_kv_caches(spec: KVCacheSpec, num_blocks: int,
                       device: torch.device) -> list[torch.Tensor]:
    """Zero-filled so that a kernel reading a whole block never meets NaN garbage."""
    shape = (2, num_blocks, spec.block_size, spec.num_kv_heads, spec.head_dim)
    if torch.device(device).type == "cpu":
        return [_lazily_zeroed_cpu_tensor(shape, spec.dtype) for _ in range(spec.num_layers)]
    return [torch.zeros(shape, dtype=spec.dtype, device=device) for _ in range(spec.num_layers)]


def _lazily_zeroed_cpu_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """numpy.zeros is calloc: large buffers come as fresh zero pages from the OS, so a 4 GiB
    cache costs memory (and time) only for the blocks actually written, where torch.zeros
    would memset all of it up front (seconds, and all of its RAM at once)."""
    element = torch.empty((), dtype=dtype).element_size()
    raw = torch.from_numpy(np.zeros(math.prod(shape) * element, dtype=np.uint8))
    return raw.view(dtype).view(shape)
