"""Pydantic models of /v1/responses (OpenAI's Responses API, as vLLM serves it): the request, its
input items and the chat messages they amount to, the output items and the response object.

The endpoint is the chat path underneath: a request's input items become chat messages
(`conversation`) and `ResponsesRequest.chat_request` is the /v1/chat/completions request it
amounts to, so rendering, sampling, tool choice and answer parsing are the chat endpoint's.
Requests for what the chat path cannot serve (other tool types, background runs, non-text
content) are refused with a 400 naming the field.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal, Optional, Union

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from pagedllm.entrypoints.openai.protocol import (
    MAX_MESSAGES,
    MAX_TOKENS_CAP,
    MAX_TOOLS,
    ChatCompletionRequest,
    ChatMessage,
    ChatTool,
    FunctionDefinition,
    MessageFunctionCall,
    MessageToolCall,
    NamedFunction,
    NamedToolChoice,
    OmitNoneModel,
    OpenAIBaseModel,
    SamplingOptions,
)
from pagedllm.structured_outputs import STRUCTURED_OUTPUT_KINDS

ItemStatus = Literal["in_progress", "completed", "incomplete"]
ReasoningEffort = Literal["none", "minimal", "low", "medium", "high"]


def new_id(prefix: str) -> str:
    """OpenAI's id shapes: resp_..., msg_..., rs_..., fc_..."""
    return f"{prefix}_{uuid.uuid4().hex}"


# ---- input items (also what output items are when a client sends them back) ----------------


class TextPart(OpenAIBaseModel):
    type: Literal["input_text", "output_text"]
    text: str


def _text_parts(value: Any) -> Any:
    # Checked by hand so that an image or file part gets one clear message, not a union's
    # "should be a valid string" first.
    if isinstance(value, list):
        for part in value:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in ("input_text", "output_text"):
                raise ValueError(f"content part type {kind!r} is not supported; only "
                                 "input_text and output_text parts are")
    return value


class MessageItem(OpenAIBaseModel):
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: Union[str, list[TextPart]]
    id: Optional[str] = None
    status: Optional[ItemStatus] = None

    _check_parts = field_validator("content", mode="before")(_text_parts)

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class FunctionCallItem(OpenAIBaseModel):
    """A call the model made: an output item, and an input item when sent back."""

    type: Literal["function_call"] = "function_call"
    id: Optional[str] = None
    call_id: str
    name: str
    arguments: str  # a JSON object as text
    status: Optional[ItemStatus] = None


class FunctionCallOutputItem(OpenAIBaseModel):
    type: Literal["function_call_output"] = "function_call_output"
    id: Optional[str] = None
    call_id: str
    output: Union[str, list[TextPart]]
    status: Optional[ItemStatus] = None

    _check_parts = field_validator("output", mode="before")(_text_parts)

    def text(self) -> str:
        if isinstance(self.output, str):
            return self.output
        return "".join(part.text for part in self.output)


class ReasoningText(OpenAIBaseModel):
    type: Literal["reasoning_text"] = "reasoning_text"
    text: str


class SummaryText(OpenAIBaseModel):
    type: Literal["summary_text"] = "summary_text"
    text: str


class ReasoningItem(OpenAIBaseModel):
    """The model's reasoning (vLLM's shape: the text in `content`, no summary)."""

    type: Literal["reasoning"] = "reasoning"
    id: Optional[str] = None
    summary: list[SummaryText] = Field(default_factory=list)
    content: Optional[list[ReasoningText]] = None
    encrypted_content: Optional[str] = None
    status: Optional[ItemStatus] = None

    @field_validator("encrypted_content")
    @classmethod
    def _no_encrypted(cls, v: Optional[str]) -> Optional[str]:
        if v is not None:
            raise ValueError("encrypted reasoning content is not supported")
        return v

    def text(self) -> str:
        # The summary only when there is no full text (a client may have kept just that).
        parts = self.content if self.content else self.summary
        return "".join(part.text for part in parts)


InputItem = Union[MessageItem, FunctionCallItem, FunctionCallOutputItem, ReasoningItem]
INPUT_ITEM_TYPES: dict[str, type[OpenAIBaseModel]] = {
    "message": MessageItem,
    "function_call": FunctionCallItem,
    "function_call_output": FunctionCallOutputItem,
    "reasoning": ReasoningItem,
}


