"""/v1/responses with the OpenAI client: the chat path underneath (same prompt, same greedy text
as /v1/chat/completions), output items and usage, typed stream events that add up to the full
response, function tools (named, "required", and "auto" on a hermes server with the model's call
forced by a regex), structured text formats, previous_response_id on a server that stores
responses, reasoning items on a thinking server, and 400s naming the field."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from pagedllm.entrypoints.openai.chat_answer import ChatAnswerFormat, ChatAnswerStream
from pagedllm.entrypoints.openai.protocol_responses import ResponsesRequest
from pagedllm.entrypoints.openai.response_store import ResponseStore, StoredResponse
from pagedllm.entrypoints.openai.responses_output import ResponseEventStream, output_items
from pagedllm.entrypoints.openai.tool_calls import ToolChoice
from pagedllm.entrypoints.openai.tool_parsers import HermesToolParser
from pagedllm.reasoning import Qwen3ReasoningParser
from server_process import serve_for_fixture
from test_metrics_and_load import scrape, wait_until_idle
from test_tool_calls import FORCED_CALL, TOOL_TEMPLATE, WEATHER_PARAMS, _forcing

MODEL = "tiny"
# Responses' flat function tools, and the same tools as chat nests them.
TOOLS = [
    {"type": "function", "name": "get_weather", "description": "Weather forecast",
     "parameters": WEATHER_PARAMS},
    {"type": "function", "name": "get_time", "parameters": {
        "type": "object", "properties": {"zone": {"enum": ["CET", "UTC"]}},
        "required": ["zone"], "additionalProperties": False}},
]
CHAT_TOOLS = [{"type": "function", "function": {k: v for k, v in t.items() if k != "type"}}
              for t in TOOLS]
# A random model fills free JSON whitespace forever: ask for compact JSON (vLLM's extra).
COMPACT = {"structured_outputs": {"disable_any_whitespace": True}}
STREAM_EVENT = TypeAdapter(ResponseStreamEvent)


def _respond(client, stream=False, **kw):
    kw.setdefault("max_output_tokens", 12)
    return client.responses.create(model=MODEL, temperature=0, stream=stream, **kw)


def _chat_text(client, messages, max_tokens=12, **kw) -> str:
    resp = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=max_tokens,
                                          temperature=0, **kw)
    return resp.choices[0].message.content


def _prompt_len(url: str, messages, tools=None) -> int:
    body = {"model": MODEL, "messages": messages, **({"tools": tools} if tools else {})}
    resp = httpx.post(url + "/tokenize", json=body, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()["count"]


def _raw_events(url: str, body: dict) -> list[dict]:
    """The SSE events of a streamed response, checking `event:` names the data's type."""
    events = []
    with httpx.stream("POST", url + "/v1/responses", json={**body, "stream": True},
                      timeout=60) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith(
            "text/event-stream")
        name = None
        for line in resp.iter_lines():
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                data = json.loads(line[len("data: "):])
                assert data["type"] == name
                events.append(data)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    for event in events:  # every event is one of the SDK's types, whole
        STREAM_EVENT.validate_python(event)
    return events


def _without_ids(items: list) -> list[dict]:
    dumped = [item if isinstance(item, dict) else item.model_dump(mode="json") for item in items]
    return [{k: v for k, v in item.items() if k not in ("id", "call_id")} for item in dumped]


# ---- without a server ------------------------------------------------------------------------


