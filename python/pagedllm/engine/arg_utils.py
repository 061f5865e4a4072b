"""EngineArgs / AsyncEngineArgs: the user-facing engine options with vLLM's names and CLI flags.

`create_engine_config()` turns them into the validated pagedllm.config.EngineConfig. A `model` of
None or "" means the default model (SmolLM2-135M-Instruct GGUF, offline).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Optional, Union

from pagedllm.config import (
    CacheConfig,
    DeviceConfig,
    EngineConfig,
    LoRAConfig,
    ModelConfig,
    ParallelConfig,
    PoolerConfig,
    SchedulerConfig,
)
from pagedllm.engine.vllm_options import (VllmOnlyFields, add_vllm_only_cli_args,
                                          check_vllm_only_options)
from pagedllm.reasoning import REASONING_PARSERS


@dataclass
class EngineArgs(VllmOnlyFields):
    """vLLM's engine options. The fields of VllmOnlyFields (kv_cache_dtype, quantization, ...)
    are vLLM options accepted only at values that change nothing here (engine/vllm_options.py)."""

    model: Optional[str] = None
    tokenizer: Optional[str] = None
    tokenizer_mode: str = "auto"
    skip_tokenizer_init: bool = False
    trust_remote_code: bool = False
    revision: Optional[str] = None
    seed: Optional[int] = 0
    dtype: str = "auto"
    max_model_len: Optional[int] = None
    load_format: str = "auto"
    gguf_file: Optional[str] = None
    block_size: int = 16
    gpu_memory_utilization: float = 0.9
    num_gpu_blocks_override: Optional[int] = None
    kv_cache_space_bytes: Optional[int] = None
    max_num_seqs: int = 256
    max_num_batched_tokens: Optional[int] = None
    max_logprobs: int = 20
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    enforce_eager: bool = False
    tensor_parallel_size: int = 1
    device: str = "auto"
    served_model_name: Optional[Union[str, list[str]]] = None
    disable_log_stats: bool = False
    scheduling_policy: str = "fcfs"
    async_scheduling: bool = True
    admission_reserve_blocks_per_running: int = 1
    # Structured outputs start after the reasoning of a thinking model (pagedllm.reasoning);
    # the server also splits answers into reasoning and content with it.
    reasoning_parser: Optional[str] = None
    # Sampling defaults from the model's generation_config.json (engine/generation_defaults.py).
    generation_config: str = "auto"
    override_generation_config: Optional[dict] = None
    # Multi-LoRA serving (pagedllm.lora): requests may name a PEFT adapter.
    enable_lora: bool = False
    max_loras: int = 1
    max_lora_rank: int = 16
    max_cpu_loras: Optional[int] = None
    # Embeddings (vLLM's names): runner "pooling" (or convert "embed", or the older task
    # "embed") makes a pooling engine; pooler_config {"pooling_type": "LAST"|"MEAN",
    # "use_activation": bool} (vLLM's older "normalize" is read as use_activation).
    runner: str = "auto"
    convert: str = "auto"
    pooler_config: Optional[dict] = None
    task: Optional[str] = None

    # -- CLI ----------------------------------------------------------------------------------
    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        """Add every engine flag (vLLM's spellings) to `parser`; defaults come from this class."""
        d = EngineArgs
        g = parser.add_argument_group("engine")
        g.add_argument(
            "--model",
            type=str,
            default=d.model,
            help="model directory, .gguf file or cached hub id (default: SmolLM2 GGUF)",
        )
        g.add_argument("--tokenizer", type=str, default=d.tokenizer)
        g.add_argument(
            "--tokenizer-mode", type=str, default=d.tokenizer_mode, choices=["auto", "slow"]
        )
        g.add_argument(
            "--skip-tokenizer-init",
            action="store_true",
            default=d.skip_tokenizer_init,
            help="no tokenizer: prompts must be token ids, outputs carry no text",
        )
        g.add_argument("--trust-remote-code", action="store_true", default=d.trust_remote_code)
        g.add_argument("--revision", type=str, default=d.revision)
        g.add_argument("--seed", type=int, default=d.seed,
                       help="seed of the sampling noise of requests without their own seed (and of "
                            "dummy weights): the same seed and requests repeat a run's tokens")
        g.add_argument(
            "--dtype",
            type=str,
            default=d.dtype,
            choices=["auto", "half", "float16", "bfloat16", "float", "float32"],
        )
        g.add_argument("--max-model-len", type=int, default=d.max_model_len)
        g.add_argument(
            "--load-format",
            type=str,
            default=d.load_format,
            choices=["auto", "safetensors", "pt", "dummy", "gguf"],
        )
        g.add_argument("--gguf-file", type=str, default=d.gguf_file)
        g.add_argument("--block-size", type=int, default=d.block_size)
        g.add_argument("--gpu-memory-utilization", type=float, default=d.gpu_memory_utilization)
        g.add_argument("--num-gpu-blocks-override", type=int, default=d.num_gpu_blocks_override)
        g.add_argument(
            "--kv-cache-space-bytes",
            type=int,
            default=d.kv_cache_space_bytes,
            help="CPU only: bytes of KV cache (default 1 GiB)",
        )
        g.add_argument("--max-num-seqs", type=int, default=d.max_num_seqs)
        g.add_argument("--max-num-batched-tokens", type=int, default=d.max_num_batched_tokens)
        g.add_argument("--max-logprobs", type=int, default=d.max_logprobs)
        g.add_argument(
            "--enable-prefix-caching",
            action=argparse.BooleanOptionalAction,
            default=d.enable_prefix_caching,
        )
        g.add_argument(
            "--enable-chunked-prefill",
            action=argparse.BooleanOptionalAction,
            default=d.enable_chunked_prefill,
        )
        g.add_argument("--enforce-eager", action="store_true", default=d.enforce_eager)
        g.add_argument("--tensor-parallel-size", "-tp", type=int, default=d.tensor_parallel_size)
        g.add_argument("--device", type=str, default=d.device, choices=["auto", "cuda", "cpu"])
        g.add_argument("--served-model-name", type=str, nargs="+", default=d.served_model_name)
        g.add_argument("--disable-log-stats", action="store_true", default=d.disable_log_stats)
        g.add_argument(
            "--scheduling-policy",
            type=str,
            default=d.scheduling_policy,
            choices=["fcfs", "priority"],
        )
        g.add_argument(
            "--async-scheduling",
            action=argparse.BooleanOptionalAction,
            default=d.async_scheduling,
            help="launch each step's model work before handing back the previous step's outputs, "
            "so output processing overlaps the GPU (same outputs; +6%% on W-nano on an H100; "
            "steps with penalties, logprobs or min_tokens run synchronously)",
        )
        g.add_argument(
            "--admission-reserve-blocks-per-running",
            type=int,
            default=d.admission_reserve_blocks_per_running,
            help="admit a waiting request only if this many free KV blocks per running request "
            "remain after it (0: whenever its blocks fit; default 1: halves preempt/readmit "
            "churn when a workload outgrows the KV cache; 16 preempts less still when every "
            "request runs long against a full cache (W-8B: -2%% to +3%% by cache size), and "
            "delays admission otherwise)",
        )
        g.add_argument(
            "--reasoning-parser",
            type=str,
            default=d.reasoning_parser,
            choices=sorted(REASONING_PARSERS),
            help="the model thinks in <think>...</think> first: structured outputs constrain "
            "only what follows, and the server answers the reasoning in message.reasoning",
        )
        g.add_argument(
            "--generation-config",
            type=str,
            default=d.generation_config,
            help="'auto': requests default to the sampling values of the model's "
            "generation_config.json (temperature, top_p, top_k, ...); 'vllm': neutral defaults; "
            "or a directory holding a generation_config.json",
        )
        g.add_argument(
            "--override-generation-config",
            type=json.loads,
            default=d.override_generation_config,
            help='JSON of sampling defaults that win over the generation config, e.g. '
            '\'{"temperature": 0.5}\'',
        )
        g.add_argument("--enable-lora", action="store_true", default=d.enable_lora,
                       help="serve PEFT LoRA adapters on top of the model (per request)")
        g.add_argument("--max-loras", type=int, default=d.max_loras,
                       help="distinct adapters in one step; requests for others wait")
        g.add_argument("--max-lora-rank", type=int, default=d.max_lora_rank,
                       help="the largest adapter rank accepted")
        g.add_argument("--max-cpu-loras", type=int, default=d.max_cpu_loras,
                       help="adapters kept loaded between uses, least recently used dropped "
                       "first (default: --max-loras)")
        g.add_argument("--runner", choices=["auto", "generate", "pooling"], default=d.runner,
                       help="'pooling': embed prompts (/v1/embeddings) instead of generating; "
                       "'auto': generate")
        g.add_argument("--convert", choices=["auto", "none", "embed"], default=d.convert,
                       help="'embed': use the model as an embedding model (runner pooling)")
        g.add_argument("--pooler-config", type=json.loads, default=d.pooler_config,
                       help='JSON, e.g. \'{"pooling_type": "MEAN", "use_activation": true}\' '
                       "(default: the model's sentence-transformers pooling, else LAST, "
                       "normalized)")
        add_vllm_only_cli_args(parser)
        return parser

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> "EngineArgs":
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{n: getattr(args, n) for n in names if hasattr(args, n)})

    # -- config -------------------------------------------------------------------------------
    def resolved_model(self) -> str:
        if self.model:
            return self.model
        from pagedllm.models.default_model import default_model_path

        return default_model_path()

    def create_engine_config(self) -> EngineConfig:
        """Validate every field (ValueError names it) and build the EngineConfig."""
        if self.max_logprobs < 0:
            raise ValueError("max_logprobs: must be >= 0")
        check_vllm_only_options(dataclasses.asdict(self))
        served = self.served_model_name
        if isinstance(served, list):
            served = served[0] if served else None
        model = self.resolved_model()
        model_config = ModelConfig(
            model=model,
            tokenizer=self.tokenizer,
            tokenizer_mode=self.tokenizer_mode,
            trust_remote_code=self.trust_remote_code,
            revision=self.revision,
            dtype=self.dtype,
            seed=self.seed,
            max_model_len=self.max_model_len,
            load_format=self.load_format,
            gguf_file=self.gguf_file,
            served_model_name=served or (self.model or model),
        )
        cache_config = CacheConfig(
            block_size=self.block_size,
            gpu_memory_utilization=self.gpu_memory_utilization,
            num_gpu_blocks_override=self.num_gpu_blocks_override,
            kv_cache_space_bytes=self.kv_cache_space_bytes,
            enable_prefix_caching=self.enable_prefix_caching,
        )
        scheduler_config = SchedulerConfig(
            max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=self.max_num_batched_tokens,
            enable_chunked_prefill=self.enable_chunked_prefill,
            policy=self.scheduling_policy,
            async_scheduling=self.async_scheduling,
            admission_reserve_blocks_per_running=self.admission_reserve_blocks_per_running,
        )
        parallel_config = ParallelConfig(tensor_parallel_size=self.tensor_parallel_size)
        device_config = DeviceConfig(device=self.device, enforce_eager=self.enforce_eager)
        lora_config = None
        if self.enable_lora:
            lora_config = LoRAConfig(max_loras=self.max_loras, max_lora_rank=self.max_lora_rank,
                                     max_cpu_loras=self.max_cpu_loras)
        return EngineConfig(
            pooler_config=self._pooler_config(),
            model_config=model_config,
            cache_config=cache_config,
            scheduler_config=scheduler_config,
            parallel_config=parallel_config,
            device_config=device_config,
            lora_config=lora_config,
        )

    def _pooler_config(self) -> Optional[PoolerConfig]:
        """The PoolerConfig of a pooling engine, None for a generating one."""
        if self.runner not in ("auto", "generate", "pooling"):
            raise ValueError(f"runner: must be 'auto', 'generate' or 'pooling', got "
                             f"{self.runner!r}")
        if self.convert not in ("auto", "none", "embed"):
            raise ValueError(f"convert: must be 'auto', 'none' or 'embed', got {self.convert!r}")
        if self.task not in (None, "auto", "generate", "embed", "embedding"):
            raise ValueError(f"task: must be 'generate' or 'embed', got {self.task!r}")
        wants_pooling = (self.runner == "pooling" or self.convert == "embed"
                         or self.task in ("embed", "embedding"))
        if not wants_pooling:
            if self.pooler_config:
                raise ValueError("pooler_config: needs runner 'pooling'")
            return None
        if self.runner == "generate":
            raise ValueError("runner: 'generate' contradicts convert/task 'embed'")
        if self.enable_lora or self.tensor_parallel_size > 1:
            raise ValueError("runner: 'pooling' does not support LoRA or tensor parallelism")
        pc = dict(self.pooler_config or {})
        if "normalize" in pc:
            pc.setdefault("use_activation", pc.pop("normalize"))
        unknown = set(pc) - {"pooling_type", "use_activation"}
        if unknown:
            raise ValueError(f"pooler_config: unsupported keys {sorted(unknown)}")
        return PoolerConfig(**pc)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class AsyncEngineArgs(EngineArgs):
    disable_log_requests: bool = True

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        EngineArgs.add_cli_args(parser)
        parser.add_argument(
            "--disable-log-requests",
            action=argparse.BooleanOptionalAction,
            default=AsyncEngineArgs.disable_log_requests,
        )
        return parser
