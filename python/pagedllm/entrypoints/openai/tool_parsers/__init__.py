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

from typing import Callable, Optional

from pagedllm.entrypoints.openai.tool_parsers.base import (
    ParsedToolCall,
    ToolCallParser,
    ToolParse,
    ToolSchemas,
    call_from_object,
    tool_call_id,
)
from pagedllm.entrypoints.openai.tool_parsers.deepseek_v3 import DeepSeekV3ToolParser
from pagedllm.entrypoints.openai.tool_parsers.hermes import HermesToolParser
from pagedllm.entrypoints.openai.tool_parsers.llama3_json import Llama3JsonToolParser
from pagedllm.entrypoints.openai.tool_parsers.mistral import MistralToolParser
from pagedllm.entrypoints.openai.tool_parsers.pythonic import (
    Llama4PythonicToolParser,
    PythonicToolParser,
)
from pagedllm.entrypoints.openai.tool_parsers.qwen3_coder import Qwen3CoderToolParser

__all__ = [
    "DeepSeekV3ToolParser", "HermesToolParser", "Llama3JsonToolParser",
    "Llama4PythonicToolParser", "MistralToolParser", "ParsedToolCall", "PythonicToolParser",
    "Qwen3CoderToolParser", "TOOL_PARSERS", "ToolCallParser", "ToolParse", "ToolSchemas",
    "call_from_object", "make_tool_parser", "tool_call_id", "tool_call_ids",
]

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
