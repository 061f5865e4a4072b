"""Mistral / Mixtral: `[TOOL_CALLS]` tool calls."""

from __future__ import annotations

import random
import string
from collections.abc import Iterator

from pagedllm.entrypoints.openai.tool_parsers.base import (
    JSON_DECODER,
    MarkedToolParser,
    ParsedToolCall,
    call_from_object,
    encode_arguments,
    first_marker,
)


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
        arguments, _ = JSON_DECODER.raw_decode(segment[separator:].removeprefix(self.ARGS).lstrip())
        return ParsedToolCall(name, encode_arguments(arguments))

    def _each_call(self, text: str) -> Iterator[ParsedToolCall]:
        segments = [s.strip() for s in text.split(self.MARKER)[1:] if s.strip()]
        if segments and segments[0][0] in "[{":  # the JSON form: one value after one marker
            value, _ = JSON_DECODER.raw_decode(segments[0])
            objects = value if isinstance(value, list) else [value]
            yield from [call_from_object(obj, ("arguments",)) for obj in objects]
        else:
            for segment in segments:
                yield self._named_call(segment)
