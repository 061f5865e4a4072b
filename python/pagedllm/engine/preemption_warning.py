"""A rate-limited warning when the KV cache runs out and requests are preempted.

A preempted request frees its KV blocks and is recomputed later (prompt and outputs so far), so
frequent preemption costs throughput without any error. The engine says so in the log: at the
first preemption, then at most once per `interval_s` while preemptions go on, with the counts and
the settings that reduce them.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable

logger = logging.getLogger("pagedllm.engine")


class PreemptionWarning:
    def __init__(self, num_blocks: int, block_size: int, interval_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cache_tokens = max(num_blocks - 1, 0) * block_size  # block 0 is the null block
        self.interval_s = interval_s
        self.clock = clock
        self._total_at_warning = 0  # the scheduler's count when the last warning was logged
        self._last_warning = None  # clock() of the last warning; None: never warned

    def record(self, total_preemptions: int) -> None:
        """Called after a step that preempted, with the scheduler's running count (the one
        source of the count: what each warning reports is derived from it)."""
        now = self.clock()
        if self._last_warning is not None and now - self._last_warning < self.interval_s:
            return
        logger.warning(
            "KV cache full: %d request(s) preempted since the last warning (%d in total); they "
            "are recomputed, which costs throughput. The cache holds %d tokens. More KV cache "
            "(a higher gpu_memory_utilization, more GPUs) or fewer concurrent sequences "
            "(max_num_seqs) avoid it; with long outputs, a larger "
            "--admission-reserve-blocks-per-running (e.g. 16) makes repeated preemption rarer.",
            total_preemptions - self._total_at_warning, total_preemptions, self.cache_tokens)
        self._total_at_warning = total_preemptions
        self._last_warning = now
