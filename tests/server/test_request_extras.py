"""vLLM's request extras on /v1/completions and /v1/chat/completions: return_token_ids,
truncate_prompt_tokens, priority / cache_salt reaching SamplingParams, continue_final_message,
add_special_tokens and reasoning_effort in the chat template."""

from __future__ import annotations

import httpx
import openai
import pytest

from pagedllm.entrypoints.openai.errors import BadRequestError
from pagedllm.entrypoints.openai.protocol import ChatCompletionRequest, CompletionRequest
from pagedllm.entrypoints.openai.serving_engine import (
    AdmissionControl,
    OpenAIServing,
    ServerContext,
)

MODEL = "tiny"
PROMPT = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0)


def _tokens(server, **body) -> list[int]:
    resp = httpx.post(server.url + "/tokenize", json={"model": MODEL, **body}, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()["tokens"]


def test_completion_return_token_ids(client, server):
    kw = dict(model=MODEL, prompt=PROMPT, max_tokens=10, temperature=0,
              extra_body={"return_token_ids": True, "ignore_eos": True})
    full = client.completions.create(**kw).model_dump()
    choice = full["choices"][0]
    assert choice["prompt_token_ids"] == _tokens(server, prompt=PROMPT)
    assert len(choice["token_ids"]) == full["usage"]["completion_tokens"] == 10
    chunks = [c.model_dump()["choices"][0] for c in client.completions.create(stream=True, **kw)
              if c.choices]
    assert chunks[0]["prompt_token_ids"] == choice["prompt_token_ids"]
    assert all(c.get("prompt_token_ids") is None for c in chunks[1:])
    assert [t for c in chunks for t in c["token_ids"]] == choice["token_ids"]
    assert "".join(c["text"] for c in chunks) == choice["text"]
    # Not asked for: not there at all (the fast stream path, plain answers).
    plain = httpx.post(server.url + "/v1/completions", timeout=30, json={
        "model": MODEL, "prompt": PROMPT, "max_tokens": 2}).json()["choices"][0]
    assert "token_ids" not in plain and "prompt_token_ids" not in plain


def test_chat_return_token_ids(client, server):
    messages = [{"role": "user", "content": "Hello there"}]
    kw = dict(model=MODEL, messages=messages, max_tokens=10, temperature=0,
              extra_body={"return_token_ids": True, "ignore_eos": True})
    full = client.chat.completions.create(**kw).model_dump()
    assert full["prompt_token_ids"] == _tokens(server, messages=messages)
    assert len(full["choices"][0]["token_ids"]) == 10
    chunks = [c.model_dump() for c in client.chat.completions.create(stream=True, **kw)]
    assert chunks[0]["prompt_token_ids"] == full["prompt_token_ids"]
    assert [t for c in chunks for ch in c["choices"] for t in (ch.get("token_ids") or [])] == \
        full["choices"][0]["token_ids"]


def test_truncate_prompt_tokens(client, server):
    ids = _tokens(server, prompt=PROMPT * 3)
    assert len(ids) > 12
    kw = dict(model=MODEL, max_tokens=6, temperature=0, extra_body={"ignore_eos": True})
    cut = client.completions.create(prompt=PROMPT * 3, **dict(
        kw, extra_body={"ignore_eos": True, "truncate_prompt_tokens": 12}))
    assert cut.usage.prompt_tokens == 12
    same = client.completions.create(prompt=ids[-12:], **kw)
    assert cut.choices[0].text == same.choices[0].text
    # -1: as much as leaves room to generate; more than that room is a 400.
    whole = client.completions.create(prompt=ids, **dict(
        kw, extra_body={"ignore_eos": True, "truncate_prompt_tokens": -1}))
    assert whole.usage.prompt_tokens == len(ids)
    resp = httpx.post(server.url + "/v1/completions", timeout=30, json={
        "model": MODEL, "prompt": PROMPT, "truncate_prompt_tokens": 256})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "truncate_prompt_tokens"
    chat = client.chat.completions.create(
        messages=[{"role": "user", "content": PROMPT * 3}], **dict(
            kw, extra_body={"ignore_eos": True, "truncate_prompt_tokens": 5}))
    assert chat.usage.prompt_tokens == 5


def _serving() -> OpenAIServing:
    ctx = ServerContext(engine=None, tokenizer=None, served_model_names=[MODEL], model_path="",
                        max_model_len=64, vocab_size=100)
    return OpenAIServing(ctx, AdmissionControl(None))


def test_priority_and_cache_salt_reach_sampling_params():
    req = CompletionRequest(prompt="x", priority=-3, cache_salt="tenant-a")
    params = _serving().sampling_params(req, 8, None, None)
    assert (params.priority, params.cache_salt) == (-3, "tenant-a")
    plain = _serving().sampling_params(CompletionRequest(prompt="x"), 8, None, None)
    assert (plain.priority, plain.cache_salt) == (0, None)
    with pytest.raises(ValueError):
        CompletionRequest(prompt="x", cache_salt="")


def test_truncate_prompt_unit():
    serving = _serving()
    assert serving.truncate_prompt(list(range(10)), None) == list(range(10))
    assert serving.truncate_prompt(list(range(10)), 3) == [7, 8, 9]
    assert serving.truncate_prompt(list(range(100)), -1) == list(range(37, 100))  # 63 kept
    with pytest.raises(BadRequestError, match="at most max_model_len - 1 = 63"):
        serving.truncate_prompt(list(range(10)), 64)


def test_chat_template_switches(server):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello, my"}]

    def text(**body) -> str:
        ids = _tokens(server, messages=messages, **body)
        return httpx.post(server.url + "/detokenize", timeout=30,
                          json={"model": MODEL, "tokens": ids}).json()["prompt"]

    closed = text(add_generation_prompt=False)
    assert closed.endswith("Hello, my<|eos|>\n")
    # continue_final_message: the last message stays open for the reply to continue.
    body = {"model": MODEL, "messages": messages, "max_tokens": 3, "temperature": 0,
            "add_generation_prompt": False, "continue_final_message": True,
            "return_token_ids": True}
    out = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30).json()
    prompt_text = httpx.post(server.url + "/detokenize", timeout=30, json={
        "model": MODEL, "tokens": out["prompt_token_ids"]}).json()["prompt"]
    assert prompt_text.endswith("Hello, my")
    both = httpx.post(server.url + "/v1/chat/completions", timeout=30,
                      json=dict(body, add_generation_prompt=True))
    assert both.status_code == 400 and "add_generation_prompt" in both.text
    # add_special_tokens: the tokenizer's BOS before what the template wrote (tiny llama adds
    # BOS); off by default, as the template writes its own.
    plain = httpx.post(server.url + "/v1/chat/completions", timeout=30, json=dict(
        body, continue_final_message=False, add_generation_prompt=True)).json()
    extra = httpx.post(server.url + "/v1/chat/completions", timeout=30, json=dict(
        body, continue_final_message=False, add_generation_prompt=True,
        add_special_tokens=True)).json()
    assert extra["prompt_token_ids"] == [1] + plain["prompt_token_ids"]


