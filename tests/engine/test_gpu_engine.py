"""The engine on CUDA: greedy equals transformers (on CPU), seeded sampling is batch-independent,
and the async engine streams. Skipped without a GPU."""

from __future__ import annotations

import asyncio

import pytest
import torch
from pagedllm import LLM, SamplingParams
from pagedllm.engine.arg_utils import AsyncEngineArgs
from pagedllm.engine.async_llm_engine import AsyncLLMEngine

from .conftest import PROMPTS, hf_generate_greedy

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def _kwargs(**kw):
    return dict(
        dict(
            device="cuda",
            dtype="float32",
            max_model_len=256,
            gpu_memory_utilization=0.3,
            max_num_batched_tokens=64,
        ),
        **kw,
    )


def test_cuda_greedy_matches_hf(tiny_llama, hf_model, tokenizer_of):
    llm = LLM(model=str(tiny_llama), **_kwargs())
    assert llm.llm_engine.engine_core.device.type == "cuda"
    outs = llm.generate(PROMPTS, SamplingParams(temperature=0.0, max_tokens=12), use_tqdm=False)
    tok, model = tokenizer_of(tiny_llama), hf_model(tiny_llama)
    for prompt, out in zip(PROMPTS, outs, strict=True):
        assert out.outputs[0].token_ids == hf_generate_greedy(model, tok.encode(prompt), 12)


def test_cuda_seeded_sampling_is_batch_independent(tiny_llama):
    llm = LLM(model=str(tiny_llama), **_kwargs())
    seeded = SamplingParams(
        temperature=1.0, top_k=50, seed=3, max_tokens=16, ignore_eos=True, logprobs=2
    )
    alone = llm.generate([PROMPTS[0]], seeded, use_tqdm=False)[0].outputs[0].token_ids
    mates = [SamplingParams(temperature=0.8, max_tokens=10, ignore_eos=True), seeded]
    batch = llm.generate([PROMPTS[4], PROMPTS[0]], mates, use_tqdm=False)
    assert batch[1].outputs[0].token_ids == alone


def test_cuda_engine_seed_repeats_unseeded_sampling(tiny_llama):
    # The fused race kernel (plain temperature) and the torch path (top_k) both draw their noise
    # from the engine's seed: a second engine with the same seed repeats the tokens.
    params = [SamplingParams(temperature=1.0, max_tokens=12, ignore_eos=True),
              SamplingParams(temperature=0.8, top_k=20, max_tokens=12, ignore_eos=True)]

    def run(seed):
        llm = LLM(model=str(tiny_llama), **_kwargs(seed=seed))
        return [o.outputs[0].token_ids for o in
                llm.generate([PROMPTS[1], PROMPTS[2]], params, use_tqdm=False)]

    first = run(7)
    assert run(7) == first and run(8) != first


def test_cuda_async_stream(tiny_llama):
    engine = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(model=str(tiny_llama), **_kwargs()))

    async def run():
        params = SamplingParams(temperature=0.0, max_tokens=8)
        first = await _collect(engine, PROMPTS[0], params, "g0")
        many = await asyncio.gather(
            *[_collect(engine, PROMPTS[i % len(PROMPTS)], params, f"c{i}") for i in range(64)]
        )
        return first, many

    try:
        first, many = asyncio.run(run())
        assert first[-1].finished
        assert all(m[-1].finished for m in many)
        assert engine.get_stats().num_blocks_used == 0
    finally:
        engine.shutdown()


async def _collect(engine, prompt, params, rid):
    return [o async for o in engine.generate(prompt, params, rid)]


def test_cuda_logit_processing_matches_cpu(tiny_llama):
    """logit_bias, allowed_token_ids, bad_words and structured outputs on a CUDA engine (pinned
    host ids, the grammar's bitmask unpacked on the device): greedy tokens equal the CPU
    engine's under each, float32 both."""
    cases = [dict(logit_bias={17: 100.0}), dict(logit_bias={5: 3.0, 9: -2.0}),
             dict(allowed_token_ids=[5, 9, 23, 40]), dict(bad_words=["the", "a"])]
    try:
        import xgrammar  # noqa: F401
        cases.append(dict(structured_outputs={"regex": "[a-c]{3}-[0-9]{2}"}))
        cases.append(dict(structured_outputs={"choice": ["yes", "no"]}))
    except ImportError:
        pass
    gpu = LLM(model=str(tiny_llama), **_kwargs())
    cpu = LLM(model=str(tiny_llama), device="cpu", dtype="float32", max_model_len=256)
    for case in cases:
        params = SamplingParams(temperature=0.0, max_tokens=12, **case)
        want = cpu.generate(PROMPTS[:3], params, use_tqdm=False)
        got = gpu.generate(PROMPTS[:3], params, use_tqdm=False)
        assert [o.outputs[0].token_ids for o in got] == [o.outputs[0].token_ids for o in want], case
