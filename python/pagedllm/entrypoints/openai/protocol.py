"""Pydantic models of the OpenAI-compatible HTTP API: requests (validated, with limits) and
responses.

Request models reject what can never be served with a 400 before anything reaches the engine:
out-of-range sampling values, too many choices / logprobs / stop strings, non-finite floats.
Checks that need the model (prompt length vs max_model_len, token ids vs vocab) live in the
serving classes, which know the tokenizer.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from pagedllm.entrypoints.openai.tool_calls import EMPTY_PARAMETERS, required_calls_schema
from pagedllm.structured_outputs import STRUCTURED_OUTPUT_KINDS

# Limits that protect the server from requests that would exhaust it (issue 6).
MAX_BODY_BYTES = 8 * 1024 * 1024  # larger bodies get 413 before JSON parsing
MAX_N = 128  # choices per prompt (OpenAI's own cap)
MAX_LOGPROBS = 20  # top-N logprobs per token (completions and chat)
MAX_STOP_STRINGS = 32
MAX_STOP_STRING_CHARS = 1024
MAX_PROMPTS_PER_REQUEST = 1024  # a list of prompts in one /v1/completions call
MAX_TOKENS_CAP = 1 << 20  # absolute ceiling; the real one is max_model_len - prompt
MAX_MESSAGES = 4096
MAX_SEED = (1 << 63) - 1
MAX_LOGIT_BIAS_TOKENS = 1024
MAX_TOOLS = 512


def random_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def _reject_unencodable(value: Any, depth: int = 0) -> None:
    """JSON may carry lone UTF-16 surrogates ("\\ud800") that no tokenizer can encode."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError("text must be valid Unicode (lone surrogate found)") from exc
    elif depth < 8 and isinstance(value, dict):
        for k, v in value.items():
            _reject_unencodable(k, depth + 1)
            _reject_unencodable(v, depth + 1)
    elif depth < 8 and isinstance(value, list):
        for v in value:
            if isinstance(v, (str, dict, list)):
                _reject_unencodable(v, depth + 1)


class OpenAIBaseModel(BaseModel):
    # Unknown fields are accepted and ignored, as OpenAI's API does (clients send extras).
    model_config = ConfigDict(extra="ignore")


class RequestModel(OpenAIBaseModel):
    """A request body: its strings must be encodable text."""

    @model_validator(mode="before")
    @classmethod
    def _valid_text(cls, data: Any) -> Any:
        _reject_unencodable(data)
        return data


class OmitNoneModel(OpenAIBaseModel):
    """Serializes without the fields named in _omit_if_none while they are None (OpenAI leaves
    `role` out of later stream deltas and `usage` out of content chunks)."""

    _omit_if_none: tuple[str, ...] = ()

    @model_serializer(mode="wrap")
    def _omit_none(self, handler: SerializerFunctionWrapHandler) -> dict:
        data = handler(self)
        for name in self._omit_if_none:
            if data.get(name, 0) is None:
                del data[name]
        return data


