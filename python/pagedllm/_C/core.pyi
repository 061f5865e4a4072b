"""Type stub and contract of ``pagedllm._C.core`` — the step API (csrc/bindings/core_bindings.cc).

What crosses the C++/Python boundary, and nothing else. String request ids, tokenizers and text
stay in Python; Python maps its ids to int handles (unique for the Scheduler's lifetime).

One engine step is always:
    plan = scheduler.schedule()
    sampled = model_runner.execute(plan)            # int32 [plan.num_sampled]
    outputs = scheduler.update(plan, sampled)
add_request / abort_request are called between steps (never between schedule and update by the
engine; if it happens anyway, update() skips the aborted request). Calls are serialized by a lock,
so any thread may make them.

Or one step ahead (the engine's async scheduling): plan n+1 before step n's tokens are read,
    plan_next = scheduler.schedule_ahead()          # None: cannot (would preempt); go plain
    ... run plan_next, its deferred rows taking step n's sampled tokens on the device ...
    outputs = scheduler.update(plan, sampled)       # step n; then update(plan_next, ...)
"""
from collections.abc import Sequence
from enum import IntEnum

import numpy as np
import numpy.typing as npt

# n > 1 (parallel sampling) is the engine's job: it adds n requests with the same prompt; the prefix
# cache shares their full prompt blocks once the first has computed them.

class CoreError(RuntimeError):
    """A broken contract inside the core (a bug, never user input)."""

class SchedulingPolicy(IntEnum):
    FCFS = 0
    PRIORITY = 1  # lower `priority` value first, then arrival time

class FinishReason(IntEnum):
    NONE = 0    # still running
    STOP = 1    # EOS or a stop token id (StepOutput.stop_token_id says which)
    LENGTH = 2  # max_tokens or max_model_len reached
    ABORT = 3

class SchedulerConfig:
    def __init__(
        self,
        *,
        num_blocks: int,                   # KV blocks in the pool, including the null block 0
        block_size: int = 16,
        max_num_seqs: int = 256,
        max_num_batched_tokens: int = 8192,
        max_model_len: int = 2048,
        enable_prefix_caching: bool = True,
        enable_chunked_prefill: bool = True,  # if False, a prompt is scheduled whole or not at all
        policy: SchedulingPolicy = SchedulingPolicy.FCFS,
        # admit a waiting request only if this many free blocks per running request remain
        admission_reserve_blocks_per_running: int = 0,
    ) -> None: ...
    # same names as readable attributes; invalid values raise ValueError naming the field
    num_blocks: int
    block_size: int
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    enable_prefix_caching: bool
    enable_chunked_prefill: bool
    policy: SchedulingPolicy
    admission_reserve_blocks_per_running: int
    @property
    def max_blocks_per_seq(self) -> int: ...  # ceil(max_model_len / block_size)

class RequestParams:
    """The sampling limits the core enforces (the rest of sampling lives in Python)."""
    def __init__(
        self,
        *,
        max_tokens: int,                   # >= 0 new tokens (0 only with prompt logprobs)
        min_tokens: int = 0,               # EOS / stop_token_ids ignored before this many
        ignore_eos: bool = False,
        eos_token_id: int = -1,            # -1: the model has none
        stop_token_ids: Sequence[int] = (),
        priority: int = 0,
        arrival_time: float = 0.0,         # seconds; orders FCFS among equal priority
        cache_salt: str = "",              # separates prefix-cache entries (extra hash key)
        skip_prefix_cache: bool = False,   # never reuse cached blocks (e.g. prompt logprobs)
    ) -> None: ...
    max_tokens: int
    min_tokens: int
    ignore_eos: bool
    eos_token_id: int
    stop_token_ids: list[int]
    priority: int
    arrival_time: float
    cache_salt: str
    skip_prefix_cache: bool

class BatchPlan:
    """One step's work. Arrays are read-only int32 numpy views over buffers the core owns:
    zero-copy, and unchanged for as long as this object lives (a newer schedule() never writes
    into a plan Python still holds)."""
    num_seqs: int          # S
    num_tokens: int        # T = query_start_loc[S]
    num_sampled: int       # N = len(logits_indices)
    max_query_len: int     # max over sequences of tokens scheduled this step
    max_seq_len: int       # max of seq_lens
    input_ids: npt.NDArray[np.int32]        # [T]
    positions: npt.NDArray[np.int32]        # [T] absolute position of each token
    slot_mapping: npt.NDArray[np.int32]     # [T] block_id * block_size + offset of its K/V
    query_start_loc: npt.NDArray[np.int32]  # [S + 1] prefix sum of tokens per sequence
    seq_lens: npt.NDArray[np.int32]         # [S] context length after this step
    num_computed: npt.NDArray[np.int32]     # [S] tokens already in the KV cache before this step
    block_table: npt.NDArray[np.int32]      # [S, max_blocks_per_seq], padded with null block 0
    logits_indices: npt.NDArray[np.int32]   # [N] token rows whose logits are sampled
    sampled_seq_indices: npt.NDArray[np.int32]  # [N] sequence row of each sampled token
    handles: npt.NDArray[np.int64]          # [S] request handle of each sequence row
    num_preempted: int                      # P (len(preempted_handles), without making the view)
    preempted_handles: npt.NDArray[np.int64]  # [P] requests preempted while planning this step
    num_deferred: int                       # D, 0 unless made by schedule_ahead()
    deferred_rows: npt.NDArray[np.int32]    # [D] token rows whose input id is -1 here: the token
    deferred_sources: npt.NDArray[np.int32]  # [D] the previous plan samples at this index
    # Sequence rows are ordered: requests that were running (in running order), then the ones
    # newly scheduled from the waiting queue. A sequence is sampled iff this step brings it to
    # its last known token (num_computed + scheduled == prompt + output tokens; in a plan made by
    # schedule_ahead(), its in-flight token): a partial prefill chunk samples nothing.

