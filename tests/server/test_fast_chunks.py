"""FastChunks writes exactly the JSON the pydantic stream-chunk models serialize to."""
from __future__ import annotations

import pytest

from pagedllm.entrypoints.openai.protocol import (ChatCompletionChunk, ChatStreamChoice,
                                                  CompletionChoice, CompletionChunk, DeltaMessage)
from pagedllm.entrypoints.openai.streaming import FastChunks, sse_event

CASES = [(0, " hello", None, None), (3, "", "length", None),
         (1, 'quote " back\\slash\n', "stop", "x"), (2, "ünï 中文 😀 \u2028", "stop", 7),
         (0, "\x00\x1f", None, None)]


@pytest.mark.parametrize("index, text, finish, stop_reason", CASES)
def test_same_json_as_pydantic(index, text, finish, stop_reason):
    rid, created, model = 'cmpl-"x"', 1700000000, "tiny/model \u00e9"
    slow = sse_event(CompletionChunk(id=rid, created=created, model=model, choices=[
        CompletionChoice(index=index, text=text, logprobs=None, finish_reason=finish,
                         stop_reason=stop_reason)]))
    fast = FastChunks(rid, created, model, "text_completion").completion(index, text, finish,
                                                                         stop_reason)
    assert fast == slow
    slow_chat = sse_event(ChatCompletionChunk(id=rid, created=created, model=model, choices=[
        ChatStreamChoice(index=index, delta=DeltaMessage(content=text), finish_reason=finish,
                         stop_reason=stop_reason)]))
    fast_chat = FastChunks(rid, created, model, "chat.completion.chunk").chat(index, text, finish,
                                                                              stop_reason)
    assert fast_chat == slow_chat
