"""vLLM engine options that pagedllm takes only at the values that mean what pagedllm does.

Scripts and deployments written for vLLM pass options such as `kv_cache_dtype="auto"`,
`--swap-space 16` or `--disable-custom-all-reduce` that change nothing here. EngineArgs accepts
them (as keyword arguments and as CLI flags, under vLLM's names), so such code starts unchanged;
any other value asks for a feature pagedllm does not have and is refused with a ValueError that
names the option and says why, instead of being silently ignored.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Callable, Optional


@dataclass(frozen=True)
class VllmOnlyOption:
    name: str
    default: Any
    accepts: Callable[[Any], bool]   # True: the value changes nothing in pagedllm
    refusal: str                     # why other values are refused
    cli_type: Optional[Callable[[str], Any]] = str   # None: a store_true flag
    cli_aliases: tuple[str, ...] = ()


def _is(*values: Any) -> Callable[[Any], bool]:
    return lambda v: v in values


def _falsy(v: Any) -> bool:
    return not v


def _anything(_: Any) -> bool:
    return True


VLLM_ONLY_OPTIONS: tuple[VllmOnlyOption, ...] = (
    VllmOnlyOption("kv_cache_dtype", "auto", _is("auto", None),
                   "the KV cache is kept in the model's dtype ('auto'); FP8 KV caches are not "
                   "supported"),
    VllmOnlyOption("quantization", None, _is(None),
                   "quantized checkpoints and on-the-fly quantization are not supported; serve "
                   "the model's bf16 / fp16 weights", cli_aliases=("-q",)),
    VllmOnlyOption("pipeline_parallel_size", 1, _is(1),
                   "pipeline parallelism is not supported; use tensor_parallel_size",
                   cli_type=int, cli_aliases=("-pp",)),
    VllmOnlyOption("data_parallel_size", 1, _is(1),
                   "data parallelism is not supported; run one engine per GPU group",
                   cli_type=int, cli_aliases=("-dp",)),
    VllmOnlyOption("distributed_executor_backend", None, _is(None, "mp"),
                   "tensor-parallel workers are processes on this host ('mp'), or external "
                   "workers started with PAGEDLLM_TP_EXTERNAL_WORKERS=1 (see the README)"),
    VllmOnlyOption("disable_custom_all_reduce", False, _anything,
                   "", cli_type=None),  # pagedllm all-reduces through NCCL only
    VllmOnlyOption("swap_space", 4, _anything,
                   "", cli_type=float),  # preempted requests recompute; nothing is swapped
    VllmOnlyOption("cpu_offload_gb", 0, _falsy,
                   "offloading weights to CPU memory is not supported", cli_type=float),
    VllmOnlyOption("enable_sleep_mode", False, _falsy,
                   "sleep mode (releasing GPU memory while idle) is not supported",
                   cli_type=None),
    VllmOnlyOption("speculative_config", None, _falsy,
                   "speculative decoding is not supported", cli_type=json.loads),
    VllmOnlyOption("enable_expert_parallel", False, _falsy,
                   "expert parallelism is not supported; MoE experts shard by tensor "
                   "parallelism", cli_type=None),
    VllmOnlyOption("disable_sliding_window", False, _falsy,
                   "sliding-window models always attend within their window here",
                   cli_type=None),
    VllmOnlyOption("enable_prompt_embeds", False, _falsy,
                   "prompts given as embeddings are not supported", cli_type=None),
    VllmOnlyOption("hf_overrides", None, _falsy,
                   "overriding the model's config is not supported; edit its config.json",
                   cli_type=json.loads),
)


def check_vllm_only_options(values: dict[str, Any]) -> None:
    """ValueError for the first option whose value asks for what pagedllm does not do."""
    for option in VLLM_ONLY_OPTIONS:
        value = values.get(option.name, option.default)
        if not option.accepts(value):
            raise ValueError(f"{option.name}: {value!r} is not supported: {option.refusal}")


def add_vllm_only_cli_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group(
        "vLLM options pagedllm accepts at their no-op values (any other value is refused)")
    for option in VLLM_ONLY_OPTIONS:
        flags = ["--" + option.name.replace("_", "-"), *option.cli_aliases]
        if option.cli_type is None:
            g.add_argument(*flags, action="store_true", default=option.default)
        else:
            g.add_argument(*flags, type=option.cli_type, default=option.default)


# EngineArgs' base: one keyword-only field per option (keyword-only, so EngineArgs' own fields
# keep their positions: EngineArgs("model-dir") still names the model).
VllmOnlyFields = dataclasses.make_dataclass(
    "VllmOnlyFields",
    [(o.name, Any, dataclasses.field(default=o.default)) for o in VLLM_ONLY_OPTIONS],
    kw_only=True)
