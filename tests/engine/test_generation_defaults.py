"""Sampling defaults from the model's generation_config.json (vLLM's --generation-config auto):
what the file yields, LLM's default params, and the server filling what a request leaves unset."""

from __future__ import annotations

import json
import shutil

import pytest
from pagedllm import LLM, SamplingParams
from pagedllm.engine.generation_defaults import model_sampling_defaults

from .conftest import PROMPTS, engine_kwargs

QWEN3_STYLE = {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "do_sample": True,
               "max_new_tokens": 7, "bos_token_id": 1, "eos_token_id": 2}


def _model_with(tmp_path, src, generation: dict):
    path = tmp_path / "model"
    shutil.copytree(src, path)
    (path / "generation_config.json").write_text(json.dumps(generation))
    return path


def test_defaults_read_from_the_file(tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps(QWEN3_STYLE))
    assert model_sampling_defaults(str(tmp_path)) == {
        "temperature": 0.6, "top_p": 0.95, "top_k": 20, "max_tokens": 7}
    assert model_sampling_defaults(str(tmp_path), "vllm") == {}
    assert model_sampling_defaults(None, str(tmp_path))["top_k"] == 20   # a directory source
    assert model_sampling_defaults(str(tmp_path), overrides={"temperature": 0.1})[
        "temperature"] == 0.1
    # Generation settings that are not sampling defaults are not taken.
    (tmp_path / "generation_config.json").write_text(json.dumps(
        {"num_beams": 1, "do_sample": True, "bos_token_id": 1, "repetition_penalty": 1.1}))
    assert model_sampling_defaults(str(tmp_path)) == {"repetition_penalty": 1.1}
    assert model_sampling_defaults(str(tmp_path / "missing")) == {}
    with pytest.raises(ValueError, match="unknown keys"):
        model_sampling_defaults(str(tmp_path), overrides={"temprature": 0.1})
    with pytest.raises(ValueError, match="'auto', 'vllm' or a directory"):
        model_sampling_defaults(str(tmp_path), "nowhere")


def test_llm_default_params_follow_the_model(tmp_path, tiny_llama):
    path = _model_with(tmp_path, tiny_llama, dict(QWEN3_STYLE, top_k=1, temperature=0.9))
    llm = LLM(model=str(path), **engine_kwargs())
    params = llm.get_default_sampling_params()
    assert (params.top_k, params.temperature, params.max_tokens) == (1, 0.9, 7)
    # top_k 1: the model's defaults make plain generate() greedy.
    out = llm.generate(PROMPTS[:4], use_tqdm=False)
    greedy = llm.generate(PROMPTS[:4], SamplingParams(temperature=0, max_tokens=7),
                          use_tqdm=False)
    assert [o.outputs[0].token_ids for o in out] == [g.outputs[0].token_ids for g in greedy]
    neutral = LLM(model=str(path), generation_config="vllm", **engine_kwargs())
    assert neutral.get_default_sampling_params().top_k == SamplingParams().top_k


def test_server_fills_what_the_request_left_unset():
    # The server modules need fastapi; the GPU machine collects this file without it.
    pytest.importorskip("fastapi")
    from pagedllm.entrypoints.openai.protocol import ChatCompletionRequest
    from pagedllm.entrypoints.openai.serving_engine import (
        AdmissionControl,
        OpenAIServing,
        ServerContext,
    )

    ctx = ServerContext(engine=None, tokenizer=None, served_model_names=["m"], model_path="",
                        max_model_len=64, vocab_size=100,
                        default_sampling={"temperature": 0.6, "top_k": 20, "max_tokens": 7})
    serving = OpenAIServing(ctx, AdmissionControl(None))
    messages = [{"role": "user", "content": "Hi"}]
    unset = serving.sampling_params(ChatCompletionRequest(messages=messages), 8, None, None)
    assert (unset.temperature, unset.top_k) == (0.6, 20)
    own = serving.sampling_params(ChatCompletionRequest(messages=messages, temperature=0.5,
                                                        top_k=-1), 8, None, None)
    assert (own.temperature, own.top_k) == (0.5, SamplingParams(top_k=-1).top_k)  # "off"
    assert serving.resolve_max_tokens(10, None, "max_tokens") == 7      # the model's cap
    assert serving.resolve_max_tokens(60, None, "max_tokens") == 4      # the context's
    assert serving.resolve_max_tokens(10, 30, "max_tokens") == 30       # the client's own
