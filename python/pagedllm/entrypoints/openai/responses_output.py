"""How a chat answer (chat_answer.py) becomes /v1/responses output: items all at once for a full
response (`output_items`), or the stream's server-sent events (`ResponseEventStream`).

Items come in the order the model wrote them: reasoning, a message, function calls. A stream
opens an item when its first text arrives and closes it (`.done` events) when the next one
opens or the answer ends; its events carry `sequence_number`s 0, 1, 2, ... Invariant: the items
a stream's events build are those `output_items` makes of the same answer, ids aside.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from pagedllm.entrypoints.openai.chat_answer import ChatAnswer, ChatAnswerDelta
from pagedllm.entrypoints.openai.protocol_responses import (
    FunctionCallItem,
    OutputItem,
    OutputMessage,
    OutputText,
    ReasoningItem,
    ReasoningText,
    ResponsesResponse,
    new_id,
)


def _reasoning(id_: str, text: str, status: str) -> ReasoningItem:
    return ReasoningItem(id=id_, content=[ReasoningText(text=text)], status=status)


def _message(id_: str, text: str, status: str) -> OutputMessage:
    return OutputMessage(id=id_, status=status, content=[OutputText(text=text)])


def output_items(answer: ChatAnswer, call_id: Callable[[], str],
                 incomplete: bool) -> list[OutputItem]:
    """A finished answer's items; the last one is "incomplete" when the answer was cut short."""
    items: list[OutputItem] = []
    if answer.reasoning:
        items.append(_reasoning(new_id("rs"), answer.reasoning, "completed"))
    if answer.content:
        items.append(_message(new_id("msg"), answer.content, "completed"))
    for call in answer.calls:
        items.append(FunctionCallItem(id=new_id("fc"), call_id=call_id(), name=call.name,
                                      arguments=call.arguments, status="completed"))
    if incomplete and items:
        items[-1].status = "incomplete"
    return items


@dataclass
class _OpenItem:
    kind: str  # "reasoning", "message" or "function_call"
    id: str
    output_index: int
    text: str = ""  # the reasoning, the message text, or the call's arguments so far
    call_id: str = ""
    name: str = ""


@dataclass
class ResponseEventStream:
    """One response's events, as SSE text. `items` are the output items closed so far."""

    sequence_number: int = 0
    items: list[OutputItem] = field(default_factory=list)
    current: Optional[_OpenItem] = None

    def event(self, type_: str, **fields: Any) -> str:
        body = {"type": type_, "sequence_number": self.sequence_number, **fields}
        self.sequence_number += 1
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
        return f"event: {type_}\ndata: {data}\n\n"

    def lifecycle(self, type_: str, response: ResponsesResponse) -> str:
        """response.created / .in_progress / .completed / .incomplete: the whole response."""
        return self.event(type_, response=response.model_dump(mode="json"))

    def error(self, message: str, code: Optional[str], param: Optional[str] = None) -> str:
        return self.event("error", code=code, message=message, param=param)

    def feed(self, delta: ChatAnswerDelta) -> list[str]:
        """The events for what a stream step added to the answer."""
        events: list[str] = []
        if delta.reasoning:
            events += self._add_text("reasoning", delta.reasoning)
        if delta.content:
            events += self._add_text("message", delta.content)
        for _, call_id, name, arguments in delta.calls:
            if call_id is not None:  # a call's first piece names it
                events += self.close(incomplete=False)
                events += self._open(_OpenItem("function_call", new_id("fc"), len(self.items),
                                               call_id=call_id, name=name or ""))
            if arguments and self.current is not None and self.current.kind == "function_call":
                self.current.text += arguments
                events.append(self.event("response.function_call_arguments.delta",
                                         item_id=self.current.id,
                                         output_index=self.current.output_index,
                                         delta=arguments))
        return events

    def close(self, incomplete: bool) -> list[str]:
        """Closes the open item, if any: "incomplete" when the answer was cut short in it."""
        item = self.current
        if item is None:
            return []
        self.current = None
        status = "incomplete" if incomplete else "completed"
        where = dict(item_id=item.id, output_index=item.output_index)
        events = []
        if item.kind == "function_call":
            done: OutputItem = FunctionCallItem(id=item.id, call_id=item.call_id, name=item.name,
                                                arguments=item.text, status=status)
            events.append(self.event("response.function_call_arguments.done", **where,
                                     name=item.name, arguments=item.text))
        else:
            if item.kind == "reasoning":
                done = _reasoning(item.id, item.text, status)
                part = done.content[0]
                events.append(self.event("response.reasoning_text.done", **where,
                                         content_index=0, text=item.text))
            else:
                done = _message(item.id, item.text, status)
                part = done.content[0]
                events.append(self.event("response.output_text.done", **where, content_index=0,
                                         text=item.text, logprobs=[]))
            events.append(self.event("response.content_part.done", **where, content_index=0,
                                     part=part.model_dump(mode="json")))
        events.append(self.event("response.output_item.done", output_index=item.output_index,
                                 item=done.model_dump(mode="json")))
        self.items.append(done)
        return events

    def _add_text(self, kind: str, text: str) -> list[str]:
        events: list[str] = []
        if self.current is None or self.current.kind != kind:
            events += self.close(incomplete=False)
            prefix = "rs" if kind == "reasoning" else "msg"
            events += self._open(_OpenItem(kind, new_id(prefix), len(self.items)))
        item = self.current
        item.text += text
        where = dict(item_id=item.id, output_index=item.output_index, content_index=0)
        if kind == "reasoning":
            events.append(self.event("response.reasoning_text.delta", **where, delta=text))
        else:
            events.append(self.event("response.output_text.delta", **where, delta=text,
                                     logprobs=[]))
        return events

    def _open(self, item: _OpenItem) -> list[str]:
        self.current = item
        if item.kind == "function_call":
            added: OutputItem = FunctionCallItem(id=item.id, call_id=item.call_id,
                                                 name=item.name, arguments="",
                                                 status="in_progress")
            part = None
        elif item.kind == "reasoning":
            added = ReasoningItem(id=item.id, content=[], status="in_progress")
            part = ReasoningText(text="")
        else:
            added = OutputMessage(id=item.id, status="in_progress", content=[])
            part = OutputText(text="")
        events = [self.event("response.output_item.added", output_index=item.output_index,
                             item=added.model_dump(mode="json"))]
        if part is not None:
            events.append(self.event("response.content_part.added", item_id=item.id,
                                     output_index=item.output_index, content_index=0,
                                     part=part.model_dump(mode="json")))
        return events
