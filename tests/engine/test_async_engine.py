"""AsyncLLMEngine: streaming, output kinds, aborts, errors, faults, idleness, scale."""

from __future__ import annotations

import asyncio
import time

import psutil
import pytest
from pagedllm.engine.arg_utils import AsyncEngineArgs
from pagedllm.engine.async_llm_engine import AsyncLLMEngine, EngineDeadError
from pagedllm.sampling_params import RequestOutputKind, SamplingParams

from .conftest import PROMPTS, engine_kwargs


def _make_engine(path, **overrides) -> AsyncLLMEngine:
    return AsyncLLMEngine.from_engine_args(
        AsyncEngineArgs(model=str(path), **engine_kwargs(**overrides))
    )


@pytest.fixture(scope="module")
def engine(tiny_llama):
    # Built with no running loop; each test runs on its own loop, so this also checks that the
    # engine loop restarts on whichever loop uses it next.
    eng = _make_engine(tiny_llama)
    yield eng
    eng.shutdown()


async def _collect(engine, prompt, params, rid):
    return [o async for o in engine.generate(prompt, params, rid)]


async def test_generate_both_forms_agree(engine):
    params = SamplingParams(temperature=0.0, max_tokens=8)
    await engine.add_request("form1", PROMPTS[0], params)
    first = [o async for o in engine.generate("form1")]
    second = await _collect(engine, PROMPTS[0], params, "form2")
    assert first[-1].finished and second[-1].finished
    assert not any(o.finished for o in first[:-1])
    assert first[-1].outputs[0].token_ids == second[-1].outputs[0].token_ids
    assert len(first[-1].outputs[0].token_ids) == 8
    assert len(first) == 8  # one output per generated token (CUMULATIVE)
    m = first[-1].metrics
    assert m.arrival_time <= m.first_scheduled_time <= m.first_token_time <= m.finished_time
    # Ids are free again once finished and consumed.
    assert len(await _collect(engine, PROMPTS[0], params, "form1")) == 8


async def test_output_kinds(engine):
    base = dict(temperature=0.0, max_tokens=10, ignore_eos=True)
    cum = await _collect(engine, PROMPTS[6], SamplingParams(**base), "cum")
    delta = await _collect(
        engine, PROMPTS[6], SamplingParams(**base, output_kind=RequestOutputKind.DELTA), "delta"
    )
    final = await _collect(
        engine,
        PROMPTS[6],
        SamplingParams(**base, output_kind=RequestOutputKind.FINAL_ONLY),
        "final",
    )
    full = cum[-1].outputs[0]
    assert len(final) == 1 and final[0].outputs[0].token_ids == full.token_ids
    assert final[0].outputs[0].text == full.text
    assert "".join(o.outputs[0].text for o in delta if o.outputs) == full.text
    assert sum((o.outputs[0].token_ids for o in delta if o.outputs), []) == full.token_ids
    # Cumulative outputs only ever grow.
    for a, b in zip(cum, cum[1:]):
        assert b.outputs[0].text.startswith(a.outputs[0].text)


async def test_request_id_errors(engine):
    with pytest.raises(ValueError, match="unknown"):
        async for _ in engine.generate("never-added"):
            pass
    await engine.add_request("dup", PROMPTS[1], SamplingParams(max_tokens=3))
    with pytest.raises(ValueError, match="already in use"):
        await engine.add_request("dup", PROMPTS[1], SamplingParams(max_tokens=3))
    outs = [o async for o in engine.generate("dup")]
    assert outs[-1].finished
    await engine.add_request("twice", PROMPTS[1], SamplingParams(max_tokens=50, ignore_eos=True))
    gen = engine.generate("twice")
    await gen.__anext__()
    with pytest.raises(ValueError, match="already called"):
        async for _ in engine.generate("twice"):
            pass
    await engine.abort_request("twice")
    assert [o async for o in gen][-1].outputs[0].finish_reason == "abort"
    with pytest.raises(ValueError, match="prompt"):
        await engine.add_request("empty", [], SamplingParams())
    # The failed add left no trace: the id can be used.
    assert (await _collect(engine, PROMPTS[1], SamplingParams(max_tokens=2), "empty"))[-1].finished


