"""Engine configuration: plain dataclasses validated in __post_init__.

EngineArgs (engine/arg_utils.py) is the user-facing, vLLM-named form; it builds an EngineConfig.
Every invalid value raises ValueError naming the field; nothing here asserts on user input.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

_DTYPES = ("auto", "float16", "half", "bfloat16", "float32", "float")


def _require(cond: bool, field_name: str, message: str) -> None:
    if not cond:
        raise ValueError(f"{field_name}: {message}")


@dataclass
class ModelConfig:
    model: str                        # local dir, .gguf file, or a hub id in the local cache
    tokenizer: Optional[str] = None   # defaults to model
    tokenizer_mode: str = "auto"      # "auto" | "slow"
    trust_remote_code: bool = False
    revision: Optional[str] = None
    dtype: str = "auto"
    seed: Optional[int] = 0           # sampling noise of unseeded requests; None: fresh each run
    max_model_len: Optional[int] = None   # None: from the model's config
    load_format: str = "auto"         # "auto" | "safetensors" | "pt" | "dummy" | "gguf"
    gguf_file: Optional[str] = None   # a file inside `model` when `model` is a directory
    served_model_name: Optional[str] = None
    # Filled by pagedllm.models.loader.resolve_model_config(): the transformers config object,
    # the torch dtype chosen, and the resolved max_model_len.
    hf_config: Any = field(default=None, repr=False)
    torch_dtype: Any = field(default=None, repr=False)        # torch.dtype once resolved
    model_path: Optional[str] = field(default=None, repr=False)  # local dir or file
    gguf_path: Optional[str] = field(default=None, repr=False)   # the .gguf file, if GGUF

    def __post_init__(self) -> None:
        _require(isinstance(self.model, str) and self.model != "", "model",
                 "must be a non-empty string")
        _require(self.dtype in _DTYPES, "dtype", f"must be one of {_DTYPES}, got {self.dtype!r}")
        _require(self.tokenizer_mode in ("auto", "slow"), "tokenizer_mode",
                 "must be 'auto' or 'slow'")
        _require(self.load_format in ("auto", "safetensors", "pt", "dummy", "gguf"), "load_format",
                 f"unknown load format {self.load_format!r}")
        _require(self.max_model_len is None or self.max_model_len > 0, "max_model_len",
                 "must be > 0")
        # torch generators take seeds in [-2^63, 2^64).
        seed_is_int = isinstance(self.seed, int) and not isinstance(self.seed, bool)
        _require(self.seed is None or (seed_is_int and -2**63 <= self.seed < 2**64),
                 "seed", f"must be an integer in [-2**63, 2**64) or None, got {self.seed!r}")
        if self.tokenizer is None:
            self.tokenizer = self.model


@dataclass
class CacheConfig:
    block_size: int = 16
    gpu_memory_utilization: float = 0.9
    num_gpu_blocks_override: Optional[int] = None
    # CPU: KV cache bytes (default 4 GiB, at most a quarter of available RAM)
    kv_cache_space_bytes: Optional[int] = None
    enable_prefix_caching: bool = True

    def __post_init__(self) -> None:
        _require(self.block_size in (8, 16, 32, 64, 128), "block_size",
                 "must be 8, 16, 32, 64 or 128")
        _require(0.0 < self.gpu_memory_utilization <= 1.0, "gpu_memory_utilization",
                 "must be in (0, 1]")
        _require(self.num_gpu_blocks_override is None or self.num_gpu_blocks_override >= 2,
                 "num_gpu_blocks_override", "must be >= 2")
        _require(self.kv_cache_space_bytes is None or self.kv_cache_space_bytes > 0,
                 "kv_cache_space_bytes", "must be > 0")


@dataclass
class SchedulerConfig:
    max_num_seqs: int = 256
    max_num_batched_tokens: Optional[int] = None  # None: max(8192, max_model_len) when chunked
    enable_chunked_prefill: bool = True
    policy: str = "fcfs"                          # "fcfs" | "priority"
    # Launch step n+1 before collecting step n's outputs (EngineCore._step_overlapped).
    async_scheduling: bool = True
    # Admit a waiting request only if this many free KV blocks per running request remain
    # (the C++ SchedulerConfig field of the same name; 0 = admit whenever blocks fit). 1 by
    # default: on W-8B it halves the preemptions (977 -> 482) at the same number of steps. 16
    # was 3.2-3.4% faster on W-8B on two H100s (long outputs against a full cache), but
    # replays at other cache sizes range from -2.1% to +3.0%, and on mixed workloads it only
    # holds back admission (benchmarks/RESULTS.md, sessions 19-21): left to the user.
    admission_reserve_blocks_per_running: int = 1

    def __post_init__(self) -> None:
        _require(self.max_num_seqs >= 1, "max_num_seqs", "must be >= 1")
        _require(self.max_num_batched_tokens is None or self.max_num_batched_tokens >= 1,
                 "max_num_batched_tokens", "must be >= 1")
        _require(0 <= self.admission_reserve_blocks_per_running <= 1024,
                 "admission_reserve_blocks_per_running", "must be in [0, 1024]")
        _require(self.policy in ("fcfs", "priority"), "scheduling_policy",
                 "must be 'fcfs' or 'priority'")


@dataclass
class ParallelConfig:
    tensor_parallel_size: int = 1

    def __post_init__(self) -> None:
        _require(self.tensor_parallel_size >= 1, "tensor_parallel_size", "must be >= 1")


@dataclass
class DeviceConfig:
    device: str = "auto"   # "auto" (cuda if available) | "cuda" | "cpu"
    enforce_eager: bool = False

    def __post_init__(self) -> None:
        _require(self.device in ("auto", "cuda", "cpu"), "device",
                 "must be 'auto', 'cuda' or 'cpu'")


@dataclass
class LoRAConfig:
    """Multi-LoRA serving (present only with enable_lora)."""

    max_loras: int = 1                    # distinct adapters in one step
    max_lora_rank: int = 16               # the largest adapter rank accepted
    max_cpu_loras: Optional[int] = None   # adapters kept loaded (LRU); None: max_loras

    def __post_init__(self) -> None:
        _require(self.max_loras >= 1, "max_loras", "must be >= 1")
        _require(self.max_lora_rank >= 1, "max_lora_rank", "must be >= 1")
        if self.max_cpu_loras is None:
            self.max_cpu_loras = self.max_loras
        # Every adapter of a step must be loaded at once.
        _require(self.max_cpu_loras >= self.max_loras, "max_cpu_loras",
                 f"must be >= max_loras ({self.max_loras}), got {self.max_cpu_loras}")


@dataclass
class PoolerConfig:
    """A pooling (embedding) engine: how a prompt's hidden states become one vector (present
    only with runner "pooling"). pooling_type None: the model's sentence-transformers config
    (1_Pooling/config.json) if it has one, else LAST."""

    pooling_type: Optional[str] = None    # "LAST" | "MEAN"
    use_activation: Optional[bool] = None  # L2-normalize; None: True (vLLM's embed default)

    def __post_init__(self) -> None:
        if self.pooling_type is not None:
            self.pooling_type = self.pooling_type.upper()
        _require(self.pooling_type in (None, "LAST", "MEAN"), "pooling_type",
                 f"must be 'LAST' or 'MEAN', got {self.pooling_type!r}")


@dataclass
class EngineConfig:
    model_config: ModelConfig
    cache_config: CacheConfig
    scheduler_config: SchedulerConfig
    parallel_config: ParallelConfig
    device_config: DeviceConfig
    lora_config: Optional[LoRAConfig] = None   # None: LoRA off
    pooler_config: Optional[PoolerConfig] = None   # None: a generating engine