@pytest.mark.parametrize("step", [1, 4, 1000])
def test_stream_events_build_the_full_answers_items(step):
    """Reasoning, then content, then a call: each item opens, streams and closes in turn, and
    the items the events build are the full answer's."""
    fmt = ChatAnswerFormat(ToolChoice("auto", parser=HermesToolParser()), Qwen3ReasoningParser())
    text = ('<think>Weather, so a tool.</think>Sure. <tool_call>{"name": "get_weather", '
            '"arguments": {"city": "Paris", "days": 1}}</tool_call>')
    answer, events, sse = ChatAnswerStream(fmt), ResponseEventStream(), []
    ends = list(range(step, len(text), step)) + [len(text)]
    for end in ends:
        sse += events.feed(answer.feed(text[:end], "stop" if end == len(text) else None))
    sse += events.close(incomplete=False)
    parsed = []
    for chunk in sse:
        name, data = chunk.split("\n")[:2]
        parsed.append(json.loads(data[len("data: "):]))
        assert name == "event: " + parsed[-1]["type"]
        STREAM_EVENT.validate_python(parsed[-1])
    kinds = [e["type"] for e in parsed if not e["type"].endswith(".delta")]
    assert kinds == [
        "response.output_item.added", "response.content_part.added",
        "response.reasoning_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.done",
        "response.output_item.done",
    ]
    assert [e["sequence_number"] for e in parsed] == list(range(len(parsed)))
    final = output_items(fmt.final(text, "stop"), fmt.tools.call_id, incomplete=False)
    assert _without_ids(events.items) == _without_ids(final)
    assert [item.type for item in final] == ["reasoning", "message", "function_call"]
    assert final[1].content[0].text == "Sure. "
    # The closed items' ids are those their events announced.
    added = [e["item"]["id"] for e in parsed if e["type"] == "response.output_item.added"]
    assert added == [item.id for item in events.items]
    # Cut short: the last item is incomplete, in both.
    cut = output_items(fmt.final("<think>still thinking", "length"), fmt.tools.call_id, True)
    assert [(i.type, i.status) for i in cut] == [("reasoning", "incomplete")]


def test_input_items_merge_into_chat_turns():
    """An assistant turn is several items (reasoning, message, calls); it is one chat message."""
    req = ResponsesRequest.model_validate({"input": [
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "reasoning", "summary": [], "content": [{"type": "reasoning_text",
                                                          "text": "Use the tool."}]},
        {"type": "message", "role": "assistant", "content": [
            {"type": "output_text", "text": "Let me look.", "annotations": []}]},
        {"type": "function_call", "call_id": "c1", "name": "get_weather",
         "arguments": '{"city": "Paris", "days": 1}'},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        {"type": "function_call", "call_id": "c2", "name": "get_time", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c2",
         "output": [{"type": "input_text", "text": "noon"}]},
    ]})
    assert [m.template_dict() for m in req.input_messages()] == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Let me look.", "reasoning_content": "Use the tool.",
         "tool_calls": [{"id": "c1", "type": "function", "function": {
             "name": "get_weather", "arguments": {"city": "Paris", "days": 1}}}]},
        {"role": "tool", "content": "sunny", "tool_call_id": "c1"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "c2", "type": "function",
                                                             "function": {"name": "get_time",
                                                                          "arguments": {}}}]},
        {"role": "tool", "content": "noon", "tool_call_id": "c2"},
    ]


def test_response_store_keeps_the_most_recently_used():
    store = ResponseStore(2)
    for name in ("a", "b"):
        store.put(name, StoredResponse(name, []))
    assert store.get("a").response == "a"  # now the most recent
    store.put("c", StoredResponse("c", []))
    assert store.get("b") is None and store.get("a") is not None and len(store) == 2


# ---- the shared server (no tool parser, nothing stored) ---------------------------------------


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=60)


def test_string_input_answers_as_chat(client, server):
    resp = _respond(client, input="Tell me a story.", max_output_tokens=10)
    assert isinstance(resp, Response)
    assert resp.object == "response" and resp.id.startswith("resp_") and resp.model == MODEL
    messages = [{"role": "user", "content": "Tell me a story."}]
    assert resp.output_text == _chat_text(client, messages, max_tokens=10)
    (message,) = resp.output
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_") and message.content[0].annotations == []
    usage = resp.usage
    assert usage.input_tokens == _prompt_len(server.url, messages)
    assert (usage.output_tokens, usage.total_tokens) == (10, usage.input_tokens + 10)
    assert usage.output_tokens_details.reasoning_tokens == 0
    # Cut by max_output_tokens: incomplete, as OpenAI says it; the request is echoed.
    assert resp.status == "incomplete" and resp.incomplete_details.reason == "max_output_tokens"
    assert message.status == "incomplete"
    assert (resp.max_output_tokens, resp.temperature, resp.tool_choice, resp.tools,
            resp.store, resp.text.format.type) == (10, 0.0, "auto", [], False, "text")
    # An answer that ends by itself (a choice closes) is completed.
    done = _respond(client, input="Yes or no?", extra_body={"structured_outputs": {
        "choice": ["yes", "no"]}})
    assert done.status == "completed" and done.incomplete_details is None
    assert done.output_text in ("yes", "no") and done.output[0].status == "completed"