async def test_abort_mid_stream_frees_every_block(engine):
    params = SamplingParams(temperature=0.0, max_tokens=200, ignore_eos=True)
    others = [asyncio.create_task(_collect(engine, PROMPTS[i], params, f"bg{i}")) for i in range(3)]
    seen = []
    async for out in engine.generate(PROMPTS[2], params, "victim"):
        seen.append(out)
        if len(seen) == 3:
            assert engine.get_stats().num_blocks_used > 0
            await engine.abort_request("victim")
            for i in range(3):
                await engine.abort_request(f"bg{i}")
    assert seen[-1].finished and seen[-1].outputs[0].finish_reason == "abort"
    assert len(seen[-1].outputs[0].token_ids) < 200
    for task in others:
        outs = await task
        assert outs[-1].outputs[0].finish_reason == "abort"
    stats = engine.get_stats()
    assert stats.num_blocks_used == 0 and stats.num_running == 0 and stats.num_waiting == 0
    assert stats.num_unfinished_requests == 0
    engine.engine.engine_core.scheduler.check_invariants()


async def test_cancelled_consumer_aborts_its_request(engine):
    params = SamplingParams(temperature=0.0, max_tokens=500, ignore_eos=True)

    async def consume():
        async for _ in engine.generate(PROMPTS[3], params, "cancelled"):
            pass

    task = asyncio.create_task(consume())
    while engine.get_stats().num_running == 0:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    deadline = time.time() + 10
    while engine.get_stats().num_blocks_used and time.time() < deadline:
        await engine.check_health()
        await asyncio.sleep(0.02)
        # Any later step/abort refreshes the snapshot; nudge with a tiny request.
        await _collect(engine, PROMPTS[0], SamplingParams(max_tokens=1), f"nudge{time.time()}")
    assert engine.get_stats().num_blocks_used == 0


async def test_one_thousand_concurrent_generates(engine):
    params = SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True)
    tasks = [_collect(engine, PROMPTS[i % len(PROMPTS)], params, f"many{i}") for i in range(1000)]
    results = await asyncio.gather(*tasks)
    assert len(results) == 1000
    assert all(r[-1].finished and len(r[-1].outputs[0].token_ids) == 3 for r in results)
    # Same prompt, same greedy tokens, whatever the batch.
    assert results[0][-1].outputs[0].token_ids == results[len(PROMPTS)][-1].outputs[0].token_ids
    assert engine.get_stats().num_blocks_used == 0


async def test_idle_engine_uses_no_cpu(engine):
    await _collect(engine, PROMPTS[0], SamplingParams(max_tokens=4), "before-idle")
    await asyncio.sleep(0.5)  # let torch/OpenMP worker threads stop spinning
    proc = psutil.Process()
    before = proc.cpu_times()
    t0 = time.monotonic()
    await asyncio.sleep(1.0)
    elapsed = time.monotonic() - t0
    after = proc.cpu_times()
    used = (after.user - before.user) + (after.system - before.system)
    assert used / elapsed < 0.05, f"idle engine used {100 * used / elapsed:.1f}% CPU"
    assert engine.is_running and not engine.errored


async def test_n2_stop_string_stops_one_child_only(engine):
    params = dict(n=2, temperature=1.0, seed=11, max_tokens=24, ignore_eos=True)
    free = (await _collect(engine, PROMPTS[7], SamplingParams(**params), "n2-free"))[-1]
    t0, t1 = free.outputs[0].text, free.outputs[1].text
    assert free.outputs[0].token_ids != free.outputs[1].token_ids
    # A stop string from child 0's text that child 1 never produces.
    stop = next(
        t0[i : i + 3]
        for i in range(2, len(t0) - 3)
        if t0[i : i + 3] not in t1 and t0[i : i + 3].strip() and t0.find(t0[i : i + 3]) == i
    )
    stopped = await _collect(engine, PROMPTS[7], SamplingParams(**params, stop=[stop]), "n2-stop")
    last = stopped[-1]
    c0, c1 = last.outputs
    assert (c0.finish_reason, c0.stop_reason) == ("stop", stop)
    assert c0.text == t0[: t0.index(stop)]
    assert (c1.finish_reason, c1.text, c1.token_ids) == ("length", t1, free.outputs[1].token_ids)
    # While child 1 kept going, outputs still carried both completions (CUMULATIVE).
    assert all(len(o.outputs) == 2 for o in stopped)
    assert engine.get_stats().num_blocks_used == 0


