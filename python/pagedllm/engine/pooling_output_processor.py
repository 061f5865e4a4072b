"""PoolingOutputProcessor: a pooling engine's core outputs -> PoolingRequestOutputs.

It stands in for OutputProcessor in a pooling engine (the same methods LLMEngine and
AsyncLLMEngine call). A pooling request has one core sequence and one output: its last.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from pagedllm.engine.core import CoreOutput
from pagedllm.outputs import PoolingOutput, PoolingRequestOutput
from pagedllm.pooling_params import PoolingParams


@dataclass(slots=True)
class PoolingState:
    request_id: str
    prompt: Optional[str]
    prompt_token_ids: list[int]
    params: PoolingParams
    handle: int
    error: Optional[BaseException] = None


class PoolingOutputProcessor:
    def __init__(self) -> None:
        self.requests: dict[str, PoolingState] = {}
        self._by_handle: dict[int, PoolingState] = {}

    def add_request(self, request_id: str, prompt: Optional[str], prompt_token_ids: list[int],
                    params: PoolingParams, handles: list[int], arrival_time: float,
                    lora_request: Any = None) -> PoolingState:
        state = PoolingState(request_id, prompt, list(prompt_token_ids), params, handles[0])
        self.requests[request_id] = state
        self._by_handle[state.handle] = state
        return state

    def has_request(self, request_id: str) -> bool:
        return request_id in self.requests

    def unfinished_handles(self, request_id: str) -> list[int]:
        state = self.requests.get(request_id)
        return [] if state is None else [state.handle]

    def _forget(self, state: PoolingState) -> None:
        self.requests.pop(state.request_id, None)
        self._by_handle.pop(state.handle, None)

    def process_outputs(
        self, outputs: list[CoreOutput]
    ) -> tuple[list[PoolingRequestOutput], list[int]]:
        results = []
        for out in outputs:
            state = self._by_handle.get(out.handle)
            if state is None or out.pooled is None:
                continue
            self._forget(state)
            results.append(PoolingRequestOutput(
                state.request_id, PoolingOutput(out.pooled), state.prompt_token_ids, True,
                out.num_cached_tokens, state.prompt))
        return results, []

    def abort_request(self, request_id: str) -> Optional[PoolingRequestOutput]:
        """An aborted request ends with no data (outputs None)."""
        state = self.requests.get(request_id)
        if state is None:
            return None
        self._forget(state)
        return PoolingRequestOutput(request_id, None, state.prompt_token_ids, True, 0,
                                    state.prompt)

    def fail_handles(self, handles: list[int], error: BaseException) -> list[str]:
        failed = []
        for h in handles:
            state = self._by_handle.get(h)
            if state is not None and state.request_id not in failed:
                state.error = error
                failed.append(state.request_id)
        return failed

    def pop_failed(self, request_id: str) -> list[int]:
        state = self.requests.get(request_id)
        if state is None:
            return []
        self._forget(state)
        return [state.handle]
