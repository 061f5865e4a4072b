"""POST /v1/responses (and GET /v1/responses/{id}): OpenAI's Responses API on the chat path.

A request becomes chat messages (instructions, the stored conversation of
`previous_response_id`, its input items) and the chat request they amount to; the chat
endpoint's plan renders it, builds its sampling params and says how to read the answer
(reasoning, content, tool calls), so both endpoints answer the same text the same way. Only the
answer's shape differs: output items (responses_output.py) instead of choices, and typed
stream events instead of chunks. Finished responses are kept for continuation when the server
runs with --enable-responses-store (response_store.py).
"""

from __future__ import annotations

import time
from typing import Any, AsyncIterator, Optional

from pydantic import ValidationError

from pagedllm.entrypoints.openai.chat_answer import ChatAnswerStream
from pagedllm.entrypoints.openai.errors import (
    APIError,
    BadRequestError,
    ResponseNotFoundError,
    validation_error_message,
)
from pagedllm.entrypoints.openai.metrics import RequestTimer
from pagedllm.entrypoints.openai.protocol import ChatMessage
from pagedllm.entrypoints.openai.protocol_responses import (
    CHAT_TO_RESPONSES_PARAMS,
    IncompleteDetails,
    InputTokensDetails,
    OutputItem,
    OutputTokensDetails,
    ResponsesRequest,
    ResponsesResponse,
    ResponsesUsage,
    conversation,
    new_id,
    parse_input_item,
)
from pagedllm.entrypoints.openai.response_store import ResponseStore, StoredResponse
from pagedllm.entrypoints.openai.responses_output import ResponseEventStream, output_items
from pagedllm.entrypoints.openai.serving_chat import ChatPlan, OpenAIServingChat
from pagedllm.entrypoints.openai.serving_engine import (
    AdmissionControl,
    EngineCall,
    OpenAIServing,
    ServerContext,
    logger,
    merge_async_iterators,
)


