"""Tool calling over HTTP with the OpenAI client: tools reach the chat template, named and
"required" calls are generated under their schemas, "auto" calls are parsed (hermes, and
qwen3_coder on a second server) from what the model wrote — here forced with a regex, since a
random tiny model never writes a call by itself — and streams add up to the full answers."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest

from server_process import ServerProcess, serve_for_fixture

# The tiny vocabulary's ChatML-like template, plus a system turn listing the tools and the
# earlier calls written back in hermes format (arguments as the template's mapping).
TOOL_TEMPLATE = (
    "{% if tools %}<|bos|>system\nTools:{% for t in tools %} {{ t.function.name }}"
    "{{ t.function.parameters | tojson }}{% endfor %}<|eos|>\n{% endif %}"
    "{% for m in messages %}<|bos|>{{ m.role }}\n{{ m.content }}"
    "{% for c in m.tool_calls or [] %}<tool_call>{\"name\": \"{{ c.function.name }}\", "
    "\"arguments\": {{ c.function.arguments | tojson }}}</tool_call>{% endfor %}<|eos|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|bos|>assistant\n{% endif %}"
)

# Enums keep the constrained answers short on a random model: they always close.
WEATHER_PARAMS = {
    "type": "object",
    "properties": {"city": {"enum": ["Paris", "Lyon"]}, "days": {"enum": [1, 2, 3]}},
    "required": ["city", "days"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather forecast",
                                      "parameters": WEATHER_PARAMS}},
    {"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"zone": {"enum": ["CET", "UTC"]}},
        "required": ["zone"], "additionalProperties": False}}},
]
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]
FORCED_CALL = ('Sure. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Lyon", '
               '"days": 2}}\n</tool_call>')


def _serve_tools(model: Path, tmp_path_factory: pytest.TempPathFactory, parser: str):
    template = tmp_path_factory.mktemp("tools") / "template.jinja"
    template.write_text(TOOL_TEMPLATE)
    yield from serve_for_fixture(str(model), "--max-model-len", "512", "--served-model-name",
                                 "tiny", "--dtype", "float32", "--device", "cpu",
                                 "--chat-template", str(template), "--enable-auto-tool-choice",
                                 "--tool-call-parser", parser, "--enable-prompt-tokens-details")


@pytest.fixture(scope="module")
def tool_server(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory):
    yield from _serve_tools(tiny_llama, tmp_path_factory, "hermes")


@pytest.fixture(scope="module")
def client(tool_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=tool_server.base_url, api_key="none", max_retries=0)


@pytest.fixture(scope="module")
def qwen3_coder_client(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory):
    for proc in _serve_tools(tiny_llama, tmp_path_factory, "qwen3_coder"):
        yield openai.OpenAI(base_url=proc.base_url, api_key="none", max_retries=0)


# A random model fills free JSON whitespace forever: the tool-choice schemas take
# structured_outputs' options (vLLM's extra), so ask for compact JSON.
COMPACT = {"structured_outputs": {"disable_any_whitespace": True}}


def _chat(client, stream=False, **kw):
    kw.setdefault("messages", MESSAGES)
    kw.setdefault("max_tokens", 64)
    return client.chat.completions.create(model="tiny", temperature=0, stream=stream, **kw)


def _forcing(text: str) -> dict:
    """structured_outputs that make the model write exactly `text`."""
    return {"structured_outputs": {"regex": text.replace(".", r"\.").replace("{", r"\{")
                                   .replace("}", r"\}")}}


def _collect_stream(chunks) -> tuple[str, list[dict], str]:
    """(content, calls, finish_reason) of a one-choice stream, checking OpenAI's framing."""
    content, calls, finish = "", {}, None
    for chunk in chunks:
        for choice in chunk.choices:
            delta = choice.delta
            content += delta.content or ""
            for piece in delta.tool_calls or []:
                call = calls.get(piece.index)
                if call is None:  # the first piece of a call names it
                    assert piece.id and piece.type == "function" and piece.function.name
                    call = calls[piece.index] = {"id": piece.id, "name": piece.function.name,
                                                 "arguments": ""}
                else:
                    assert piece.id is None and piece.function.name is None
                call["arguments"] += piece.function.arguments or ""
            if choice.finish_reason is not None:
                assert finish is None
                finish = choice.finish_reason
    return content, [calls[i] for i in sorted(calls)], finish


