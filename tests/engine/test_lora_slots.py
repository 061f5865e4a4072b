"""LoRASlots on its own: at most max_loras adapters admitted, requests of one call admitted by
adapter, no starvation of a waiting adapter by a busy one, LRU of loaded adapters, and loading
failures reported to the waiting requests."""

from __future__ import annotations

import pytest
from pagedllm.lora.slots import LoRASlots


class Runner:
    """Records loads / unloads; `broken` ids fail to load."""

    def __init__(self, broken=()):
        self.loaded: list[int] = []
        self.events: list[str] = []
        self.broken = set(broken)

    def load(self, lora_id: int) -> None:
        if lora_id in self.broken:
            raise ValueError(f"cannot load {lora_id}")
        self.loaded.append(lora_id)
        self.events.append(f"+{lora_id}")

    def unload(self, lora_id: int) -> None:
        self.loaded.remove(lora_id)
        self.events.append(f"-{lora_id}")


def make(max_loras=1, max_cpu_loras=None, broken=()):
    runner = Runner(broken)
    slots = LoRASlots(max_loras, max_cpu_loras or max_loras, runner.load, runner.unload)
    return slots, runner


def test_one_call_is_admitted_by_adapter():
    slots, runner = make(max_loras=1)
    admitted = []
    for handle, lora in enumerate([1, 2, 1, 2, 1]):
        slots.enqueue(handle, lora)
        admitted += slots.admit()[0]
    assert admitted == [0, 2, 4]            # adapter 1's requests pass the waiting 2s
    assert slots.admitted == {1: 3} and runner.loaded == [1]
    assert slots.admit(step_boundary=True) == ([], {})
    for h in (0, 2):
        slots.release(h)
    assert slots.admit(step_boundary=True) == ([], {})   # 4 still holds the slot
    slots.release(4)
    assert slots.admit(step_boundary=True) == ([1, 3], {})
    assert runner.events == ["+1", "-1", "+2"]          # max_cpu_loras=1: 1 made room


def test_waiting_adapter_is_not_starved_by_a_busy_one():
    slots, _ = make(max_loras=1)
    slots.enqueue(0, 1)
    assert slots.admit()[0] == [0]
    slots.enqueue(1, 2)                     # waits for adapter 1's slot
    assert slots.admit(step_boundary=True)[0] == []
    slots.enqueue(2, 1)                     # queued after 2 waited through a step: behind it
    assert slots.admit()[0] == []
    assert slots.admit(step_boundary=True)[0] == []
    slots.release(0)                        # adapter 1 drains, adapter 2's turn
    assert slots.admit(step_boundary=True)[0] == [1]
    slots.enqueue(3, 2)                     # 2 is queued behind the waiting 1 now
    assert slots.admit(step_boundary=True)[0] == []
    slots.release(1)
    assert slots.admit(step_boundary=True)[0] == [2]
    assert slots.admit(step_boundary=True)[0] == []
    slots.release(2)
    assert slots.admit(step_boundary=True)[0] == [3]


@pytest.mark.parametrize("max_loras", [1, 2, 3])
def test_never_more_than_max_loras_admitted(max_loras):
    import random

    rng = random.Random(max_loras)
    slots, runner = make(max_loras=max_loras, max_cpu_loras=max_loras + 1)
    running: list[int] = []
    handle = 0
    done = 0
    for step in range(400):
        for _ in range(rng.randint(0, 3)):
            slots.enqueue(handle, rng.randint(1, 5))
            handle += 1
            running += slots.admit()[0]
        running += slots.admit(step_boundary=True)[0]
        assert len({slots.lora_of[h] for h in running}) <= max_loras
        assert len(slots.admitted) <= max_loras
        assert len(runner.loaded) <= max_loras + 1
        assert set(slots.admitted) <= set(runner.loaded)
        for h in list(running):
            if rng.random() < 0.3:
                running.remove(h)
                slots.release(h)
                done += 1
    while slots.waiting or running:         # drains: every request gets its turn
        running += slots.admit(step_boundary=True)[0]
        for h in running:
            slots.release(h)
            done += 1
        running = []
    assert done == handle


def test_failed_load_fails_the_waiting_requests_of_that_adapter():
    slots, _ = make(max_loras=1, broken={2})
    for handle, lora in enumerate([2, 1, 2]):
        slots.enqueue(handle, lora)
    admitted, failed = slots.admit()
    assert admitted == [1] and set(failed) == {0, 2}
    assert "cannot load 2" in str(failed[0])
    assert not slots.waiting and set(slots.lora_of) == {1}
    slots.release(0)                        # forgetting a failed handle is harmless
    assert slots.admitted == {1: 1}


def test_release_of_a_waiting_request_and_preload_lru():
    slots, runner = make(max_loras=1, max_cpu_loras=2)
    slots.preload(1)
    slots.preload(2)
    slots.preload(1)                        # 1 is now the most recently used
    slots.preload(3)
    assert runner.loaded == [1, 3]
    slots.enqueue(0, 1)
    slots.enqueue(1, 4)
    assert slots.admit()[0] == [0]
    slots.release(1)                        # aborted while waiting
    assert not slots.waiting
    with pytest.raises(ValueError, match="in use"):
        slots.unload(1)
    assert slots.in_use(1) and not slots.in_use(4)
