"""Llama 3.1-3.3 JSON tool calls."""

from __future__ import annotations

from typing import Optional

from pagedllm.entrypoints.openai.tool_parsers.base import (
    JSON_DECODER,
    ParsedToolCall,
    ToolCallParser,
    ToolParse,
    call_from_object,
)
from pagedllm.text_markers import marker_prefix_overlap


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
                obj, pos = JSON_DECODER.raw_decode(text, pos)
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
