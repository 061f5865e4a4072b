"""pagedllm: an LLM serving engine with a compiled C++/CUDA core and vLLM's API."""

__version__ = "0.1.0"

from pagedllm.engine.arg_utils import AsyncEngineArgs, EngineArgs
from pagedllm.outputs import (CompletionOutput, EmbeddingOutput, EmbeddingRequestOutput,
                              PoolingOutput, PoolingRequestOutput, RequestOutput)
from pagedllm.pooling_params import PoolingParams
from pagedllm.sampling_params import RequestOutputKind, SamplingParams

# The engine classes import torch and the compiled core: load them on first use only, so that
# `import pagedllm` stays cheap (and works before the extension is built).
_LAZY = {
    "LLM": "pagedllm.entrypoints.llm",
    "LLMEngine": "pagedllm.engine.llm_engine",
    "AsyncLLMEngine": "pagedllm.engine.async_llm_engine",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pagedllm' has no attribute {name!r}")


__all__ = [
    "LLM",
    "LLMEngine",
    "AsyncLLMEngine",
    "AsyncEngineArgs",
    "EngineArgs",
    "CompletionOutput",
    "EmbeddingOutput",
    "EmbeddingRequestOutput",
    "PoolingOutput",
    "PoolingParams",
    "PoolingRequestOutput",
    "RequestOutput",
    "RequestOutputKind",
    "SamplingParams",
    "__version__",
]
