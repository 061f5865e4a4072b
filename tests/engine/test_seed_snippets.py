"""The two snippets of shared/seed-asyncllmengine.txt, verbatim but for `vllm` -> `pagedllm` and
the model (a tiny OPT instead of facebook/opt-125m)."""

from __future__ import annotations

import asyncio
import textwrap

import pytest

# Usage snippet: module-level engine creation (no running loop), then the awaits in a coroutine.
USAGE = """
from pagedllm.engine.async_llm_engine import AsyncLLMEngine
from pagedllm.engine.arg_utils import AsyncEngineArgs
from pagedllm.sampling_params import SamplingParams

# Create engine args
engine_args = AsyncEngineArgs(
    model=MODEL,
    tensor_parallel_size=1,
)

# Create engine
engine = AsyncLLMEngine.from_engine_args(engine_args)

# Generate text
sampling_params = SamplingParams(temperature=0.8, top_p=0.95)
request_id = "unique-request-id"

async def main():
    # Add request
    await engine.add_request(
        request_id=request_id,
        prompt="Hello, my name is",
        sampling_params=sampling_params,
    )

    # Process results
    async for request_output in engine.generate(request_id):
        if request_output.finished:
            print(request_output.outputs[0].text)
            RESULTS.append(request_output)
"""

# FastAPI snippet: the engine is created inside the running loop, by a startup hook.
FASTAPI = """
import time
from fastapi import FastAPI
from pagedllm.engine.async_llm_engine import AsyncLLMEngine
from pagedllm.engine.arg_utils import AsyncEngineArgs
from pagedllm.sampling_params import SamplingParams

app = FastAPI()
engine = None

@app.on_event("startup")
async def startup():
    global engine
    engine_args = AsyncEngineArgs(model=MODEL)
    engine = AsyncLLMEngine.from_engine_args(engine_args)

@app.post("/generate")
async def generate(prompt: str):
    request_id = f"req-{time.time()}"
    sampling_params = SamplingParams()

    await engine.add_request(request_id, prompt, sampling_params)

    async for output in engine.generate(request_id):
        if output.finished:
            return {"text": output.outputs[0].text}
"""


def test_usage_snippet_runs_verbatim(tiny_opt, capsys):
    scope = {"MODEL": str(tiny_opt), "RESULTS": []}
    exec(compile(textwrap.dedent(USAGE), "usage_snippet", "exec"), scope)
    asyncio.run(scope["main"]())
    (out,) = scope["RESULTS"]
    assert out.finished and out.request_id == "unique-request-id"
    assert len(out.outputs[0].token_ids) >= 1
    assert out.outputs[0].text in capsys.readouterr().out
    # The engine created at module level keeps working on a second event loop.
    scope["request_id"] = "second"
    asyncio.run(scope["main"]())
    assert scope["RESULTS"][-1].request_id == "second"
    scope["engine"].shutdown()


@pytest.mark.filterwarnings("ignore:\\s*on_event is deprecated:DeprecationWarning")
def test_fastapi_snippet_runs_verbatim(tiny_opt):
    from fastapi.testclient import TestClient

    scope = {"MODEL": str(tiny_opt)}
    exec(compile(textwrap.dedent(FASTAPI), "fastapi_snippet", "exec"), scope)
    with TestClient(scope["app"]) as client:
        texts = []
        for prompt in ("Hello, my name is", "The capital of France is"):
            response = client.post("/generate", params={"prompt": prompt})
            assert response.status_code == 200, response.text
            texts.append(response.json()["text"])
        assert all(isinstance(t, str) for t in texts)
        engine = scope["engine"]
        assert engine.is_running and engine.get_stats().num_generation_tokens >= 2
    scope["engine"].shutdown()
