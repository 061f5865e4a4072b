"""Tool-call parsers for `tool_choice="auto"`: find the calls a model wrote in its own format.

Chosen with `--tool-call-parser NAME` (vLLM's names). Each parser answers three questions about
a model's text, so one parser serves both the full answer and the stream:
- `parse(text)`: the final split into content and calls. A call that does not parse makes the
  whole text content (no half-parsed answers), as vLLM does.
- `content_end(text)`: how much of a growing text is surely content. The stream sends text up
  to there and holds back the rest, including a suffix that may be the start of a marker.
- `complete_calls(text)`: the calls already whole in a growing text. Invariant: for every
  prefix of a text, they are a prefix of `parse(text).calls` when the full text parses.
A parser is made per request, with the request's tools (`ToolSchemas`) for formats that need
them. The server names the calls it answers with the parser's `new_call_id`.
"""

from __future__ import annotations

import ast
import json
import math
import random
import re
import string
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional

from pagedllm.text_markers import marker_prefix_overlap

_DECODER = json.JSONDecoder()

# Each request tool's parameters JSON schema, by function name.
ToolSchemas = Mapping[str, dict[str, Any]]


def tool_call_id() -> str:
    return f"chatcmpl-tool-{uuid.uuid4().hex}"


@dataclass
class ParsedToolCall:
    name: str
    arguments: str  # a JSON object as text, as OpenAI sends it


@dataclass
class ToolParse:
    content: Optional[str]  # None: the model wrote only calls
    calls: list[ParsedToolCall]


def encode_arguments(arguments: Any) -> str:
    """A call's decoded arguments as OpenAI's JSON text; ValueError if they are not an object."""
    if isinstance(arguments, str):  # some models write the arguments already encoded
        arguments = json.loads(arguments)
    if not isinstance(arguments, dict):
        raise ValueError("tool call arguments must be a JSON object")
    return json.dumps(arguments, ensure_ascii=False)