class ErrorInfo(OpenAIBaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[Union[str, int]] = None


class ErrorResponse(OpenAIBaseModel):
    error: ErrorInfo


class StreamOptions(OpenAIBaseModel):
    include_usage: Optional[bool] = False
    continuous_usage_stats: Optional[bool] = False


# Non-finite floats (JSON "NaN" / "Infinity", which Python's json accepts) are rejected everywhere.
def _finite(**kw: Any) -> Any:
    return Field(allow_inf_nan=False, **kw)


class JsonSchemaFormat(OpenAIBaseModel):
    name: Optional[str] = None
    description: Optional[str] = None
    schema_: Optional[dict[str, Any]] = Field(None, alias="schema")
    strict: Optional[bool] = None


class ResponseFormat(OpenAIBaseModel):
    """OpenAI's response_format: plain text, any JSON object, or JSON following a schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[JsonSchemaFormat] = None

    @model_validator(mode="after")
    def _check_schema(self) -> "ResponseFormat":
        if self.type == "json_schema" and (self.json_schema is None
                                           or self.json_schema.schema_ is None):
            raise ValueError('response_format of type "json_schema" needs json_schema.schema')
        return self


class SamplingOptions(RequestModel):
    """The sampling knobs every generating endpoint takes under the same names (completions,
    chat, responses): OpenAI's and vLLM's extras."""

    model: Optional[str] = None
    temperature: Optional[float] = _finite(default=None, ge=0.0, le=1e4)
    top_p: Optional[float] = _finite(default=None, gt=0.0, le=1.0)
    top_k: Optional[int] = Field(None, ge=-1, le=1 << 31)
    min_p: Optional[float] = _finite(default=None, ge=0.0, le=1.0)
    presence_penalty: Optional[float] = _finite(default=None, ge=-2.0, le=2.0)
    frequency_penalty: Optional[float] = _finite(default=None, ge=-2.0, le=2.0)
    repetition_penalty: Optional[float] = _finite(default=None, gt=0.0, le=100.0)
    seed: Optional[int] = Field(None, ge=-MAX_SEED - 1, le=MAX_SEED)
    stop: Optional[Union[str, list[str]]] = None
    stop_token_ids: Optional[list[int]] = Field(None, max_length=MAX_STOP_STRINGS)
    user: Optional[str] = Field(None, max_length=1024)
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0, le=MAX_TOKENS_CAP)
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    # OpenAI's: token id (as a string) -> bias added to its logit, clamped to [-100, 100]. These
    # three are checked by SamplingParams (400 naming the field); here only the server's caps.
    logit_bias: Optional[dict[str, float]] = Field(None, max_length=MAX_LOGIT_BIAS_TOKENS)
    allowed_token_ids: Optional[list[int]] = None  # vLLM's extra: sample only among these
    bad_words: Optional[
        list[Annotated[str, Field(max_length=MAX_STOP_STRING_CHARS)]]
    ] = Field(None, max_length=MAX_STOP_STRINGS)  # vLLM's extra
    # vLLM's extra: StructuredOutputsParams' fields (json, regex, choice, grammar, json_object)
    structured_outputs: Optional[dict[str, Any]] = None
    # vLLM's extras: lower runs first (--scheduling-policy priority); a salt that keeps this
    # request's prompt out of other salts' prefix-cache hits.
    priority: int = Field(0, ge=-(1 << 31), le=(1 << 31) - 1)
    cache_salt: Optional[str] = Field(None, min_length=1, max_length=1024)

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, v: Optional[Union[str, list[str]]]) -> Optional[list[str]]:
        if v is None:
            return None
        stops = [v] if isinstance(v, str) else list(v)
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings are allowed")
        for s in stops:
            if s == "":
                raise ValueError("stop strings must be non-empty")
            if len(s) > MAX_STOP_STRING_CHARS:
                raise ValueError(
                    f"a stop string may have at most {MAX_STOP_STRING_CHARS} characters"
                )
        return stops

    @field_validator("stop_token_ids")
    @classmethod
    def _check_stop_ids(cls, v: Optional[list[int]]) -> Optional[list[int]]:
        if v is not None and any(t < 0 for t in v):
            raise ValueError("stop_token_ids must be >= 0")
        return v


class SamplingFields(SamplingOptions):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    n: int = Field(1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    response_format: Optional[ResponseFormat] = None
    # vLLM's extras: keep only the prompt's last N tokens (-1: as many as the context leaves
    # room for); answer the token ids too.
    truncate_prompt_tokens: Optional[int] = Field(None, ge=-1, le=MAX_TOKENS_CAP)
    return_token_ids: bool = False
    # vLLM's extra: the top-N logprobs of every prompt token (and the token's own), answered in
    # `prompt_logprobs`; not with stream (as vLLM).
    prompt_logprobs: Optional[int] = Field(None, ge=0, le=MAX_LOGPROBS)
    # vLLM's extras: beam search with n beams (pagedllm.beam_search), scored by cumulative
    # logprob / length ** length_penalty.
    use_beam_search: bool = False
    length_penalty: float = _finite(default=1.0, ge=-100.0, le=100.0)

    @model_validator(mode="after")
    def _check_beam_search(self) -> "SamplingFields":
        if not self.use_beam_search:
            return self
        if self.structured_constraint is not None:
            raise ValueError("structured outputs (structured_outputs, response_format) are not "
                             "supported with use_beam_search")
        for name in ("logprobs", "prompt_logprobs"):   # completions: an int; chat: a bool
            value = getattr(self, name, None)
            if value is not None and value is not False:
                raise ValueError(f"{name} is not supported with use_beam_search")
        return self

    @model_validator(mode="after")
    def _check_one_constraint(self) -> "SamplingFields":
        if (self.structured_outputs is not None and self.response_format is not None
                and self.response_format.type != "text"):
            raise ValueError("give either response_format or structured_outputs, not both")
        return self

    @property
    def structured_constraint(self) -> Optional[dict[str, Any]]:
        """The structured-outputs fields this request asks for, or None."""
        if self.structured_outputs is not None:
            return self.structured_outputs
        fmt = self.response_format
        if fmt is None or fmt.type == "text":
            return None
        if fmt.type == "json_object":
            return {"json_object": True}
        return {"json": fmt.json_schema.schema_}

    @model_validator(mode="after")
    def _check_prompt_logprobs(self) -> "SamplingFields":
        if self.prompt_logprobs is not None and self.stream:
            raise ValueError("prompt_logprobs are not available when stream is true")
        return self

    @model_validator(mode="after")
    def _check_stream_options(self) -> "SamplingFields":
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


PromptInput = Union[str, list[str], list[int], list[list[int]]]


def _check_prompt_input(value: PromptInput, name: str) -> PromptInput:
    """A prompt field in OpenAI's forms: not empty, at most MAX_PROMPTS_PER_REQUEST prompts
    (a list of token ids is one prompt, whatever its length)."""
    if isinstance(value, str):
        return value
    if len(value) == 0:
        raise ValueError(f"{name} must not be empty")
    if len(value) > MAX_PROMPTS_PER_REQUEST and not all(isinstance(x, int) for x in value):
        raise ValueError(f"at most {MAX_PROMPTS_PER_REQUEST} {name}s per request")
    return value


class CompletionRequest(SamplingFields):
    prompt: PromptInput
    max_tokens: Optional[int] = Field(16, ge=0, le=MAX_TOKENS_CAP)
    logprobs: Optional[int] = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False
    suffix: Optional[str] = None
    best_of: Optional[int] = None

    @field_validator("prompt")
    @classmethod
    def _check_prompt(cls, v: PromptInput) -> PromptInput:
        return _check_prompt_input(v, "prompt")

    @model_validator(mode="after")
    def _check_unsupported(self) -> "CompletionRequest":
        if self.suffix:
            raise ValueError("suffix is not supported")
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError("best_of is not supported (it must equal n)")
        return self


class EmbeddingRequest(RequestModel):
    """POST /v1/embeddings (OpenAI's fields, plus vLLM's truncate_prompt_tokens and
    use_activation / normalize)."""

    model: Optional[str] = None
    input: PromptInput
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Optional[int] = None
    user: Optional[str] = None
    truncate_prompt_tokens: Optional[int] = Field(None, ge=-1, le=MAX_TOKENS_CAP)
    use_activation: Optional[bool] = None
    normalize: Optional[bool] = None

    @field_validator("input")
    @classmethod
    def _check_input(cls, v: PromptInput) -> PromptInput:
        return _check_prompt_input(v, "input")


class EmbeddingData(OpenAIBaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: Union[list[float], str]  # str: base64 of little-endian float32


class EmbeddingUsage(OpenAIBaseModel):
    prompt_tokens: int = 0
    total_tokens: int = 0


class EmbeddingResponse(OpenAIBaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[EmbeddingData]
    usage: EmbeddingUsage


class FunctionDefinition(OpenAIBaseModel):
    name: str = Field(..., min_length=1, max_length=256)
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None  # a JSON schema of the arguments object
    strict: Optional[bool] = None


class ChatTool(OpenAIBaseModel):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(OpenAIBaseModel):
    name: str


class NamedToolChoice(OpenAIBaseModel):
    type: Literal["function"] = "function"
    function: NamedFunction


class MessageFunctionCall(OpenAIBaseModel):
    name: str
    arguments: Optional[Union[str, dict[str, Any]]] = None


class MessageToolCall(OpenAIBaseModel):
    """A call in an earlier assistant turn, as the client sends the conversation back."""

    id: Optional[str] = None
    type: Literal["function"] = "function"
    function: MessageFunctionCall

    def template_dict(self) -> dict[str, Any]:
        # Chat templates want the arguments as a mapping (transformers' convention), where
        # OpenAI sends JSON text. Text that is not a JSON object becomes {} rather than failing
        # every later turn of the conversation that carries it.
        args = self.function.arguments
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except ValueError:
                args = {}
        if not isinstance(args, dict):
            args = {}
        out: dict[str, Any] = {"type": "function",
                               "function": {"name": self.function.name, "arguments": args}}
        if self.id is not None:
            out["id"] = self.id
        return out


class ChatContentPart(OpenAIBaseModel):
    type: str
    text: Optional[str] = None


class ChatMessage(OpenAIBaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Optional[Union[str, list[ChatContentPart]]] = None
    name: Optional[str] = None
    tool_calls: Optional[list[MessageToolCall]] = None  # an assistant turn's calls
    tool_call_id: Optional[str] = None  # a tool turn: the call it answers
    reasoning: Optional[str] = None  # an assistant turn's reasoning, as this server answers it
    reasoning_content: Optional[str] = None  # its older name

    def template_dict(self) -> dict[str, Any]:
        """This message as chat templates read it."""
        out: dict[str, Any] = {"role": self.role, "content": self.text()}
        if self.name is not None:
            out["name"] = self.name
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.tool_calls:
            out["tool_calls"] = [call.template_dict() for call in self.tool_calls]
        reasoning = self.reasoning if self.reasoning is not None else self.reasoning_content
        if reasoning is not None:
            out["reasoning_content"] = reasoning  # the name thinking models' templates read
        return out

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise ValueError(f"only text content parts are supported, got {part.type!r}")
            parts.append(part.text)
        return "".join(parts)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(..., min_length=1, max_length=MAX_MESSAGES)
    max_tokens: Optional[int] = Field(None, ge=0, le=MAX_TOKENS_CAP)
    max_completion_tokens: Optional[int] = Field(None, ge=0, le=MAX_TOKENS_CAP)
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=MAX_LOGPROBS)
    add_generation_prompt: bool = True
    chat_template_kwargs: Optional[dict[str, Any]] = None
    # vLLM's extras: the reply continues the last (assistant) message instead of starting a new
    # one; the rendered prompt also gets the tokenizer's special tokens (BOS) added.
    continue_final_message: bool = False
    add_special_tokens: bool = False
    # OpenAI's; also turns a thinking template's enable_thinking off for "none" (as vLLM).
    reasoning_effort: Optional[Literal["none", "minimal", "low", "medium", "high"]] = None
    tools: Optional[list[ChatTool]] = Field(None, max_length=MAX_TOOLS)
    # None: "auto" when tools are given, else "none" (OpenAI's defaults).
    tool_choice: Optional[Union[Literal["none", "auto", "required"], NamedToolChoice]] = None
    parallel_tool_calls: Optional[bool] = True
    include_reasoning: bool = True  # with --reasoning-parser: answer message.reasoning

    @model_validator(mode="after")
    def _check_logprobs(self) -> "ChatCompletionRequest":
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        return self

    @model_validator(mode="after")
    def _check_continuation(self) -> "ChatCompletionRequest":
        if self.continue_final_message and self.add_generation_prompt:
            raise ValueError("continue_final_message needs add_generation_prompt to be false: "
                             "the reply continues the last message")
        return self

    def template_kwargs(self) -> dict[str, Any]:
        """chat_template_kwargs, with reasoning_effort's switch unless the client set its own."""
        kwargs = dict(self.chat_template_kwargs or {})
        if self.reasoning_effort is not None:
            kwargs.setdefault("reasoning_effort", self.reasoning_effort)
            kwargs.setdefault("enable_thinking", self.reasoning_effort != "none")
        return kwargs

    @model_validator(mode="after")
    def _check_tools(self) -> "ChatCompletionRequest":
        if self.tools is not None and not self.tools:
            raise ValueError("tools must not be an empty array: give at least one tool or "
                             "leave the field out")
        mode = self.tool_choice_mode
        if mode != "none" and not self.tools:
            raise ValueError("tool_choice needs tools")
        if mode == "named":
            name = self.tool_choice.function.name
            if all(tool.function.name != name for tool in self.tools):
                raise ValueError(f"tool_choice names function {name!r}, which is not in tools")
        if mode in ("named", "required") and self._has_own_constraint():
            raise ValueError("give either tool_choice 'required' / a named function or "
                             "response_format / structured_outputs constraints, not both")
        return self

    def _has_own_constraint(self) -> bool:
        # structured_outputs may carry only options (disable_any_whitespace) for the tools'
        # schema, as vLLM allows; a constraint of its own would clash with it.
        if self.response_format is not None and self.response_format.type != "text":
            return True
        return any(self.structured_outputs.get(kind) is not None
                   for kind in STRUCTURED_OUTPUT_KINDS) if self.structured_outputs else False

    @property
    def tool_choice_mode(self) -> str:
        """"none", "auto", "required" or "named"."""
        if isinstance(self.tool_choice, NamedToolChoice):
            return "named"
        if self.tool_choice is None:
            return "auto" if self.tools else "none"
        return self.tool_choice

    @property
    def structured_constraint(self) -> Optional[dict[str, Any]]:
        # "required" and named calls are generated under their JSON schema.
        mode = self.tool_choice_mode
        options = dict(self.structured_outputs or {})
        if mode == "required":
            parallel = self.parallel_tool_calls is not False
            return {**options, "json": required_calls_schema(self.tools, parallel)}
        if mode == "named":
            name = self.tool_choice.function.name
            tool = next(t for t in self.tools if t.function.name == name)
            return {**options, "json": tool.function.parameters or EMPTY_PARAMETERS}
        return super().structured_constraint

    def tool_schemas(self) -> dict[str, dict[str, Any]]:
        """Each tool's parameters schema by function name, for parsers that type arguments."""
        return {tool.function.name: tool.function.parameters or {} for tool in self.tools or ()}

    def template_tools(self) -> Optional[list[dict[str, Any]]]:
        """The tools as chat templates read them (also under tool_choice "none", as vLLM)."""
        return [tool.model_dump(exclude_none=True) for tool in self.tools] if self.tools else None

    @property
    def requested_max_tokens(self) -> Optional[int]:
        return (
            self.max_completion_tokens
            if self.max_completion_tokens is not None
            else self.max_tokens
        )


class TokenizeRequest(RequestModel):
    model: Optional[str] = None
    prompt: Optional[str] = None
    messages: Optional[list[ChatMessage]] = Field(None, max_length=MAX_MESSAGES)
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    tools: Optional[list[ChatTool]] = Field(None, max_length=MAX_TOOLS)

    @model_validator(mode="after")
    def _one_input(self) -> "TokenizeRequest":
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt or messages")
        return self


class DetokenizeRequest(RequestModel):
    model: Optional[str] = None
    tokens: list[int] = Field(..., max_length=1 << 20)


# ---- responses -----------------------------------------------------------------------------


class PromptTokensDetails(OpenAIBaseModel):
    cached_tokens: int = 0  # prompt tokens served from the prefix cache


class UsageInfo(OmitNoneModel):
    _omit_if_none = ("prompt_tokens_details",)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: Optional[PromptTokensDetails] = None  # --enable-prompt-tokens-details


class CompletionLogprobs(OpenAIBaseModel):
    text_offset: list[int] = Field(default_factory=list)
    token_logprobs: list[Optional[float]] = Field(default_factory=list)
    tokens: list[str] = Field(default_factory=list)
    top_logprobs: list[Optional[dict[str, float]]] = Field(default_factory=list)


# prompt_logprobs in answers: per prompt position, None (the first) or {token id: {"logprob",
# "rank", "decoded_token"}}, as vLLM serializes them.
PromptLogprobsJSON = list[Optional[dict[str, dict[str, Any]]]]


class CompletionChoice(OmitNoneModel):
    _omit_if_none = ("prompt_token_ids", "token_ids", "prompt_logprobs")
    index: int
    text: str
    logprobs: Optional[CompletionLogprobs] = None
    finish_reason: Optional[str] = None
    stop_reason: Optional[Union[int, str]] = None
    # return_token_ids (vLLM's): the prompt's ids (a stream's first chunk of the prompt) and the
    # generated ids (a stream: those new in the chunk).
    prompt_token_ids: Optional[list[int]] = None
    token_ids: Optional[list[int]] = None
    prompt_logprobs: Optional[PromptLogprobsJSON] = None  # vLLM's extra


class CompletionResponse(OpenAIBaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Optional[UsageInfo] = None


class ChatTopLogprob(OpenAIBaseModel):
    token: str
    logprob: float
    bytes: Optional[list[int]] = None


class ChatTokenLogprob(ChatTopLogprob):
    top_logprobs: list[ChatTopLogprob] = Field(default_factory=list)


class ChatChoiceLogprobs(OpenAIBaseModel):
    content: Optional[list[ChatTokenLogprob]] = None


class FunctionCall(OpenAIBaseModel):
    name: str
    arguments: str  # a JSON object as text


class ToolCall(OpenAIBaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatResponseMessage(OmitNoneModel):
    _omit_if_none = ("tool_calls",)
    role: str = "assistant"
    content: Optional[str] = None
    tool_calls: Optional[list[ToolCall]] = None  # left out when there are none, as vLLM does
    reasoning: Optional[str] = None  # vLLM's field (--reasoning-parser)


class ChatCompletionChoice(OmitNoneModel):
    _omit_if_none = ("token_ids",)
    index: int
    message: ChatResponseMessage
    logprobs: Optional[ChatChoiceLogprobs] = None
    finish_reason: Optional[str] = None
    stop_reason: Optional[Union[int, str]] = None
    token_ids: Optional[list[int]] = None  # return_token_ids (vLLM's)


class ChatCompletionResponse(OmitNoneModel):
    _omit_if_none = ("prompt_token_ids", "prompt_logprobs")
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatCompletionChoice]
    usage: UsageInfo
    prompt_token_ids: Optional[list[int]] = None  # return_token_ids (vLLM's)
    prompt_logprobs: Optional[PromptLogprobsJSON] = None  # vLLM's extra


class DeltaFunctionCall(OmitNoneModel):
    _omit_if_none = ("name", "arguments")
    name: Optional[str] = None
    arguments: Optional[str] = None


class DeltaToolCall(OmitNoneModel):
    """A call's piece in a stream: the first piece carries id, type and name, later ones more
    of the arguments text (OpenAI's framing)."""

    _omit_if_none = ("id", "type")
    index: int
    id: Optional[str] = None
    type: Optional[Literal["function"]] = None
    function: DeltaFunctionCall


class DeltaMessage(OmitNoneModel):
    _omit_if_none = ("role", "content", "reasoning", "tool_calls")
    role: Optional[str] = None
    content: Optional[str] = None
    reasoning: Optional[str] = None
    tool_calls: Optional[list[DeltaToolCall]] = None


class ChatStreamChoice(OmitNoneModel):
    _omit_if_none = ("token_ids",)
    index: int
    delta: DeltaMessage
    logprobs: Optional[ChatChoiceLogprobs] = None
    finish_reason: Optional[str] = None
    stop_reason: Optional[Union[int, str]] = None
    token_ids: Optional[list[int]] = None  # return_token_ids: the ids new in this chunk


class ChatCompletionChunk(OmitNoneModel):
    _omit_if_none = ("usage", "prompt_token_ids")
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatStreamChoice]
    usage: Optional[UsageInfo] = None
    prompt_token_ids: Optional[list[int]] = None  # return_token_ids: on the first chunk


class CompletionChunk(OmitNoneModel):
    _omit_if_none = ("usage",)
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Optional[UsageInfo] = None


class ModelCard(OpenAIBaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "pagedllm"
    root: Optional[str] = None
    parent: Optional[str] = None  # a LoRA adapter's base model
    max_model_len: Optional[int] = None


class ModelList(OpenAIBaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class LoadLoRAAdapterRequest(RequestModel):
    """/v1/load_lora_adapter (vLLM's body)."""

    lora_name: str
    lora_path: str
    load_inplace: bool = False  # reload a name already served, from this path


class UnloadLoRAAdapterRequest(RequestModel):
    """/v1/unload_lora_adapter (vLLM's body)."""

    lora_name: str
    lora_int_id: Optional[int] = None  # accepted for vLLM clients; the name decides
