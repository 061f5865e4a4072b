"""Tool-call parsing without a server: the parsers' final answers, the stream's deltas against
them at every split of the text, and the request validation of tools / tool_choice."""

from __future__ import annotations

import json
import re

import pytest
from pydantic import ValidationError

from pagedllm.entrypoints.openai.protocol import ChatCompletionRequest
from pagedllm.entrypoints.openai.tool_calls import ToolCallStream, ToolChoice
from pagedllm.entrypoints.openai.tool_parsers import (
    TOOL_PARSERS,
    DeepSeekV3ToolParser,
    HermesToolParser,
    Llama3JsonToolParser,
    MistralToolParser,
    ParsedToolCall,
    PythonicToolParser,
    Qwen3CoderToolParser,
    make_tool_parser,
    tool_call_ids,
)
from pagedllm.entrypoints.openai.tool_parsers.qwen3_coder import typed_value
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


MISTRAL_CASES = [
    ("Sunny in Paris.\n\n", "Sunny in Paris.\n\n", []),
    # Tokenizers before v11: a JSON array of calls.
    ('[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}, '
     '{"name": "get_time", "arguments": {"zone": "CET", "exact": true}}]', None, [WEATHER, TIME]),
    # ... or one call object; text after the JSON is dropped, arguments as text are decoded.
    ('[TOOL_CALLS] {"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"} </s>', None,
     [WEATHER]),
    # v11 on: name[ARGS]{...} after each marker; content loses the blanks before the calls.
    ('Let me check.\n[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_time[ARGS]'
     '{"zone": "CET", "exact": true}', "Let me check.", [WEATHER, TIME]),
    ('\n [TOOL_CALLS]get_weather{"city": "Paris"} and then some prose', None, [WEATHER]),
    ('Ünïcödé [TOOL_CALLS]get_weather[ARGS]{"city": "Zürich"}', "Ünïcödé",
     [ParsedToolCall("get_weather", '{"city": "Zürich"}')]),
    # Malformed, cut short or empty: the whole answer is content.
    ('[TOOL_CALLS]get_weather[ARGS]{"city": ', '[TOOL_CALLS]get_weather[ARGS]{"city": ', []),
    ("[TOOL_CALLS]get_weather", "[TOOL_CALLS]get_weather", []),
    ("[TOOL_CALLS][ARGS]{}", "[TOOL_CALLS][ARGS]{}", []),
    ('[TOOL_CALLS]f[ARGS]["a"]', '[TOOL_CALLS]f[ARGS]["a"]', []),
    ('[TOOL_CALLS][{"arguments": {}}]', '[TOOL_CALLS][{"arguments": {}}]', []),
    ("[TOOL_CALLS][]", "[TOOL_CALLS][]", []),
    ("Ends with a partial [TOOL_CA", "Ends with a partial [TOOL_CA", []),
]

PYTHONIC_CASES = [
    ("Paris is sunny.", "Paris is sunny.", []),
    ('[get_weather(city="Paris"), get_time(zone="CET", exact=True)]', None, [WEATHER, TIME]),
    # JSON's names, Llama 4's wrapper and blanks around the list.
    ("\n<|python_start|>[get_time(zone='CET', exact=true)]<|python_end|>\n", None, [TIME]),
    ('[search.web(query="Zürich", tags=("a", "b"), limits={"max": -3, "min": 1.5}, page=None)]',
     None, [ParsedToolCall("search.web", '{"query": "Zürich", "tags": ["a", "b"], '
                                         '"limits": {"max": -3, "min": 1.5}, "page": null}')]),
    ('[get_weather(city="a) b")]', None, [ParsedToolCall("get_weather", '{"city": "a) b"}')]),
    # Anything but a list of calls with literal keyword arguments is content.
    ('Sure: [get_weather(city="Paris")]', 'Sure: [get_weather(city="Paris")]', []),
    ('[get_weather("Paris")]', '[get_weather("Paris")]', []),
    ("[get_weather(city=lookup())]", "[get_weather(city=lookup())]", []),
    ("[get_weather(city=paris)]", "[get_weather(city=paris)]", []),
    ('[get_weather(city=f"{x}")]', '[get_weather(city=f"{x}")]', []),
    ("[1, 2] is a list", "[1, 2] is a list", []),
    ("[]", "[]", []),
    ('[get_weather(city="Par', '[get_weather(city="Par', []),
    ("<|python_sta", "<|python_sta", []),
]

# Qwen3-Coder's values are text: the request's tools type them.
TOOL_SCHEMAS = {
    "get_weather": {"type": "object", "properties": {"city": {"type": "string"}}},
    "get_time": {"type": "object", "properties": {"zone": {"enum": ["CET", "UTC"]},
                                                  "exact": {"type": "boolean"}}},
}
QWEN3_WEATHER = ("<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
                 "</function>\n</tool_call>")
