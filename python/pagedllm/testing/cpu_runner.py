"""Tests that drive a model directly: a ModelRunner on the CPU over a small paged KV cache, and
copies of a model directory with edited weights."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

from pagedllm.config import CacheConfig, DeviceConfig, ModelConfig, ParallelConfig, SchedulerConfig
from pagedllm.worker.model_runner import ModelRunner


def cpu_runner(path: Any, *, block_size: int = 16, max_num_seqs: int = 4,
               enforce_eager: bool = False, **model_kwargs: Any) -> ModelRunner:
    """A loaded ModelRunner for the model at `path` with an 8 MiB KV cache allocated;
    `model_kwargs` go to ModelConfig (dtype, load_format, seed, ...)."""
    runner = ModelRunner(ModelConfig(model=str(path), **model_kwargs),
                         CacheConfig(block_size=block_size, kv_cache_space_bytes=8 << 20),
                         DeviceConfig(device="cpu", enforce_eager=enforce_eager),
                         ParallelConfig(),
                         scheduler_config=SchedulerConfig(max_num_seqs=max_num_seqs))
    runner.load_model()
    runner.allocate_kv_cache(runner.determine_num_blocks())
    return runner


def copy_with_edited_weights(src: Path, dst: Path, edit: Callable[[dict], None]) -> Path:
    """A copy of the model directory `src` at `dst` whose model.safetensors went through
    `edit(name -> tensor dict)` (delete, rename or change tensors in place)."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    weights = load_file(dst / "model.safetensors")
    edit(weights)
    save_file(weights, dst / "model.safetensors")
    return dst