def test_tools_reach_the_chat_template(tool_server):
    history = MESSAGES + [
        {"role": "assistant", "content": "",
         "tool_calls": [{"id": "call_1", "type": "function",
                         "function": {"name": "get_weather",
                                      "arguments": '{"city": "Paris", "days": 1}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    body = {"model": "tiny", "messages": history, "tools": TOOLS}
    resp = httpx.post(tool_server.url + "/tokenize", json=body, timeout=30)
    assert resp.status_code == 200, resp.text
    text = httpx.post(tool_server.url + "/detokenize", timeout=30,
                      json={"model": "tiny", "tokens": resp.json()["tokens"]}).json()["prompt"]
    assert "Tools: get_weather" in text and '"enum": ["Paris", "Lyon"]' in text
    # The earlier call's arguments reach the template as a mapping, not as quoted JSON text.
    assert ('<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "days": 1}}'
            "</tool_call>") in text
    assert "tool\nsunny" in text
    without = httpx.post(tool_server.url + "/tokenize", timeout=30,
                         json={"model": "tiny", "messages": MESSAGES}).json()
    assert without["count"] < resp.json()["count"]


def test_named_tool_choice(client):
    named = {"type": "function", "function": {"name": "get_weather"}}
    resp = _chat(client, tools=TOOLS, tool_choice=named, extra_body=COMPACT)
    choice = resp.choices[0]
    assert choice.finish_reason == "stop"  # OpenAI keeps "stop" for a named call
    assert choice.message.content == ""
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("chatcmpl-tool-")
    assert call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    assert args["city"] in ("Paris", "Lyon") and args["days"] in (1, 2, 3)
    assert set(args) == {"city", "days"}
    # The stream sends the same arguments, piece by piece after a naming piece.
    content, calls, finish = _collect_stream(_chat(client, stream=True, tools=TOOLS,
                                                   tool_choice=named, extra_body=COMPACT))
    assert content == "" and finish == "stop"
    assert [(c["name"], c["arguments"]) for c in calls] == [("get_weather",
                                                             call.function.arguments)]


@pytest.mark.parametrize("parallel", [True, False])
def test_required_tool_choice(client, parallel):
    resp = _chat(client, tools=TOOLS, tool_choice="required", parallel_tool_calls=parallel,
                 max_tokens=200, extra_body=COMPACT)
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    calls = choice.message.tool_calls
    assert calls and (parallel or len(calls) == 1)
    for call in calls:
        args = json.loads(call.function.arguments)
        if call.function.name == "get_weather":
            assert set(args) == {"city", "days"}
        else:
            assert call.function.name == "get_time" and args["zone"] in ("CET", "UTC")
    content, streamed, finish = _collect_stream(
        _chat(client, stream=True, tools=TOOLS, tool_choice="required",
              parallel_tool_calls=parallel, max_tokens=200, extra_body=COMPACT))
    assert content == "" and finish == "tool_calls"
    assert [(c["name"], c["arguments"]) for c in streamed] == [
        (c.function.name, c.function.arguments) for c in calls]


def test_auto_tool_choice_parses_the_models_calls(client):
    forced = _forcing(FORCED_CALL)
    resp = _chat(client, tools=TOOLS, extra_body=forced, max_tokens=200)
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Sure. "
    (call,) = choice.message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == (
        "get_weather", {"city": "Lyon", "days": 2})
    content, calls, finish = _collect_stream(_chat(client, stream=True, tools=TOOLS,
                                                   extra_body=forced, max_tokens=200))
    assert (content, finish) == ("Sure. ", "tool_calls")
    assert [(c["name"], c["arguments"]) for c in calls] == [
        ("get_weather", call.function.arguments)]
    # Without a call in the answer, "auto" answers with the text "none" gives (hermes keeps
    # special tokens in the text: its markers may be special).
    plain = _chat(client, tools=TOOLS, max_tokens=8)
    assert not plain.choices[0].message.tool_calls
    assert plain.choices[0].finish_reason == "length"
    none = _chat(client, tools=TOOLS, max_tokens=8, tool_choice="none",
                 extra_body={"skip_special_tokens": False})
    assert plain.choices[0].message.content == none.choices[0].message.content


def test_qwen3_coder_calls_are_typed_by_the_requests_tools(qwen3_coder_client):
    """The parser is made per request with its tools: `days` (an enum of integers) is a
    number in the arguments, though the model wrote text."""
    forced = _forcing("Sure.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nLyon\n"
                      "</parameter>\n<parameter=days>\n2\n</parameter>\n</function>\n"
                      "</tool_call>")
    resp = _chat(qwen3_coder_client, tools=TOOLS, extra_body=forced, max_tokens=200)
    choice = resp.choices[0]
    assert (choice.finish_reason, choice.message.content) == ("tool_calls", "Sure.")
    (call,) = choice.message.tool_calls
    assert call.id.startswith("chatcmpl-tool-")
    assert (call.function.name, json.loads(call.function.arguments)) == (
        "get_weather", {"city": "Lyon", "days": 2})
    content, calls, finish = _collect_stream(_chat(qwen3_coder_client, stream=True, tools=TOOLS,
                                                   extra_body=forced, max_tokens=200))
    assert (content, finish) == ("Sure.", "tool_calls")
    assert [(c["name"], c["arguments"]) for c in calls] == [
        ("get_weather", call.function.arguments)]


def test_tool_choice_none_answers_with_content(client):
    resp = _chat(client, tools=TOOLS, tool_choice="none", max_tokens=8)
    choice = resp.choices[0]
    assert not choice.message.tool_calls and choice.finish_reason == "length"
    assert choice.message.content


def test_auto_needs_the_server_flags(server):
    """The shared server runs without --enable-auto-tool-choice: "auto" (the default with tools)
    is refused, while "none", "required" and named choices work."""
    url = server.url + "/v1/chat/completions"
    base = {"model": "tiny", "messages": MESSAGES, "max_tokens": 4, "tools": TOOLS}
    resp = httpx.post(url, json=base, timeout=60)
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert "--enable-auto-tool-choice" in err["message"] and err["param"] == "tool_choice"
    ok = httpx.post(url, json=dict(base, tool_choice="none"), timeout=60)
    assert ok.status_code == 200, ok.text
    named = httpx.post(url, timeout=60, json=dict(
        base, max_tokens=64, tool_choice={"type": "function", "function": {"name": "get_time"}},
        structured_outputs={"disable_any_whitespace": True}))
    assert named.status_code == 200, named.text
    assert json.loads(named.json()["choices"][0]["message"]["tool_calls"][0]["function"][
        "arguments"])["zone"] in ("CET", "UTC")


@pytest.mark.parametrize("extra, message", [
    ({"tools": []}, "empty array"),
    ({"tool_choice": "required"}, "needs tools"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "not in tools"),
    ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}},
     "not both"),
])
def test_bad_tool_requests_get_400(tool_server, extra, message):
    resp = httpx.post(tool_server.url + "/v1/chat/completions", timeout=30,
                      json={"model": "tiny", "messages": MESSAGES, **extra})
    assert resp.status_code == 400, resp.text
    assert message in resp.json()["error"]["message"]


def test_auto_tool_choice_flag_needs_a_parser(tiny_llama):
    with pytest.raises(RuntimeError, match="--tool-call-parser"):
        ServerProcess(str(tiny_llama), "--device", "cpu", "--enable-auto-tool-choice",
                      startup_timeout=60)


def test_usage_counts_cached_prompt_tokens(client):
    """--enable-prompt-tokens-details (on this server): the prefix cache's share of the prompt."""
    messages = [{"role": "user", "content": "Count the cached tokens of this prompt. " * 6}]
    first = _chat(client, messages=messages, max_tokens=2).usage
    again = _chat(client, messages=messages, max_tokens=2).usage
    assert first.prompt_tokens_details.cached_tokens == 0
    cached = again.prompt_tokens_details.cached_tokens
    assert 0 < cached <= again.prompt_tokens and cached % 16 == 0  # whole 16-token blocks
    streamed = list(client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=2, stream=True,
        stream_options={"include_usage": True}))
    assert streamed[-1].usage.prompt_tokens_details.cached_tokens == cached
    completion = client.completions.create(model="tiny", prompt="Cached? " * 20, max_tokens=1)
    assert completion.usage.prompt_tokens_details.cached_tokens == 0
    completion = client.completions.create(model="tiny", prompt="Cached? " * 20, max_tokens=1)
    assert completion.usage.prompt_tokens_details.cached_tokens > 0
