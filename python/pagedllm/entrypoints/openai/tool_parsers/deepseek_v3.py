"""DeepSeek-V3 / R1 tool calls."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

from pagedllm.entrypoints.openai.tool_parsers.base import (
    MarkedToolParser,
    ParsedToolCall,
    encode_arguments,
)


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
