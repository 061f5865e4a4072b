"""Tool-call parsers for `tool_choice="auto"`: find the calls a model wrote in its own format.

Chosen with `--tool-call-parser NAME` (vLLM's names). Each parser answers three questions about
a model's text, so one parser serves both the full answer and the stream:
- `parse(text)`: the final split into content and calls. A call that does not parse makes the
  whole text content (no half-parsed answers), as vLLM does.
- `content_end(text)`: how much of a growing text is surely content. The stream sends text up
  to there and holds back the rest, including a suffix that may be the start of a marker.
- `complete_calls(text)`: the calls already whole in a growing text. Invariant: for every
  prefix of a text, they are a prefix of `parse(text).calls` when the full text parses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional

from pagedllm.text_markers import marker_prefix_overlap

_DECODER = json.JSONDecoder()


@dataclass
class ParsedToolCall:
    name: str
    arguments: str  # a JSON object as text, as OpenAI sends it


@dataclass
class ToolParse:
    content: Optional[str]  # None: the model wrote only calls
    calls: list[ParsedToolCall]


def call_from_object(obj: Any, arguments_keys: tuple[str, ...]) -> ParsedToolCall:
    """A call from a decoded {"name": ..., <arguments key>: {...}}; ValueError if it is not one."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise ValueError("a tool call must be an object with a string 'name'")
    for key in arguments_keys:
        if key in obj:
            arguments = obj[key]
            break
    else:
        arguments = {}
    if isinstance(arguments, str):  # some models write the arguments already encoded
        arguments = json.loads(arguments)
    if not isinstance(arguments, dict):
        raise ValueError("tool call arguments must be a JSON object")
    return ParsedToolCall(obj["name"], json.dumps(arguments, ensure_ascii=False))


class ToolCallParser:
    name = ""
    # Parsers whose markers are special tokens need them in the text.
    keeps_special_tokens = False

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


TOOL_PARSERS: dict[str, type[ToolCallParser]] = {
    cls.name: cls for cls in (HermesToolParser, Llama3JsonToolParser)
}


def make_tool_parser(name: str) -> ToolCallParser:
    try:
        return TOOL_PARSERS[name]()
    except KeyError:
        raise ValueError(f"tool_call_parser: unknown parser {name!r}; "
                         f"available: {sorted(TOOL_PARSERS)}") from None
