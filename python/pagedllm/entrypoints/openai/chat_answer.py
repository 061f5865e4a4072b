"""How one chat choice's text becomes its answer: reasoning (with --reasoning-parser), then
content and tool calls (tool_calls.py) in what follows the reasoning.

`ChatAnswerFormat.final` reads a finished text; `ChatAnswerStream` reads a growing one and says
what is new. Invariant: what a stream sends adds up to what `final` answers for the same text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from pagedllm.entrypoints.openai.tool_calls import ToolCallDelta, ToolCallStream, ToolChoice
from pagedllm.entrypoints.openai.tool_parsers import ParsedToolCall
from pagedllm.reasoning import ThinkReasoningParser


@dataclass
class ChatAnswer:
    reasoning: Optional[str]
    content: Optional[str]
    calls: list[ParsedToolCall]
    finish_reason: Optional[str]


@dataclass
class ChatAnswerFormat:
    tools: ToolChoice
    reasoner: Optional[ThinkReasoningParser] = None  # None: the answer has no reasoning part
    include_reasoning: bool = True

    @property
    def is_plain_text(self) -> bool:
        """The whole text is content: the stream may take its fast path."""
        return self.reasoner is None and not self.tools.answers_with_calls

    def final(self, text: str, engine_finish: Optional[str]) -> ChatAnswer:
        reasoning, content = (self.reasoner.split(text) if self.reasoner is not None
                              else (None, text))
        calls: list[ParsedToolCall] = []
        if self.tools.answers_with_calls and content is not None:
            parsed = self.tools.parse(content)
            content, calls = parsed.content, parsed.calls
        return ChatAnswer(reasoning if self.include_reasoning else None, content, calls,
                          self.tools.finish_reason(engine_finish, bool(calls)))


@dataclass
class ChatAnswerDelta:
    reasoning: str = ""
    content: str = ""
    calls: list[tuple[int, Optional[str], Optional[str], str]] = field(default_factory=list)
    finish_reason: Optional[str] = None

    @property
    def empty(self) -> bool:
        return not (self.reasoning or self.content or self.calls or self.finish_reason)


class ChatAnswerStream:
    """One choice's answer as its text grows (feed the whole text each time)."""

    def __init__(self, fmt: ChatAnswerFormat) -> None:
        self.fmt = fmt
        self.reasoning_sent = 0
        self.content_sent = 0
        self.tool_stream = ToolCallStream(fmt.tools) if fmt.tools.answers_with_calls else None

    def feed(self, text: str, engine_finish: Optional[str]) -> ChatAnswerDelta:
        finished = engine_finish is not None
        out = ChatAnswerDelta()
        content: Optional[str] = text
        reasoner = self.fmt.reasoner
        if reasoner is not None:
            if finished:
                reasoning, content = reasoner.split(text)
                reasoning = reasoning or ""
            else:
                so_far = reasoner.split_so_far(text)
                reasoning, content = so_far.reasoning, so_far.content
            if self.fmt.include_reasoning:
                out.reasoning = reasoning[self.reasoning_sent:]
            self.reasoning_sent = max(self.reasoning_sent, len(reasoning))
        if content:  # "" right after the reasoning: nothing for the tool stream to read yet
            if self.tool_stream is not None:
                news: ToolCallDelta = (self.tool_stream.finish(content) if finished
                                       else self.tool_stream.feed(content))
                out.content, out.calls = news.content, news.calls
            else:
                out.content = content[self.content_sent:]
                self.content_sent = max(self.content_sent, len(content))
        called = self.tool_stream is not None and self.tool_stream.called
        out.finish_reason = self.fmt.tools.finish_reason(engine_finish, called)
        return out
