"""POST /v1/chat/completions: messages rendered with the chat template, n choices, streaming or not.

The stream opens each choice with a `{"role": "assistant", "content": ""}` delta, then one chunk
per new text piece; finish_reason rides on the last content chunk; a usage chunk (no choices)
follows when stream_options.include_usage is set. With tools, answers may be tool calls
(tool_calls.py says when); their stream chunks carry `tool_calls` deltas instead of content.
With --reasoning-parser the reasoning comes apart from the content (chat_answer.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Optional

import jinja2

from pagedllm.entrypoints.openai.chat_answer import (
    ChatAnswerDelta,
    ChatAnswerFormat,
    ChatAnswerStream,
)
from pagedllm.entrypoints.openai.errors import APIError, BadRequestError, sse_error_event
from pagedllm.entrypoints.openai.metrics import RequestTimer
from pagedllm.entrypoints.openai.protocol import (
    ChatChoiceLogprobs,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessage,
    ChatResponseMessage,
    ChatStreamChoice,
    ChatTokenLogprob,
    ChatTopLogprob,
    DeltaFunctionCall,
    DeltaMessage,
    DeltaToolCall,
    FunctionCall,
    ToolCall,
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
from pagedllm.entrypoints.openai.tool_calls import ToolChoice
from pagedllm.entrypoints.openai.tool_parsers import make_tool_parser, tool_call_ids
from pagedllm.reasoning import make_reasoning_parser

# Arguments of apply_chat_template a client must not override through chat_template_kwargs.
_RESERVED_TEMPLATE_KWARGS = {
    "conversation",
    "chat_template",
    "tokenize",
    "add_generation_prompt",
    "return_dict",
    "return_tensors",
    "padding",
    "truncation",
    "max_length",
    "tokenizer_kwargs",
    "return_assistant_tokens_mask",
    "continue_final_message",
    "tools",  # the request's own field
}


def render_chat(
    tokenizer: Any,
    messages: list[ChatMessage],
    chat_template: Optional[str],
    add_generation_prompt: bool,
    template_kwargs: Optional[dict] = None,
    tools: Optional[list[dict]] = None,
    continue_final_message: bool = False,
    add_special_tokens: bool = False,
) -> list[int]:
    """Token ids of the conversation rendered by the chat template (400 on any template problem).
    `tools` (OpenAI's tool objects as dicts) reach the template as its `tools` variable;
    `continue_final_message` leaves the last message open for the reply to continue;
    `add_special_tokens` adds the tokenizer's own (BOS) to what the template wrote."""
    template = chat_template or getattr(tokenizer, "chat_template", None)
    if not template:
        raise BadRequestError(
            "This model has no chat template and the server was started without "
            "--chat-template, so chat completions are unavailable.",
            param="messages",
        )
    try:
        conversation = [m.template_dict() for m in messages]
    except ValueError as exc:
        raise BadRequestError(str(exc), param="messages") from exc
    extra = {
        k: v
        for k, v in (template_kwargs or {}).items()
        if isinstance(k, str) and k not in _RESERVED_TEMPLATE_KWARGS
    }
    if tools is not None:
        extra["tools"] = tools
    try:
        text = tokenizer.apply_chat_template(
            conversation,
            chat_template=template,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            **extra,
        )
    except (jinja2.TemplateError, ValueError, TypeError, KeyError, IndexError) as exc:
        raise BadRequestError(
            f"The chat template could not render these messages: {exc}", param="messages"
        ) from exc
    if not isinstance(text, str):
        raise BadRequestError("The chat template did not produce text.", param="messages")
    # The template writes the special tokens (BOS) itself, unless the client asks for them.
    return tokenizer.encode(text, add_special_tokens=add_special_tokens)


@dataclass
class ChatPlan:
    """What a chat request comes to before it reaches the engine (shared with /v1/responses)."""

    model: str  # the name to answer with
    prompt: PreparedPrompt
    params: Any  # SamplingParams
    fmt: ChatAnswerFormat  # how the answer's text is read


@dataclass
class FinishedChat:
    """A non-streamed generation's end: each choice's last output, and the prompt's extras."""

    completions: dict[int, Any]  # choice index -> its final CompletionOutput
    prompt_logprobs: Optional[list] = None
    num_cached_tokens: int = 0


@dataclass
class ChatChoiceState:
    text_len: int = 0
    num_tokens: int = 0
    num_logprobs: int = 0
    finished: bool = False


class OpenAIServingChat(OpenAIServing):
    async def create(self, req: ChatCompletionRequest) -> tuple[Any, Optional[AsyncIterator[str]]]:
        plan = self.plan(req)
        request_id = random_id("chatcmpl")
        created = int(time.time())
        calls = self.start_calls([plan.prompt], plan.params, request_id,
                                 self.lora_request(plan.model))
        if req.stream:
            return None, self.stream(req, plan.model, request_id, created, plan.prompt, calls,
                                     plan.fmt)
        try:
            return await self.full(req, plan.model, request_id, created, plan.prompt, calls,
                                   plan.fmt), None
        finally:
            self.release_calls(calls)

    def plan(self, req: ChatCompletionRequest, max_tokens_param: str = "max_tokens") -> ChatPlan:
        """Checks and renders the request: its prompt, sampling params and answer format.
        `max_tokens_param` names the length field in errors (endpoints call it differently)."""
        model = self.check_model(req.model)
        tools = self.tool_choice(req)
        template_kwargs = req.template_kwargs()
        reasoner = None
        if self.ctx.reasoning_parser:
            reasoner = make_reasoning_parser(self.ctx.reasoning_parser)
            if not reasoner.thinks(template_kwargs):
                reasoner = None
        fmt = ChatAnswerFormat(tools, reasoner, req.include_reasoning)
        ids = render_chat(
            self.ctx.tokenizer,
            req.messages,
            self.ctx.chat_template,
            req.add_generation_prompt,
            template_kwargs,
            req.template_tools(),
            continue_final_message=req.continue_final_message,
            add_special_tokens=req.add_special_tokens,
        )
        ids = self.truncate_prompt(ids, req.truncate_prompt_tokens)
        requested = req.requested_max_tokens
        if requested == 0:
            raise BadRequestError(f"{max_tokens_param} must be >= 1", param=max_tokens_param)
        max_tokens = self.resolve_max_tokens(len(ids), requested, max_tokens_param)
        num_logprobs = (req.top_logprobs or 0) if req.logprobs else None
        params = self.sampling_params(req, max_tokens, logprobs=num_logprobs,
                                      prompt_logprobs=req.prompt_logprobs)
        if tools.parser is not None and tools.parser.keeps_special_tokens:
            params.skip_special_tokens = False  # its markers may be special tokens
        return ChatPlan(model, PreparedPrompt(ids, None), params, fmt)

    async def finish(self, calls: list[EngineCall], prompt: PreparedPrompt) -> FinishedChat:
        """Runs the calls to their end (metrics on the way) and keeps each choice's last output."""
        timer = RequestTimer(self.ctx.metrics)
        timer.on_prompt(len(prompt.token_ids))
        done = FinishedChat({})
        seen: dict[int, int] = {}
        try:
            async for _, out in merge_async_iterators(*calls):
                if out.prompt_logprobs is not None:
                    done.prompt_logprobs = out.prompt_logprobs
                for comp in out.outputs:
                    timer.on_tokens(len(comp.token_ids) - seen.get(comp.index, 0))
                    seen[comp.index] = len(comp.token_ids)
                    done.completions[comp.index] = comp
                if out.finished:
                    done.num_cached_tokens = getattr(out, "num_cached_tokens", None) or 0
                    timer.on_finish(out.outputs[0].finish_reason if out.outputs else None)
        except APIError:
            raise
        except Exception as exc:
            self.on_engine_error(exc)
            raise
        return done

    def tool_choice(self, req: ChatCompletionRequest) -> ToolChoice:
        mode = req.tool_choice_mode
        parser = None
        if mode == "auto":
            if not (self.ctx.enable_auto_tool_choice and self.ctx.tool_call_parser):
                raise BadRequestError(
                    '"auto" tool choice requires --enable-auto-tool-choice and '
                    "--tool-call-parser to be set (or give tool_choice \"none\", "
                    '"required" or a named function)',
                    param="tool_choice",
                )
            parser = make_tool_parser(self.ctx.tool_call_parser, req.tool_schemas())
        named = req.tool_choice.function.name if mode == "named" else None
        return ToolChoice(mode, named, parser, req.parallel_tool_calls is not False,
                          call_id=tool_call_ids(self.ctx.tool_call_parser))

    async def full(
        self,
        req: ChatCompletionRequest,
        model: str,
        request_id: str,
        created: int,
        prompt: PreparedPrompt,
        calls: list[EngineCall],
        fmt: ChatAnswerFormat,
    ) -> ChatCompletionResponse:
        done = await self.finish(calls, prompt)
        choices = []
        completion_tokens = 0
        for j in range(req.n):
            comp = done.completions.get(j)
            if comp is None:
                raise RuntimeError(f"engine returned no output for choice {j}")
            completion_tokens += len(comp.token_ids)
            logprobs = None
            if req.logprobs:
                logprobs = ChatChoiceLogprobs(
                    content=self.logprob_items(comp.token_ids, comp.logprobs, req.top_logprobs or 0)
                )
            answer = fmt.final(comp.text, comp.finish_reason)
            tool_calls = [
                ToolCall(id=fmt.tools.call_id(), function=FunctionCall(name=c.name,
                                                                       arguments=c.arguments))
                for c in answer.calls
            ]
            message = ChatResponseMessage(role="assistant", content=answer.content,
                                          reasoning=answer.reasoning,
                                          tool_calls=tool_calls or None)
            choices.append(
                ChatCompletionChoice(
                    index=j,
                    message=message,
                    logprobs=logprobs,
                    finish_reason=answer.finish_reason,
                    stop_reason=comp.stop_reason,
                    token_ids=list(comp.token_ids) if req.return_token_ids else None,
                )
            )
        n_prompt = len(prompt.token_ids)
        return ChatCompletionResponse(
            id=request_id,
            created=created,
            model=model,
            choices=choices,
            usage=self.usage(n_prompt, completion_tokens, done.num_cached_tokens),
            prompt_token_ids=list(prompt.token_ids) if req.return_token_ids else None,
            prompt_logprobs=prompt_logprobs_json(done.prompt_logprobs),
        )

    async def stream(
        self,
        req: ChatCompletionRequest,
        model: str,
        request_id: str,
        created: int,
        prompt: PreparedPrompt,
        calls: list[EngineCall],
        fmt: ChatAnswerFormat,
    ) -> AsyncIterator[str]:
        fast = FastChunks(request_id, created, model, "chat.completion.chunk")
        answers: dict[int, ChatAnswerStream] = {}
        timer = RequestTimer(self.ctx.metrics)
        timer.on_prompt(len(prompt.token_ids))
        states: dict[int, ChatChoiceState] = {}
        completion_tokens = 0

        def chunk(choice: ChatStreamChoice, prompt_ids: Optional[list[int]] = None) -> str:
            return sse_event(
                ChatCompletionChunk(id=request_id, created=created, model=model, choices=[choice],
                                    prompt_token_ids=prompt_ids)
            )

        try:
            # Open every choice with the role, as OpenAI does, before any content.
            for j in range(req.n):
                states[j] = ChatChoiceState()
                yield chunk(
                    ChatStreamChoice(index=j, delta=DeltaMessage(role="assistant", content="")),
                    list(prompt.token_ids) if req.return_token_ids and j == 0 else None,
                )
            cached_tokens = 0
            async for _, out in merge_async_iterators(*calls):
                cached_tokens = out.num_cached_tokens or cached_tokens
                for comp in out.outputs:
                    st = states.setdefault(comp.index, ChatChoiceState())
                    if st.finished:
                        continue
                    n_new = len(comp.token_ids) - st.num_tokens
                    timer.on_tokens(n_new)
                    completion_tokens += max(n_new, 0)
                    new_ids = (list(comp.token_ids[st.num_tokens:]) if req.return_token_ids
                               else None)
                    st.num_tokens = len(comp.token_ids)
                    delta = comp.text[st.text_len :] if len(comp.text) >= st.text_len else ""
                    st.text_len = max(st.text_len, len(comp.text))
                    finish = comp.finish_reason
                    news: Optional[ChatAnswerDelta] = None
                    if not fmt.is_plain_text:
                        answer = answers.setdefault(comp.index, ChatAnswerStream(fmt))
                        news = answer.feed(comp.text, finish)
                        delta, finish = news.content, news.finish_reason
                    logprobs = None
                    if req.logprobs and comp.logprobs is not None:
                        upto = len(comp.token_ids)
                        logprobs = ChatChoiceLogprobs(
                            content=self.logprob_items(
                                comp.token_ids[st.num_logprobs : upto],
                                comp.logprobs[st.num_logprobs : upto],
                                req.top_logprobs or 0,
                            )
                        )
                        st.num_logprobs = upto
                    if finish is not None:
                        st.finished = True
                    if (not delta and finish is None and logprobs is None and not new_ids
                            and (news is None or news.empty)):
                        continue
                    if logprobs is None and news is None and new_ids is None:
                        yield fast.chat(comp.index, delta, finish, comp.stop_reason)
                        continue
                    yield chunk(
                        ChatStreamChoice(
                            index=comp.index,
                            delta=_delta_message(delta, news),
                            logprobs=logprobs,
                            finish_reason=finish,
                            stop_reason=comp.stop_reason,
                            token_ids=new_ids,
                        )
                    )
                if out.finished:
                    timer.on_finish(out.outputs[0].finish_reason if out.outputs else None)
            if req.include_usage:
                n_prompt = len(prompt.token_ids)
                yield sse_event(
                    ChatCompletionChunk(
                        id=request_id,
                        created=created,
                        model=model,
                        choices=[],
                        usage=self.usage(n_prompt, completion_tokens, cached_tokens),
                    )
                )
        except APIError as err:
            yield sse_error_event(err.message, err.err_type, int(err.status))
        except Exception as exc:
            logger.exception("chat stream %s failed", request_id)
            self.on_engine_error(exc)
            yield sse_error_event(
                f"Internal server error: {type(exc).__name__}", "internal_server_error", 500
            )
        finally:
            self.release_calls(calls)
        yield SSE_DONE

    def logprob_items(
        self, token_ids: list[int], entries: Optional[list], num: int
    ) -> list[ChatTokenLogprob]:
        tok = self.ctx.tokenizer
        items = []
        for pos, tid in enumerate(token_ids):
            entry = entries[pos] if entries is not None and pos < len(entries) else None
            text = token_text(tok, tid, entry.get(tid) if entry else None)
            value = sampled_logprob(entry, tid)
            items.append(
                ChatTokenLogprob(
                    token=text,
                    logprob=value if value is not None else -9999.0,
                    bytes=list(text.encode("utf-8", errors="replace")),
                    top_logprobs=[
                        ChatTopLogprob(
                            token=t, logprob=v, bytes=list(t.encode("utf-8", errors="replace"))
                        )
                        for _, t, v in top_entries(tok, entry, num)
                    ],
                )
            )
        return items


def _delta_message(content: str, news: Optional[ChatAnswerDelta]) -> DeltaMessage:
    if news is None or not (news.calls or news.reasoning):
        return DeltaMessage(content=content)
    return DeltaMessage(
        content=content or None,
        reasoning=news.reasoning or None,
        tool_calls=None if not news.calls else [
            DeltaToolCall(
                index=index,
                id=call_id,
                type="function" if call_id is not None else None,
                function=DeltaFunctionCall(name=name, arguments=arguments),
            )
            for index, call_id, name, arguments in news.calls
        ],
    )
