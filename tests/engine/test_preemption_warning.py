"""The engine warns when the KV cache runs out and requests are preempted: at the first
preemption, then at most once per interval, with counts that add up to the scheduler's."""
from __future__ import annotations

import logging

import pytest
from pagedllm import LLM, SamplingParams
from pagedllm.engine.preemption_warning import PreemptionWarning

from .conftest import PROMPTS, engine_kwargs


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "pagedllm.engine" and r.levelno == logging.WARNING]


def test_first_preemption_warns_then_at_most_once_per_interval(caplog):
    clock = FakeClock()
    warning = PreemptionWarning(num_blocks=11, block_size=16, interval_s=60.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="pagedllm.engine"):
        warning.record(0)  # a step without preemption says nothing
        assert _warnings(caplog) == []
        warning.record(2)
        clock.now += 59.0
        warning.record(1)
        warning.record(3)
        messages = _warnings(caplog)
        assert len(messages) == 1
        assert "2 request(s) preempted since the last warning (2 in total)" in messages[0]
        assert "holds 160 tokens" in messages[0]  # 10 usable blocks of 16
        clock.now += 1.0  # the interval has passed: the next preemption warns with the backlog
        warning.record(1)
    messages = _warnings(caplog)
    assert len(messages) == 2
    assert "5 request(s) preempted since the last warning (7 in total)" in messages[1]
    assert warning.total == 7


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_engine_warns_once_and_counts_every_preemption(tiny_qwen3, caplog, async_scheduling):
    kw = engine_kwargs(kv_cache_space_bytes=13 * 16 * 1024, max_model_len=128,
                       max_num_batched_tokens=32, async_scheduling=async_scheduling,
                       admission_reserve_blocks_per_running=0)  # so that preemption happens
    llm = LLM(model=str(tiny_qwen3), **kw)
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    with caplog.at_level(logging.WARNING, logger="pagedllm.engine"):
        outs = llm.generate(PROMPTS, params)
    assert all(len(o.outputs[0].token_ids) == 40 for o in outs)  # nothing lost
    preemptions = llm.llm_engine.get_stats().num_preemptions
    assert preemptions > 1
    assert llm.llm_engine.engine_core.preemption_warning.total == preemptions
    messages = [m for m in _warnings(caplog) if "KV cache full" in m]
    assert len(messages) == 1  # one run well inside the interval: the first preemption only


def test_engine_without_preemption_says_nothing(tiny_qwen3, caplog):
    llm = LLM(model=str(tiny_qwen3), **engine_kwargs())
    with caplog.at_level(logging.WARNING, logger="pagedllm.engine"):
        llm.generate(PROMPTS, SamplingParams(temperature=0.0, max_tokens=8))
    assert llm.llm_engine.get_stats().num_preemptions == 0
    assert not [m for m in _warnings(caplog) if "KV cache full" in m]