def parse_input_item(raw: Any, index: int) -> InputItem:
    """One input item by its `type` (a bare `{"role", "content"}` is a message)."""
    if isinstance(raw, tuple(INPUT_ITEM_TYPES.values())):
        return raw  # already parsed (a request built in code)
    if not isinstance(raw, dict):
        raise ValueError(f"item {index} must be an object")
    kind = raw.get("type", "message" if "role" in raw else None)
    cls = INPUT_ITEM_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"item {index}: input item type {kind!r} is not supported (supported: "
                         f"{', '.join(INPUT_ITEM_TYPES)})")
    try:
        return cls.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        raise ValueError(f"item {index} ({kind}): {where + ': ' if where else ''}{message}"
                         ) from None


def conversation(items: list[InputItem]) -> list[ChatMessage]:
    """The chat messages a list of items amounts to. One assistant turn is several items
    (reasoning, then a message and/or function calls, in the order the model wrote them): they
    merge into one assistant message, as the chat template expects it."""
    messages: list[ChatMessage] = []
    for item in items:
        last = messages[-1] if messages and messages[-1].role == "assistant" else None
        if isinstance(item, ReasoningItem):
            messages.append(ChatMessage(role="assistant", reasoning=item.text()))
        elif isinstance(item, MessageItem):
            if item.role == "assistant" and last is not None and last.content is None \
                    and not last.tool_calls:
                last.content = item.text()  # the answer after its reasoning
            else:
                messages.append(ChatMessage(role=item.role, content=item.text()))
        elif isinstance(item, FunctionCallItem):
            call = MessageToolCall(id=item.call_id, function=MessageFunctionCall(
                name=item.name, arguments=item.arguments))
            if last is not None:
                last.tool_calls = [*(last.tool_calls or []), call]
            else:
                messages.append(ChatMessage(role="assistant", tool_calls=[call]))
        else:
            messages.append(ChatMessage(role="tool", tool_call_id=item.call_id,
                                        content=item.text()))
    return messages


# ---- tools, text format, reasoning ----------------------------------------------------------


class FunctionTool(OpenAIBaseModel):
    """Responses' flat function tool (chat nests the same fields under `function`)."""

    type: Literal["function"] = "function"
    name: str = Field(..., min_length=1, max_length=256)
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None
    strict: Optional[bool] = None

    def chat_tool(self) -> ChatTool:
        return ChatTool(function=FunctionDefinition(
            name=self.name, description=self.description, parameters=self.parameters,
            strict=self.strict))


class FunctionToolChoice(OpenAIBaseModel):
    type: Literal["function"] = "function"
    name: str


class TextFormat(OmitNoneModel):
    # Echoed in the response as the client wrote it (`schema`, not the attribute's name, and
    # without the fields it left out).
    model_config = ConfigDict(extra="ignore", serialize_by_alias=True)
    _omit_if_none = ("name", "description", "schema", "strict")

    type: Literal["text", "json_object", "json_schema"]
    name: Optional[str] = None
    description: Optional[str] = None
    schema_: Optional[dict[str, Any]] = Field(None, alias="schema")
    strict: Optional[bool] = None

    @model_validator(mode="after")
    def _check_schema(self) -> "TextFormat":
        if self.type == "json_schema" and self.schema_ is None:
            raise ValueError('a format of type "json_schema" needs a schema')
        return self

    def constraint(self) -> dict[str, Any]:
        """The structured-outputs fields of this format (none for "text")."""
        if self.type == "json_object":
            return {"json_object": True}
        return {"json": self.schema_} if self.type == "json_schema" else {}


class TextConfig(OpenAIBaseModel):
    format: TextFormat = Field(default_factory=lambda: TextFormat(type="text"))
    verbosity: Optional[str] = None


class ReasoningConfig(OpenAIBaseModel):
    effort: Optional[ReasoningEffort] = None
    summary: Optional[Literal["auto", "concise", "detailed"]] = None


# ---- the request ----------------------------------------------------------------------------

# Chat's field names as this endpoint calls them, for errors raised on the chat path.
CHAT_TO_RESPONSES_PARAMS = {
    "messages": "input",
    "prompt": "input",
    "max_tokens": "max_output_tokens",
    "max_completion_tokens": "max_output_tokens",
    "reasoning_effort": "reasoning",
    "truncate_prompt_tokens": "truncation",
}