def test_instructions_and_turns_render_as_chat_messages(client, server):
    """instructions are a system message first; input items are the conversation's turns."""
    items = [
        {"role": "user", "content": "Hi there."},
        {"type": "message", "role": "assistant", "content": [
            {"type": "output_text", "text": "Hello!", "annotations": []}]},
        {"role": "developer", "content": [{"type": "input_text", "text": "Be terse."}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Why"},
                                                        {"type": "input_text", "text": "?"}]},
    ]
    resp = _respond(client, input=items, instructions="You are a poet.")
    messages = [{"role": "system", "content": "You are a poet."},
                {"role": "user", "content": "Hi there."},
                {"role": "assistant", "content": "Hello!"},
                {"role": "developer", "content": "Be terse."},
                {"role": "user", "content": "Why?"}]
    assert resp.usage.input_tokens == _prompt_len(server.url, messages)
    assert resp.output_text == _chat_text(client, messages)
    assert resp.instructions == "You are a poet."


def test_stream_events_add_up_to_the_response(client, server):
    body = {"model": MODEL, "input": "Once upon a time", "max_output_tokens": 12,
            "temperature": 0, "metadata": {"k": "v"}}
    full = httpx.post(server.url + "/v1/responses", json=body, timeout=60).json()
    events = _raw_events(server.url, body)
    kinds = [e["type"] for e in events]
    n_deltas = kinds.count("response.output_text.delta")
    assert n_deltas >= 1
    assert kinds == (["response.created", "response.in_progress", "response.output_item.added",
                      "response.content_part.added"] + ["response.output_text.delta"] * n_deltas
                     + ["response.output_text.done", "response.content_part.done",
                        "response.output_item.done", "response.incomplete"])
    created = events[0]["response"]
    assert created["status"] == "in_progress" and created["output"] == []
    assert created["usage"] is None and created["metadata"] == {"k": "v"}
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    (message,) = full["output"]
    assert text == message["content"][0]["text"] == events[-4]["text"]
    last = events[-1]["response"]
    assert last["id"] == created["id"] and last["status"] == "incomplete"
    assert _without_ids(last["output"]) == _without_ids(full["output"])
    assert last["output"][0]["id"] == events[2]["item"]["id"]
    # (The stream's prompt may come from the prefix cache: cached_tokens may differ.)
    assert [last["usage"][k] for k in ("input_tokens", "output_tokens", "total_tokens")] == [
        full["usage"][k] for k in ("input_tokens", "output_tokens", "total_tokens")]
    # The SDK iterates the same stream into its typed events.
    typed = list(_respond(client, stream=True, input="Once upon a time"))
    assert [e.type for e in typed] == kinds
    assert typed[-1].response.output_text == text