def call_from_object(obj: Any, arguments_keys: tuple[str, ...]) -> ParsedToolCall:
    """A call from a decoded {"name": ..., <arguments key>: {...}}; ValueError if it is not one."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise ValueError("a tool call must be an object with a string 'name'")
    for key in arguments_keys:
        if key in obj:
            return ParsedToolCall(obj["name"], encode_arguments(obj[key]))
    return ParsedToolCall(obj["name"], "{}")


def first_marker(text: str, markers: Sequence[str]) -> int:
    """Where the first of `markers` begins in `text`, or -1."""
    found = [pos for pos in (text.find(marker) for marker in markers) if pos >= 0]
    return min(found, default=-1)


def content_before(text: str, start: int) -> Optional[str]:
    """The content in front of calls that begin at `start`, less the blanks that part it from
    them (vLLM strips them); None if nothing is left."""
    return text[:start].rstrip() or None


def marked_content_end(text: str, markers: Sequence[str]) -> int:
    """`content_end` for calls that begin at one of `markers`: up to the first marker, or up to
    a suffix that may begin one, less trailing blanks (no content if a call follows)."""
    start = first_marker(text, markers)
    if start < 0:
        start = len(text) - max(marker_prefix_overlap(text, marker) for marker in markers)
    return len(text[:start].rstrip())


class ToolCallParser:
    name = ""
    # Parsers whose markers are special tokens need them in the text.
    keeps_special_tokens = False

    def __init__(self, tools: Optional[ToolSchemas] = None) -> None:
        # Formats that write arguments as text need the tools' schemas to type them.
        self.tools: ToolSchemas = tools or {}

    @staticmethod
    def new_call_id() -> str:
        """The id of a call the server answers with; a model's chat template may check the ids
        of the calls in its history."""
        return tool_call_id()

    def parse(self, text: str) -> ToolParse:
        raise NotImplementedError

    def content_end(self, text: str) -> int:
        raise NotImplementedError

    def complete_calls(self, text: str) -> list[ParsedToolCall]:
        raise NotImplementedError


class HermesToolParser(ToolCallParser):
    """`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, any number of them (Hermes,
    Qwen2.5, Qwen3 and most ChatML-style tool templates). Content is the text before the first
    call; a last call the model did not close still counts if its JSON is whole."""

    name = "hermes"
    keeps_special_tokens = True  # some tokenizers mark <tool_call> special
    START, END = "<tool_call>", "</tool_call>"

    def _bodies(self, text: str) -> tuple[list[str], Optional[str]]:
        """The closed call bodies, and the body of a trailing unclosed call (None if none)."""
        closed: list[str] = []
        pos = text.find(self.START)
        while pos >= 0:
            body_start = pos + len(self.START)
            end = text.find(self.END, body_start)
            if end < 0:
                return closed, text[body_start:]
            closed.append(text[body_start:end])
            pos = text.find(self.START, end + len(self.END))
        return closed, None

    @staticmethod
    def _call(body: str) -> ParsedToolCall:
        return call_from_object(json.loads(body), ("arguments", "parameters"))

    def parse(self, text: str) -> ToolParse:
        start = text.find(self.START)
        if start < 0:
            return ToolParse(text, [])
        closed, tail = self._bodies(text)
        bodies = closed + ([tail] if tail is not None and tail.strip() else [])
        try:
            calls = [self._call(body) for body in bodies]
        except ValueError:  # json.JSONDecodeError is a ValueError
            return ToolParse(text, [])
        return ToolParse(text[:start] or None, calls)

    def content_end(self, text: str) -> int:
        start = text.find(self.START)
        if start >= 0:
            return start
        return len(text) - marker_prefix_overlap(text, self.START)

    def complete_calls(self, text: str) -> list[ParsedToolCall]:
        calls = []
        for body in self._bodies(text)[0]:
            try:
                calls.append(self._call(body))
            except ValueError:
                break  # the full text will not parse either: the stream sends it as content
        return calls


class Llama3JsonToolParser(ToolCallParser):
    """Llama 3.1-3.3's JSON calls: `{"name": ..., "parameters": {...}}`, several separated by
    `;`, after an optional `<|python_tag|>`. An answer is calls when (after that tag) it starts
    with a whole call object; text after the last whole call is dropped, as vLLM drops the text
    around JSON calls. Anything else is content."""

    name = "llama3_json"
    TAG = "<|python_tag|>"

    def _region_start(self, text: str) -> Optional[int]:
        """Where the calls begin, or None if the text is (so far) content."""
        tag = text.find(self.TAG)
        if tag >= 0:
            return tag
        stripped = text.lstrip()
        if stripped.startswith("{"):
            return 0
        return None

    def _decode(self, text: str, start: int) -> list[ParsedToolCall]:
        """The whole calls from `start` on, up to the first thing that is not one."""
        pos = start
        if text.startswith(self.TAG, pos):
            pos += len(self.TAG)
        calls = []
        while True:
            while pos < len(text) and (text[pos].isspace() or text[pos] == ";"):
                pos += 1
            try:
                obj, pos = _DECODER.raw_decode(text, pos)
                calls.append(call_from_object(obj, ("parameters", "arguments")))
            except ValueError:
                return calls

    def parse(self, text: str) -> ToolParse:
        start = self._region_start(text)
        calls = [] if start is None else self._decode(text, start)
        if not calls:
            return ToolParse(text, [])
        return ToolParse(text[:start] or None, calls)

    def content_end(self, text: str) -> int:
        start = self._region_start(text)
        if start is not None:
            return start
        if not text.strip():
            return 0  # leading blanks: the answer may still turn out to be a call
        return len(text) - marker_prefix_overlap(text, self.TAG)

    def complete_calls(self, text: str) -> list[ParsedToolCall]:
        start = self._region_start(text)
        return [] if start is None else self._decode(text, start)


def collect_calls(calls: Iterator[ParsedToolCall]) -> tuple[list[ParsedToolCall], bool]:
    """The calls `calls` yields before it raises ValueError, and whether it ran to its end."""
    got: list[ParsedToolCall] = []
    try:
        for call in calls:
            got.append(call)
    except ValueError:  # json.JSONDecodeError is a ValueError
        return got, False
    return got, True


class MarkedToolParser(ToolCallParser):
    """Calls that begin at one of the `STARTS` markers, after the content. Subclasses read the
    calls (`_each_call`); the answer is calls only if every one of them reads."""

    STARTS: tuple[str, ...] = ()

    def _each_call(self, text: str) -> Iterator[ParsedToolCall]:
        """The calls from the first marker on, in order; ValueError at something that is not a
        whole call (in a growing text: not yet one)."""
        raise NotImplementedError

    def parse(self, text: str) -> ToolParse:
        calls, all_read = collect_calls(self._each_call(text))
        if not calls or not all_read:
            return ToolParse(text, [])
        return ToolParse(content_before(text, first_marker(text, self.STARTS)), calls)

    def content_end(self, text: str) -> int:
        return marked_content_end(text, self.STARTS)

    def complete_calls(self, text: str) -> list[ParsedToolCall]:
        # The full text will not parse either past one that does not read: the stream sends
        # it as content then.
        return collect_calls(self._each_call(text))[0]


class MistralToolParser(MarkedToolParser):
    """Mistral / Mixtral: `[TOOL_CALLS]`, then the calls in one of two forms, as vLLM reads them:
    a JSON array of {"name": ..., "arguments": {...}} (or one such object; tokenizers before
    v11), or `name[ARGS]{...}` (v11 on; `name{...}` too) with a `[TOOL_CALLS]` before each call.
    Text after the JSON of the calls is dropped; content is the text before the first marker."""

    name = "mistral"
    keeps_special_tokens = True  # [TOOL_CALLS] and [ARGS] are special tokens
    MARKER, ARGS = "[TOOL_CALLS]", "[ARGS]"
    STARTS = (MARKER,)
    _ID_CHARS = string.ascii_letters + string.digits

    @staticmethod
    def new_call_id() -> str:
        # Mistral's chat templates (and mistral-common) take 9 alphanumerics only.
        return "".join(random.choices(MistralToolParser._ID_CHARS, k=9))

    def _named_call(self, segment: str) -> ParsedToolCall:
        """`name[ARGS]{...}` or `name{...}`; text after the arguments is ignored."""
        separator = first_marker(segment, (self.ARGS, "{"))
        name = segment[:separator].strip() if separator >= 0 else ""
        if not name:
            raise ValueError("a call must be a name, then its arguments")
        arguments, _ = _DECODER.raw_decode(segment[separator:].removeprefix(self.ARGS).lstrip())
        return ParsedToolCall(name, encode_arguments(arguments))

    def _each_call(self, text: str) -> Iterator[ParsedToolCall]:
        segments = [s.strip() for s in text.split(self.MARKER)[1:] if s.strip()]
        if segments and segments[0][0] in "[{":  # the JSON form: one value after one marker
            value, _ = _DECODER.raw_decode(segments[0])
            objects = value if isinstance(value, list) else [value]
            yield from [call_from_object(obj, ("arguments",)) for obj in objects]
        else:
            for segment in segments:
                yield self._named_call(segment)


_JSON_NAMES = {"true": True, "false": False, "null": None}


def _python_literal(node: ast.expr) -> Any:
    """A Python call argument as a JSON value; ValueError if it is not a literal JSON can hold
    (JSON's own true / false / null names pass, as some models write them)."""
    if isinstance(node, ast.Constant):
        value = node.value
        if value is None or isinstance(value, (str, int)) or (
                isinstance(value, float) and math.isfinite(value)):
            return value
    elif isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        return [_python_literal(item) for item in node.elts]
    elif isinstance(node, ast.Dict):
        if all(isinstance(key, ast.Constant) for key in node.keys):  # None for a `**spread`
            return {_python_literal(key): _python_literal(value)  # type: ignore[arg-type]
                    for key, value in zip(node.keys, node.values)}
    elif isinstance(node, ast.Name) and node.id in _JSON_NAMES:
        return _JSON_NAMES[node.id]
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        number = _python_literal(node.operand)
        if isinstance(number, (int, float)) and not isinstance(number, bool):
            return -number if isinstance(node.op, ast.USub) else number
    elif isinstance(node, ast.JoinedStr) and all(  # an f-string without placeholders
            isinstance(part, ast.Constant) for part in node.values):
        return "".join(str(part.value) for part in node.values)  # type: ignore[attr-defined]
    raise ValueError(f"not a literal: {ast.dump(node)}")


def _python_call(node: ast.expr) -> ParsedToolCall:
    """`name(key=literal, ...)` (a dotted name too) as a call; ValueError otherwise."""
    if not isinstance(node, ast.Call) or node.args:
        raise ValueError("a call takes keyword arguments only")
    parts, func = [], node.func
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if not isinstance(func, ast.Name):
        raise ValueError("a call's function must be a (dotted) name")
    parts.append(func.id)
    arguments = {}
    for keyword in node.keywords:
        if keyword.arg is None:
            raise ValueError("**kwargs in a call")
        arguments[keyword.arg] = _python_literal(keyword.value)
    return ParsedToolCall(".".join(reversed(parts)), encode_arguments(arguments))


def _python_calls(source: str) -> list[ParsedToolCall]:
    """The calls of a Python list of calls; ValueError if `source` is anything else."""
    try:
        tree = ast.parse(source, mode="eval")
    except (SyntaxError, RecursionError) as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(tree.body, ast.List) or not tree.body.elts:
        raise ValueError("the calls must be a non-empty list")
    return [_python_call(item) for item in tree.body.elts]


class PythonicToolParser(ToolCallParser):
    """A Python list of calls, `[get_weather(city="Paris", days=2), get_time()]` (Llama 3.2,
    Llama 4, ToolACE), read with `ast`: keyword arguments whose values are literals (strings,
    numbers, True / False / None or JSON's true / false / null, lists, dicts; tuples and sets
    become lists). The whole answer must be the list (blanks around it, and Llama 4's
    <|python_start|>...<|python_end|> around that, allowed); anything else is content."""

    name = "pythonic"
    START, END = "<|python_start|>", "<|python_end|>"

    def __init__(self, tools: Optional[ToolSchemas] = None) -> None:
        super().__init__(tools)
        # complete_calls' memo for a growing text: the text whose `)`s it has tried, and the
        # calls up to the last one that closed a call.
        self._tried = ""
        self._whole: list[ParsedToolCall] = []

    def _list_start(self, text: str) -> Optional[int]:
        """Where the call list's `[` is; len(text) if the text may still become one, None if
        it cannot."""
        pos = len(text) - len(text.lstrip())
        if text.startswith(self.START, pos):
            pos = len(text) - len(text[pos + len(self.START):].lstrip())
        elif self.START.startswith(text[pos:]):  # nothing yet, or a partial wrapper
            return len(text)
        return pos if pos == len(text) or text[pos] == "[" else None

    def parse(self, text: str) -> ToolParse:
        start = self._list_start(text)
        if start is None or start == len(text):
            return ToolParse(text, [])
        source = text[start:].rstrip()
        if self.START in text[:start]:
            source = source.removesuffix(self.END)
        try:
            return ToolParse(None, _python_calls(source))
        except ValueError:
            return ToolParse(text, [])

    def content_end(self, text: str) -> int:
        return len(text) if self._list_start(text) is None else 0

    def complete_calls(self, text: str) -> list[ParsedToolCall]:
        # The longest start of the list that ends with a `)` and parses once closed: what
        # closes there stays the same call in any longer text that is a list of calls. Each
        # `)` of a growing text is tried once (a long code argument has many).
        start = self._list_start(text)
        if start is None:
            return []
        if not text.startswith(self._tried):
            self._tried, self._whole = "", []
        end = text.rfind(")")
        while end > start and end >= len(self._tried):
            try:
                self._whole = _python_calls(text[start:end + 1] + "]")
                break
            except ValueError:
                end = text.rfind(")", start, end)
        self._tried = text
        return self._whole


class Llama4PythonicToolParser(PythonicToolParser):
    """vLLM's name for the pythonic format as Llama 4 writes it."""

    name = "llama4_pythonic"


_JSON_TYPES = {type(None): "null", bool: "boolean", int: "integer", float: "number",
               str: "string", list: "array", dict: "object"}
# vLLM's order: a value is the first of its parameter's types that reads it.
_TYPE_ORDER = ("null", "integer", "number", "boolean", "object", "array", "string")
_BOOLEAN_WORDS = {"true": True, "1": True, "false": False, "0": False}


def _schema_types(schema: Any) -> set[str]:
    """The JSON types a parameter schema allows (its type, its enum values' types, anyOf /
    oneOf / allOf); "string" when it says none."""
    if not isinstance(schema, dict):
        return {"string"}
    declared = schema.get("type")
    types = {declared} if isinstance(declared, str) else set()
    if isinstance(declared, list):
        types.update(t for t in declared if isinstance(t, str))
    if isinstance(schema.get("enum"), list):
        types.update(_JSON_TYPES.get(type(value), "string") for value in schema["enum"])
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(key), list):
            for choice in schema[key]:
                types |= _schema_types(choice)
    return types or {"string"}


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("JSON has no infinite numbers")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"JSON has no {name}")


# Strict JSON: no NaN / Infinity, which json.dumps would write back as invalid JSON.
_STRICT_JSON = json.JSONDecoder(parse_float=_finite_float, parse_constant=_no_constant)


def _read_as(kind: str, text: str) -> Any:
    """`text` as a value of the JSON type `kind`; ValueError if it is not one."""
    word = text.strip()
    if kind == "string":
        return text
    if kind == "integer":
        return int(word)
    if kind == "number":
        number = _finite_float(word)
        return int(number) if number.is_integer() else number
    if kind == "null" and word.lower() == "null":
        return None
    if kind == "boolean" and word.lower() in _BOOLEAN_WORDS:
        return _BOOLEAN_WORDS[word.lower()]
    if kind in ("object", "array"):
        value = _STRICT_JSON.decode(word)
        if isinstance(value, dict if kind == "object" else list):
            return value
    raise ValueError(f"not a {kind}: {text!r}")


def typed_value(text: str, schema: Any) -> Any:
    """A value written as text, typed by its parameter's schema as vLLM types it: the first of
    the schema's types that reads it; failing all, any JSON it reads as (unless the schema
    allows strings), else the text."""
    types = _schema_types(schema)
    for kind in _TYPE_ORDER:
        if kind in types:
            try:
                return _read_as(kind, text)
            except ValueError:
                continue
    try:
        return _STRICT_JSON.decode(text.strip())
    except ValueError:
        return text


class Qwen3CoderToolParser(MarkedToolParser):
    """Qwen3-Coder's XML calls, as vLLM reads them:
        <tool_call>
        <function=get_weather>
        <parameter=city>
        Paris
        </parameter>
        </function>
        </tool_call>
    A value is the text between its tags less one newline at each end, typed by the request's
    tool schema (integer, number, boolean, null, object, array), else a string. A call counts
    once its </function> is written; <tool_call>, </tool_call> and a </parameter> before the
    next tag may be missing. Content is the text before the first call."""

    name = "qwen3_coder"
    keeps_special_tokens = True  # some tokenizers mark <tool_call> special
    FUNCTION, FUNCTION_END = "<function=", "</function>"
    STARTS = ("<tool_call>", FUNCTION)
    _PARAMETER = re.compile(r"<parameter=([^>]*)>(.*?)(?:</parameter>|(?=<parameter=)|\Z)",
                            re.DOTALL)

    def _call(self, function: str) -> ParsedToolCall:
        """A call from the text between `<function=` and `</function>`."""
        name, closed, body = function.partition(">")
        name = name.strip()
        if not closed or not name or "<" in name:
            raise ValueError("a function tag must be <function=NAME>")
        schema = self.tools.get(name)
        properties = schema.get("properties") if isinstance(schema, dict) else None
        arguments = {}
        for match in self._PARAMETER.finditer(body):
            key = match.group(1).strip()
            value = match.group(2).removeprefix("\n").removesuffix("\n")
            if isinstance(properties, dict) and key in properties:
                arguments[key] = typed_value(value, properties[key])
            else:
                arguments[key] = value
        return ParsedToolCall(name, encode_arguments(arguments))

    def _each_call(self, text: str) -> Iterator[ParsedToolCall]:
        start = first_marker(text, self.STARTS)
        pos = -1 if start < 0 else text.find(self.FUNCTION, start)
        while pos >= 0:
            end = text.find(self.FUNCTION_END, pos)
            if end < 0:
                raise ValueError("a function left open")
            yield self._call(text[pos + len(self.FUNCTION):end])
            pos = text.find(self.FUNCTION, end + len(self.FUNCTION_END))


class DeepSeekV3ToolParser(MarkedToolParser):
    """DeepSeek-V3 / R1: after <｜tool▁calls▁begin｜>, calls written as
        <｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME
        ```json
        {"city": "Paris"}
        ```<｜tool▁call▁end｜>
    then <｜tool▁calls▁end｜>. As in vLLM, the name and the JSON are one line each. Content is
    the text before the calls; a call in any other form, or cut short, makes the answer
    content."""

    name = "deepseek_v3"
    keeps_special_tokens = True  # its markers may be special tokens
    STARTS = ("<｜tool▁calls▁begin｜>",)
    CALL_BEGIN, CALL_END = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>"
    _CALL = re.compile(r"function<｜tool▁sep｜>([^\n]+)\n```json\n([^\n]*)\n```")

    def _each_call(self, text: str) -> Iterator[ParsedToolCall]:
        start = text.find(self.STARTS[0])
        pos = -1 if start < 0 else text.find(self.CALL_BEGIN, start)
        while pos >= 0:
            pos += len(self.CALL_BEGIN)
            end = text.find(self.CALL_END, pos)
            match = None if end < 0 else self._CALL.fullmatch(text, pos, end)
            if match is None:
                raise ValueError("not a call in DeepSeek-V3's form (or not yet whole)")
            yield ParsedToolCall(match.group(1), encode_arguments(json.loads(match.group(2))))
            pos = text.find(self.CALL_BEGIN, end + len(self.CALL_END))


TOOL_PARSERS: dict[str, type[ToolCallParser]] = {
    cls.name: cls for cls in (HermesToolParser, Llama3JsonToolParser, MistralToolParser,
                              PythonicToolParser, Llama4PythonicToolParser, Qwen3CoderToolParser,
                              DeepSeekV3ToolParser)
}


def make_tool_parser(name: str, tools: Optional[ToolSchemas] = None) -> ToolCallParser:
    try:
        return TOOL_PARSERS[name](tools)
    except KeyError:
        raise ValueError(f"tool_call_parser: unknown parser {name!r}; "
                         f"available: {sorted(TOOL_PARSERS)}") from None


def tool_call_ids(parser_name: Optional[str]) -> Callable[[], str]:
    """How the server names the calls it answers with, whatever the tool choice: as the model
    of its --tool-call-parser expects, else OpenAI-style."""
    return TOOL_PARSERS[parser_name].new_call_id if parser_name else tool_call_id
