"""Hermes / Qwen2.5 / Qwen3 / ChatML tool templates: `<tool_call>{json}</tool_call>`."""

from __future__ import annotations

import json
from typing import Optional

from pagedllm.entrypoints.openai.tool_parsers.base import (
    ParsedToolCall,
    ToolCallParser,
    ToolParse,
    call_from_object,
)
from pagedllm.text_markers import marker_prefix_overlap


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
