"""async_scheduling (EngineCore._step_overlapped): step n+1 is launched before step n's outputs
are built, so the caller's output processing overlaps the device. Outputs must be exactly those
of the synchronous engine, for every sampling feature, under preemption, aborts and failures."""

from __future__ import annotations

import asyncio

import pytest
from pagedllm import LLM, SamplingParams
from pagedllm.engine.arg_utils import AsyncEngineArgs, EngineArgs
from pagedllm.engine.async_llm_engine import AsyncLLMEngine
from pagedllm.engine.llm_engine import LLMEngine

from .conftest import PROMPTS, engine_kwargs
from .test_llm_greedy import _check_greedy

# One list of requests covering the plain path (overlapped) and every fallback to a synchronous
# step (penalties, min_tokens, logprobs, prompt logprobs), mixed in one batch.
MIXED_PARAMS = [
    SamplingParams(temperature=0.0, max_tokens=10),
    SamplingParams(temperature=0.8, top_p=0.9, seed=7, max_tokens=14),
    SamplingParams(temperature=1.0, seed=3, max_tokens=6, n=2),
    SamplingParams(temperature=0.0, max_tokens=20, stop=["e"]),
    SamplingParams(temperature=0.7, top_k=5, seed=11, max_tokens=9),
    SamplingParams(temperature=0.0, max_tokens=12, repetition_penalty=1.3),
    SamplingParams(temperature=0.0, max_tokens=8, min_tokens=6),
    SamplingParams(temperature=0.0, max_tokens=5, logprobs=2),
    SamplingParams(temperature=0.0, max_tokens=4, prompt_logprobs=1),
    SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True),
]


def _as_tuples(outs):
    return [
        (o.prompt, [(c.token_ids, c.text, c.finish_reason, c.stop_reason) for c in o.outputs])
        for o in outs
    ]


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_async_greedy_matches_hf(arch, tiny_model_dirs, hf_model, tokenizer_of):
    path = tiny_model_dirs[arch]
    llm = LLM(model=str(path), **engine_kwargs(async_scheduling=True))
    assert llm.llm_engine.engine_core.async_scheduling
    _check_greedy(llm, hf_model(path), tokenizer_of(path), PROMPTS)


def test_async_greedy_with_chunks_and_preemption(tiny_qwen3, hf_model, tokenizer_of):
    kw = engine_kwargs(kv_cache_space_bytes=13 * 16 * 1024, max_model_len=128,
                       max_num_batched_tokens=32, async_scheduling=True,
                       admission_reserve_blocks_per_running=0)  # so that preemption happens
    llm = LLM(model=str(tiny_qwen3), **kw)
    _check_greedy(llm, hf_model(tiny_qwen3), tokenizer_of(tiny_qwen3), PROMPTS)
    stats = llm.llm_engine.get_stats()
    assert stats.num_preemptions > 0 and stats.num_blocks_used == 0


def test_async_outputs_equal_sync_outputs_for_every_feature(tiny_llama):
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(MIXED_PARAMS))]
    results = {}
    for mode in (False, True):
        llm = LLM(model=str(tiny_llama), **engine_kwargs(async_scheduling=mode))
        outs = llm.generate(prompts, MIXED_PARAMS, use_tqdm=False)
        results[mode] = outs
    assert _as_tuples(results[True]) == _as_tuples(results[False])
    for sync_out, async_out in zip(results[False], results[True]):
        for a, b in zip(sync_out.outputs, async_out.outputs):
            assert (a.logprobs is None) == (b.logprobs is None)
            if a.logprobs is not None:
                assert [sorted(d) for d in a.logprobs] == [sorted(d) for d in b.logprobs]
        assert (sync_out.prompt_logprobs is None) == (async_out.prompt_logprobs is None)


def _async_engine_with(path, num_requests: int, max_tokens: int) -> LLMEngine:
    """An LLMEngine with async scheduling and greedy ignore_eos requests "0", "1", ..."""
    engine = LLMEngine.from_engine_args(
        EngineArgs(model=str(path), **engine_kwargs(async_scheduling=True)))
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    for i in range(num_requests):
        engine.add_request(str(i), PROMPTS[i], params)
    return engine