def test_reasoning_effort_sets_the_thinking_switch():
    messages = [{"role": "user", "content": "Hi"}]
    off = ChatCompletionRequest(messages=messages, reasoning_effort="none")
    assert off.template_kwargs() == {"reasoning_effort": "none", "enable_thinking": False}
    high = ChatCompletionRequest(messages=messages, reasoning_effort="high")
    assert high.template_kwargs()["enable_thinking"] is True
    own = ChatCompletionRequest(messages=messages, reasoning_effort="none",
                                chat_template_kwargs={"enable_thinking": True})
    assert own.template_kwargs()["enable_thinking"] is True  # the client's own switch wins
    assert ChatCompletionRequest(messages=messages).template_kwargs() == {}


def test_prompt_logprobs(client, server, tiny_llama):
    from pagedllm import LLM, SamplingParams

    ids = _tokens(server, prompt=PROMPT)
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 1, "prompt_logprobs": 2}
    choice = httpx.post(server.url + "/v1/completions", json=body, timeout=30).json()["choices"][0]
    got = choice["prompt_logprobs"]
    assert len(got) == len(ids) and got[0] is None
    for pos, entry in enumerate(got[1:], start=1):
        assert str(ids[pos]) in entry and 2 <= len(entry) <= 3  # the token and the top 2
        assert all(set(v) == {"logprob", "rank", "decoded_token"} for v in entry.values())
    # The same figures as the engine's own (the server runs this model in float32 on the CPU).
    llm = LLM(model=str(tiny_llama), device="cpu", dtype="float32", max_model_len=256,
              kv_cache_space_bytes=8 << 20)
    ref = llm.generate([{"prompt_token_ids": ids}], SamplingParams(max_tokens=1, prompt_logprobs=2),
                       use_tqdm=False)[0].prompt_logprobs
    for entry, want in zip(got[1:], ref[1:]):
        assert {int(t): round(v["logprob"], 4) for t, v in entry.items()} == {
            t: round(lp.logprob, 4) for t, lp in want.items()}
    # Chat answers them at the top level; streams refuse them, as vLLM.
    messages = [{"role": "user", "content": "Hello there"}]
    chat = httpx.post(server.url + "/v1/chat/completions", timeout=30, json={
        "model": MODEL, "messages": messages, "max_tokens": 1, "prompt_logprobs": 1}).json()
    assert len(chat["prompt_logprobs"]) == len(_tokens(server, messages=messages))
    streamed = httpx.post(server.url + "/v1/completions", timeout=30, json=dict(body, stream=True))
    assert streamed.status_code == 400 and "stream" in streamed.text
    plain = httpx.post(server.url + "/v1/chat/completions", timeout=30, json={
        "model": MODEL, "messages": messages, "max_tokens": 1}).json()
    assert "prompt_logprobs" not in plain