QWEN3_CODER_CASES = [
    ("Paris is sunny.", "Paris is sunny.", []),
    (QWEN3_WEATHER, None, [WEATHER]),
    ("I'll check.\n\n" + QWEN3_WEATHER + "\n<tool_call>\n<function=get_time>\n<parameter=zone>\n"
     "CET\n</parameter>\n<parameter=exact>\ntrue\n</parameter>\n</function>\n</tool_call>",
     "I'll check.", [WEATHER, TIME]),
    # <tool_call>, </tool_call> and a </parameter> before the next tag may be missing.
    ("<function=get_time>\n<parameter=zone>\nCET\n<parameter=exact>\n1\n</parameter>\n"
     "</function>", None, [TIME]),
    # Values keep their inner lines; parameters the schema does not know stay text.
    ("<tool_call>\n<function=run>\n<parameter=code>\ndef f():\n    return 1\n</parameter>\n"
     "<parameter=n>\n3\n</parameter>\n</function>\n</tool_call>", None,
     [ParsedToolCall("run", '{"code": "def f():\\n    return 1", "n": "3"}')]),
    ("Ünïcödé <tool_call>\n<function=get_weather>\n<parameter=city>\nZürich\n</parameter>\n"
     "</function>\n</tool_call>", "Ünïcödé", [ParsedToolCall("get_weather", '{"city": "Zürich"}')]),
    # Cut short, malformed, or not this format: content.
    ("<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n",
     "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n", []),
    ("<tool_call>\n<function=>\n</function>\n</tool_call>",
     "<tool_call>\n<function=>\n</function>\n</tool_call>", []),
    ('<tool_call>{"name": "get_weather", "arguments": {}}</tool_call>',
     '<tool_call>{"name": "get_weather", "arguments": {}}</tool_call>', []),
    ("Ends with a partial <tool_ca", "Ends with a partial <tool_ca", []),
    ("Ends with a partial <functio", "Ends with a partial <functio", []),
]

DS_CALLS, DS_CALLS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"


def _ds_call(name: str, arguments: str, kind: str = "function") -> str:
    return (f"<｜tool▁call▁begin｜>{kind}<｜tool▁sep｜>{name}\n```json\n{arguments}\n```"
            "<｜tool▁call▁end｜>")


DEEPSEEK_V3_CASES = [
    ("Paris is sunny.", "Paris is sunny.", []),
    (DS_CALLS + _ds_call("get_weather", '{"city": "Paris"}') + DS_CALLS_END, None, [WEATHER]),
    ("Let me check.\n" + DS_CALLS + _ds_call("get_weather", '{"city": "Paris"}') + "\n"
     + _ds_call("get_time", '{"zone": "CET", "exact": true}') + DS_CALLS_END, "Let me check.",
     [WEATHER, TIME]),
    ("Ünïcödé" + DS_CALLS + _ds_call("get_weather", '{"city": "Zürich"}'), "Ünïcödé",
     [ParsedToolCall("get_weather", '{"city": "Zürich"}')]),
    # As in vLLM the JSON is one line; other kinds, cut-short calls, bad JSON: content.
    (DS_CALLS + _ds_call("get_weather", '{\n"city": "Paris"\n}'),
     DS_CALLS + _ds_call("get_weather", '{\n"city": "Paris"\n}'), []),
    (DS_CALLS + _ds_call("get_weather", '{"city": "Paris"}', kind="tool"),
     DS_CALLS + _ds_call("get_weather", '{"city": "Paris"}', kind="tool"), []),
    (DS_CALLS + _ds_call("get_weather", '{"city": "Paris"}')[:-8],
     DS_CALLS + _ds_call("get_weather", '{"city": "Paris"}')[:-8], []),
    (DS_CALLS + _ds_call("get_weather", "Paris"), DS_CALLS + _ds_call("get_weather", "Paris"), []),
    (DS_CALLS + DS_CALLS_END, DS_CALLS + DS_CALLS_END, []),
    ("Ends with a partial <｜tool▁calls", "Ends with a partial <｜tool▁calls", []),
]

# Every parser with its table; the stream must add up to each answer.
PARSER_CASES = [
    (HermesToolParser(), HERMES_CASES),
    (Llama3JsonToolParser(), LLAMA_CASES),
    (MistralToolParser(), MISTRAL_CASES),
    (PythonicToolParser(), PYTHONIC_CASES),
    (Qwen3CoderToolParser(TOOL_SCHEMAS), QWEN3_CODER_CASES),
    (DeepSeekV3ToolParser(), DEEPSEEK_V3_CASES),
]
PARSE_CASES = [(parser, *case) for parser, cases in PARSER_CASES for case in cases]


@pytest.mark.parametrize("parser, text, content, calls", PARSE_CASES,
                         ids=[f"{p.name}-{i}" for i, (p, *_) in enumerate(PARSE_CASES)])
