"""Reasoning parsers (`--reasoning-parser NAME`, vLLM's names): split a thinking model's answer
into its reasoning (the server's `message.reasoning`) and its content. The engine uses the same
markers to hold a structured-output grammar back until the reasoning has ended.

Both parsers here read `<think> ... </think>`: the answer starts in its reasoning (a leading
`<think>` is dropped; templates such as DeepSeek-R1's put it in the prompt), and the reasoning
ends at `</think>`. An answer cut short before `</think>` is all reasoning. `qwen3` follows the
chat template's `enable_thinking` switch: with thinking off the whole answer is content.
Invariant (for streams): `split_so_far` of a growing text never takes back what it returned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from pagedllm.text_markers import marker_prefix_overlap


@dataclass
class ReasoningSplit:
    reasoning: str  # the reasoning text known so far ("" if none)
    content: Optional[str]  # the content after the reasoning; None while still reasoning


class ThinkReasoningParser:
    name = ""
    START, END = "<think>", "</think>"
    follows_enable_thinking = False

    def thinks(self, template_kwargs: Optional[dict[str, Any]]) -> bool:
        """Whether answers to a request rendered with these template kwargs start reasoning."""
        if self.follows_enable_thinking and template_kwargs:
            return template_kwargs.get("enable_thinking", True) is not False
        return True

    def _body(self, text: str) -> Optional[str]:
        """The text after a leading start marker; None while the text may still become one."""
        stripped = text.lstrip()
        if stripped.startswith(self.START):
            return stripped[len(self.START):]
        if self.START.startswith(stripped):  # also "": only blanks so far
            return None
        return text

    def split(self, text: str) -> tuple[Optional[str], Optional[str]]:
        """The final (reasoning, content); None for an empty part, as vLLM answers."""
        body = self._body(text)
        if body is None:  # the answer was only part of a start marker
            body = ""
        reasoning, marker, content = body.partition(self.END)
        if not marker:
            return body or None, None
        return reasoning or None, content or None

    def split_so_far(self, text: str) -> ReasoningSplit:
        """What a stream may send of a growing answer: reasoning up to a possible partial end
        marker, and the content once the end marker is whole."""
        body = self._body(text)
        if body is None:
            return ReasoningSplit("", None)
        end = body.find(self.END)
        if end >= 0:
            return ReasoningSplit(body[:end], body[end + len(self.END):])
        return ReasoningSplit(body[:len(body) - marker_prefix_overlap(body, self.END)], None)


    def count_reasoning_tokens(self, token_ids: Sequence[int], text: str, tokenizer: Any) -> int:
        """How many generated tokens (`token_ids`, decoding to `text`) are reasoning: those
        before the end marker, the markers not counted. Where the markers are not single
        tokens, the reasoning text's own token count stands in."""
        reasoning, _ = self.split(text)
        if not reasoning:
            return 0
        start, end = (_single_token(tokenizer, marker) for marker in (self.START, self.END))
        if end is None:
            return len(tokenizer.encode(reasoning, add_special_tokens=False))
        count = 0
        for token in token_ids:
            if token == end:
                break
            count += token != start
        return count


def _single_token(tokenizer: Any, text: str) -> Optional[int]:
    ids = tokenizer.encode(text, add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None


class DeepSeekR1ReasoningParser(ThinkReasoningParser):
    name = "deepseek_r1"


class Qwen3ReasoningParser(ThinkReasoningParser):
    name = "qwen3"
    follows_enable_thinking = True


REASONING_PARSERS: dict[str, type[ThinkReasoningParser]] = {
    cls.name: cls for cls in (DeepSeekR1ReasoningParser, Qwen3ReasoningParser)
}


def make_reasoning_parser(name: str) -> ThinkReasoningParser:
    try:
        return REASONING_PARSERS[name]()
    except KeyError:
        raise ValueError(f"reasoning_parser: unknown parser {name!r}; "
                         f"available: {sorted(REASONING_PARSERS)}") from None
