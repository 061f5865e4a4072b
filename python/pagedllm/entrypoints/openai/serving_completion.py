"""POST /v1/completions: prompt(s) as text or token ids, n choices each, streaming or not.

Choice index = prompt_index * n + completion index (OpenAI's numbering). The engine's outputs are
cumulative (vLLM's default), so each stream keeps, per choice, how much text / how many tokens /
logprobs it already sent and emits only the new part.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Optional

from pagedllm.entrypoints.openai.errors import APIError, BadRequestError, sse_error_event
from pagedllm.entrypoints.openai.metrics import RequestTimer
from pagedllm.entrypoints.openai.protocol import (
    CompletionChoice,
    CompletionChunk,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    random_id,
)
from pagedllm.entrypoints.openai.serving_engine import (
    EngineCall,
    OpenAIServing,
    PreparedPrompt,
    logger,
    merge_async_iterators,
    prompt_logprobs_json,
    sampled_logprob,
    token_text,
    top_entries,
)
from pagedllm.entrypoints.openai.streaming import SSE_DONE, FastChunks, sse_event


@dataclass
class ChoiceState:
    """What one choice of a stream has sent so far."""

    text_len: int = 0
    num_tokens: int = 0
    num_logprobs: int = 0
    text_offset: int = 0  # characters of text already sent (for logprobs.text_offset)
    echoed: bool = False
    finished: bool = False
    sent_prompt_ids: bool = False  # return_token_ids: the first chunk carries the prompt's
    token_ids: list[int] = field(default_factory=list)


@dataclass
class _PromptOnly:
    """An engine output with its generated part hidden (echo with max_tokens=0)."""

    index: int
    finish_reason: Optional[str]
    text: str = ""
    token_ids: tuple = ()
    logprobs: Optional[list] = None
    stop_reason: Optional[str] = None


class OpenAIServingCompletion(OpenAIServing):
    def prepare_prompts(self, req: CompletionRequest) -> list[PreparedPrompt]:
        return self.prompt_inputs(req.prompt, "prompt", req.truncate_prompt_tokens)

    async def create(self, req: CompletionRequest) -> tuple[Any, Optional[AsyncIterator[str]]]:
        """(response, None) for a non-streaming request, (None, SSE generator) for a stream."""
        model = self.check_model(req.model)
        prompts = self.prepare_prompts(req)
        if req.max_tokens == 0 and not req.echo:
            raise BadRequestError("max_tokens must be >= 1 unless echo is true", param="max_tokens")
        # echo with max_tokens=0 (prompt scoring): the engine needs max_tokens >= 1, so one token
        # is generated and dropped from the answer.
        max_tokens = [
            max(1, self.resolve_max_tokens(len(p.token_ids), req.max_tokens, "max_tokens"))
            for p in prompts
        ]
        want_logprobs = req.logprobs is not None
        params = [
            self.sampling_params(
                req,
                mt,
                logprobs=req.logprobs if want_logprobs else None,
                prompt_logprobs=(req.prompt_logprobs if req.prompt_logprobs is not None
                                 else req.logprobs if (req.echo and want_logprobs) else None),
            )
            for mt in max_tokens
        ]
        request_id = random_id("cmpl")
        created = int(time.time())
        calls = self.start_calls(prompts, params[0], request_id, self.lora_request(model))
        for call, sp in zip(calls, params):
            call.params = sp
        if req.stream:
            return None, self.stream(req, model, request_id, created, prompts, calls)
        try:
            return await self.full(req, model, request_id, created, prompts, calls), None
        finally:
            self.release_calls(calls)

    # ---- non-streaming ------------------------------------------------------------------

    async def full(
        self,
        req: CompletionRequest,
        model: str,
        request_id: str,
        created: int,
        prompts: list[PreparedPrompt],
        calls: list[EngineCall],
    ) -> CompletionResponse:
        timers = [RequestTimer(self.ctx.metrics) for _ in calls]
        last: dict[tuple[int, int], Any] = {}  # (prompt idx, completion idx) -> CompletionOutput
        prompt_logprobs: dict[int, Any] = {}
        seen_tokens: dict[tuple[int, int], int] = {}
        for t, p in zip(timers, prompts):
            t.on_prompt(len(p.token_ids))
        cached: dict[int, int] = {}  # prompt idx -> its tokens served by the prefix cache
        try:
            async for i, out in merge_async_iterators(*calls):
                cached[i] = out.num_cached_tokens or cached.get(i, 0)
                if out.prompt_logprobs is not None:
                    prompt_logprobs[i] = out.prompt_logprobs
                for comp in out.outputs:
                    comp = self.visible(req, comp)
                    key = (i, comp.index)
                    n_new = len(comp.token_ids) - seen_tokens.get(key, 0)
                    seen_tokens[key] = len(comp.token_ids)
                    timers[i].on_tokens(n_new)
                    last[key] = comp
                if out.finished:
                    reasons = {c.finish_reason for c in out.outputs}
                    timers[i].on_finish(next(iter(reasons)) if len(reasons) == 1 else "mixed")
        except APIError:
            raise
        except Exception as exc:
            self.on_engine_error(exc)
            raise

        choices = []
        completion_tokens = 0
        for i, prompt in enumerate(prompts):
            for j in range(req.n):
                comp = last.get((i, j))
                if comp is None:
                    raise RuntimeError(f"engine returned no output for choice {j} of prompt {i}")
                completion_tokens += len(comp.token_ids)
                text = comp.text
                logprobs = None
                state = ChoiceState()
                prefix = ""
                if req.echo:
                    prefix = self.prompt_text(prompt)
                    text = prefix + text
                if req.logprobs is not None:
                    logprobs = CompletionLogprobs()
                    if req.echo:
                        self.append_prompt_logprobs(
                            logprobs, prompt, prompt_logprobs.get(i), req.logprobs, state
                        )
                    self.append_logprobs(
                        logprobs, comp.token_ids, comp.logprobs, req.logprobs, state
                    )
                choices.append(
                    CompletionChoice(
                        index=i * req.n + j,
                        text=text,
                        logprobs=logprobs,
                        finish_reason=comp.finish_reason,
                        stop_reason=comp.stop_reason,
                        prompt_token_ids=list(prompt.token_ids) if req.return_token_ids else None,
                        token_ids=list(comp.token_ids) if req.return_token_ids else None,
                        prompt_logprobs=(prompt_logprobs_json(prompt_logprobs.get(i))
                                         if req.prompt_logprobs is not None else None),
                    )
                )
        prompt_tokens = sum(len(p.token_ids) for p in prompts)
        usage = self.usage(prompt_tokens, completion_tokens, sum(cached.values()))
        return CompletionResponse(
            id=request_id, created=created, model=model, choices=choices, usage=usage
        )

    # ---- streaming ----------------------------------------------------------------------

    async def stream(
        self,
        req: CompletionRequest,
        model: str,
        request_id: str,
        created: int,
        prompts: list[PreparedPrompt],
        calls: list[EngineCall],
    ) -> AsyncIterator[str]:
        fast = FastChunks(request_id, created, model, "text_completion")
        timers = [RequestTimer(self.ctx.metrics) for _ in calls]
        states: dict[tuple[int, int], ChoiceState] = {}
        completion_tokens = 0
        for t, p in zip(timers, prompts):
            t.on_prompt(len(p.token_ids))
        cached: dict[int, int] = {}  # prompt idx -> its tokens served by the prefix cache
        try:
            async for i, out in merge_async_iterators(*calls):
                cached[i] = out.num_cached_tokens or cached.get(i, 0)
                for comp in out.outputs:
                    comp = self.visible(req, comp)
                    key = (i, comp.index)
                    st = states.setdefault(key, ChoiceState())
                    if st.finished:
                        continue
                    new_tokens = list(comp.token_ids[st.num_tokens :])
                    timers[i].on_tokens(len(new_tokens))
                    completion_tokens += len(new_tokens)
                    st.num_tokens = len(comp.token_ids)
                    delta = comp.text[st.text_len :] if len(comp.text) >= st.text_len else ""
                    st.text_len = max(st.text_len, len(comp.text))
                    logprobs = None
                    if req.logprobs is not None:
                        logprobs = CompletionLogprobs()
                    if req.echo and not st.echoed:
                        prefix = self.prompt_text(prompts[i])
                        if logprobs is not None:
                            self.append_prompt_logprobs(
                                logprobs, prompts[i], out.prompt_logprobs, req.logprobs, st
                            )
                        delta = prefix + delta
                        st.echoed = True
                    if logprobs is not None and comp.logprobs is not None:
                        upto = len(comp.token_ids)
                        self.append_logprobs(
                            logprobs,
                            comp.token_ids[st.num_logprobs : upto],
                            comp.logprobs[st.num_logprobs : upto],
                            req.logprobs,
                            st,
                        )
                        st.num_logprobs = upto
                    finish = comp.finish_reason
                    if finish is not None:
                        st.finished = True
                    if (not delta and finish is None and not (logprobs and logprobs.tokens)
                            and not (req.return_token_ids and new_tokens)):
                        continue  # nothing printable yet (e.g. half a UTF-8 character)
                    prompt_ids = None
                    if req.return_token_ids and not st.sent_prompt_ids:
                        prompt_ids, st.sent_prompt_ids = list(prompts[i].token_ids), True
                    if logprobs is None and not req.return_token_ids:
                        yield fast.completion(i * req.n + comp.index, delta, finish,
                                              comp.stop_reason)
                        continue
                    chunk = CompletionChunk(
                        id=request_id,
                        created=created,
                        model=model,
                        choices=[
                            CompletionChoice(
                                index=i * req.n + comp.index,
                                text=delta,
                                logprobs=logprobs,
                                finish_reason=finish,
                                stop_reason=comp.stop_reason,
                                prompt_token_ids=prompt_ids,
                                token_ids=new_tokens if req.return_token_ids else None,
                            )
                        ],
                    )
                    yield sse_event(chunk)
                if out.finished:
                    reasons = {c.finish_reason for c in out.outputs}
                    timers[i].on_finish(next(iter(reasons)) if len(reasons) == 1 else "mixed")
            if req.include_usage:
                prompt_tokens = sum(len(p.token_ids) for p in prompts)
                usage = self.usage(prompt_tokens, completion_tokens, sum(cached.values()))
                yield sse_event(
                    CompletionChunk(
                        id=request_id, created=created, model=model, choices=[], usage=usage
                    )
                )
        except APIError as err:
            yield sse_error_event(err.message, err.err_type, int(err.status))
        except Exception as exc:
            logger.exception("completion stream %s failed", request_id)
            self.on_engine_error(exc)
            yield sse_error_event(
                f"Internal server error: {type(exc).__name__}", "internal_server_error", 500
            )
        finally:
            self.release_calls(calls)
        yield SSE_DONE

    # ---- helpers ------------------------------------------------------------------------

    @staticmethod
    def visible(req: CompletionRequest, comp: Any) -> Any:
        """What the client sees of one engine output (nothing generated when max_tokens=0)."""
        if req.max_tokens != 0:
            return comp
        return _PromptOnly(comp.index, "length" if comp.finish_reason is not None else None)

    def prompt_text(self, prompt: PreparedPrompt) -> str:
        if prompt.text is not None:
            return prompt.text
        return self.ctx.tokenizer.decode(prompt.token_ids)

    def append_prompt_logprobs(
        self,
        lp: CompletionLogprobs,
        prompt: PreparedPrompt,
        prompt_logprobs: Optional[list],
        num: Optional[int],
        st: ChoiceState,
    ) -> None:
        """Echoed prompt tokens: the first has no logprob (nothing precedes it)."""
        entries = list(prompt_logprobs) if prompt_logprobs is not None else []
        entries += [None] * (len(prompt.token_ids) - len(entries))
        self.append_logprobs(lp, prompt.token_ids, entries, num, st)

    def append_logprobs(
        self,
        lp: CompletionLogprobs,
        token_ids: list[int],
        entries: Optional[list],
        num: Optional[int],
        st: ChoiceState,
    ) -> None:
        tok = self.ctx.tokenizer
        for pos, tid in enumerate(token_ids):
            entry = entries[pos] if entries is not None and pos < len(entries) else None
            text = token_text(tok, tid, entry.get(tid) if entry else None)
            lp.tokens.append(text)
            lp.token_logprobs.append(sampled_logprob(entry, tid))
            if entry is None:
                lp.top_logprobs.append(None)
            else:
                top: dict[str, float] = {}
                for _, t, v in top_entries(tok, entry, num or 0):
                    top.setdefault(t, v)  # two ids may print alike (half characters): keep the best
                lp.top_logprobs.append(top)
            lp.text_offset.append(st.text_offset)
            st.text_offset += len(text)
