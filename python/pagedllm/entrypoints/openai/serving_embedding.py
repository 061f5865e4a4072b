"""POST /v1/embeddings: one embedding per input (text or token ids), OpenAI's response shape.

Every input is one pooling request to the engine (AsyncLLMEngine.encode, via EngineCall, which
aborts what it leaves behind); base64 answers the little-endian float32 bytes, as OpenAI does.
"""

from __future__ import annotations

import base64
import time
from typing import Any, AsyncIterator, Optional

import numpy as np

from pagedllm.entrypoints.openai.errors import BadRequestError
from pagedllm.entrypoints.openai.protocol import (
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
    random_id,
)
from pagedllm.entrypoints.openai.serving_engine import (
    OpenAIServing,
    PreparedPrompt,
    merge_async_iterators,
)
from pagedllm.pooling_params import PoolingParams


def encode_embedding(values: Any, encoding_format: str) -> Any:
    """The embedding as a list of floats, or base64 of its float32 bytes."""
    if encoding_format == "base64":
        data = np.asarray(values, dtype="<f4").tobytes()
        return base64.b64encode(data).decode("ascii")
    return [float(v) for v in values]


class OpenAIServingEmbedding(OpenAIServing):
    def prepare_inputs(self, req: EmbeddingRequest) -> list[PreparedPrompt]:
        prompts = self.prompt_inputs(req.input, "input", req.truncate_prompt_tokens)
        limit = self.ctx.max_model_len
        for p in prompts:
            if len(p.token_ids) >= limit:
                raise BadRequestError(
                    f"This model's maximum context length is {limit} tokens; an input has "
                    f"{len(p.token_ids)} tokens (an embedding input must be shorter).",
                    param="input")
        return prompts

    def pooling_params(self, req: EmbeddingRequest) -> PoolingParams:
        try:
            return PoolingParams(use_activation=req.use_activation, dimensions=req.dimensions,
                                 normalize=req.normalize)
        except (ValueError, TypeError) as exc:
            raise BadRequestError(str(exc), param="dimensions") from exc

    async def create(self, req: EmbeddingRequest) -> tuple[Any, Optional[AsyncIterator[str]]]:
        model = self.check_model(req.model)
        if self.lora_request(model) is not None:
            raise BadRequestError("LoRA adapters are not supported for embeddings", param="model")
        prompts = self.prepare_inputs(req)
        params = self.pooling_params(req)
        request_id = random_id("embd")
        created = int(time.time())
        calls = self.start_calls(prompts, params, request_id)
        results: dict[int, Any] = {}
        try:
            async for i, out in merge_async_iterators(*calls):
                if out.finished:
                    results[i] = out
        finally:
            self.release_calls(calls)
        data = []
        num_tokens = 0
        for i, p in enumerate(prompts):
            out = results.get(i)
            if out is None or out.outputs is None:
                raise RuntimeError(f"embedding request {request_id} ended without a result")
            data.append(EmbeddingData(index=i, embedding=encode_embedding(
                out.outputs.data.tolist(), req.encoding_format)))
            num_tokens += len(p.token_ids)
        return EmbeddingResponse(
            id=request_id, created=created, model=model, data=data,
            usage=EmbeddingUsage(prompt_tokens=num_tokens, total_tokens=num_tokens),
        ), None