class StepOutput:
    """One entry of StepOutputs (made on access)."""
    handle: int
    new_token_ids: list[int]      # tokens appended this step (0 or 1 today; 0 when max_tokens == 0)
    finish_reason: FinishReason
    stop_token_id: int            # the EOS/stop token that finished it, else -1
    num_cached_tokens: int        # prompt tokens served from the prefix cache at first admission
    @property
    def finished(self) -> bool: ...  # finish_reason != NONE

class StepOutputs(Sequence[StepOutput]):
    """What update() returns: one entry per sampled sequence still alive, in plan order.
    A sequence of StepOutput (len, indexing, iteration) and, for vectorized use without one
    Python object per request, the same data as read-only numpy arrays (valid while held)."""
    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> StepOutput: ...  # IndexError past the end
    handles: npt.NDArray[np.int64]            # [N]
    new_token_ids: npt.NDArray[np.int32]      # [N] the appended token, -1 if none
    finish_reasons: npt.NDArray[np.int32]     # [N] FinishReason values (0 = still running)
    stop_token_ids: npt.NDArray[np.int32]     # [N]
    num_cached_tokens: npt.NDArray[np.int32]  # [N]

class SchedulerStats:
    num_running: int
    num_waiting: int              # includes preempted requests waiting to resume
    num_blocks_total: int         # usable blocks (excludes the null block)
    num_blocks_used: int          # referenced by at least one request
    num_blocks_free: int          # free, including cached-but-evictable blocks
    prefix_cache_queries: int     # prompt tokens looked up (cumulative)
    prefix_cache_hits: int        # prompt tokens found (cumulative)
    num_preemptions: int          # cumulative
    @property
    def kv_cache_usage(self) -> float: ...  # used / total

class Scheduler:
    def __init__(self, config: SchedulerConfig) -> None: ...
    @property
    def config(self) -> SchedulerConfig: ...
    def add_request(
        self, handle: int, prompt_token_ids: npt.ArrayLike, params: RequestParams
    ) -> None:
        """Queue a request. ValueError for: a handle in use, an empty prompt, a token id < 0,
        a prompt that leaves no room (len >= max_model_len when max_tokens > 0, len >
        max_model_len), or one whose longest sequence (min(len + max_tokens, max_model_len))
        needs more blocks than the whole cache holds. Never queues what can never run.
        TypeError for non-integer token ids."""
    def abort_request(self, handle: int) -> bool:
        """Drop a request at any point and free its blocks. False if the handle is unknown
        (already finished or never added)."""
    def schedule(self) -> BatchPlan:
        """Plan the next step (releases the GIL). Running requests first (in running order),
        then waiting ones in served order (FCFS: arrival_time then add order; PRIORITY: priority
        first), within max_num_seqs and max_num_batched_tokens, long prompts chunked. When blocks
        run out the running request served last is preempted (blocks freed, recomputed later with
        its prefix hits; listed in plan.preempted_handles) and no waiting request is admitted that
        step. The plan's tokens count as computed from here on, and its full blocks become prefix
        cache entries: the runner writes a layer's K/V for the whole plan before that layer's
        attention reads the cache. If the step fails, abort its requests (an abort before update()
        also forgets the cache entries that step created) or simply schedule() again: a plan
        never applied by update() is rolled back first (its tokens are planned again; requests it
        admitted go back to waiting), so no failed step leaves unwritten K/V reachable."""
    def schedule_ahead(self) -> BatchPlan | None:
        """Plan the step after the plan still awaiting update() (schedule() when none awaits):
        each request that plan samples counts one more token, not known yet; this plan's row for
        it is deferred (input id -1, listed in deferred_rows / deferred_sources). Requests that
        token must finish (max_tokens, max_model_len) are left out. Never preempts: None when
        blocks run out (then update() the awaiting plan and schedule()). CoreError when a plan
        was already scheduled ahead. Plans are applied by update() in the order they were made;
        schedule() rolls back every plan awaiting update()."""
    def update(self, plan: BatchPlan, sampled_token_ids: npt.ArrayLike) -> StepOutputs:
        """Append the sampled tokens ([plan.num_sampled] integers, aligned with logits_indices),
        run the stop checks and free finished requests. Returns one StepOutput per sampled
        sequence (requests aborted since schedule() are skipped). Releases the GIL.
        Stop checks, in order: a stop token (EOS unless ignore_eos, or one of stop_token_ids)
        counts only when at least min_tokens outputs precede it -> STOP; then
        max_tokens outputs or max_model_len tokens -> LENGTH. max_tokens == 0 finishes LENGTH
        right after the prompt, appending nothing.
        CoreError if `plan` is not the oldest plan awaiting update() or was already applied;
        ValueError for a wrong count or a negative id; TypeError for non-integer data."""
    def has_unfinished_requests(self) -> bool: ...
    def num_unfinished_requests(self) -> int: ...
    def stats(self) -> SchedulerStats: ...
    def check_invariants(self) -> None:
        """Raise CoreError if any block/ref-count/table invariant is broken (tests, debugging)."""
    def reset_prefix_cache(self) -> bool: ...  # False (and nothing done) while any block is in use