async def test_fault_injection_fails_only_that_step(tiny_llama):
    engine = _make_engine(tiny_llama)
    try:
        calls = {"n": 0}

        def injector():
            calls["n"] += 1
            if calls["n"] == 3:
                raise RuntimeError("injected fault")

        engine._fault_injector = injector
        params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
        with pytest.raises(RuntimeError, match="injected fault"):
            await _collect(engine, PROMPTS[0], params, "faulty")
        assert not engine.errored
        await engine.check_health()
        ok = await _collect(engine, PROMPTS[0], params, "after-fault")
        assert ok[-1].finished and len(ok[-1].outputs[0].token_ids) == 6
        assert engine.get_stats().num_blocks_used == 0
        engine.engine.engine_core.scheduler.check_invariants()
    finally:
        engine.shutdown()


async def test_engine_death_fails_every_waiting_generate(tiny_llama):
    engine = _make_engine(tiny_llama)
    try:
        params = SamplingParams(temperature=0.0, max_tokens=100, ignore_eos=True)
        tasks = [
            asyncio.create_task(_collect(engine, PROMPTS[i], params, f"d{i}")) for i in range(4)
        ]
        while engine.get_stats().num_running == 0:
            await asyncio.sleep(0.01)

        def broken():
            raise MemoryError("scheduler exploded")

        engine.engine.step_with_failures = broken
        for task in tasks:
            with pytest.raises(EngineDeadError):
                await asyncio.wait_for(task, timeout=30)
        assert engine.errored and not engine.is_running
        with pytest.raises(EngineDeadError):
            await engine.check_health()
        with pytest.raises(EngineDeadError):
            await engine.add_request("late", PROMPTS[0], params)
    finally:
        engine.shutdown()


async def test_shutdown_fails_waiting_generates_and_later_calls(tiny_llama):
    engine = _make_engine(tiny_llama)
    params = SamplingParams(temperature=0.0, max_tokens=10_000, ignore_eos=True)
    task = asyncio.create_task(_collect(engine, PROMPTS[0], params, "long"))
    while engine.get_stats().num_running == 0:
        await asyncio.sleep(0.01)
    engine.shutdown()
    with pytest.raises(EngineDeadError):
        await asyncio.wait_for(task, timeout=30)
    with pytest.raises(EngineDeadError):
        await engine.add_request("after", PROMPTS[0], params)
    engine.shutdown()  # idempotent


async def test_generate_keywords_and_list_abort(engine):
    params = SamplingParams(temperature=0.0, max_tokens=4)
    outs = [
        o
        async for o in engine.generate(
            prompt={"prompt_token_ids": [1, 5, 9]}, sampling_params=params, request_id="kw"
        )
    ]
    assert outs[-1].finished and outs[-1].prompt is None
    assert outs[-1].prompt_token_ids == [1, 5, 9]
    long = SamplingParams(temperature=0.0, max_tokens=300, ignore_eos=True)
    await engine.add_request("la", PROMPTS[0], long)
    await engine.add_request("lb", PROMPTS[1], long)
    await engine.abort_request(["la", "lb", "not-there"])
    for rid in ("la", "lb"):
        got = [o async for o in engine.generate(request_id=rid)]
        assert got[-1].finished and got[-1].outputs[0].finish_reason == "abort"
    assert engine.get_stats().num_blocks_used == 0