class OpenAIServingResponses(OpenAIServing):
    def __init__(self, ctx: ServerContext, admission: AdmissionControl,
                 store: Optional[ResponseStore] = None) -> None:
        super().__init__(ctx, admission)
        self.chat = OpenAIServingChat(ctx, admission)
        self.store = store  # None: nothing is kept (the server's default, as vLLM's)

    async def create(self, req: ResponsesRequest) -> tuple[Any, Optional[AsyncIterator[str]]]:
        # The conversation so far without the instructions, which do not carry over.
        history = req.input_messages()
        if req.previous_response_id is not None:
            earlier = self.stored(req.previous_response_id, "previous_response_id")
            history = earlier.conversation + history
        plan = self.plan(req, req.instructions_messages() + history)
        response_id = new_id("resp")
        created = int(time.time())
        calls = self.start_calls([plan.prompt], plan.params, response_id,
                                 self.lora_request(plan.model))
        if req.stream:
            return None, self.stream(req, plan, response_id, created, calls, history)
        try:
            return await self.full(req, plan, response_id, created, calls, history), None
        finally:
            self.release_calls(calls)

    def stored(self, response_id: str, param: str) -> StoredResponse:
        entry = self.store.get(response_id) if self.store is not None else None
        if entry is None:
            raise ResponseNotFoundError(response_id, param)
        return entry

    def retrieve(self, response_id: str) -> ResponsesResponse:
        return self.stored(response_id, "response_id").response

    def plan(self, req: ResponsesRequest, messages: list[ChatMessage]) -> ChatPlan:
        """The chat endpoint's plan for these messages; its errors name this endpoint's fields."""
        if not messages:
            raise BadRequestError("input is empty: give a string or at least one item",
                                  param="input")
        try:
            return self.chat.plan(req.chat_request(messages), max_tokens_param="max_output_tokens")
        except ValidationError as exc:
            message, param = validation_error_message(list(exc.errors()))
            raise BadRequestError(message, param=CHAT_TO_RESPONSES_PARAMS.get(param, param)
                                  ) from None
        except APIError as err:
            err.param = CHAT_TO_RESPONSES_PARAMS.get(err.param, err.param)
            raise

    async def full(self, req: ResponsesRequest, plan: ChatPlan, response_id: str, created: int,
                   calls: list[EngineCall], history: list[ChatMessage]) -> ResponsesResponse:
        done = await self.chat.finish(calls, plan.prompt)
        comp = done.completions.get(0)
        if comp is None:
            raise RuntimeError("engine returned no output")
        incomplete = comp.finish_reason == "length"
        answer = plan.fmt.final(comp.text, comp.finish_reason)
        output = output_items(answer, plan.fmt.tools.call_id, incomplete)
        response = self.response(req, plan, response_id, created, output, incomplete,
                                 self.usage(plan, comp, done.num_cached_tokens))
        self.remember(req, response, history)
        return response

    async def stream(self, req: ResponsesRequest, plan: ChatPlan, response_id: str,
                     created: int, calls: list[EngineCall],
                     history: list[ChatMessage]) -> AsyncIterator[str]:
        events = ResponseEventStream()
        answer = ChatAnswerStream(plan.fmt)
        timer = RequestTimer(self.ctx.metrics)
        timer.on_prompt(len(plan.prompt.token_ids))
        last: Any = None  # the latest CompletionOutput
        num_cached = 0
        try:
            started = self.response(req, plan, response_id, created, [], None, None)
            yield events.lifecycle("response.created", started)
            yield events.lifecycle("response.in_progress", started)
            async for _, out in merge_async_iterators(*calls):
                for comp in out.outputs:  # one choice
                    timer.on_tokens(len(comp.token_ids) - (len(last.token_ids) if last else 0))
                    last = comp
                    for event in events.feed(answer.feed(comp.text, comp.finish_reason)):
                        yield event
                if out.finished:
                    num_cached = getattr(out, "num_cached_tokens", None) or 0
                    timer.on_finish(out.outputs[0].finish_reason if out.outputs else None)
            if last is None:
                raise RuntimeError("engine returned no output")
            incomplete = last.finish_reason == "length"
            for event in events.close(incomplete):
                yield event
            response = self.response(req, plan, response_id, created, events.items, incomplete,
                                     self.usage(plan, last, num_cached))
            self.remember(req, response, history)
            yield events.lifecycle("response.incomplete" if incomplete else "response.completed",
                                   response)
        except APIError as err:
            yield events.error(err.message, str(err.code or err.err_type), err.param)
        except Exception as exc:
            logger.exception("responses stream %s failed", response_id)
            self.on_engine_error(exc)
            yield events.error(f"Internal server error: {type(exc).__name__}",
                               "internal_server_error")
        finally:
            self.release_calls(calls)

    def usage(self, plan: ChatPlan, comp: Any, num_cached: int) -> ResponsesUsage:
        n_in, n_out = len(plan.prompt.token_ids), len(comp.token_ids)
        reasoner = plan.fmt.reasoner  # counted even when include_reasoning leaves the text out
        reasoning = (reasoner.count_reasoning_tokens(comp.token_ids, comp.text,
                                                     self.ctx.tokenizer)
                     if reasoner is not None else 0)
        return ResponsesUsage(
            input_tokens=n_in, input_tokens_details=InputTokensDetails(cached_tokens=num_cached),
            output_tokens=n_out, output_tokens_details=OutputTokensDetails(
                reasoning_tokens=reasoning),
            total_tokens=n_in + n_out)

    def response(self, req: ResponsesRequest, plan: ChatPlan, response_id: str, created: int,
                 output: list[OutputItem], incomplete: Optional[bool],
                 usage: Optional[ResponsesUsage]) -> ResponsesResponse:
        """The response object; `incomplete` None: still in progress."""
        status = ("in_progress" if incomplete is None
                  else "incomplete" if incomplete else "completed")
        return ResponsesResponse(
            id=response_id,
            created_at=created,
            status=status,
            completed_at=int(time.time()) if status == "completed" else None,
            incomplete_details=IncompleteDetails() if incomplete else None,
            instructions=req.instructions,
            max_output_tokens=req.max_output_tokens,
            metadata=req.metadata or {},
            model=plan.model,
            output=list(output),
            parallel_tool_calls=req.parallel_tool_calls,
            previous_response_id=req.previous_response_id,
            reasoning=req.reasoning or {},
            store=self.keeps(req),
            temperature=plan.params.temperature,
            top_p=plan.params.top_p,
            text=req.text or {},
            tool_choice=req.echoed_tool_choice,
            tools=req.tools,
            truncation=req.truncation,
            usage=usage,
            user=req.user,
        )

    def keeps(self, req: ResponsesRequest) -> bool:
        return self.store is not None and req.store

    def remember(self, req: ResponsesRequest, response: ResponsesResponse,
                 history: list[ChatMessage]) -> None:
        """Keeps a finished response with its conversation: the earlier turns, this input and
        the output, read back the way a client's sent-back output items would be."""
        if not self.keeps(req):
            return
        answer = [parse_input_item(item.model_dump(mode="json"), i)
                  for i, item in enumerate(response.output)]
        self.store.put(response.id, StoredResponse(response, history + conversation(answer)))
