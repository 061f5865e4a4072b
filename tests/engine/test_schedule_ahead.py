"""Planning one step ahead (Scheduler.schedule_ahead, EngineCore.plans_ahead): step n+1 is
queued before step n's tokens are read, its deferred input tokens filled on the device from step
n's sampled tokens. Outputs must equal the engine's without it (and the synchronous engine's),
including stops on sampled tokens, chunked prefill, preemption and failures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pagedllm import LLM, SamplingParams
from pagedllm.engine.arg_utils import EngineArgs
from pagedllm.engine.llm_engine import LLMEngine
from pagedllm.worker.input_buffers import CudaInputBuffers, build_cpu_inputs

from .conftest import PROMPTS, engine_kwargs


class _CountingScheduler:
    """Delegates to the core Scheduler; counts what schedule_ahead() gave."""

    def __init__(self, inner):
        self._inner = inner
        self.ahead_plans = self.deferred_tokens = self.refused = 0

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def schedule_ahead(self):
        plan = self._inner.schedule_ahead()
        if plan is None:
            self.refused += 1
        else:
            self.ahead_plans += 1
            self.deferred_tokens += int(plan.num_deferred)
        return plan


def _generate(path, params, ahead: bool, async_scheduling: bool = True, **kw):
    llm = LLM(model=str(path), **engine_kwargs(async_scheduling=async_scheduling, **kw))
    core = llm.llm_engine.engine_core
    assert core.plans_ahead == async_scheduling  # the CPU runner takes device tokens
    core.plans_ahead = ahead
    counter = _CountingScheduler(core.scheduler)
    core.scheduler = counter
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(params))]
    outs = llm.generate(prompts, params, use_tqdm=False)
    stats = llm.llm_engine.get_stats()
    assert stats.num_blocks_used == 0 and stats.num_running == 0
    counter.check_invariants()
    return [(list(o.outputs[0].token_ids), o.outputs[0].finish_reason,
             o.outputs[0].stop_reason) for o in outs], counter, stats


def _params_with_stops(path) -> list[SamplingParams]:
    """Greedy and seeded requests of different lengths; each stops on a token its greedy run
    produces a few steps in, so that plans made ahead carry requests that stopped meanwhile."""
    plain = [SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)] * 6
    results, _, _ = _generate(path, plain, ahead=False)
    params = []
    for i, (toks, _, _) in enumerate(results):
        stop = [toks[3 + i % 5]]
        if i % 2:
            params.append(SamplingParams(temperature=0.9, seed=i, max_tokens=9 + 3 * i,
                                         stop_token_ids=stop))
        else:
            params.append(SamplingParams(temperature=0.0, max_tokens=9 + 3 * i,
                                         stop_token_ids=stop, ignore_eos=True))
    params.append(SamplingParams(temperature=0.0, max_tokens=1))
    return params


def test_ahead_equals_plain_and_sync_with_stops(tiny_llama):
    params = _params_with_stops(tiny_llama)
    ahead, counter, _ = _generate(tiny_llama, params, ahead=True)
    plain, plain_counter, _ = _generate(tiny_llama, params, ahead=False)
    sync, _, _ = _generate(tiny_llama, params, ahead=False, async_scheduling=False)
    assert ahead == plain == sync
    assert any(reason == "stop" for _, reason, _ in ahead)  # stops on sampled tokens happened
    assert counter.ahead_plans > 10 and counter.deferred_tokens > 20
    assert plain_counter.ahead_plans == 0


def test_ahead_equals_plain_with_chunks_prefix_hits_and_preemption(tiny_qwen3):
    kw = dict(kv_cache_space_bytes=13 * 16 * 1024, max_model_len=128, max_num_batched_tokens=32,
              admission_reserve_blocks_per_running=0)  # a small cache: preemptions happen
    params = [SamplingParams(temperature=0.0 if i % 3 else 0.8, seed=i, max_tokens=20 + i,
                             ignore_eos=True) for i in range(8)]
    ahead, counter, stats = _generate(tiny_qwen3, params, ahead=True, **kw)
    plain, _, plain_stats = _generate(tiny_qwen3, params, ahead=False, **kw)
    assert ahead == plain
    assert stats.num_preemptions > 0 and plain_stats.num_preemptions > 0
    assert counter.refused > 0  # ahead planning never preempts: it went the plain way
    assert counter.deferred_tokens > 20


def test_failure_of_the_step_read_late_fails_the_step_ahead_too(tiny_llama):
    engine = LLMEngine.from_engine_args(
        EngineArgs(model=str(tiny_llama), **engine_kwargs(async_scheduling=True)))
    core = engine.engine_core
    assert core.plans_ahead
    greedy = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    engine.add_request("a", PROMPTS[0], greedy)
    engine.add_request("b", PROMPTS[1], greedy)
    engine.step()
    engine.step()  # step 2 in flight

    real_sample_async = core.sampler.sample_async

    class _Broken:
        device_token_ids = None

        def __init__(self, pending):
            self.device_token_ids = pending.device_token_ids

        def wait(self):
            raise RuntimeError("injected device failure")

    def broken_once(logits, batch):
        core.sampler.sample_async = real_sample_async
        return _Broken(real_sample_async(logits, batch))

    # Step 3 is launched ahead of step 2; step 3's tokens cannot be read; step 4, launched ahead
    # of it on its tokens, fails with it.
    core.sampler.sample_async = broken_once
    outputs, failed = engine.step_with_failures()  # launches 3, reads 2
    assert failed == {}
    outputs, failed = engine.step_with_failures()  # launches 4 ahead, reading 3 fails
    assert sorted(failed) == ["a", "b"] and outputs == []
    assert core._in_flight is None
    assert not engine.has_unfinished_requests()
    stats = engine.get_stats()
    assert stats.num_blocks_used == 0 and stats.num_running == 0
    core.scheduler.check_invariants()
    # The engine goes on.
    engine.add_request("c", PROMPTS[2], greedy)
    done = []
    while engine.has_unfinished_requests():
        done += [o for o in engine.step() if o.finished]
    assert [o.request_id for o in done] == ["c"] and len(done[0].outputs[0].token_ids) == 10


class _DeferredPlan:
    """The BatchPlan fields the input builders read, with deferred rows."""

    def __init__(self, input_ids, deferred_rows, deferred_sources):
        n = len(input_ids)
        self.num_seqs = self.num_tokens = n
        self.max_query_len, self.max_seq_len = 1, 8
        self.input_ids = np.asarray(input_ids, np.int32)
        self.positions = np.full(n, 7, np.int32)
        self.slot_mapping = np.arange(n, dtype=np.int32)
        self.query_start_loc = np.arange(n + 1, dtype=np.int32)
        self.seq_lens = np.full(n, 8, np.int32)
        self.block_table = np.ones((n, 4), np.int32)
        self.num_deferred = len(deferred_rows)
        self.deferred_rows = np.asarray(deferred_rows, np.int32)
        self.deferred_sources = np.asarray(deferred_sources, np.int32)


@pytest.mark.parametrize("rows, sources, expected", [
    ([0, 1, 2], [0, 1, 2], [50, 51, 52]),          # the identity: one copy
    ([0, 2], [3, 1], [53, 9, 51]),                 # row 1 was known (9), rows take other slots
    ([1, 2], [0, 1], [9, 50, 51]),                 # a new row first shifts the others
])
def test_deferred_rows_take_the_previous_tokens(rows, sources, expected):
    known = [9 if r not in rows else -1 for r in range(3)]
    plan = _DeferredPlan(known, rows, sources)
    previous = torch.tensor([50, 51, 52, 53], dtype=torch.int32)
    cpu = build_cpu_inputs(plan, block_size=2, previous_tokens=previous)
    assert cpu.input_ids.tolist() == expected
    buffers = CudaInputBuffers(8, 4, 4, 2, torch.device("cpu"))
    for padded in (None, 4):
        inputs = buffers.build(plan, padded_num_seqs=padded, previous_tokens=previous)
        assert inputs.input_ids[:3].tolist() == expected
        assert inputs.positions[:3].tolist() == [7, 7, 7]


def test_deferred_rows_need_matching_previous_tokens():
    plan = _DeferredPlan([-1, 9], [0], [2])
    buffers = CudaInputBuffers(8, 4, 4, 2, torch.device("cpu"))
    with pytest.raises(ValueError, match="no previous_tokens"):
        buffers.build(plan)
    with pytest.raises(ValueError, match="reach past"):
        build_cpu_inputs(plan, 2, previous_tokens=torch.tensor([1, 2], dtype=torch.int32))
    with pytest.raises(ValueError, match="int32"):
        buffers.build(plan, previous_tokens=torch.tensor([1, 2, 3], dtype=torch.int64))
