"""What a request gives back: RequestOutput with one CompletionOutput per sample (vLLM's shapes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union


@dataclass
class Logprob:
    logprob: float
    rank: Optional[int] = None  # 1 = the most likely token
    decoded_token: Optional[str] = None


# One dict per position: token id -> Logprob (the chosen token plus the top-N).
SampleLogprobs = list[dict[int, Logprob]]
# Position 0 of a prompt has no logprob, hence the None.
PromptLogprobs = list[Optional[dict[int, Logprob]]]


@dataclass
class RequestMetrics:
    """Wall-clock times (time.time() seconds) of one request's life."""

    arrival_time: float
    last_token_time: float
    first_scheduled_time: Optional[float] = None
    first_token_time: Optional[float] = None
    time_in_queue: Optional[float] = None
    finished_time: Optional[float] = None
    scheduler_time: Optional[float] = None
    model_forward_time: Optional[float] = None
    model_execute_time: Optional[float] = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: Optional[float]
    logprobs: Optional[SampleLogprobs]
    finish_reason: Optional[str] = None  # "stop" | "length" | "abort" | None (running)
    stop_reason: Union[int, str, None] = None  # the stop string or stop token id that ended it
    lora_request: Any = None  # the request's LoRARequest, if any

    def finished(self) -> bool:
        return self.finish_reason is not None

    def __repr__(self) -> str:
        return (
            f"CompletionOutput(index={self.index}, text={self.text!r}, "
            f"token_ids={self.token_ids}, cumulative_logprob={self.cumulative_logprob}, "
            f"logprobs={self.logprobs}, finish_reason={self.finish_reason}, "
            f"stop_reason={self.stop_reason})"
        )


@dataclass
class RequestOutput:
    request_id: str
    prompt: Optional[str]
    prompt_token_ids: Optional[list[int]]
    prompt_logprobs: Optional[PromptLogprobs]
    outputs: list[CompletionOutput]
    finished: bool
    metrics: Optional[RequestMetrics] = None
    lora_request: Any = None  # the LoRARequest it ran with (pagedllm.lora), if any
    encoder_prompt: Optional[str] = None
    encoder_prompt_token_ids: Optional[list[int]] = None
    num_cached_tokens: Optional[int] = None
    kv_transfer_params: Optional[dict] = field(default=None, repr=False)

    def __repr__(self) -> str:
        return (
            f"RequestOutput(request_id={self.request_id}, prompt={self.prompt!r}, "
            f"prompt_token_ids={self.prompt_token_ids}, "
            f"prompt_logprobs={self.prompt_logprobs}, outputs={self.outputs}, "
            f"finished={self.finished}, metrics={self.metrics}, "
            f"num_cached_tokens={self.num_cached_tokens})"
        )


@dataclass
class PoolingOutput:
    """A pooling request's result: the pooled hidden state (a float32 tensor [H] on the CPU)."""

    data: Any


@dataclass
class PoolingRequestOutput:
    request_id: str
    outputs: Any  # PoolingOutput (EmbeddingOutput for EmbeddingRequestOutput)
    prompt_token_ids: list[int]
    finished: bool
    num_cached_tokens: int = 0
    prompt: Optional[str] = None


@dataclass
class EmbeddingOutput:
    embedding: list[float]

    @property
    def hidden_size(self) -> int:
        return len(self.embedding)

    def __repr__(self) -> str:
        return f"EmbeddingOutput(hidden_size={self.hidden_size})"


@dataclass
class EmbeddingRequestOutput(PoolingRequestOutput):
    @staticmethod
    def from_base(out: PoolingRequestOutput) -> "EmbeddingRequestOutput":
        data = out.outputs.data if out.outputs is not None else None
        embedding = [] if data is None else data.tolist()
        return EmbeddingRequestOutput(out.request_id, EmbeddingOutput(embedding),
                                      out.prompt_token_ids, out.finished, out.num_cached_tokens,
                                      out.prompt)