class ResponsesRequest(SamplingOptions):
    """POST /v1/responses. The sampling knobs (SamplingOptions: temperature, top_p and vLLM's
    extras) are the chat endpoint's."""

    input: Union[str, list[InputItem]]
    instructions: Optional[str] = None
    max_output_tokens: Optional[int] = Field(None, ge=1, le=MAX_TOKENS_CAP)
    tools: list[FunctionTool] = Field(default_factory=list, max_length=MAX_TOOLS)
    # None: "auto" (OpenAI's default), which with tools needs the server's tool-call parser.
    tool_choice: Optional[Union[Literal["none", "auto", "required"], FunctionToolChoice]] = None
    parallel_tool_calls: bool = True
    text: Optional[TextConfig] = None
    reasoning: Optional[ReasoningConfig] = None
    stream: bool = False
    store: bool = True
    previous_response_id: Optional[str] = None
    metadata: Optional[dict[str, str]] = Field(None, max_length=16)
    truncation: Literal["auto", "disabled"] = "disabled"
    include: Optional[list[str]] = None
    background: Optional[bool] = None
    # OpenAI features this server does not have: accepted only when absent or off.
    prompt: Optional[Any] = None  # a stored prompt template
    conversation: Optional[Any] = None  # a stored conversation object
    # vLLM's extras, as on chat.
    chat_template_kwargs: Optional[dict[str, Any]] = None
    include_reasoning: bool = True

    @field_validator("input", mode="before")
    @classmethod
    def _parse_items(cls, v: Any) -> Any:
        if not isinstance(v, list):
            return v
        if len(v) > MAX_MESSAGES:
            raise ValueError(f"at most {MAX_MESSAGES} input items are allowed")
        return [parse_input_item(raw, i) for i, raw in enumerate(v)]

    @field_validator("tools", mode="before")
    @classmethod
    def _function_tools_only(cls, v: Any) -> Any:
        for i, tool in enumerate(v if isinstance(v, list) else ()):
            kind = tool.get("type") if isinstance(tool, dict) else None
            if kind != "function":
                raise ValueError(f"tool {i}: tools of type {kind!r} are not supported; only "
                                 "function tools are")
        return v

    @field_validator("tool_choice", mode="before")
    @classmethod
    def _known_tool_choice(cls, v: Any) -> Any:
        if isinstance(v, dict) and v.get("type") != "function":
            raise ValueError(f"tool_choice of type {v.get('type')!r} is not supported; give "
                             '"none", "auto", "required" or {"type": "function", "name": ...}')
        return v

    @field_validator("tool_choice")
    @classmethod
    def _choice_in_tools(cls, v: Any, info: Any) -> Any:
        tools = info.data.get("tools") or []
        if isinstance(v, FunctionToolChoice):
            if all(tool.name != v.name for tool in tools):
                raise ValueError(f"tool_choice names function {v.name!r}, which is not in tools")
        elif v == "required" and not tools:
            raise ValueError('tool_choice "required" needs tools')
        return v

    @field_validator("text")
    @classmethod
    def _one_constraint(cls, v: Optional[TextConfig], info: Any) -> Optional[TextConfig]:
        if v is None or v.format.type == "text":
            return v
        own = info.data.get("structured_outputs") or {}
        if any(own.get(kind) is not None for kind in STRUCTURED_OUTPUT_KINDS):
            raise ValueError("give either text.format or structured_outputs, not both")
        choice = info.data.get("tool_choice")
        if choice == "required" or isinstance(choice, FunctionToolChoice):
            raise ValueError('text.format cannot constrain an answer that tool_choice '
                             '"required" or a named function already constrains')
        return v

    @field_validator("include")
    @classmethod
    def _no_logprobs(cls, v: Optional[list[str]]) -> Optional[list[str]]:
        if v and "message.output_text.logprobs" in v:
            raise ValueError("message.output_text.logprobs is not supported")
        return v  # the others ask for what this server never produces (encrypted reasoning)

    @field_validator("background")
    @classmethod
    def _no_background(cls, v: Optional[bool]) -> Optional[bool]:
        if v:
            raise ValueError("background responses are not supported")
        return v

    @field_validator("prompt", "conversation")
    @classmethod
    def _not_supported(cls, v: Any, info: Any) -> Any:
        if v is not None:
            raise ValueError(f"{info.field_name} is not supported")
        return v

    def input_messages(self) -> list[ChatMessage]:
        """This request's own turn (a string is one user message)."""
        if isinstance(self.input, str):
            return [ChatMessage(role="user", content=self.input)]
        return conversation(self.input)

    def instructions_messages(self) -> list[ChatMessage]:
        return [ChatMessage(role="system", content=self.instructions)] if self.instructions else []

    @property
    def echoed_tool_choice(self) -> Union[str, FunctionToolChoice]:
        return self.tool_choice if self.tool_choice is not None else "auto"

    def chat_request(self, messages: list[ChatMessage]) -> ChatCompletionRequest:
        """The chat request this one amounts to, for `messages` (instructions, earlier turns
        and this input). Raises pydantic's ValidationError where chat refuses it."""
        shared = self.model_dump(include=set(SamplingOptions.model_fields), exclude_unset=True)
        if self.text is not None and self.text.format.type != "text":
            # As structured_outputs rather than chat's response_format, so that options given
            # there (disable_any_whitespace) apply to the format's schema too.
            shared["structured_outputs"] = {**(self.structured_outputs or {}),
                                            **self.text.format.constraint()}
        choice: Any = None  # no tools: chat's default "none", whatever was echoed
        if self.tools:
            choice = self.tool_choice
            if isinstance(choice, FunctionToolChoice):
                choice = NamedToolChoice(function=NamedFunction(name=choice.name))
        return ChatCompletionRequest(
            **shared,
            messages=messages,
            max_completion_tokens=self.max_output_tokens,
            stream=self.stream,
            tools=[tool.chat_tool() for tool in self.tools] or None,
            tool_choice=choice,
            parallel_tool_calls=self.parallel_tool_calls,
            reasoning_effort=self.reasoning.effort if self.reasoning is not None else None,
            chat_template_kwargs=self.chat_template_kwargs,
            include_reasoning=self.include_reasoning,
            truncate_prompt_tokens=-1 if self.truncation == "auto" else None,
        )


