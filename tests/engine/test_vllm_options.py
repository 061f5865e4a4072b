"""vLLM engine options pagedllm takes only at their no-op values (engine/vllm_options.py): code and
command lines written for vLLM that pass them start unchanged; values that ask for a missing
feature are refused by name; quantized checkpoints are refused before loading."""
from __future__ import annotations

import json

import pytest

from pagedllm import LLM, SamplingParams
from pagedllm.engine.arg_utils import AsyncEngineArgs, EngineArgs
from pagedllm.engine.vllm_options import VLLM_ONLY_OPTIONS, check_vllm_only_options

from .conftest import engine_kwargs

NO_OP_VALUES = dict(kv_cache_dtype="auto", quantization=None, pipeline_parallel_size=1,
                    data_parallel_size=1, distributed_executor_backend="mp",
                    disable_custom_all_reduce=True, swap_space=16, cpu_offload_gb=0,
                    enable_sleep_mode=False, speculative_config=None,
                    enable_expert_parallel=False, disable_sliding_window=False,
                    enable_prompt_embeds=False, hf_overrides=None)

REFUSED = [("kv_cache_dtype", "fp8", "FP8 KV caches"), ("quantization", "awq", "quantized"),
           ("pipeline_parallel_size", 2, "tensor_parallel_size"),
           ("data_parallel_size", 2, "data parallelism"),
           ("distributed_executor_backend", "ray", "PAGEDLLM_TP_EXTERNAL_WORKERS"),
           ("cpu_offload_gb", 4, "offloading"), ("enable_sleep_mode", True, "sleep mode"),
           ("speculative_config", {"method": "ngram"}, "speculative"),
           ("enable_expert_parallel", True, "expert parallelism"),
           ("disable_sliding_window", True, "window"),
           ("enable_prompt_embeds", True, "embeddings"),
           ("hf_overrides", {"num_hidden_layers": 2}, "config.json")]


def test_the_table_covers_every_option_tested():
    assert {o.name for o in VLLM_ONLY_OPTIONS} == set(NO_OP_VALUES)


def test_no_op_values_leave_the_engine_as_it_was(tiny_llama):
    params = SamplingParams(temperature=0, max_tokens=6)
    plain = LLM(str(tiny_llama), **engine_kwargs()).generate(["Hello there"], params,
                                                             use_tqdm=False)
    llm = LLM(str(tiny_llama), **engine_kwargs(), **NO_OP_VALUES)
    out = llm.generate(["Hello there"], params, use_tqdm=False)
    assert out[0].outputs[0].token_ids == plain[0].outputs[0].token_ids


@pytest.mark.parametrize("name,value,why", REFUSED)
def test_other_values_are_refused_by_name(name, value, why):
    with pytest.raises(ValueError, match=f"^{name}: .*{why}"):
        check_vllm_only_options({name: value})
    with pytest.raises(ValueError, match=f"^{name}: "):   # before the model is even looked up
        EngineArgs("/no/such/model", **{name: value}).create_engine_config()


def test_the_model_stays_the_first_positional_argument():
    args = EngineArgs("some/model", kv_cache_dtype="auto")
    assert args.model == "some/model" and args.quantization is None


def test_vllm_command_lines_parse():
    from pagedllm.entrypoints.openai.api_server import make_parser

    args = make_parser().parse_args(
        ["--model", "m", "--swap-space", "16", "--kv-cache-dtype", "auto", "-pp", "1",
         "--disable-custom-all-reduce", "--distributed-executor-backend", "mp",
         "--speculative-config", "null"])
    engine_args = AsyncEngineArgs.from_cli_args(args)
    assert (engine_args.swap_space, engine_args.kv_cache_dtype) == (16.0, "auto")
    assert engine_args.pipeline_parallel_size == 1 and engine_args.disable_custom_all_reduce
    check_vllm_only_options(vars(args))   # nothing refused
    refused = AsyncEngineArgs.from_cli_args(make_parser().parse_args(["-q", "gptq"]))
    with pytest.raises(ValueError, match="^quantization: 'gptq'"):
        refused.create_engine_config()


def test_quantized_checkpoints_are_refused_before_loading(tiny_llama, tmp_path):
    import shutil

    quantized = tmp_path / "awq"
    shutil.copytree(tiny_llama, quantized)
    config = json.loads((quantized / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": 128}
    (quantized / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="quantized checkpoint .*'awq'"):
        LLM(str(quantized), **engine_kwargs())
