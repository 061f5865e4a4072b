"""Reasoning parsers and chat answers: the final split of a thinking model's text, a stream's
deltas against it at every split point (also with tool calls after the reasoning), and a server
with --reasoning-parser on a tiny model that has <think> / </think> tokens."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from pagedllm.entrypoints.openai.chat_answer import ChatAnswerFormat, ChatAnswerStream
from pagedllm.entrypoints.openai.tool_calls import ToolChoice
from pagedllm.entrypoints.openai.tool_parsers import HermesToolParser
from pagedllm.reasoning import (
    DeepSeekR1ReasoningParser,
    Qwen3ReasoningParser,
    make_reasoning_parser,
)

SPLITS = [
    # (text, reasoning, content)
    ("<think>Let me see.</think>The answer is 4.", "Let me see.", "The answer is 4."),
    ("Let me see.</think>The answer is 4.", "Let me see.", "The answer is 4."),  # R1 style
    ("\n<think>\nhm\n</think>\n\nFour.", "\nhm\n", "\n\nFour."),
    ("<think>Still thinking when cut", "Still thinking when cut", None),
    ("No markers at all", "No markers at all", None),
    ("<think></think>Only content", None, "Only content"),
    ("<think>Only reasoning</think>", "Only reasoning", None),
    ("<thi", None, None),
    ("", None, None),
    ("a</think>b</think>c", "a", "b</think>c"),
]


@pytest.mark.parametrize("text, reasoning, content", SPLITS)
def test_split(text, reasoning, content):
    assert DeepSeekR1ReasoningParser().split(text) == (reasoning, content)


def test_qwen3_follows_enable_thinking():
    assert Qwen3ReasoningParser().thinks(None) and Qwen3ReasoningParser().thinks({})
    assert not Qwen3ReasoningParser().thinks({"enable_thinking": False})
    assert DeepSeekR1ReasoningParser().thinks({"enable_thinking": False})
    with pytest.raises(ValueError, match="deepseek_r1"):
        make_reasoning_parser("nope")


def _replay(fmt: ChatAnswerFormat, text: str, step: int, finish: str = "stop"):
    stream = ChatAnswerStream(fmt)
    reasoning, content, calls, finishes = "", "", [], []
    ends = list(range(step, len(text), step))
    for i, end in enumerate(ends + [len(text)]):
        delta = stream.feed(text[:end], finish if i == len(ends) else None)
        reasoning += delta.reasoning
        content += delta.content
        calls += [(name, args) for _, _, name, args in delta.calls]
        finishes.append(delta.finish_reason)
    assert all(f is None for f in finishes[:-1])
    return reasoning, content, calls, finishes[-1]


@pytest.mark.parametrize("step", [1, 2, 5, 1000])
def test_stream_adds_up_to_the_split(step):
    fmt = ChatAnswerFormat(ToolChoice("none"), DeepSeekR1ReasoningParser())
    for text, reasoning, content in SPLITS:
        got = _replay(fmt, text, step)
        assert got[:2] == (reasoning or "", content or ""), text
        final = fmt.final(text, "stop")
        assert (final.reasoning, final.content) == (reasoning, content)


@pytest.mark.parametrize("step", [1, 3, 1000])
def test_tool_calls_after_reasoning(step):
    fmt = ChatAnswerFormat(ToolChoice("auto", parser=HermesToolParser()),
                           Qwen3ReasoningParser())
    call = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    # A call inside the reasoning is reasoning; the one after it is a call.
    text = f"<think>maybe {call}?</think>Sure. {call}"
    final = fmt.final(text, "stop")
    assert final.reasoning == f"maybe {call}?" and final.content == "Sure. "
    assert [(c.name, c.arguments) for c in final.calls] == [("get_weather", '{"city": "Paris"}')]
    assert final.finish_reason == "tool_calls"
    assert _replay(fmt, text, step) == (final.reasoning, "Sure. ",
                                        [("get_weather", '{"city": "Paris"}')], "tool_calls")
    hidden = ChatAnswerFormat(fmt.tools, fmt.reasoner, include_reasoning=False)
    assert hidden.final(text, "stop").reasoning is None
    assert _replay(hidden, text, step)[0] == ""


# ---- over HTTP --------------------------------------------------------------------------------

MESSAGES = [{"role": "user", "content": "How much is 2 + 2?"}]


@pytest.fixture(scope="module")
def client(thinking_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=thinking_server.base_url, api_key="none", max_retries=0)


def _end_id(url: str) -> int:
    ids = httpx.post(url + "/tokenize", json={"prompt": "</think>", "add_special_tokens": False},
                     timeout=30).json()["tokens"]
    assert len(ids) == 1
    return ids[0]


def _chat(client, stream=False, **kw):
    kw.setdefault("messages", MESSAGES)
    return client.chat.completions.create(model="tiny", temperature=0, stream=stream, **kw)


def _raw_completion(url: str, messages, max_tokens: int, **extra) -> str:
    """The same prompt through /v1/completions, which never splits reasoning."""
    ids = httpx.post(url + "/tokenize", json={"messages": messages}, timeout=30).json()["tokens"]
    body = {"model": "tiny", "prompt": ids, "max_tokens": max_tokens, "temperature": 0, **extra}
    return httpx.post(url + "/v1/completions", json=body, timeout=60).json()["choices"][0]["text"]


def test_reasoning_comes_apart_from_the_content(client, thinking_server):
    url = thinking_server.url
    # Never closing its reasoning, the random model's whole answer is reasoning.
    raw = _raw_completion(url, MESSAGES, 8)
    resp = _chat(client, max_tokens=8)
    message = resp.choices[0].message
    assert message.reasoning == raw and message.content is None
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning", None) or ""
                        for c in _chat(client, stream=True, max_tokens=8) if c.choices)
    assert reasoning == raw
    # include_reasoning false leaves it out; enable_thinking false makes it all content.
    hidden = _chat(client, max_tokens=8, extra_body={"include_reasoning": False})
    assert hidden.choices[0].message.reasoning is None
    off = _chat(client, max_tokens=8, extra_body={"chat_template_kwargs": {
        "enable_thinking": False}})
    assert off.choices[0].message.content == raw and off.choices[0].message.reasoning is None


def test_constrained_answer_after_the_reasoning(client, thinking_server):
    """</think> forced first by a bias: the reasoning is empty, and the answer after it obeys
    the choice (the engine's grammar waited for </think>) and is the content."""
    end = _end_id(thinking_server.url)
    kw = dict(max_tokens=16, logit_bias={str(end): 100},
              extra_body={"structured_outputs": {"choice": ["yes", "no"]}})
    message = _chat(client, **kw).choices[0].message
    assert message.reasoning is None and message.content in ("yes", "no")
    chunks = [c.choices[0] for c in _chat(client, stream=True, **kw) if c.choices]
    assert "".join(c.delta.content or "" for c in chunks) == message.content
    assert chunks[-1].finish_reason == "stop"
    # A named tool call after the reasoning: its arguments follow the tool's schema.
    tools = [{"type": "function", "function": {"name": "answer", "parameters": {
        "type": "object", "properties": {"value": {"enum": [3, 4, 5]}}, "required": ["value"],
        "additionalProperties": False}}}]
    named = _chat(client, max_tokens=32, logit_bias={str(end): 100}, tools=tools,
                  tool_choice={"type": "function", "function": {"name": "answer"}},
                  extra_body={"structured_outputs": {"disable_any_whitespace": True}})
    (call,) = named.choices[0].message.tool_calls
    assert call.function.name == "answer"
    assert json.loads(call.function.arguments)["value"] in (3, 4, 5)