def test_plain_batches_really_overlap(tiny_llama):
    engine = _async_engine_with(tiny_llama, num_requests=4, max_tokens=5)
    core = engine.engine_core
    in_flight_seen = 0
    outputs = []
    while engine.has_unfinished_requests():
        outputs += engine.step()
        in_flight_seen += core._in_flight is not None
    # Step k launches step k+1 before returning step k's outputs, so the first call returns
    # nothing and the plan of every later step was in flight when its caller got control back.
    assert in_flight_seen >= 5
    final = [o for o in outputs if o.finished]
    assert sorted(o.request_id for o in final) == ["0", "1", "2", "3"]
    assert all(len(o.outputs[0].token_ids) == 5 for o in final)
    assert core._in_flight is None and not core.has_unfinished_requests()


def test_abort_between_steps_of_an_in_flight_plan(tiny_llama):
    engine = _async_engine_with(tiny_llama, num_requests=3, max_tokens=40)
    for _ in range(4):
        engine.step()
    assert engine.engine_core._in_flight is not None  # "1" is in the launched plan
    aborted = engine.abort_request("1")
    assert aborted and aborted[0].finished and aborted[0].outputs[0].finish_reason == "abort"
    outputs = []
    while engine.has_unfinished_requests():
        outputs += engine.step()
    assert "1" not in {o.request_id for o in outputs}  # nothing after the abort
    final = {o.request_id: o for o in outputs if o.finished}
    assert sorted(final) == ["0", "2"]
    assert all(len(o.outputs[0].token_ids) == 40 for o in final.values())
    stats = engine.get_stats()
    assert stats.num_blocks_used == 0 and stats.num_running == 0
    engine.engine_core.scheduler.check_invariants()


def test_failed_launch_keeps_the_previous_steps_outputs(tiny_llama):
    """A launch that fails after the previous step's tokens were read: those outputs (here "b"
    finishing) are handed over on the next step; only the failed plan's requests are lost."""
    engine = LLMEngine.from_engine_args(
        EngineArgs(model=str(tiny_llama), **engine_kwargs(async_scheduling=True)))
    engine.add_request("a", PROMPTS[0], SamplingParams(temperature=0.0, max_tokens=6,
                                                       ignore_eos=True))
    engine.add_request("b", PROMPTS[1], SamplingParams(temperature=0.0, max_tokens=2,
                                                       ignore_eos=True))
    assert engine.step() == []  # step 1 launched, nothing read yet
    engine.step()  # step 1's tokens read, step 2 launched

    calls = {"n": 0}

    def explode_once():
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected forward failure")

    engine.engine_core.fault_injector = explode_once
    # Step 2's tokens are read ("b" reaches max_tokens), then step 3 (only "a") fails to launch.
    outputs, failed = engine.step_with_failures()
    assert list(failed) == ["a"] and outputs == []
    late, failed = engine.step_with_failures()
    assert failed == {}
    done = {o.request_id: o for o in late if o.finished}
    assert list(done) == ["b"]
    assert len(done["b"].outputs[0].token_ids) == 2 and done["b"].outputs[0].finish_reason == "length"
    assert not engine.has_unfinished_requests()
    stats = engine.get_stats()
    assert stats.num_blocks_used == 0 and stats.num_running == 0 and stats.num_waiting == 0
    engine.engine_core.scheduler.check_invariants()


async def test_async_engine_streams_and_aborts_with_async_scheduling(tiny_llama):
    engine = AsyncLLMEngine.from_engine_args(
        AsyncEngineArgs(model=str(tiny_llama), **engine_kwargs(async_scheduling=True)))
    try:
        greedy = SamplingParams(temperature=0.0, max_tokens=8)
        outs = [o async for o in engine.generate(PROMPTS[0], greedy, "g")]
        assert outs[-1].finished and len(outs[-1].outputs[0].token_ids) <= 8
        reference = LLM(model=str(tiny_llama), **engine_kwargs()).generate(
            [PROMPTS[0]], greedy, use_tqdm=False)[0]
        assert outs[-1].outputs[0].token_ids == reference.outputs[0].token_ids

        long = SamplingParams(temperature=0.0, max_tokens=200, ignore_eos=True)
        seen = []
        async for out in engine.generate(PROMPTS[1], long, "victim"):
            seen.append(out)
            if len(seen) == 3:
                await engine.abort_request("victim")
        assert seen[-1].finished and seen[-1].outputs[0].finish_reason == "abort"
        for _ in range(100):  # the in-flight step drains within a step or two
            if engine.get_stats().num_blocks_used == 0:
                break
            await asyncio.sleep(0.01)
        assert engine.get_stats().num_blocks_used == 0
    finally:
        engine.shutdown()
