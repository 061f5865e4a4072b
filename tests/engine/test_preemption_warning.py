"""The engine warns when the KV cache runs out and requests are preempted: at the first
preemption, then at most once per interval, with counts that add up to the scheduler's."""
from __future__ import annotations

import logging
import re

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
        warning.record(2)  # the scheduler's running count after each preempting step
        clock.now += 59.0
        warning.record(3)
        warning.record(6)
        messages = _warnings(caplog)
        assert len(messages) == 1
        assert "2 request(s) preempted since the last warning (2 in total)" in messages[0]
        assert "holds 160 tokens" in messages[0]  # 10 usable blocks of 16
        clock.now += 1.0  # the interval has passed: the next preemption warns with the backlog
        warning.record(7)
    messages = _warnings(caplog)
    assert len(messages) == 2
    assert "5 request(s) preempted since the last warning (7 in total)" in messages[1]


def _engine_preempting(tiny_qwen3, async_scheduling: bool) -> LLM:
    kw = engine_kwargs(kv_cache_space_bytes=13 * 16 * 1024, max_model_len=128,
                       max_num_batched_tokens=32, async_scheduling=async_scheduling,
                       admission_reserve_blocks_per_running=0)  # so that preemption happens
    return LLM(model=str(tiny_qwen3), **kw)


_COUNTS = re.compile(r"(\d+) request\(s\) preempted since the last warning \((\d+) in total\)")


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_engine_warns_once_and_counts_every_preemption(tiny_qwen3, caplog, async_scheduling):
    llm = _engine_preempting(tiny_qwen3, async_scheduling)
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    with caplog.at_level(logging.WARNING, logger="pagedllm.engine"):
        outs = llm.generate(PROMPTS, params)
    assert all(len(o.outputs[0].token_ids) == 40 for o in outs)  # nothing lost
    preemptions = llm.llm_engine.get_stats().num_preemptions
    assert preemptions > 1
    messages = [m for m in _warnings(caplog) if "KV cache full" in m]
    assert len(messages) == 1  # one run well inside the interval: the first preemption only
    since, total = map(int, _COUNTS.search(messages[0]).groups())
    assert since == total >= 1 and total < preemptions


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_engine_warning_counts_add_up_to_the_scheduler(tiny_qwen3, caplog, async_scheduling):
    # With no interval every preempting step warns: the counts since each warning add up to
    # the scheduler's total, which the last warning reports.
    llm = _engine_preempting(tiny_qwen3, async_scheduling)
    llm.llm_engine.engine_core.preemption_warning.interval_s = 0.0
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    with caplog.at_level(logging.WARNING, logger="pagedllm.engine"):
        llm.generate(PROMPTS, params)
    preemptions = llm.llm_engine.get_stats().num_preemptions
    counts = [tuple(map(int, _COUNTS.search(m).groups()))
              for m in _warnings(caplog) if "KV cache full" in m]
    assert len(counts) > 1
    assert sum(since for since, _ in counts) == preemptions == counts[-1][1]
    assert all(since >= 1 for since, _ in counts)


def test_engine_without_preemption_says_nothing(tiny_qwen3, caplog):
    llm = LLM(model=str(tiny_qwen3), **engine_kwargs())
    with caplog.at_level(logging.WARNING, logger="pagedllm.engine"):
        llm.generate(PROMPTS, SamplingParams(temperature=0.0, max_tokens=8))
    assert llm.llm_engine.get_stats().num_preemptions == 0
    assert not [m for m in _warnings(caplog) if "KV cache full" in m]
