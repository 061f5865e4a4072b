"""LoRA adapters served as models: --lora-modules adapters answer as LLM.generate does with that
LoRARequest, /v1/models lists them with their base model as parent, unknown names are 404, and
with PAGEDLLM_ALLOW_RUNTIME_LORA_UPDATING=1 adapters are loaded and unloaded at run time."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import openai
import pytest
from server_process import InProcessServer

MAX_TOKENS = 10
PROMPTS = ["Hello, world!", "The quick brown fox"]


@pytest.fixture(scope="module")
def adapters(tiny_lora) -> dict[str, Path]:
    return {"ad1": tiny_lora("llama", "all")[0], "ad2": tiny_lora("llama", "rslora")[0]}


@pytest.fixture(scope="module")
def lora_server(tiny_llama: Path, adapters):
    previous = os.environ.get("PAGEDLLM_ALLOW_RUNTIME_LORA_UPDATING")
    os.environ["PAGEDLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "1"
    try:
        srv = InProcessServer(
            str(tiny_llama), "--served-model-name", "tiny", "--device", "cpu", "--dtype",
            "float32", "--max-model-len", "256", "--enable-lora", "--max-loras", "2",
            "--lora-modules", f"ad1={adapters['ad1']}",
        )
    finally:
        if previous is None:
            os.environ.pop("PAGEDLLM_ALLOW_RUNTIME_LORA_UPDATING")
        else:
            os.environ["PAGEDLLM_ALLOW_RUNTIME_LORA_UPDATING"] = previous
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="module")
def offline(tiny_llama: Path):
    """LLM.generate / chat on the same model: what the server must answer."""
    from pagedllm import LLM

    return LLM(model=str(tiny_llama), device="cpu", dtype="float32", max_model_len=256,
               kv_cache_space_bytes=8 << 20, enable_lora=True, max_loras=2)


def _offline_texts(llm, prompts, lora):
    from pagedllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)
    return [o.outputs[0].text for o in
            llm.generate(prompts, params, use_tqdm=False, lora_request=lora)]


def _client(srv) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.base_url, api_key="unused", max_retries=0)


def test_lora_module_answers_as_llm_generate(lora_server, offline, adapters):
    from pagedllm.lora import LoRARequest

    client = _client(lora_server)
    lora = LoRARequest("ad1", 1, str(adapters["ad1"]))
    expected = _offline_texts(offline, PROMPTS, lora)
    base = _offline_texts(offline, PROMPTS, None)
    assert expected != base
    got = client.completions.create(model="ad1", prompt=PROMPTS, max_tokens=MAX_TOKENS,
                                    temperature=0.0)
    assert got.model == "ad1"
    assert [c.text for c in sorted(got.choices, key=lambda c: c.index)] == expected
    streamed = "".join(chunk.choices[0].text for chunk in client.completions.create(
        model="ad1", prompt=PROMPTS[0], max_tokens=MAX_TOKENS, temperature=0.0, stream=True))
    assert streamed == expected[0]
    plain = client.completions.create(model="tiny", prompt=PROMPTS, max_tokens=MAX_TOKENS,
                                      temperature=0.0)
    assert [c.text for c in sorted(plain.choices, key=lambda c: c.index)] == base


def test_chat_with_a_lora_module(lora_server, offline, adapters):
    from pagedllm import SamplingParams
    from pagedllm.lora import LoRARequest

    messages = [{"role": "user", "content": "Hello there"}]
    lora = LoRARequest("ad1", 1, str(adapters["ad1"]))
    expected = offline.chat(messages, SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS),
                            use_tqdm=False, lora_request=lora)[0].outputs[0].text
    got = _client(lora_server).chat.completions.create(
        model="ad1", messages=messages, max_tokens=MAX_TOKENS, temperature=0.0)
    assert got.model == "ad1" and got.choices[0].message.content == expected


def test_models_lists_adapters_with_their_parent(lora_server, adapters):
    models = {m.id: m for m in _client(lora_server).models.list().data}
    assert set(models) >= {"tiny", "ad1"}
    card = models["ad1"].model_dump()
    assert card["parent"] == "tiny" and card["root"] == str(adapters["ad1"])
    assert models["tiny"].model_dump().get("parent") is None


def test_unknown_model_is_404(lora_server):
    with pytest.raises(openai.NotFoundError):
        _client(lora_server).completions.create(model="nope", prompt="hi", max_tokens=2)


def test_runtime_load_and_unload(lora_server, offline, adapters, tmp_path):
    from pagedllm.lora import LoRARequest

    url = lora_server.url
    body = {"lora_name": "ad2", "lora_path": str(adapters["ad2"])}
    loaded = httpx.post(f"{url}/v1/load_lora_adapter", json=body, timeout=60)
    assert loaded.status_code == 200, loaded.text
    again = httpx.post(f"{url}/v1/load_lora_adapter", json=body, timeout=60)
    assert again.status_code == 400 and "already been loaded" in again.text
    bad = httpx.post(f"{url}/v1/load_lora_adapter", timeout=60,
                     json={"lora_name": "bad", "lora_path": str(tmp_path / "missing")})
    assert bad.status_code == 400 and "no such directory" in bad.json()["error"]["message"]

    client = _client(lora_server)
    assert "ad2" in {m.id for m in client.models.list().data}
    got = client.completions.create(model="ad2", prompt=PROMPTS[0], max_tokens=MAX_TOKENS,
                                    temperature=0.0)
    expected = _offline_texts(offline, PROMPTS[:1], LoRARequest("ad2", 2, str(adapters["ad2"])))
    assert got.choices[0].text == expected[0]

    gone = httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": "ad2"}, timeout=60)
    assert gone.status_code == 200, gone.text
    assert "ad2" not in {m.id for m in client.models.list().data}
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="ad2", prompt="hi", max_tokens=2)
    missing = httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": "ad2"}, timeout=60)
    assert missing.status_code == 404


def test_lora_flags_are_checked(tiny_llama: Path, tmp_path, capsys):
    from pagedllm.entrypoints.openai.api_server import make_parser
    from pagedllm.entrypoints.openai.cli_args import validate_server_args

    args = make_parser().parse_args(["--lora-modules", "a=/x"])
    with pytest.raises(ValueError, match="needs --enable-lora"):
        validate_server_args(args)
    spec = json.dumps({"name": "b", "path": "/y", "base_model_name": "tiny"})
    args = make_parser().parse_args(["--enable-lora", "--lora-modules", "a=/x", spec])
    assert [(m.name, m.path, m.base_model_name) for m in args.lora_modules] == [
        ("a", "/x", None), ("b", "/y", "tiny")]
    # An adapter that cannot be served stops the server before it serves (exit code 2).
    from pagedllm.entrypoints.openai.api_server import main

    code = main(["--model", str(tiny_llama), "--port", "0", "--device", "cpu",
                 "--enable-lora", "--lora-modules", f"broken={tmp_path / 'missing'}"])
    assert code == 2
    assert "lora_modules: broken" in capsys.readouterr().err
