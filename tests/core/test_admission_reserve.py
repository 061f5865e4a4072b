"""SchedulerConfig.admission_reserve_blocks_per_running: a waiting request is admitted only if
that many free blocks per running request remain after it. On a workload that outgrows the
cache it cuts preempt/readmit churn; every request still finishes with all its tokens."""
from __future__ import annotations

import numpy as np
import pytest
from pagedllm._C import core


def _run(reserve: int, num_requests: int = 24, prompt_len: int = 40, max_tokens: int = 60):
    """Requests that cannot all fit at full length (32 usable blocks of 16 tokens, each request
    needs 7), run to completion with ignore_eos. Returns (preemptions, outputs per handle)."""
    config = core.SchedulerConfig(num_blocks=33, block_size=16, max_num_seqs=16,
                                  max_num_batched_tokens=256, max_model_len=128,
                                  admission_reserve_blocks_per_running=reserve)
    assert config.admission_reserve_blocks_per_running == reserve
    scheduler = core.Scheduler(config)
    rng = np.random.default_rng(0)
    for h in range(num_requests):
        prompt = rng.integers(0, 1000, size=prompt_len, dtype=np.int32)
        scheduler.add_request(h, prompt, core.RequestParams(max_tokens=max_tokens,
                                                            ignore_eos=True))
    outputs = {h: 0 for h in range(num_requests)}
    steps = 0
    preempted = 0  # summed over the plans: what the engine's preemption warning counts
    while scheduler.has_unfinished_requests():
        plan = scheduler.schedule()
        assert plan.num_seqs > 0, "no progress"
        assert plan.num_preempted == len(plan.preempted_handles)
        preempted += plan.num_preempted
        step_outputs = scheduler.update(plan, np.full(plan.num_sampled, 5, dtype=np.int32))
        for h, tok in zip(step_outputs.handles.tolist(), step_outputs.new_token_ids.tolist()):
            outputs[h] += tok >= 0
        scheduler.check_invariants()
        steps += 1
        assert steps < 10_000
    assert preempted == scheduler.stats().num_preemptions
    return preempted, outputs


def test_reserve_cuts_preemptions_and_loses_nothing() -> None:
    base_preemptions, base_outputs = _run(reserve=0)
    preemptions, outputs = _run(reserve=1)
    assert base_preemptions > 0  # the workload really outgrows the cache
    assert preemptions < base_preemptions
    assert outputs == base_outputs == {h: 60 for h in range(24)}


def test_reserve_never_blocks_an_idle_scheduler() -> None:
    # With nothing running the reserve is zero: a request that fits is admitted at once.
    config = core.SchedulerConfig(num_blocks=5, block_size=16, max_num_seqs=4,
                                  max_model_len=64, admission_reserve_blocks_per_running=8)
    scheduler = core.Scheduler(config)
    scheduler.add_request(1, np.arange(60, dtype=np.int32), core.RequestParams(max_tokens=2))
    plan = scheduler.schedule()
    assert plan.num_seqs == 1 and plan.num_tokens == 60


@pytest.mark.parametrize("bad", [-1, 1025])
def test_reserve_out_of_range_is_rejected(bad: int) -> None:
    with pytest.raises(ValueError, match="admission_reserve_blocks_per_running"):
        core.SchedulerConfig(num_blocks=10, admission_reserve_blocks_per_running=bad)
    from pagedllm.engine.arg_utils import EngineArgs

    with pytest.raises(ValueError, match="admission_reserve_blocks_per_running"):
        EngineArgs(model="unused", admission_reserve_blocks_per_running=bad).create_engine_config()
