"""LoRASlots: which LoRA requests the scheduler may see, so that no step mixes more than
max_loras adapters, and which adapters stay loaded (at most max_cpu_loras, least recently used
dropped first).

The C++ scheduler knows nothing of adapters, so the limit is kept in front of it: a LoRA request
enters the scheduler only once its adapter holds one of max_loras slots, and holds it until its
last request in the scheduler is done. Every step then plans from requests of at most max_loras
adapters. The others wait here, first come first served:
- requests for an adapter that holds a slot go straight in, and a free slot goes to the oldest
  waiting request;
- but once a request has waited through a step boundary, requests queued after that boundary no
  longer pass it (even for an adapter in a slot): the adapters in the slots drain and the
  waiting one gets its turn, so a busy adapter cannot starve the others.
Requests queued between two steps (one LLM.generate call) are admitted by adapter, in bulk.
Limitation: a slot is held while any of its adapter's requests is in the scheduler, waiting or
preempted ones included, so one long request can keep other adapters waiting.

Invariants: len(admitted) <= max_loras; every admitted adapter is loaded;
len(loaded) <= max_cpu_loras (>= max_loras, so an idle adapter can always make room).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable


@dataclass
class _Waiting:
    lora_id: int
    queued_at_boundary: int   # step boundaries passed before it was queued


class LoRASlots:
    def __init__(self, max_loras: int, max_cpu_loras: int, load: Callable[[int], None],
                 unload: Callable[[int], None]) -> None:
        """load(id) / unload(id): put an adapter on / take it off the model runner; load may
        raise, which fails the requests waiting for that adapter."""
        if max_cpu_loras < max_loras:
            raise ValueError("max_cpu_loras: must be >= max_loras")
        self.max_loras = max_loras
        self.max_cpu_loras = max_cpu_loras
        self._load = load
        self._unload = unload
        self.lora_of: dict[int, int] = {}             # handle -> adapter, every unfinished one
        self.admitted: dict[int, int] = {}            # adapter in a slot -> its requests admitted
        self.waiting: OrderedDict[int, _Waiting] = OrderedDict()   # handle -> why, FIFO
        self.loaded: OrderedDict[int, None] = OrderedDict()        # least recently used first
        self._boundaries = 0

    # ---- requests ------------------------------------------------------------------------------

    def enqueue(self, handle: int, lora_id: int) -> None:
        self.lora_of[handle] = lora_id
        self.waiting[handle] = _Waiting(lora_id, self._boundaries)

    def release(self, handle: int) -> None:
        """The request is finished, aborted or failed (no-op for a handle not known here)."""
        lora_id = self.lora_of.pop(handle, None)
        if lora_id is None:
            return
        if self.waiting.pop(handle, None) is not None:
            return
        left = self.admitted[lora_id] - 1
        if left:
            self.admitted[lora_id] = left
        else:
            del self.admitted[lora_id]   # the slot is free; the adapter stays loaded (LRU)

    def admit(self, step_boundary: bool = False) -> tuple[list[int], dict[int, BaseException]]:
        """Let in what may enter the scheduler now. Returns (handles to add, in queue order;
        handle -> error for requests whose adapter failed to load, dropped from here).
        step_boundary: called before planning a step (not for a request just added)."""
        # Requests queued after the oldest one still waiting from an earlier step stay behind it.
        barrier = min((w.queued_at_boundary for w in self.waiting.values()
                       if w.queued_at_boundary < self._boundaries), default=None)
        if step_boundary:
            self._boundaries += 1
        admitted: list[int] = []
        failed: dict[int, BaseException] = {}
        broken: dict[int, BaseException] = {}
        for handle, w in list(self.waiting.items()):
            if w.lora_id in broken:
                failed[handle] = broken[w.lora_id]
                continue
            if barrier is not None and w.queued_at_boundary > barrier:
                continue
            if w.lora_id not in self.admitted:
                if len(self.admitted) >= self.max_loras:
                    continue
                try:
                    self._ensure_loaded(w.lora_id)
                except Exception as e:  # noqa: BLE001 - reported to its requests
                    broken[w.lora_id] = failed[handle] = e
                    continue
            self.admitted[w.lora_id] = self.admitted.get(w.lora_id, 0) + 1
            del self.waiting[handle]
            admitted.append(handle)
        for handle in failed:
            del self.waiting[handle]
            del self.lora_of[handle]
        return admitted, failed

    def num_waiting(self) -> int:
        return len(self.waiting)

    def in_use(self, lora_id: int) -> bool:
        return lora_id in self.lora_of.values()

    # ---- loaded adapters -----------------------------------------------------------------------

    def _ensure_loaded(self, lora_id: int) -> None:
        if lora_id in self.loaded:
            self.loaded.move_to_end(lora_id)
            return
        if len(self.loaded) >= self.max_cpu_loras:
            idle = next((i for i in self.loaded if i not in self.admitted), None)
            if idle is None:  # cannot happen while max_cpu_loras >= max_loras
                raise RuntimeError("LoRA: every loaded adapter is in use")
            self.unload(idle)
        self._load(lora_id)
        self.loaded[lora_id] = None

    def preload(self, lora_id: int) -> None:
        """Load an adapter ahead of its requests (may drop the least recently used idle one)."""
        self._ensure_loaded(lora_id)

    def unload(self, lora_id: int) -> bool:
        """Drop a loaded adapter that no admitted request uses; False if it is not loaded."""
        if lora_id not in self.loaded:
            return False
        if lora_id in self.admitted:
            raise ValueError(f"LoRA adapter id {lora_id} is in use by running requests")
        self._unload(lora_id)
        del self.loaded[lora_id]
        return True