def test_named_and_required_tool_choice(client):
    named = _respond(client, input="Weather in Paris?", tools=TOOLS, max_output_tokens=64,
                     tool_choice={"type": "function", "name": "get_weather"}, extra_body=COMPACT)
    assert named.status == "completed"
    (call,) = named.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert call.id.startswith("fc_") and call.call_id and call.status == "completed"
    args = json.loads(call.arguments)
    assert set(args) == {"city", "days"} and args["city"] in ("Paris", "Lyon")
    assert named.tool_choice.name == "get_weather" and named.tools[0].name == "get_weather"
    events = list(_respond(client, stream=True, input="Weather in Paris?", tools=TOOLS,
                           max_output_tokens=64, extra_body=COMPACT,
                           tool_choice={"type": "function", "name": "get_weather"}))
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    (done,) = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert deltas == done.arguments == call.arguments
    assert events[-1].response.output[0].arguments == call.arguments

    required = _respond(client, input="Weather or time?", tools=TOOLS, tool_choice="required",
                        parallel_tool_calls=False, max_output_tokens=100, extra_body=COMPACT)
    (call,) = required.output
    assert call.type == "function_call" and call.name in ("get_weather", "get_time")
    json.loads(call.arguments)
    assert required.parallel_tool_calls is False
    # "auto" (the default with tools) needs the server's tool-call parser, as on chat.
    with pytest.raises(openai.BadRequestError, match="--enable-auto-tool-choice"):
        _respond(client, input="Weather?", tools=TOOLS)
    # "none": the tools reach the template, the answer is text.
    text = _respond(client, input="Weather?", tools=TOOLS, tool_choice="none")
    assert [item.type for item in text.output] == ["message"]


def test_text_format_json_schema(client):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"},
                                               "n": {"enum": [1, 2, 3]}},
              "required": ["ok", "n"], "additionalProperties": False}
    resp = _respond(client, input="Give me JSON.", max_output_tokens=64, extra_body=COMPACT,
                    text={"format": {"type": "json_schema", "name": "r", "schema": schema}})
    assert resp.status == "completed"
    assert set(json.loads(resp.output_text)) == {"ok", "n"}
    assert resp.text.format.type == "json_schema" and resp.text.format.schema_ == schema
    plain = _respond(client, input="Give me JSON.", max_output_tokens=24)
    assert not plain.output_text.lstrip().startswith("{")
    obj = _respond(client, input="Give me JSON.", max_output_tokens=24,
                   text={"format": {"type": "json_object"}})
    assert obj.output_text.lstrip().startswith("{")


def test_nothing_is_stored_without_the_flag(client):
    first = _respond(client, input="Remember me.")
    assert first.store is False
    with pytest.raises(openai.NotFoundError) as err:
        _respond(client, input="And?", previous_response_id=first.id)
    assert err.value.body["param"] == "previous_response_id"
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)


@pytest.mark.parametrize("extra, param, message", [
    ({"input": []}, "input", "empty"),
    ({"input": [{"type": "item_reference", "id": "x"}]}, "input", "'item_reference'"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
     "input", "'input_image'"),
    ({"input": [{"type": "function_call", "name": "f"}]}, "input", "call_id"),
    ({"tools": [{"type": "web_search"}]}, "tools", "'web_search'"),
    ({"tools": TOOLS, "tool_choice": {"type": "file_search"}}, "tool_choice", "'file_search'"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice",
     "not in tools"),
    ({"tool_choice": "required"}, "tool_choice", "needs tools"),
    ({"background": True}, "background", "not supported"),
    ({"text": {"format": {"type": "json_object"}}, "structured_outputs": {"regex": "a+"}},
     "text", "not both"),
    ({"include": ["message.output_text.logprobs"]}, "include", "not supported"),
    ({"max_output_tokens": 0}, "max_output_tokens", "greater than or equal to 1"),
    ({"max_output_tokens": 1000}, "max_output_tokens", "maximum context length"),
    ({"temperature": -1}, "temperature", "greater than or equal to 0"),
])
def test_bad_requests_get_400(server, extra, param, message):
    body = {"model": MODEL, "input": "Hi", **extra}
    resp = httpx.post(server.url + "/v1/responses", json=body, timeout=30)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, 400)
    assert message in error["message"]


def test_stream_disconnect_aborts_the_request(server):
    body = {"model": MODEL, "input": "A long story", "max_output_tokens": 200, "stream": True,
            "ignore_eos": True}
    with httpx.Client(timeout=60) as c, c.stream("POST", server.url + "/v1/responses",
                                                 json=body) as resp:
        assert resp.status_code == 200
        lines = resp.iter_lines()  # held: dropping the iterator would close the stream
        deltas = 0
        for line in lines:
            deltas += line == "event: response.output_text.delta"
            if deltas == 3:
                break
        during = scrape(server.url)
        assert during["pagedllm:num_requests_running"] >= 1
    after = wait_until_idle(server.url)
    assert after["pagedllm:num_requests_running"] == 0
    assert after["pagedllm:kv_cache_blocks_used"] == 0
    assert after["pagedllm:request_aborted_total"] == during["pagedllm:request_aborted_total"] + 1


