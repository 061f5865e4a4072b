"""What /v1/completions and /v1/chat/completions share: model-name checks, prompt validation,
SamplingParams, back-pressure, and the engine call that always aborts what it leaves behind.

Invariant: every request id handed to `engine.generate` is either seen finished or aborted by
`EngineCall` — a client that disconnects, a cancelled task or a server fault never leaks a
running request (and so never leaks KV blocks).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Optional, Sequence

import anyio

from pagedllm.entrypoints.openai.errors import (
    APIError,
    BadRequestError,
    EngineDeadError,
    ModelNotFoundError,
    OverloadedError,
)
from pagedllm.entrypoints.openai.metrics import ServerMetrics
from pagedllm.entrypoints.openai.protocol import (
    PromptTokensDetails,
    SamplingFields,
    UsageInfo,
)
from pagedllm.beam_search import beam_search_stream
from pagedllm.pooling_params import PoolingParams
from pagedllm.sampling_params import BeamSearchParams

logger = logging.getLogger("pagedllm.entrypoints.openai")


async def maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


@dataclass
class ServerContext:
    """Everything the serving classes need, built once at startup."""

    engine: Any  # AsyncLLMEngine (vLLM's API)
    tokenizer: Any  # transformers tokenizer
    served_model_names: list[str]
    model_path: str
    max_model_len: int
    vocab_size: int
    metrics: Optional[ServerMetrics] = None
    max_num_waiting: Optional[int] = None
    chat_template: Optional[str] = None
    on_engine_dead: Any = None  # callable(): ask the server to exit non-zero
    enable_auto_tool_choice: bool = False  # tool_choice "auto" allowed (needs a parser)
    tool_call_parser: Optional[str] = None  # a name in tool_parsers.TOOL_PARSERS
    reasoning_parser: Optional[str] = None  # a name in pagedllm.reasoning.REASONING_PARSERS
    enable_prompt_tokens_details: bool = False  # usage.prompt_tokens_details.cached_tokens
    # The model's sampling defaults for what a request leaves unset (generation_defaults.py).
    default_sampling: dict = field(default_factory=dict)
    loras: Any = None  # serving_models.ServedLoRAs: adapters served as models (--enable-lora)
    # /v1/responses keeps finished responses (previous_response_id) only when enabled.
    enable_responses_store: bool = False
    max_stored_responses: int = 1000
    # "pooling": the engine embeds (/v1/embeddings); "generate": it generates (the rest).
    runner_type: str = "generate"


@dataclass
class PreparedPrompt:
    token_ids: list[int]
    text: Optional[str]  # the text if the client sent text (for echo)


class AdmissionControl:
    """Back-pressure: counts requests admitted but not yet producing output ("waiting")."""

    def __init__(self, max_num_waiting: Optional[int]) -> None:
        self.max_num_waiting = max_num_waiting
        self.num_waiting = 0

    def admit(self, count: int) -> None:
        if self.max_num_waiting is not None and self.num_waiting + count > self.max_num_waiting:
            raise OverloadedError(
                f"Too many requests waiting ({self.num_waiting} >= max_num_waiting="
                f"{self.max_num_waiting}); retry later."
            )
        self.num_waiting += count

    def release(self, count: int = 1) -> None:
        self.num_waiting -= count


class EngineCall:
    """One `engine.generate` stream that is aborted on any exit before it finished.

    It holds one admission unit from construction until its first output (or its end)."""

    def __init__(
        self, serving: "OpenAIServing", prompt_ids: list[int], params: Any, request_id: str,
        lora_request: Any = None,
    ) -> None:
        self.serving = serving
        self.prompt_ids = prompt_ids
        self.params = params
        self.request_id = request_id
        self.lora_request = lora_request
        self.finished = False
        self.started = False
        self._holds_admission = True

    def release(self) -> None:
        if self._holds_admission:
            self._holds_admission = False
            self.serving.admission.release()

    async def __aiter__(self) -> AsyncIterator[Any]:
        engine = self.serving.ctx.engine
        gen = None
        try:
            if isinstance(self.params, BeamSearchParams):   # use_beam_search: many requests
                gen = beam_search_stream(engine, self.serving.ctx.tokenizer, self.prompt_ids,
                                         self.params, self.request_id, self.lora_request)
            else:
                extra = {} if self.lora_request is None else {"lora_request": self.lora_request}
                # Embedding requests (PoolingParams) go to the engine's encode.
                call = engine.encode if isinstance(self.params, PoolingParams) else engine.generate
                gen = call({"prompt_token_ids": self.prompt_ids}, self.params, self.request_id,
                           **extra)
            async for output in gen:
                self.started = True
                self.release()
                if output.finished:
                    self.finished = True
                yield output
        except (ValueError, TypeError) as exc:
            if self.started:
                raise
            # The engine refused the request itself (bad parameters): the client's fault.
            raise BadRequestError(str(exc)) from exc
        finally:
            self.release()
            if not self.finished:
                # Shielded: a disconnect cancels this task (and anyio re-cancels every await in a
                # cancelled scope), but the abort must still reach the engine.
                with anyio.CancelScope(shield=True):
                    if gen is not None and hasattr(gen, "aclose"):
                        try:
                            await gen.aclose()
                        except Exception:  # the engine's own cleanup; nothing more to do here
                            logger.debug("closing the engine stream failed", exc_info=True)
                    await self.serving.abort(self.request_id)
                metrics = self.serving.ctx.metrics
                if metrics is not None:
                    metrics.request_aborted.labels(metrics.model_name).inc()


def prompt_logprobs_json(entries: Optional[list]) -> Optional[list]:
    """An output's prompt_logprobs (per position None or {token id: Logprob}) as vLLM answers
    them: token ids as keys, -inf as -9999.0 (JSON has no infinity)."""
    if entries is None:
        return None
    return [
        None if entry is None else {
            str(tid): {"logprob": max(lp.logprob, -9999.0), "rank": lp.rank,
                       "decoded_token": lp.decoded_token}
            for tid, lp in entry.items()
        }
        for entry in entries
    ]


async def merge_async_iterators(*iterators: AsyncIterator[Any]) -> AsyncIterator[tuple[int, Any]]:
    """Yield (index, item) from several async iterators as they arrive; cancel the rest on exit."""
    if len(iterators) == 1:
        async for item in iterators[0]:
            yield 0, item
        return
    queue: asyncio.Queue = asyncio.Queue()
    done_marker = object()

    async def drain(i: int, it: AsyncIterator[Any]) -> None:
        try:
            async for item in it:
                await queue.put((i, item, None))
        except BaseException as exc:  # forwarded to the consumer, which re-raises it
            await queue.put((i, done_marker, exc))
            return
        await queue.put((i, done_marker, None))

    tasks = [asyncio.ensure_future(drain(i, it)) for i, it in enumerate(iterators)]
    remaining = len(tasks)
    try:
        while remaining:
            i, item, exc = await queue.get()
            if item is done_marker:
                remaining -= 1
                if exc is not None and not isinstance(exc, asyncio.CancelledError):
                    raise exc
                continue
            yield i, item
    finally:
        for t in tasks:
            t.cancel()
        # Let each cancelled drain run its iterator's cleanup (the engine aborts) before returning.
        await asyncio.gather(*tasks, return_exceptions=True)


class OpenAIServing:
    def __init__(self, ctx: ServerContext, admission: AdmissionControl) -> None:
        self.ctx = ctx
        self.admission = admission

    # ---- checks ------------------------------------------------------------------------

    def check_model(self, model: Optional[str]) -> str:
        """The model name to answer with; 404 for a name this server does not serve (a LoRA
        adapter's name is served: see lora_request)."""
        if model is None or model == "":
            return self.ctx.served_model_names[0]
        if model not in self.ctx.served_model_names and self.lora_request(model) is None:
            raise ModelNotFoundError(model)
        return model

    def lora_request(self, model: str) -> Any:
        """The LoRARequest of the adapter named `model`; None for the base model."""
        loras = self.ctx.loras
        return loras.get(model) if loras is not None else None

    def check_engine_alive(self) -> None:
        if getattr(self.ctx.engine, "errored", False):
            raise EngineDeadError("The engine has stopped after a fatal error.")

    def check_token_ids(self, ids: Sequence[int], param: str) -> None:
        vocab = self.ctx.vocab_size
        for t in ids:
            if isinstance(t, bool) or not isinstance(t, int) or t < 0 or t >= vocab:
                raise BadRequestError(
                    f"token id {t!r} is outside the vocabulary [0, {vocab})", param=param
                )

    def usage(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> UsageInfo:
        """Usage as OpenAI answers it; with --enable-prompt-tokens-details also how many prompt
        tokens the prefix cache served."""
        details = (PromptTokensDetails(cached_tokens=cached_tokens)
                   if self.ctx.enable_prompt_tokens_details else None)
        return UsageInfo(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                         total_tokens=prompt_tokens + completion_tokens,
                         prompt_tokens_details=details)

    def prompt_inputs(self, value: Any, param: str,
                      truncate: Optional[int] = None) -> list[PreparedPrompt]:
        """OpenAI's prompt forms (str | list[str] | list[int] | list[list[int]]) as prompts:
        texts tokenized, token ids checked against the vocabulary, each cut to its last
        `truncate` tokens when asked (truncate_prompt_tokens); 400s name `param`."""
        tok = self.ctx.tokenizer
        if isinstance(value, str):
            raw: list[Any] = [value]
        elif all(isinstance(x, int) for x in value):
            raw = [list(value)]
        else:
            raw = list(value)
        prompts: list[PreparedPrompt] = []
        for item in raw:
            if len(item) == 0:
                raise BadRequestError(f"The {param} is empty.", param=param)
            if isinstance(item, str):
                prompts.append(PreparedPrompt(tok.encode(item), item))
            else:
                self.check_token_ids(item, param)
                prompts.append(PreparedPrompt(list(item), None))
        if truncate is not None:
            # The text no longer matches a cut prompt, so echo answers its tokens' text.
            prompts = [PreparedPrompt(self.truncate_prompt(p.token_ids, truncate), None)
                       for p in prompts]
        return prompts

    def truncate_prompt(self, ids: list[int], keep: Optional[int]) -> list[int]:
        """vLLM's truncate_prompt_tokens: the prompt's last `keep` tokens (-1: as many as leave
        room for one generated token); more than that room is a 400."""
        if keep is None:
            return ids
        room = self.ctx.max_model_len - 1
        if keep == -1:
            keep = room
        if keep > room:
            raise BadRequestError(
                f"truncate_prompt_tokens={keep} leaves no room to generate: it may be at most "
                f"max_model_len - 1 = {room}", param="truncate_prompt_tokens")
        return ids[-keep:] if keep else []

    def resolve_max_tokens(self, prompt_len: int, max_tokens: Optional[int], param: str) -> int:
        """Checks prompt + max_tokens against max_model_len; None means 'fill the context'."""
        limit = self.ctx.max_model_len
        if prompt_len == 0:
            raise BadRequestError("The prompt is empty.", param="prompt")
        if max_tokens is None:
            if prompt_len >= limit:
                raise BadRequestError(
                    f"This model's maximum context length is {limit} tokens; the prompt has "
                    f"{prompt_len} tokens.",
                    param=param,
                )
            # The model's own max_new_tokens, if it ships one, caps the fill (as vLLM).
            return min(limit - prompt_len,
                       self.ctx.default_sampling.get("max_tokens", limit - prompt_len))
        if prompt_len + max_tokens > limit:
            raise BadRequestError(
                f"This model's maximum context length is {limit} tokens; you requested "
                f"{prompt_len + max_tokens} tokens ({prompt_len} in the prompt, {max_tokens} for "
                f"the "
                f"completion). Reduce the prompt or max_tokens.",
                param=param,
            )
        return max_tokens

    # ---- engine ------------------------------------------------------------------------

    def sampling_params(
        self,
        req: SamplingFields,
        max_tokens: int,
        logprobs: Optional[int],
        prompt_logprobs: Optional[int],
    ) -> Any:
        # The engine's class (vLLM's API); it validates every field and names the bad one.
        from pagedllm.sampling_params import SamplingParams, SamplingParamsError

        if req.use_beam_search:
            temperature = req.temperature
            if temperature is None:
                temperature = self.ctx.default_sampling.get("temperature", 1.0)
            try:
                return BeamSearchParams(
                    beam_width=req.n, max_tokens=max_tokens, ignore_eos=req.ignore_eos,
                    temperature=temperature, length_penalty=req.length_penalty,
                    include_stop_str_in_output=req.include_stop_str_in_output,
                    skip_special_tokens=req.skip_special_tokens)
            except SamplingParamsError as exc:
                raise BadRequestError(str(exc), param=exc.field) from exc

        kwargs: dict[str, Any] = dict(n=req.n, max_tokens=max_tokens)
        # Pass only what the client set; the model's defaults (generation_config.json) fill in
        # the sampling values it left unset, then the engine's own defaults stay in force.
        defaults = self.ctx.default_sampling
        optional = {
            "temperature": req.temperature,
            "top_p": req.top_p,
            "min_p": req.min_p,
            "presence_penalty": req.presence_penalty,
            "frequency_penalty": req.frequency_penalty,
            "repetition_penalty": req.repetition_penalty,
            "seed": req.seed,
            "stop": req.stop,
            "stop_token_ids": req.stop_token_ids,
            "logprobs": logprobs,
            "prompt_logprobs": prompt_logprobs,
            "logit_bias": req.logit_bias,
            "allowed_token_ids": req.allowed_token_ids,
            "bad_words": req.bad_words,
            "structured_outputs": req.structured_constraint,
            "cache_salt": req.cache_salt,
        }
        if req.priority:
            kwargs["priority"] = req.priority
        for name in ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty",
                     "repetition_penalty"):
            if optional[name] is None:
                optional[name] = defaults.get(name)
        top_k = req.top_k if req.top_k is not None else defaults.get("top_k")
        if top_k is not None:
            # 0 and -1 both mean "off"; a k beyond the vocabulary is the whole vocabulary.
            optional["top_k"] = -1 if top_k <= 0 else min(top_k, self.ctx.vocab_size)
        kwargs.update({k: v for k, v in optional.items() if v is not None})
        if req.ignore_eos:
            kwargs["ignore_eos"] = True
        if req.min_tokens:
            kwargs["min_tokens"] = req.min_tokens
        if not req.skip_special_tokens:
            kwargs["skip_special_tokens"] = False
        if req.include_stop_str_in_output:
            kwargs["include_stop_str_in_output"] = True
        try:
            params = SamplingParams.from_optional(**kwargs)  # clamps logit_bias, as vLLM's
            params.check_token_ids(self.ctx.vocab_size)
        except SamplingParamsError as exc:
            raise BadRequestError(str(exc), param=exc.field) from exc
        except (ValueError, TypeError) as exc:
            raise BadRequestError(str(exc)) from exc
        return params

    def start_calls(
        self, prompts: Sequence[PreparedPrompt], params: Any, request_id: str,
        lora_request: Any = None,
    ) -> list[EngineCall]:
        """Admits all prompts of one HTTP request at once (503 if over --max-num-waiting)."""
        self.check_engine_alive()
        self.admission.admit(len(prompts))
        return [
            EngineCall(
                self, p.token_ids, params, request_id if len(prompts) == 1 else f"{request_id}-{i}",
                lora_request,
            )
            for i, p in enumerate(prompts)
        ]

    @staticmethod
    def release_calls(calls: Sequence[EngineCall]) -> None:
        for c in calls:
            c.release()

    async def abort(self, request_id: str) -> None:
        try:
            await maybe_await(self.ctx.engine.abort_request(request_id))
        except Exception:  # the request may already be gone; aborting is best effort
            logger.debug("abort of %s failed", request_id, exc_info=True)

    def on_engine_error(self, exc: BaseException) -> None:
        """After an unexpected engine exception: if the engine is dead, ask the server to exit."""
        if getattr(self.ctx.engine, "errored", False) and self.ctx.on_engine_dead is not None:
            self.ctx.on_engine_dead()


def token_text(tokenizer: Any, token_id: int, logprob_obj: Any = None) -> str:
    decoded = getattr(logprob_obj, "decoded_token", None)
    if decoded is not None:
        return decoded
    return tokenizer.decode([token_id])


def logprob_value(obj: Any) -> float:
    value = getattr(obj, "logprob", obj)
    return float(value)


def top_entries(tokenizer: Any, entry: Optional[dict], num: int) -> list[tuple[int, str, float]]:
    """The `num` most likely (token id, text, logprob) of one position's logprob dict."""
    if not entry or num <= 0:
        return []
    items = sorted(entry.items(), key=lambda kv: logprob_value(kv[1]), reverse=True)[:num]
    return [(tid, token_text(tokenizer, tid, lp), logprob_value(lp)) for tid, lp in items]


def sampled_logprob(entry: Optional[dict], token_id: int) -> Optional[float]:
    if not entry or token_id not in entry:
        return None
    return logprob_value(entry[token_id])


def api_error_from(exc: BaseException) -> Optional[APIError]:
    return exc if isinstance(exc, APIError) else None
