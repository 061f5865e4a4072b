"""The finished responses /v1/responses keeps for `previous_response_id` and retrieval: in
memory, the most recently stored or used first, at most `max_entries` (the oldest go first).

Off unless the server runs with --enable-responses-store (vLLM's VLLM_ENABLE_RESPONSES_API_STORE):
then `store` (true by default, as OpenAI's) keeps a response; without it nothing is kept and
every `previous_response_id` is unknown (404), as in vLLM.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional


@dataclass
class StoredResponse:
    response: Any  # ResponsesResponse, as it was answered
    # The conversation after this response, as chat messages, without the request's
    # instructions (they do not carry over to a continuation, as in OpenAI's API).
    conversation: list[Any]


class ResponseStore:
    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError("max_stored_responses: must be >= 1")
        self.max_entries = max_entries
        self._entries: OrderedDict[str, StoredResponse] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, response_id: str, entry: StoredResponse) -> None:
        self._entries[response_id] = entry
        self._entries.move_to_end(response_id)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def get(self, response_id: str) -> Optional[StoredResponse]:
        entry = self._entries.get(response_id)
        if entry is not None:
            self._entries.move_to_end(response_id)  # a conversation in use stays
        return entry