# ---- the response ---------------------------------------------------------------------------


class OutputText(OpenAIBaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] = Field(default_factory=list)


class OutputMessage(OpenAIBaseModel):
    type: Literal["message"] = "message"
    id: str
    role: Literal["assistant"] = "assistant"
    status: ItemStatus
    content: list[OutputText]


OutputItem = Union[ReasoningItem, OutputMessage, FunctionCallItem]


class InputTokensDetails(OpenAIBaseModel):
    cached_tokens: int = 0  # prompt tokens the prefix cache had
    cache_write_tokens: int = 0  # the SDK requires it; this server does not count it


class OutputTokensDetails(OpenAIBaseModel):
    reasoning_tokens: int = 0


class ResponsesUsage(OpenAIBaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class IncompleteDetails(OpenAIBaseModel):
    reason: Literal["max_output_tokens"] = "max_output_tokens"


class ResponsesResponse(OpenAIBaseModel):
    """The response object; the request's settings are echoed, as OpenAI does."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["in_progress", "completed", "incomplete"]
    completed_at: Optional[int] = None
    error: Optional[dict[str, Any]] = None
    incomplete_details: Optional[IncompleteDetails] = None
    instructions: Optional[str] = None
    max_output_tokens: Optional[int] = None
    metadata: dict[str, str] = Field(default_factory=dict)
    model: str
    output: list[OutputItem] = Field(default_factory=list)
    parallel_tool_calls: bool = True
    previous_response_id: Optional[str] = None
    reasoning: ReasoningConfig = Field(default_factory=ReasoningConfig)
    store: bool = False
    temperature: Optional[float] = None  # the values sampled with, defaults applied
    top_p: Optional[float] = None
    text: TextConfig = Field(default_factory=TextConfig)
    tool_choice: Union[Literal["none", "auto", "required"], FunctionToolChoice] = "auto"
    tools: list[FunctionTool] = Field(default_factory=list)
    truncation: Literal["auto", "disabled"] = "disabled"
    usage: Optional[ResponsesUsage] = None
    user: Optional[str] = None
    background: bool = False
