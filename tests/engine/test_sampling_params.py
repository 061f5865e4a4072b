"""SamplingParams and EngineArgs: vLLM's defaults, validation errors that name the field."""

from __future__ import annotations

import argparse

import pytest
from pagedllm.engine.arg_utils import AsyncEngineArgs, EngineArgs
from pagedllm.sampling_params import RequestOutputKind, SamplingParams, SamplingType


def test_defaults_match_vllm() -> None:
    p = SamplingParams()
    assert (p.n, p.temperature, p.top_p, p.top_k, p.min_p) == (1, 1.0, 1.0, 0, 0.0)
    assert (p.max_tokens, p.min_tokens, p.logprobs, p.prompt_logprobs) == (16, 0, None, None)
    assert (p.presence_penalty, p.frequency_penalty, p.repetition_penalty) == (0.0, 0.0, 1.0)
    assert p.stop == [] and p.stop_token_ids == [] and p.skip_special_tokens
    assert p.output_kind is RequestOutputKind.CUMULATIVE
    assert p.sampling_type is SamplingType.RANDOM


def test_greedy_resets_random_knobs() -> None:
    p = SamplingParams(temperature=0.0, top_p=0.5, top_k=3, min_p=0.2)
    assert p.sampling_type is SamplingType.GREEDY
    assert (p.top_p, p.top_k, p.min_p) == (1.0, 0, 0.0)
    assert SamplingParams(seed=3).sampling_type is SamplingType.RANDOM_SEED
    assert SamplingParams(top_k=-1).top_k == 0
    assert SamplingParams(stop="x").stop == ["x"]


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(n=0), "n"),
        (dict(temperature=-0.1), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=-2), "top_k"),
        (dict(min_p=1.5), "min_p"),
        (dict(presence_penalty=3.0), "presence_penalty"),
        (dict(frequency_penalty=-2.5), "frequency_penalty"),
        (dict(repetition_penalty=0.0), "repetition_penalty"),
        (dict(max_tokens=0), "max_tokens"),
        (dict(min_tokens=-1), "min_tokens"),
        (dict(min_tokens=20, max_tokens=10), "min_tokens"),
        (dict(logprobs=-1), "logprobs"),
        (dict(prompt_logprobs=-3), "prompt_logprobs"),
        (dict(stop=[""]), "stop"),
        (dict(stop_token_ids=[-1]), "stop_token_ids"),
        (dict(stop=["a"], detokenize=False), "stop"),
        (dict(best_of=3, n=2), "best_of"),
    ],
)
def test_invalid_values_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field}\b"):
        SamplingParams(**kwargs)


def test_output_text_buffer_length() -> None:
    assert SamplingParams(stop=["abc", "de"]).output_text_buffer_length == 2
    assert (
        SamplingParams(stop=["abc"], include_stop_str_in_output=True).output_text_buffer_length == 0
    )


def test_engine_args_cli_round_trip() -> None:
    parser = AsyncEngineArgs.add_cli_args(argparse.ArgumentParser())
    ns = parser.parse_args(
        [
            "--model",
            "m",
            "--max-model-len",
            "256",
            "--block-size",
            "8",
            "--max-num-seqs",
            "4",
            "--max-num-batched-tokens",
            "32",
            "--no-enable-prefix-caching",
            "--enforce-eager",
            "-tp",
            "1",
            "--dtype",
            "float32",
            "--load-format",
            "dummy",
            "--seed",
            "7",
            "--served-model-name",
            "a",
            "b",
            "--scheduling-policy",
            "priority",
            "--kv-cache-space-bytes",
            "1000000",
            "--device",
            "cpu",
        ]
    )
    args = AsyncEngineArgs.from_cli_args(ns)
    assert isinstance(args, AsyncEngineArgs)
    assert (args.model, args.max_model_len, args.block_size, args.max_num_seqs) == ("m", 256, 8, 4)
    assert args.max_num_batched_tokens == 32 and args.enable_prefix_caching is False
    assert args.enforce_eager and args.dtype == "float32" and args.load_format == "dummy"
    assert args.served_model_name == ["a", "b"] and args.scheduling_policy == "priority"
    cfg = args.create_engine_config()
    assert cfg.model_config.served_model_name == "a"
    assert cfg.cache_config.block_size == 8 and cfg.cache_config.kv_cache_space_bytes == 1000000
    assert cfg.scheduler_config.policy == "priority" and cfg.device_config.device == "cpu"
    defaults = EngineArgs.from_cli_args(
        EngineArgs.add_cli_args(argparse.ArgumentParser()).parse_args([])
    )
    assert defaults == EngineArgs()
    assert defaults.enable_prefix_caching is True


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(block_size=7), "block_size"),
        (dict(gpu_memory_utilization=1.5), "gpu_memory_utilization"),
        (dict(max_num_seqs=0), "max_num_seqs"),
        (dict(dtype="int8"), "dtype"),
        (dict(tensor_parallel_size=0), "tensor_parallel_size"),
        (dict(device="tpu"), "device"),
        (dict(scheduling_policy="lifo"), "scheduling_policy"),
        (dict(max_model_len=0), "max_model_len"),
        (dict(seed="3"), "seed"),
        (dict(seed=2**64), "seed"),
        (dict(seed=1.5), "seed"),
    ],
)
def test_engine_args_validation(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        EngineArgs(model="m", **kwargs).create_engine_config()


def test_logit_bias_and_allowed_token_ids():
    p = SamplingParams(logit_bias={"5": -100, 7: 2.5}, allowed_token_ids=(3, 1))
    assert p.logit_bias == {5: -100, 7: 2.5}      # OpenAI-style string keys become ints
    assert p.allowed_token_ids == [3, 1]
    assert SamplingParams(logit_bias={}).logit_bias is None
    for bad in ({-1: 1.0}, {"x": 1.0}, {5: float("nan")}, {5: float("inf")}, {True: 1.0}, [5]):
        with pytest.raises(ValueError, match="logit_bias"):
            SamplingParams(logit_bias=bad)
    for bad in ([], [-2], [1.5], [True]):
        with pytest.raises(ValueError, match="allowed_token_ids"):
            SamplingParams(allowed_token_ids=bad)


def test_from_optional_clamps_logit_bias_as_vllm():
    p = SamplingParams.from_optional(logit_bias={"3": 500, 4: -250.5, 5: 1.5}, seed=None)
    assert p.logit_bias == {3: 100.0, 4: -100.0, 5: 1.5} and p.seed is None
    assert SamplingParams(logit_bias={3: 500}).logit_bias == {3: 500}  # the constructor keeps it