# ---- a hermes tool-parser server that stores responses ----------------------------------------


@pytest.fixture(scope="module")
def tool_server(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory):
    template = tmp_path_factory.mktemp("responses") / "template.jinja"
    template.write_text(TOOL_TEMPLATE)
    yield from serve_for_fixture(str(tiny_llama), "--max-model-len", "512",
                                 "--served-model-name", MODEL, "--dtype", "float32", "--device",
                                 "cpu", "--chat-template", str(template),
                                 "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
                                 "--enable-responses-store", "--max-stored-responses", "4")


@pytest.fixture(scope="module")
def tool_client(tool_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=tool_server.base_url, api_key="unused", max_retries=0,
                         timeout=60)


def test_auto_tool_choice_answers_function_calls(tool_client, tool_server):
    forced = _forcing(FORCED_CALL)
    resp = _respond(tool_client, input="Weather in Lyon?", tools=TOOLS, max_output_tokens=200,
                    extra_body=forced)
    assert resp.status == "completed"
    message, call = resp.output
    assert message.type == "message" and message.content[0].text == "Sure. "
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Lyon", "days": 2}
    body = {"model": MODEL, "input": "Weather in Lyon?", "tools": TOOLS,
            "max_output_tokens": 200, "temperature": 0, **forced}
    events = _raw_events(tool_server.url, body)
    added = [e["item"]["type"] for e in events if e["type"] == "response.output_item.added"]
    assert added == ["message", "function_call"]
    assert events[-1]["type"] == "response.completed"
    full = httpx.post(tool_server.url + "/v1/responses", json=body, timeout=60).json()
    assert _without_ids(events[-1]["response"]["output"]) == _without_ids(full["output"])


