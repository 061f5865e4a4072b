"""What every tool-call parser shares: the parsed call, the parser interface, and helpers for
JSON calls and for formats whose calls begin at markers.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from pagedllm.text_markers import marker_prefix_overlap

JSON_DECODER = json.JSONDecoder()

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
