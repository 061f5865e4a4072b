"""OutputProcessor: core outputs (token ids) -> RequestOutputs (text, logprobs, metrics).

One RequestState per user request; it has n children, one core sequence each. Children stop
independently (a stop string stops only its child); the request is finished when all are.
Output kinds: CUMULATIVE sends all n completions with everything so far, DELTA sends the
completions that changed with only their new part, FINAL_ONLY sends one output at the end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from pagedllm.engine.core import CoreOutput
from pagedllm.engine.detokenizer import IncrementalDetokenizer, TokenTextCache, backend_decoder
from pagedllm.outputs import (
    CompletionOutput,
    Logprob,
    PromptLogprobs,
    RequestMetrics,
    RequestOutput,
)
from pagedllm.sampling_params import RequestOutputKind, SamplingParams


@dataclass(slots=True)
class ChildState:
    index: int
    handle: int
    detokenizer: IncrementalDetokenizer
    token_ids: list[int] = field(default_factory=list)
    logprobs: Optional[list[dict[int, Logprob]]] = None
    cumulative_logprob: Optional[float] = None
    finish_reason: Optional[str] = None
    stop_reason: Union[int, str, None] = None
    # How much was already sent (DELTA) — text characters, tokens, logprob entries.
    sent_text: int = 0
    sent_tokens: int = 0
    reported_final: bool = False

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(slots=True)
class RequestState:
    request_id: str
    prompt: Optional[str]
    prompt_token_ids: list[int]
    params: SamplingParams
    children: list[ChildState]
    metrics: RequestMetrics
    prompt_logprobs: Optional[PromptLogprobs] = None
    sent_prompt_logprobs: bool = False
    num_cached_tokens: int = 0
    error: Optional[BaseException] = None
    lora_request: Any = None

    @property
    def finished(self) -> bool:
        children = self.children
        if len(children) == 1:  # n == 1, the common case
            return children[0].finish_reason is not None
        return all(c.finish_reason is not None for c in children)


class OutputProcessor:
    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.token_text = TokenTextCache(tokenizer) if tokenizer is not None else None
        # One shared fast decode (and its single-token memo) for every request's detokenizer.
        self._fast_decode = backend_decoder(tokenizer) if tokenizer is not None else None
        self.requests: dict[str, RequestState] = {}
        self.handle_to_child: dict[int, tuple[RequestState, ChildState]] = {}

    # -- bookkeeping ------------------------------------------------------------------------------
    def add_request(
        self,
        request_id: str,
        prompt: Optional[str],
        prompt_token_ids: list[int],
        params: SamplingParams,
        handles: list[int],
        arrival_time: float,
        lora_request: Any = None,
    ) -> RequestState:
        children = []
        for index, handle in enumerate(handles):
            detok = IncrementalDetokenizer(
                self.tokenizer, prompt_token_ids, params, self._fast_decode
            )
            child = ChildState(index, handle, detok)
            if params.logprobs is not None:
                child.logprobs, child.cumulative_logprob = [], 0.0
            children.append(child)
        state = RequestState(
            request_id,
            prompt,
            list(prompt_token_ids),
            params,
            children,
            RequestMetrics(arrival_time=arrival_time, last_token_time=arrival_time),
        )
        state.lora_request = lora_request
        if params.prompt_logprobs is not None:
            state.prompt_logprobs = [None]
        self.requests[request_id] = state
        for child in children:
            self.handle_to_child[child.handle] = (state, child)
        return state

    def has_request(self, request_id: str) -> bool:
        return request_id in self.requests

    def unfinished_handles(self, request_id: str) -> list[int]:
        state = self.requests.get(request_id)
        if state is None:
            return []
        return [c.handle for c in state.children if not c.finished]

    def _forget(self, state: RequestState) -> None:
        self.requests.pop(state.request_id, None)
        for c in state.children:
            self.handle_to_child.pop(c.handle, None)

    # -- processing -----------------------------------------------------------------------------
    def process_outputs(self, outputs: list[CoreOutput]) -> tuple[list[RequestOutput], list[int]]:
        """Returns the RequestOutputs to deliver and the handles the core must abort (children
        stopped by a stop string, which only Python can see)."""
        now = time.time()
        touched: dict[str, RequestState] = {}
        to_abort: list[int] = []
        handle_to_child = self.handle_to_child
        for out in outputs:
            entry = handle_to_child.get(out.handle)
            if entry is None:
                continue
            state, child = entry
            if child.finish_reason is not None:
                continue
            touched[state.request_id] = state
            m = state.metrics
            if out.first_scheduled_time is not None and m.first_scheduled_time is None:
                m.first_scheduled_time = out.first_scheduled_time
                m.time_in_queue = out.first_scheduled_time - m.arrival_time
            if out.new_prompt_logprobs and state.prompt_logprobs is not None:
                self._decode_logprobs(out.new_prompt_logprobs)
                state.prompt_logprobs.extend(out.new_prompt_logprobs)
            new_token_ids = out.new_token_ids
            if not new_token_ids and out.finish_reason is None:
                continue
            if child.index == 0:
                state.num_cached_tokens = out.num_cached_tokens
            if new_token_ids:
                if m.first_token_time is None:
                    m.first_token_time = now
                m.last_token_time = now
            child.token_ids.extend(new_token_ids)
            if out.new_logprobs and child.logprobs is not None:
                self._decode_logprobs(out.new_logprobs)
                child.logprobs.extend(out.new_logprobs)
                for lp_dict, tid in zip(out.new_logprobs, out.new_token_ids):
                    child.cumulative_logprob += lp_dict[tid].logprob
            stop_terminated = out.finish_reason == "stop"
            stop_string = child.detokenizer.update(new_token_ids, stop_terminated)
            if stop_string is not None:
                child.finish_reason, child.stop_reason = "stop", stop_string
                if out.finish_reason is None:
                    to_abort.append(child.handle)
            elif out.finish_reason is not None:
                flushed_stop = None if stop_terminated else child.detokenizer.finish()
                if flushed_stop is not None:
                    child.finish_reason, child.stop_reason = "stop", flushed_stop
                else:
                    child.finish_reason, child.stop_reason = out.finish_reason, out.stop_reason
            if child.finish_reason is not None:
                handle_to_child.pop(child.handle, None)
        results = []
        for state in touched.values():
            ro = self._make_output(state, now)
            if ro is not None:
                results.append(ro)
            if state.finished:
                self._forget(state)
        return results, to_abort

    def abort_request(self, request_id: str) -> Optional[RequestOutput]:
        """Mark every unfinished child aborted; returns the final output to deliver."""
        state = self.requests.get(request_id)
        if state is None:
            return None
        for child in state.children:
            if not child.finished:
                child.detokenizer.finish()
                child.finish_reason = "abort"
        ro = self._make_output(state, time.time())
        self._forget(state)
        return ro

    def fail_handles(self, handles: list[int], error: BaseException) -> list[str]:
        """A step failed: the requests owning these handles are dropped. Returns their ids and
        their other still-running handles are left for the caller to abort."""
        failed: list[str] = []
        for h in handles:
            entry = self.handle_to_child.get(h)
            if entry is None:
                continue
            state = entry[0]
            if state.request_id not in failed:
                state.error = error
                failed.append(state.request_id)
        return failed

    def pop_failed(self, request_id: str) -> list[int]:
        """Forget a failed request; returns its handles that may still live in the core."""
        state = self.requests.get(request_id)
        if state is None:
            return []
        handles = [c.handle for c in state.children if not c.finished]
        self._forget(state)
        return handles

    # -- building outputs -------------------------------------------------------------------------
    def _decode_logprobs(self, entries: list[dict[int, Logprob]]) -> None:
        if self.token_text is None:
            return
        for d in entries:
            for tid, lp in d.items():
                lp.decoded_token = self.token_text(tid)

    def _make_output(self, state: RequestState, now: float) -> Optional[RequestOutput]:
        kind = state.params.output_kind
        children = state.children
        if len(children) == 1 and kind == RequestOutputKind.CUMULATIVE:
            return self._make_single_cumulative(state, children[0], now)
        finished = state.finished
        if finished:
            state.metrics.finished_time = now
        if kind == RequestOutputKind.FINAL_ONLY and not finished:
            return None
        delta = kind == RequestOutputKind.DELTA
        completions = []
        for child in state.children:
            c_finished = child.finished
            text_end = child.detokenizer.releasable_text_len(c_finished)
            if delta:
                new_tokens = child.token_ids[child.sent_tokens :]
                new_text = child.detokenizer.text[child.sent_text : text_end]
                # A child that is quiet this step is left out of a delta, unless it just ended.
                if (
                    not new_tokens
                    and not new_text
                    and not (c_finished and not child.reported_final)
                ):
                    continue
                completions.append(
                    CompletionOutput(
                        child.index,
                        new_text,
                        new_tokens,
                        child.cumulative_logprob,
                        child.logprobs[child.sent_tokens :] if child.logprobs is not None else None,
                        child.finish_reason,
                        child.stop_reason,
                    )
                )
            else:
                completions.append(
                    CompletionOutput(
                        child.index,
                        child.detokenizer.text[:text_end],
                        list(child.token_ids),
                        child.cumulative_logprob,
                        list(child.logprobs) if child.logprobs is not None else None,
                        child.finish_reason,
                        child.stop_reason,
                    )
                )
            child.sent_tokens = len(child.token_ids)
            child.sent_text = text_end
            if c_finished:
                child.reported_final = True
        prompt_logprobs = state.prompt_logprobs
        if delta and prompt_logprobs is not None:
            # Prompt logprobs go out once, with the first output after the prompt is scored.
            if state.sent_prompt_logprobs or len(prompt_logprobs) < len(state.prompt_token_ids):
                prompt_logprobs = None
            else:
                state.sent_prompt_logprobs = True
        return RequestOutput(
            request_id=state.request_id,
            prompt=state.prompt,
            prompt_token_ids=state.prompt_token_ids,
            prompt_logprobs=prompt_logprobs,
            outputs=completions,
            finished=finished,
            metrics=state.metrics,
            lora_request=state.lora_request,
            num_cached_tokens=state.num_cached_tokens,
        )

    def _make_single_cumulative(
        self, state: RequestState, child: ChildState, now: float
    ) -> RequestOutput:
        """_make_output for the default shape (n == 1, CUMULATIVE) without the general loop:
        the same fields, built straight (one output per request per step makes this hot)."""
        finished = child.finish_reason is not None
        if finished:
            state.metrics.finished_time = now
            child.reported_final = True
        detok = child.detokenizer
        text_end = detok.releasable_text_len(finished)
        token_ids = child.token_ids
        logprobs = child.logprobs
        completion = CompletionOutput(
            child.index,
            detok.text[:text_end],
            list(token_ids),
            child.cumulative_logprob,
            list(logprobs) if logprobs is not None else None,
            child.finish_reason,
            child.stop_reason,
        )
        child.sent_tokens = len(token_ids)
        child.sent_text = text_end
        return RequestOutput(
            request_id=state.request_id,
            prompt=state.prompt,
            prompt_token_ids=state.prompt_token_ids,
            prompt_logprobs=state.prompt_logprobs,
            outputs=[completion],
            finished=finished,
            metrics=state.metrics,
            lora_request=state.lora_request,
            num_cached_tokens=state.num_cached_tokens,
        )