def test_parse(parser, text, content, calls):
    got = parser.parse(text)
    assert (got.content, got.calls) == (content, calls)


@pytest.mark.parametrize("parser, cases", PARSER_CASES, ids=[p.name for p, _ in PARSER_CASES])
def test_complete_calls_of_every_prefix_lead_the_final_calls(parser, cases):
    for text, _, calls in cases:
        ends = []
        for end in range(len(text) + 1):
            whole = parser.complete_calls(text[:end])
            assert whole == calls[:len(whole)], (text[:end], text)
            ends.append(parser.content_end(text[:end]))
        assert ends == sorted(ends) and all(0 <= e <= len(text) for e in ends), text


def test_pythonic_list_then_text_is_content():
    # Not in the stream table: a stream has sent the list's whole calls before the text came.
    parser = PythonicToolParser()
    for text in ('[get_weather(city="Paris")] and more', '[get_weather(city="Paris")]; x = 1'):
        assert parser.parse(text).calls == [] and parser.parse(text).content == text
        assert parser.complete_calls(text) == [WEATHER]


@pytest.mark.parametrize("text, schema, value", [
    ("5", {"type": "integer"}, 5),
    (" 5 ", {"type": "integer"}, 5),
    ("5", {"type": "string"}, "5"),
    ("5", {}, "5"),
    ("2.50", {"type": "number"}, 2.5),
    ("3.0", {"type": "number"}, 3),
    ("True", {"type": "boolean"}, True),
    ("0", {"type": "boolean"}, False),
    ("null", {"type": ["integer", "null"]}, None),
    ("7", {"type": ["integer", "null"]}, 7),
    ('{"a": [1]}', {"type": "object"}, {"a": [1]}),
    ("[1, 2]", {"type": "array"}, [1, 2]),
    ("[1, 2]", {"type": "string"}, "[1, 2]"),
    ("3", {"enum": [1, 2, 3]}, 3),
    ("4", {"anyOf": [{"type": "integer"}, {"type": "string"}]}, 4),
    ("four", {"anyOf": [{"type": "integer"}, {"type": "string"}]}, "four"),
    # Nothing the schema allows reads it: any JSON it is, else the text.
    ("yes", {"type": "boolean"}, "yes"),
    ("[1]", {"type": "integer"}, [1]),
    ("NaN", {"type": "number"}, "NaN"),
    ("1e999", {"type": "number"}, "1e999"),
])
def test_qwen3_coder_types_values_by_schema(text, schema, value):
    got = typed_value(text, schema)
    assert got == value and type(got) is type(value)


def test_qwen3_coder_without_tools_keeps_text():
    text = QWEN3_CODER_CASES[2][0]
    untyped = make_tool_parser("qwen3_coder").parse(text).calls
    assert untyped[1] == ParsedToolCall("get_time", '{"zone": "CET", "exact": "true"}')
    typed = make_tool_parser("qwen3_coder", TOOL_SCHEMAS).parse(text).calls
    assert typed == [WEATHER, TIME]


def test_request_tool_schemas():
    req = _request(tools=TOOLS)
    assert req.tool_schemas() == {"get_weather": TOOLS[0]["function"]["parameters"],
                                  "get_time": {}}
    assert _request().tool_schemas() == {}


def test_call_ids_follow_the_servers_parser():
    assert re.fullmatch(r"[A-Za-z0-9]{9}", tool_call_ids("mistral")())
    assert tool_call_ids("hermes")().startswith("chatcmpl-tool-")
    assert tool_call_ids(None)().startswith("chatcmpl-tool-")
    ids = {tool_call_ids("mistral")() for _ in range(20)}
    assert len(ids) == 20
    # The stream names "auto" and named calls with the choice's ids.
    parser = MistralToolParser()
    auto = ToolChoice("auto", parser=parser, call_id=parser.new_call_id)
    _, calls, _ = _replay(auto, MISTRAL_CASES[1][0], 5)
    named = ToolChoice("named", named="get_weather", call_id=parser.new_call_id)
    _, named_calls, _ = _replay(named, '{"city": "Paris"}', 5)
    assert all(re.fullmatch(r"[A-Za-z0-9]{9}", c["id"]) for c in calls + named_calls)


def test_every_parser_is_registered():
    assert sorted(TOOL_PARSERS) == ["deepseek_v3", "hermes", "llama3_json", "llama4_pythonic",
                                    "mistral", "pythonic", "qwen3_coder"]
    assert all(make_tool_parser(name).name == name for name in TOOL_PARSERS)
    special = {name for name, cls in TOOL_PARSERS.items() if cls.keeps_special_tokens}
    assert special == {"hermes", "mistral", "qwen3_coder", "deepseek_v3"}



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


@pytest.mark.parametrize("parser, cases", PARSER_CASES, ids=[p.name for p, _ in PARSER_CASES])
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
