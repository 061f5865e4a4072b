"""What a chat request's `tools` and `tool_choice` mean for its generation and its answer.

- "none" (the default without tools): the answer is content; the tools still reach the template.
- "auto" (the default with tools): the model decides; the server's `--tool-call-parser` finds
  the calls in its own format (tool_parsers.py). Needs `--enable-auto-tool-choice`.
- "required": generation is constrained (structured outputs) to a JSON array of one or more
  `{"name": <a tool>, "parameters": <its schema>}`; every element becomes a call.
- a named function: generation is constrained to that function's parameter schema; the whole
  answer is that call's arguments.
"required" and named calls need no parser: their format is fixed by the constraint, not by the
model. Finish reasons follow OpenAI: "tool_calls" when "auto" found calls or "required" stopped
normally; a named call keeps the engine's reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from pagedllm.entrypoints.openai.tool_parsers import (
    ParsedToolCall,
    ToolCallParser,
    ToolParse,
    call_from_object,
    tool_call_id,
)

_DECODER = json.JSONDecoder()
EMPTY_PARAMETERS = {"type": "object", "properties": {}}


def _parameters(tool: Any) -> dict:
    # No parameters still means "a JSON object" (OpenAI sends `{}` arguments then).
    return tool.function.parameters or EMPTY_PARAMETERS


def required_calls_schema(tools: list[Any], parallel_tool_calls: bool) -> dict:
    """JSON schema of a "required" answer: an array of calls to the given tools."""
    schema: dict[str, Any] = {
        "type": "array",
        "minItems": 1,
        "items": {
            "type": "object",
            "anyOf": [
                {
                    "properties": {
                        "name": {"type": "string", "enum": [tool.function.name]},
                        "parameters": _parameters(tool),
                    },
                    "required": ["name", "parameters"],
                }
                for tool in tools
            ],
        },
    }
    if not parallel_tool_calls:
        schema["maxItems"] = 1
    return schema


def _array_calls(text: str) -> list[ParsedToolCall]:
    """The whole call objects at the start of a (possibly growing) JSON array of calls."""
    pos = text.find("[")
    if pos < 0:
        return []
    pos += 1
    calls = []
    while True:
        while pos < len(text) and (text[pos].isspace() or text[pos] == ","):
            pos += 1
        if pos == len(text) or text[pos] == "]":
            return calls
        try:
            obj, pos = _DECODER.raw_decode(text, pos)
            calls.append(call_from_object(obj, ("parameters", "arguments")))
        except ValueError:
            return calls


@dataclass
class ToolChoice:
    """A chat request's resolved tool choice and, for "auto", the server's parser."""

    mode: str  # "none", "auto", "required" or "named"
    named: Optional[str] = None  # the function for "named"
    parser: Optional[ToolCallParser] = None  # for "auto"
    parallel_tool_calls: bool = True
    # Makes the ids of the calls, in every mode (tool_parsers.tool_call_ids).
    call_id: Callable[[], str] = tool_call_id

    @property
    def answers_with_calls(self) -> bool:
        return self.mode != "none"

    def parse(self, text: str) -> ToolParse:
        """The final answer's content and calls."""
        if self.mode == "named":
            return ToolParse("", [ParsedToolCall(self.named or "", text)])
        if self.mode == "required":
            # An array cut short (finish "length") still yields its whole calls, as the stream
            # has sent them; no whole call at all leaves the text as content.
            calls = _array_calls(text)
            if not calls:
                return ToolParse(text, [])
            result = ToolParse("", calls)
        elif self.mode == "auto" and self.parser is not None:
            result = self.parser.parse(text)
        else:
            return ToolParse(text, [])
        if not self.parallel_tool_calls:
            result.calls = result.calls[:1]
        return result

    def finish_reason(self, engine_reason: Optional[str], called: bool) -> Optional[str]:
        if engine_reason is None:
            return None
        if (self.mode == "auto" and called) or (self.mode == "required"
                                                and engine_reason == "stop"):
            return "tool_calls"
        return engine_reason


@dataclass
class ToolCallDelta:
    """One stream step's news for a choice: content to send and call fragments to send."""

    content: str = ""
    # (call index, id or None, name or None, arguments fragment)
    calls: list[tuple[int, Optional[str], Optional[str], str]] = field(default_factory=list)


class ToolCallStream:
    """Turns one choice's growing text into content and tool-call deltas.

    Named calls stream their arguments as they grow; "required" and "auto" calls are sent whole,
    each as soon as it is complete. Content is sent up to where calls may begin. At the end
    whatever was held back is sent: the rest of the calls, or the text as content if the
    answer turned out not to be calls."""

    def __init__(self, choice: ToolChoice) -> None:
        self.choice = choice
        self.content_sent = 0
        self.calls_sent = 0
        self.named_id: Optional[str] = None
        self.named_sent = 0

    @property
    def called(self) -> bool:
        return self.calls_sent > 0 or self.named_id is not None

    def _send_calls(self, delta: ToolCallDelta, calls: list[ParsedToolCall]) -> None:
        limit = len(calls) if self.choice.parallel_tool_calls else min(len(calls), 1)
        for call in calls[self.calls_sent:limit]:
            delta.calls.append((self.calls_sent, self.choice.call_id(), call.name,
                                call.arguments))
            self.calls_sent += 1

    def feed(self, text: str) -> ToolCallDelta:
        """News in `text` (the choice's whole text so far) since the last call."""
        delta = ToolCallDelta()
        mode = self.choice.mode
        if mode == "named":
            if self.named_id is None:
                self.named_id = self.choice.call_id()
                delta.calls.append((0, self.named_id, self.choice.named, ""))
            if len(text) > self.named_sent:
                delta.calls.append((0, None, None, text[self.named_sent:]))
                self.named_sent = len(text)
        elif mode == "required":
            self._send_calls(delta, _array_calls(text))
        elif mode == "auto" and self.choice.parser is not None:
            parser = self.choice.parser
            end = parser.content_end(text)
            if end > self.content_sent:
                delta.content = text[self.content_sent:end]
                self.content_sent = end
            self._send_calls(delta, parser.complete_calls(text))
        else:
            delta.content = text[self.content_sent:]
            self.content_sent = len(text)
        return delta

    def finish(self, text: str) -> ToolCallDelta:
        """The held-back rest once `text` is final."""
        delta = self.feed(text)
        if self.choice.mode == "named":
            return delta
        result = self.choice.parse(text)
        if result.calls:
            self._send_calls(delta, result.calls)
        elif self.content_sent < len(text):
            delta.content += text[self.content_sent:]  # not calls after all: it is content
            self.content_sent = len(text)
        return delta
