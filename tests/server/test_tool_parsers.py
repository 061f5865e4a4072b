"""Tool-call parsing without a server: the parsers' final answers, the stream's deltas against
them at every split of the text, and the request validation of tools / tool_choice."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from pagedllm.entrypoints.openai.protocol import ChatCompletionRequest
from pagedllm.entrypoints.openai.tool_calls import ToolCallStream, ToolChoice
from pagedllm.entrypoints.openai.tool_parsers import (
    HermesToolParser,
    Llama3JsonToolParser,
    ParsedToolCall,
    make_tool_parser,
)
from pagedllm.text_markers import marker_prefix_overlap

WEATHER = ParsedToolCall("get_weather", '{"city": "Paris"}')
TIME = ParsedToolCall("get_time", '{"zone": "CET", "exact": true}')

HERMES_CASES = [
    # (model text, content, calls)
    ("Just text, no calls.", "Just text, no calls.", []),
    ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
     None, [WEATHER]),
    ('Let me check. <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}'
     '</tool_call>\n<tool_call>{"name": "get_time", "arguments": {"zone": "CET", "exact": true}}'
     "</tool_call>", "Let me check. ", [WEATHER, TIME]),
    # A last call left open still counts when its JSON is whole.
    ('<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}', None, [WEATHER]),
    # Arguments written as JSON text are decoded, not encoded twice.
    ('<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}</tool_call>',
     None, [WEATHER]),
    # Anything malformed: the whole answer is content.
    ('<tool_call>{"name": "get_weather", "arguments": {"city": </tool_call>',
     '<tool_call>{"name": "get_weather", "arguments": {"city": </tool_call>', []),
    ('<tool_call>{"arguments": {}}</tool_call>', '<tool_call>{"arguments": {}}</tool_call>', []),
    ('<tool_call>{"name": "f", "arguments": [1]}</tool_call>',
     '<tool_call>{"name": "f", "arguments": [1]}</tool_call>', []),
    ("Ends with a partial <tool_ca", "Ends with a partial <tool_ca", []),
    ("Ünïcödé <tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Zürich\"}}"
     "</tool_call>", "Ünïcödé ", [ParsedToolCall("get_weather", '{"city": "Zürich"}')]),
]

LLAMA_CASES = [
    ("Paris is sunny today.", "Paris is sunny today.", []),
    ('{"name": "get_weather", "parameters": {"city": "Paris"}}', None, [WEATHER]),
    ('<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}', None, [WEATHER]),
    ('  {"name": "get_weather", "parameters": {"city": "Paris"}}; '
     '{"name": "get_time", "arguments": {"zone": "CET", "exact": true}}', None, [WEATHER, TIME]),
    ('Sure. <|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}', "Sure. ",
     [WEATHER]),
    # Text after the calls is dropped (vLLM drops the text around JSON calls).
    ('{"name": "get_weather", "parameters": {"city": "Paris"}} and then some prose', None,
     [WEATHER]),
    ('{"not": "a call"}', '{"not": "a call"}', []),
    ("{ unclosed", "{ unclosed", []),
]


@pytest.mark.parametrize("text, content, calls", HERMES_CASES)
def test_hermes_parse(text, content, calls):
    got = HermesToolParser().parse(text)
    assert (got.content, got.calls) == (content, calls)


@pytest.mark.parametrize("text, content, calls", LLAMA_CASES)
def test_llama3_json_parse(text, content, calls):
    got = Llama3JsonToolParser().parse(text)
    assert (got.content, got.calls) == (content, calls)


def test_marker_prefix_overlap():
    assert marker_prefix_overlap("abc <tool_", "<tool_call>") == 6
    assert marker_prefix_overlap("abc <", "<tool_call>") == 1
    assert marker_prefix_overlap("abc", "<tool_call>") == 0
    assert marker_prefix_overlap("<tool_call>", "<tool_call>") == 0  # whole marker: not a prefix


def test_unknown_parser_named():
    with pytest.raises(ValueError, match="hermes"):
        make_tool_parser("nope")


def _replay(choice: ToolChoice, text: str, step: int) -> tuple[str, list[dict], bool]:
    """Feed `text` in pieces of `step` characters, then finish: (content, calls, called)."""
    stream = ToolCallStream(choice)
    content = ""
    calls: dict[int, dict] = {}

    def take(delta) -> None:
        nonlocal content
        content += delta.content
        for index, call_id, name, arguments in delta.calls:
            call = calls.setdefault(index, {"id": None, "name": None, "arguments": ""})
            if call_id is not None:
                assert call["id"] is None, "a call's id is sent once"
                call["id"] = call_id
            if name is not None:
                call["name"] = name
            call["arguments"] += arguments

    for end in range(step, len(text), step):
        take(stream.feed(text[:end]))
    take(stream.finish(text))
    assert sorted(calls) == list(range(len(calls)))
    return content, [calls[i] for i in sorted(calls)], stream.called


@pytest.mark.parametrize("parser, cases", [(HermesToolParser(), HERMES_CASES),
                                           (Llama3JsonToolParser(), LLAMA_CASES)])
@pytest.mark.parametrize("step", [1, 3, 7, 1000])
def test_auto_stream_adds_up_to_the_full_answer(parser, cases, step):
    choice = ToolChoice("auto", parser=parser)
    for text, content, calls in cases:
        got_content, got_calls, called = _replay(choice, text, step)
        assert got_content == (content or ""), text
        assert [(c["name"], c["arguments"]) for c in got_calls] == [
            (c.name, c.arguments) for c in calls], text
        assert all(c["id"].startswith("chatcmpl-tool-") for c in got_calls)
        assert called == bool(calls)
        assert choice.finish_reason("stop", called) == ("tool_calls" if calls else "stop")
        assert choice.finish_reason("length", called) == ("tool_calls" if calls else "length")


def test_auto_stream_holds_back_only_what_may_be_a_marker():
    stream = ToolCallStream(ToolChoice("auto", parser=HermesToolParser()))
    assert stream.feed("Hello <tool").content == "Hello "
    assert stream.feed("Hello <tools are fun").content == "<tools are fun"
    news = stream.feed('Hello <tools are fun <tool_call>{"name": "f", "arguments": {}}')
    assert news.content == " " and news.calls == []  # the call is not closed yet
    news = stream.feed('Hello <tools are fun <tool_call>{"name": "f", "arguments": {}}</tool_call>')
    assert news.content == "" and [c[2:] for c in news.calls] == [("f", "{}")]


def test_named_choice_streams_arguments_as_they_grow():
    choice = ToolChoice("named", named="get_weather")
    text = '{"city": "Paris"}'
    stream = ToolCallStream(choice)
    first = stream.feed(text[:3])
    assert first.calls[0][1:3] != (None, None) and first.calls[0][2] == "get_weather"
    assert [c[3] for c in first.calls] == ["", text[:3]]
    content, calls, called = _replay(choice, text, 2)
    assert content == "" and called
    assert [(c["name"], c["arguments"]) for c in calls] == [("get_weather", text)]
    full = choice.parse(text)
    assert full.content == "" and full.calls == [ParsedToolCall("get_weather", text)]
    assert choice.finish_reason("stop", True) == "stop"  # OpenAI: a named call keeps "stop"


@pytest.mark.parametrize("parallel", [True, False])
def test_required_choice_parses_the_array(parallel):
    choice = ToolChoice("required", parallel_tool_calls=parallel)
    text = ('[{"name": "get_weather", "parameters": {"city": "Paris"}}, '
            '{"name": "get_time", "parameters": {"zone": "CET", "exact": true}}]')
    expected = [WEATHER, TIME] if parallel else [WEATHER]
    assert choice.parse(text).calls == expected
    for step in (1, 5, 1000):
        content, calls, _ = _replay(choice, text, step)
        assert content == ""
        assert [ParsedToolCall(c["name"], c["arguments"]) for c in calls] == expected
    assert choice.finish_reason("stop", True) == "tool_calls"
    assert choice.finish_reason("length", True) == "length"
    # Cut short: the whole calls stay calls; no whole call leaves the text as content.
    assert choice.parse(text[:-30]).calls == [WEATHER]
    assert choice.parse('[{"name": "get_we').calls == []
    assert choice.parse('[{"name": "get_we').content == '[{"name": "get_we'


# ---- request validation ---------------------------------------------------------------------

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time"}},
]
MESSAGES = [{"role": "user", "content": "Weather in Paris?"}]


def _request(**kw) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"messages": MESSAGES, **kw})


def test_tool_choice_defaults_and_schemas():
    assert _request().tool_choice_mode == "none"
    assert _request(tools=TOOLS).tool_choice_mode == "auto"
    named = _request(tools=TOOLS, tool_choice={"type": "function",
                                               "function": {"name": "get_weather"}})
    assert named.tool_choice_mode == "named"
    assert named.structured_constraint == {"json": TOOLS[0]["function"]["parameters"]}
    no_params = _request(tools=TOOLS, tool_choice={"type": "function",
                                                   "function": {"name": "get_time"}})
    assert no_params.structured_constraint == {"json": {"type": "object", "properties": {}}}
    required = _request(tools=TOOLS, tool_choice="required", parallel_tool_calls=False)
    schema = required.structured_constraint["json"]
    assert schema["type"] == "array" and schema["minItems"] == 1 and schema["maxItems"] == 1
    assert [s["properties"]["name"]["enum"] for s in schema["items"]["anyOf"]] == [
        ["get_weather"], ["get_time"]]
    assert "maxItems" not in _request(tools=TOOLS, tool_choice="required"
                                      ).structured_constraint["json"]
    # "auto" and "none" leave response_format alone.
    fmt = _request(tools=TOOLS, response_format={"type": "json_object"})
    assert fmt.structured_constraint == {"json_object": True}
    assert _request(tools=TOOLS).template_tools()[1] == {
        "type": "function", "function": {"name": "get_time"}}


@pytest.mark.parametrize("body, message", [
    (dict(tools=[]), "must not be an empty array"),
    (dict(tool_choice="required"), "tool_choice needs tools"),
    (dict(tool_choice={"type": "function", "function": {"name": "get_weather"}}),
     "tool_choice needs tools"),
    (dict(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}}),
     "not in tools"),
    (dict(tools=TOOLS, tool_choice="sometimes"), "tool_choice"),
    (dict(tools=TOOLS, tool_choice="required", response_format={"type": "json_object"}),
     "not both"),
    (dict(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_time"}},
          structured_outputs={"regex": "a+"}), "not both"),
    (dict(tools=[{"type": "function", "function": {"name": ""}}]), "name"),
    (dict(tools=[{"type": "retrieval", "function": {"name": "x"}}]), "function"),
])
def test_bad_tool_requests(body, message):
    with pytest.raises(ValidationError, match=message):
        _request(**body)


def test_history_tool_calls_reach_templates_as_mappings():
    req = _request(messages=[
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_2", "type": "function",
             "function": {"name": "get_time", "arguments": "not json"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ])
    assistant, tool = req.messages[1].template_dict(), req.messages[2].template_dict()
    assert assistant["content"] == ""
    assert assistant["tool_calls"] == [
        {"type": "function", "id": "call_1",
         "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
        {"type": "function", "id": "call_2", "function": {"name": "get_time", "arguments": {}}},
    ]
    assert tool == {"role": "tool", "content": "sunny", "tool_call_id": "call_1"}
    assert json.dumps(req.messages[0].template_dict()) == json.dumps(
        {"role": "user", "content": "Weather?"})