def test_function_call_output_turn_renders_as_chat(tool_client, tool_server):
    """A second turn that sends the call and its output back renders into the template as the
    chat conversation with an assistant tool call and a tool message does."""
    items = [{"role": "user", "content": "Weather in Paris?"},
             {"type": "function_call", "call_id": "call_1", "name": "get_weather",
              "arguments": '{"city": "Paris", "days": 1}'},
             {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}]
    resp = _respond(tool_client, input=items, tools=TOOLS, tool_choice="none")
    messages = [{"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "", "tool_calls": [{
                    "id": "call_1", "type": "function", "function": {
                        "name": "get_weather", "arguments": '{"city": "Paris", "days": 1}'}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    assert resp.usage.input_tokens == _prompt_len(tool_server.url, messages, CHAT_TOOLS)
    assert resp.output_text == _chat_text(tool_client, messages, tools=CHAT_TOOLS,
                                          tool_choice="none")


def test_previous_response_id_continues_the_conversation(tool_client, tool_server):
    first = _respond(tool_client, input="Hi there.", instructions="You are a poet.")
    assert first.store is True
    assert tool_client.responses.retrieve(first.id).output_text == first.output_text
    second = _respond(tool_client, input="Go on.", previous_response_id=first.id)
    assert second.previous_response_id == first.id
    # The first turn is in the prompt; its instructions are not (they do not carry over).
    messages = [{"role": "user", "content": "Hi there."},
                {"role": "assistant", "content": first.output_text},
                {"role": "user", "content": "Go on."}]
    assert second.usage.input_tokens == _prompt_len(tool_server.url, messages)
    assert second.output_text == _chat_text(tool_client, messages)
    # A streamed continuation is stored too, and continues further.
    events = list(_respond(tool_client, stream=True, input="More.",
                           previous_response_id=second.id))
    third = events[-1].response
    messages += [{"role": "assistant", "content": second.output_text},
                 {"role": "user", "content": "More."}]
    assert third.usage.input_tokens == _prompt_len(tool_server.url, messages)
    assert tool_client.responses.retrieve(third.id).output_text == third.output_text
    # A call answered in one response continues with its output in the next.
    call = _respond(tool_client, input="Weather in Lyon?", tools=TOOLS, max_output_tokens=200,
                    extra_body=_forcing(FORCED_CALL))
    after = _respond(tool_client, tools=TOOLS, tool_choice="none", previous_response_id=call.id,
                     input=[{"type": "function_call_output", "call_id": call.output[1].call_id,
                             "output": "rainy"}])
    messages = [{"role": "user", "content": "Weather in Lyon?"},
                {"role": "assistant", "content": "Sure. ", "tool_calls": [{
                    "id": call.output[1].call_id, "type": "function", "function": {
                        "name": "get_weather", "arguments": call.output[1].arguments}}]},
                {"role": "tool", "tool_call_id": call.output[1].call_id, "content": "rainy"}]
    assert after.usage.input_tokens == _prompt_len(tool_server.url, messages, CHAT_TOOLS)
    # store false keeps nothing; unknown ids are 404s.
    unkept = _respond(tool_client, input="Forget me.", store=False)
    assert unkept.store is False
    for response_id in (unkept.id, "resp_unknown"):
        with pytest.raises(openai.NotFoundError):
            _respond(tool_client, input="And?", previous_response_id=response_id)
    # At most --max-stored-responses (4) are kept, the least recently used going first.
    with pytest.raises(openai.NotFoundError):
        tool_client.responses.retrieve(first.id)


# ---- a thinking model with --reasoning-parser ------------------------------------------------


def test_reasoning_items(thinking_server):
    client = openai.OpenAI(base_url=thinking_server.base_url, api_key="unused", max_retries=0,
                           timeout=60)
    messages = [{"role": "user", "content": "How much is 2 + 2?"}]
    # Never closing its reasoning, the random model's whole answer is reasoning, as on chat.
    chat = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8,
                                          temperature=0).choices[0].message
    resp = _respond(client, input=messages[0]["content"], max_output_tokens=8)
    (reasoning,) = resp.output
    assert reasoning.type == "reasoning" and reasoning.id.startswith("rs_")
    assert reasoning.summary == [] and reasoning.content[0].type == "reasoning_text"
    assert reasoning.content[0].text == chat.reasoning and resp.output_text == ""
    assert 0 < resp.usage.output_tokens_details.reasoning_tokens <= 8
    events = _raw_events(thinking_server.url, {"model": MODEL, "input": messages[0]["content"],
                                               "max_output_tokens": 8, "temperature": 0})
    text = "".join(e["delta"] for e in events if e["type"] == "response.reasoning_text.delta")
    assert text == chat.reasoning
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == text
    # reasoning.effort "none" turns thinking off: the same text is the message.
    off = _respond(client, input=messages[0]["content"], max_output_tokens=8,
                   reasoning={"effort": "none"})
    assert [item.type for item in off.output] == ["message"]
    assert off.output_text == chat.reasoning
    assert off.usage.output_tokens_details.reasoning_tokens == 0
    assert off.reasoning.effort == "none"
    # include_reasoning false (vLLM's extra) leaves the item out, still counting its tokens.
    hidden = _respond(client, input=messages[0]["content"], max_output_tokens=8,
                      extra_body={"include_reasoning": False})
    assert hidden.output == []
    assert hidden.usage.output_tokens_details.reasoning_tokens == \
        resp.usage.output_tokens_details.reasoning_tokens
    # </think> forced first: no reasoning item; the constrained answer is the message.
    end = httpx.post(thinking_server.url + "/tokenize", timeout=30, json={
        "prompt": "</think>", "add_special_tokens": False}).json()["tokens"][0]
    answer = _respond(client, input=messages[0]["content"], max_output_tokens=16,
                      extra_body={"logit_bias": {str(end): 100},
                                  "structured_outputs": {"choice": ["yes", "no"]}})
    assert [item.type for item in answer.output] == ["message"]
    assert answer.output_text in ("yes", "no")
    assert answer.usage.output_tokens_details.reasoning_tokens == 0
