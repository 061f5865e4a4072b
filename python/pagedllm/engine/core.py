"""EngineCore: the scheduler, the model runner and the sampler, driven one step at a time.

step() is: plan = scheduler.schedule() -> logits = runner.execute_model(plan, rows)
-> sampled = sampler.sample(logits, batch) -> scheduler.update(plan, sampled).
Requests are known here only by int handles and token ids; text lives in the OutputProcessor.
Thread model: every method is called from one thread at a time (the engine loop's worker).

With scheduler_config.async_scheduling, step() overlaps: step n+1 is planned one step ahead
(Scheduler.schedule_ahead) and queued on the device before step n's tokens are read, so the device
never waits for the host between steps; then step n's tokens are read and applied (update) and
its outputs built while the device computes step n+1. Step n's sampled tokens reach step n+1's
inputs on the device (the plan's deferred rows, filled by the runner). Where the scheduler cannot
plan ahead (it would have to preempt) or the runner cannot take device tokens (tensor parallel),
step n's tokens are applied first and step n+1 planned after, as in a plain step; the caller's
output processing still overlaps the device. Batches whose sampling reads the Python copy of a
sequence's history (penalties, min_tokens and bad_words bans) or that need logprobs run the
plain synchronous step.

LoRA (config.lora_config): a request names its adapter with a LoRARequest. The adapter's id is
folded into the request's prefix-cache salt (K/V computed under one adapter never serves another
or the base model), LoRASlots keeps LoRA requests out of the scheduler until their adapter has
one of max_loras slots, and each step passes the runner its sequences' adapter ids.

Pooling engines (config.pooler_config): every request is a PoolingParams request that runs its
prompt and ends. Such an engine steps with _step_pooling (no logits, no sampler): the runner
returns the hidden states, the Pooler reduces them, and a placeholder token with max_tokens 1
makes the scheduler finish each request whose prompt is done. Generating engines never reach it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, Union

import numpy as np
import torch

from pagedllm.config import EngineConfig
from pagedllm.engine.preemption_warning import PreemptionWarning
from pagedllm.lora.request import LoRARequest
from pagedllm.outputs import Logprob
from pagedllm.pooling_params import PoolingParams
from pagedllm.sampling_params import SamplingParams
from pagedllm.worker.sampler import (
    PendingSample,
    Sampler,
    SamplingBatch,
    SamplingRow,
    row_columns,
    token_logprobs,
)

if TYPE_CHECKING:
    from pagedllm.lora.slots import LoRASlots

_FINISH_REASONS = {1: "stop", 2: "length", 3: "abort"}  # core FinishReason -> vLLM string

# Starts the prefix-cache salts pagedllm makes up (for LoRA requests); no salt a user may give
# maps onto one of them (see prefix_cache_salt).
_SALT_MARK = "\x00"


def prefix_cache_salt(user_salt: Optional[str], lora_int_id: int = 0) -> str:
    """The request's cache_salt for the core's prefix cache: the user's own salt, with the
    adapter folded in for LoRA requests so that K/V are shared only within one adapter.
    One-to-one: adapter salts are MARK "lora<id>" MARK salt; a user salt that starts with MARK
    gets a second MARK in front, and no adapter salt has MARK as its second character."""
    salt = user_salt or ""
    if lora_int_id:
        return f"{_SALT_MARK}lora{lora_int_id}{_SALT_MARK}{salt}"
    if salt.startswith(_SALT_MARK):
        return _SALT_MARK + salt
    return salt


class StepFailedError(RuntimeError):
    """The model forward (or sampling) of one step failed; only that step's requests are lost."""

    def __init__(self, handles: list[int], cause: BaseException) -> None:
        super().__init__(f"engine step failed for {len(handles)} request(s): {cause!r}")
        self.handles = handles
        self.cause = cause


@dataclass
class CoreRequest:
    """What the core side remembers about one sequence (one child of an n > 1 request)."""

    handle: int
    prompt_token_ids: list[int]
    params: SamplingParams
    eos_token_id: Optional[int]
    generator: Optional[torch.Generator] = None
    output_token_ids: list[int] = field(default_factory=list)
    next_prompt_logprob_pos: int = 1  # next prompt position whose logprob is still to compute
    first_scheduled_time: Optional[float] = None
    # Built once at add time and reused every step. Only the bans change over the request's
    # life (_bans_now): `banned_ids` applies while len(output_token_ids) < params.min_tokens,
    # and bad words ban whatever would complete one.
    row: Optional[SamplingRow] = None
    columns: tuple = ()  # row_columns(row), kept in step with row.banned_token_ids
    banned_ids: list[int] = field(default_factory=list)
    # SamplingParams.bad_words as token sequences: the last token of one is banned whenever the
    # output ends with the rest of it (so the ban changes every step, from the history).
    bad_words_ids: list[list[int]] = field(default_factory=list)
    grammar: Any = None  # structured_outputs.GrammarState: the tokens the output may take next


@dataclass(slots=True)
class CoreOutput:
    """One sequence's news from one step."""

    handle: int
    new_token_ids: list[int]
    finish_reason: Optional[str] = None  # "stop" | "length" | "abort" | None
    stop_reason: Union[int, str, None] = None  # stop token id (EOS gives None)
    num_cached_tokens: int = 0
    new_logprobs: Optional[list[dict[int, Logprob]]] = None
    new_prompt_logprobs: Optional[list[dict[int, Logprob]]] = None
    first_scheduled_time: Optional[float] = None
    pooled: Optional[torch.Tensor] = None  # pooling requests: the result [H] (CPU, float32)


@dataclass
class _LaunchedStep:
    """A step whose forward and draw are queued on the device; its tokens are not read yet."""

    plan: Any
    sample_handles: np.ndarray  # [N] int64
    first_sched: dict[int, float]
    pending: PendingSample


@dataclass
class _FinishedStep:
    """A launched step after its tokens were applied to the scheduler, outputs not built yet."""

    step_outputs: Any  # the scheduler's StepOutputs
    sample_handles: np.ndarray  # [N] int64
    sampled: Any  # SamplerOutput
    first_sched: dict[int, float]


def _logprob_dict(
    chosen: int, chosen_lp: float, rank: int, top_ids: np.ndarray, top_lps: np.ndarray, k: int
) -> dict[int, Logprob]:
    """vLLM's shape: the chosen token first, then the top-k (ranks 1..k)."""
    d = {chosen: Logprob(float(chosen_lp), int(rank))}
    for j in range(k):
        tid = int(top_ids[j])
        if tid not in d:
            d[tid] = Logprob(float(top_lps[j]), j + 1)
    return d


def _bans_now(req: CoreRequest) -> list[int]:
    """Token ids the request may not sample next: its stop / EOS ids while it has fewer than
    min_tokens outputs, and the last token of every bad word whose other tokens end the output
    (vLLM's rule: bad words are matched against generated tokens only)."""
    out = req.output_token_ids
    bans = list(req.banned_ids) if len(out) < req.params.min_tokens else []
    for word in req.bad_words_ids:
        head = len(word) - 1
        if head <= len(out) and (head == 0 or out[-head:] == word[:-1]) and word[-1] not in bans:
            bans.append(word[-1])
    return bans


class EngineCore:
    def __init__(self, config: EngineConfig, runner: Any = None) -> None:
        from pagedllm._C import core as _core

        self.config = config
        self._core = _core
        if runner is None and config.parallel_config.tensor_parallel_size > 1:
            from pagedllm.distributed.tp_executor import TPExecutor

            # N ranks behind one runner-shaped object; only this process schedules and samples.
            runner = TPExecutor(config)
            num_blocks = runner.num_blocks
        elif runner is None:
            from pagedllm.worker.model_runner import ModelRunner

            runner = ModelRunner(
                config.model_config,
                config.cache_config,
                config.device_config,
                config.parallel_config,
                scheduler_config=config.scheduler_config,
                lora_config=config.lora_config,
            )
            num_blocks = runner.initialize()
        else:
            num_blocks = runner.num_blocks
        self.runner = runner
        self.num_blocks = num_blocks
        self.pooler = self._make_pooler(config)
        self.max_model_len: int = int(runner.max_model_len)
        self.vocab_size: int = int(runner.vocab_size)
        self.eos_token_id: Optional[int] = runner.eos_token_id
        # Further EOS ids (generation_config may list several) act as stop tokens, as in vLLM.
        self.extra_eos_ids: list[int] = [
            t for t in getattr(runner, "eos_token_ids", []) if t != self.eos_token_id
        ]
        self.device: torch.device = runner.device

        sc = config.scheduler_config
        batched = sc.max_num_batched_tokens
        if batched is None:
            batched = max(8192, self.max_model_len)
        if not sc.enable_chunked_prefill and batched < self.max_model_len:
            raise ValueError(
                f"max_num_batched_tokens: {batched} is smaller than max_model_len "
                f"{self.max_model_len}; enable chunked prefill or raise it"
            )
        policy = (
            _core.SchedulingPolicy.PRIORITY
            if sc.policy == "priority"
            else _core.SchedulingPolicy.FCFS
        )
        self.scheduler_config = _core.SchedulerConfig(
            num_blocks=num_blocks,
            block_size=config.cache_config.block_size,
            max_num_seqs=sc.max_num_seqs,
            max_num_batched_tokens=batched,
            max_model_len=self.max_model_len,
            enable_prefix_caching=config.cache_config.enable_prefix_caching,
            enable_chunked_prefill=sc.enable_chunked_prefill,
            policy=policy,
            admission_reserve_blocks_per_running=sc.admission_reserve_blocks_per_running,
        )
        self.scheduler = _core.Scheduler(self.scheduler_config)
        self.preemption_warning = PreemptionWarning(num_blocks, config.cache_config.block_size)
        self.sampler = Sampler(seed=config.model_config.seed)
        self.async_scheduling = sc.async_scheduling
        # Plan step n+1 before step n's tokens are read (benchmarks switch it off to compare).
        self.plans_ahead = self.async_scheduling and bool(
            getattr(runner, "accepts_previous_tokens", False))
        self._in_flight: Optional[_LaunchedStep] = None  # async scheduling: launched, unread
        self._carried: list[CoreOutput] = []  # outputs held back by a failed step, given next
        self.requests: dict[int, CoreRequest] = {}
        # Handles by what extra per-step work they need, so that the common step skips loops.
        self._never_scheduled: set[int] = set()  # first_scheduled_time still unset
        self._prompt_lp_handles: set[int] = set()  # asked for prompt logprobs
        self._logprob_handles: set[int] = set()  # asked for sample logprobs
        self._min_tokens_handles: set[int] = set()  # banned tokens may still apply (min_tokens)
        self._bad_words_handles: set[int] = set()  # bans follow the history (bad_words)
        self._grammar_handles: set[int] = set()  # structured outputs: masks follow the history
        self._penalty_handles: set[int] = set()  # presence / frequency / repetition penalties
        # The last step's sampled handles ([N] int64) and batch, reused while they stay the same.
        self._last_batch_handles: Optional[np.ndarray] = None
        self._last_batch: Optional[SamplingBatch] = None
        # LoRA: adapters by id, as first given (validated); requests LoRASlots holds back (their
        # scheduler arguments); requests whose adapter failed to load, failed at the next step.
        self._lora: Optional[LoRASlots] = None
        self._known_loras: dict[int, LoRARequest] = {}
        self._held: dict[int, tuple[np.ndarray, Any]] = {}
        self._failed_admissions: dict[int, BaseException] = {}
        if config.lora_config is not None:
            from pagedllm.lora.slots import LoRASlots

            lc = config.lora_config
            self._lora = LoRASlots(lc.max_loras, lc.max_cpu_loras,
                                   load=lambda i: self.runner.add_lora(self._known_loras[i]),
                                   unload=self.runner.remove_lora)
        # Test hook: called before every model forward; an exception fails that step only.
        self.fault_injector: Optional[Callable[[], None]] = None
        # Cumulative counters and the last step's timing split (seconds).
        self.num_prompt_tokens = 0
        self.num_generation_tokens = 0
        self.num_steps = 0
        self.time_host = 0.0
        self.time_model = 0.0
        self.last_num_tokens = 0  # the last step's plan size (benchmarks split steps by kind)
        self.last_num_seqs = 0
        self.num_context_tokens = 0  # sum over steps of the plans' context lengths (KV read)

    def _make_pooler(self, config: EngineConfig) -> Any:
        """The Pooler of a pooling engine (None for a generating one)."""
        pc = config.pooler_config
        if pc is None:
            return None
        if config.parallel_config.tensor_parallel_size > 1 or config.lora_config is not None:
            raise ValueError("runner 'pooling': not supported with tensor parallelism or LoRA")
        from pagedllm.worker.pooler import Pooler, sentence_transformers_pooling

        pooling_type = (pc.pooling_type
                        or sentence_transformers_pooling(config.model_config.model_path)
                        or "LAST")
        return Pooler(pooling_type, True if pc.use_activation is None else pc.use_activation)

    def close(self) -> None:
        """Release what the runner holds outside this process (tensor-parallel workers)."""
        close = getattr(self.runner, "close", None)
        if close is not None:
            close()

    # -- requests -----------------------------------------------------------------------------
    def add_request(
        self,
        handle: int,
        prompt_token_ids: list[int],
        params: SamplingParams,
        arrival_time: float,
        max_tokens: int,
        bad_words_token_ids: Sequence[Sequence[int]] = (),
        compiled_grammar: Any = None,
        grammar_after_token: Optional[int] = None,
        lora_request: Optional[LoRARequest] = None,
    ) -> None:
        """Queue one sequence. `max_tokens` is already resolved (never None); bad_words_token_ids
        are params.bad_words tokenized and compiled_grammar params.structured_outputs compiled
        (LLMEngine does both: the core has no tokenizer). grammar_after_token: the grammar
        applies only once this token (a thinking model's end of reasoning) was generated.
        lora_request: the adapter to run with (ValueError if LoRA is off or it is unusable)."""
        if isinstance(params, PoolingParams):
            if lora_request is not None:
                raise ValueError("lora_request: not supported for pooling requests")
            return self._add_pooling_request(handle, prompt_token_ids, params, arrival_time)
        lora_id = 0
        if lora_request is not None:
            self.check_lora(lora_request)
            lora_id = lora_request.lora_int_id
        generator = None
        if params.seed is not None and params.temperature >= 1e-5:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(params.seed)
        stop_ids = list(params.stop_token_ids or [])
        if not params.ignore_eos:
            stop_ids += [t for t in self.extra_eos_ids if t not in stop_ids]
        core_params = self._core.RequestParams(
            max_tokens=max_tokens,
            min_tokens=params.min_tokens,
            ignore_eos=params.ignore_eos,
            eos_token_id=-1 if self.eos_token_id is None else int(self.eos_token_id),
            stop_token_ids=stop_ids,
            priority=params.priority,
            arrival_time=arrival_time,
            cache_salt=prefix_cache_salt(params.cache_salt, lora_id),
            skip_prefix_cache=params.prompt_logprobs is not None,
        )
        token_ids = np.asarray(prompt_token_ids, dtype=np.int32)
        if lora_id:
            self._held[handle] = (token_ids, core_params)
            self._lora.enqueue(handle, lora_id)
        else:
            self.scheduler.add_request(handle, token_ids, core_params)
        req = CoreRequest(handle, list(prompt_token_ids), params, self.eos_token_id, generator)
        req.bad_words_ids = [list(w) for w in bad_words_token_ids]
        if compiled_grammar is not None:
            from pagedllm.structured_outputs import GrammarState

            req.grammar = GrammarState(compiled_grammar, self.vocab_size, grammar_after_token)
        self._init_sampling_row(req)
        self.requests[handle] = req
        self._never_scheduled.add(handle)
        if params.prompt_logprobs is not None:
            self._prompt_lp_handles.add(handle)
        if params.logprobs is not None:
            self._logprob_handles.add(handle)
        self.num_prompt_tokens += len(prompt_token_ids)
        if lora_id:
            failed = self._admit_lora_requests(step_boundary=False)
            own = failed.pop(handle, None)
            self._failed_admissions.update(failed)
            if own is not None:
                raise own

    def _add_pooling_request(self, handle: int, prompt_token_ids: list[int],
                             params: PoolingParams, arrival_time: float) -> None:
        if self.pooler is None:
            raise ValueError("pooling_params: this engine generates; start it with "
                             "runner='pooling' (--runner pooling) to embed")
        # One placeholder token ends the request once its prompt has run (_step_pooling).
        core_params = self._core.RequestParams(
            max_tokens=1,
            min_tokens=0,
            ignore_eos=True,
            eos_token_id=-1,
            stop_token_ids=[],
            priority=0,
            arrival_time=arrival_time,
            cache_salt="",
            skip_prefix_cache=self.pooler.needs_all_positions,
        )
        self.scheduler.add_request(handle, np.asarray(prompt_token_ids, dtype=np.int32),
                                   core_params)
        self.requests[handle] = CoreRequest(handle, list(prompt_token_ids), params, None)
        self._never_scheduled.add(handle)
        self.num_prompt_tokens += len(prompt_token_ids)

    # -- LoRA -----------------------------------------------------------------------------------
    def check_lora(self, lora_request: LoRARequest) -> None:
        """ValueError unless this engine can serve the adapter: LoRA on, the id not taken by
        another path, and the adapter valid for this model (its config and tensor shapes; read
        once per id)."""
        if self._lora is None:
            raise ValueError("lora_request: LoRA is not enabled; start the engine with "
                             "enable_lora=True (--enable-lora)")
        if not isinstance(lora_request, LoRARequest):
            raise ValueError(f"lora_request: expected a LoRARequest, got "
                             f"{type(lora_request).__name__}")
        known = self._known_loras.get(lora_request.lora_int_id)
        if known is not None:
            if known.lora_path != lora_request.lora_path:
                raise ValueError(
                    f"lora_request: lora_int_id {known.lora_int_id} already names adapter "
                    f"{known.lora_name!r} at {known.lora_path}; give each adapter its own id")
            return
        self.runner.check_lora(lora_request)
        self._known_loras[lora_request.lora_int_id] = lora_request

    def add_lora(self, lora_request: LoRARequest) -> bool:
        """Check an adapter and load it ahead of its requests (vLLM's add_lora)."""
        self.check_lora(lora_request)
        self._lora.preload(lora_request.lora_int_id)
        return True

    def remove_lora(self, lora_int_id: int) -> bool:
        """Unload an adapter and forget its id. False if it is unknown or still used by a
        request (then nothing changes)."""
        if self._lora is None or lora_int_id not in self._known_loras:
            return False
        if self._lora.in_use(lora_int_id):
            return False
        self._lora.unload(lora_int_id)
        del self._known_loras[lora_int_id]
        return True

    def list_loras(self) -> set[int]:
        """Ids of the adapters loaded now."""
        return set(self._lora.loaded) if self._lora is not None else set()

    @property
    def num_lora_waiting(self) -> int:
        """LoRA requests waiting for an adapter slot (not in the scheduler yet)."""
        return len(self._held)

    def _admit_lora_requests(self, step_boundary: bool) -> dict[int, BaseException]:
        """Move the held requests LoRASlots lets in into the scheduler. Returns handle -> error
        for requests whose adapter failed to load (already forgotten)."""
        admitted, failed = self._lora.admit(step_boundary)
        for h in admitted:
            token_ids, core_params = self._held.pop(h)
            self.scheduler.add_request(h, token_ids, core_params)
        for h in failed:
            self._forget(h)
        return failed

    def _lora_ids(self, plan_handles: np.ndarray) -> Optional[np.ndarray]:
        """[S] int64 adapter id per planned sequence (0: none); None without LoRA sequences."""
        if self._lora is None or not self._lora.admitted:
            return None
        lora_of = self._lora.lora_of
        ids = np.fromiter((lora_of.get(h, 0) for h in plan_handles.tolist()), dtype=np.int64,
                          count=len(plan_handles))
        return ids if ids.any() else None

    def _init_sampling_row(self, req: CoreRequest) -> None:
        p = req.params
        banned: list[int] = []
        if p.min_tokens > 0:
            banned = list(p.stop_token_ids or [])
            if req.eos_token_id is not None and not p.ignore_eos:
                banned.append(req.eos_token_id)
                banned += self.extra_eos_ids
        req.banned_ids = banned
        has_pen = (
            p.presence_penalty != 0.0 or p.frequency_penalty != 0.0 or p.repetition_penalty != 1.0
        )
        # The penalty rows alias the request's own lists: output_token_ids grows in place.
        req.row = SamplingRow(
            temperature=p.temperature,
            top_p=p.top_p,
            top_k=p.top_k,
            min_p=p.min_p,
            presence_penalty=p.presence_penalty,
            frequency_penalty=p.frequency_penalty,
            repetition_penalty=p.repetition_penalty,
            generator=req.generator,
            num_logprobs=p.logprobs,
            prompt_token_ids=req.prompt_token_ids if has_pen else (),
            output_token_ids=req.output_token_ids if has_pen else (),
            banned_token_ids=_bans_now(req),
        )
        if p.allowed_token_ids:
            req.row.allowed_token_ids = self._host_tensor(sorted(set(p.allowed_token_ids)),
                                                          torch.long)
        if p.logit_bias:
            req.row.bias_token_ids = self._host_tensor(list(p.logit_bias), torch.long)
            req.row.bias_values = self._host_tensor(list(p.logit_bias.values()), torch.float32)
        if req.grammar is not None and req.grammar.active:
            req.row.grammar_bitmask = req.grammar.bitmask
        req.columns = row_columns(req.row)
        if banned:
            self._min_tokens_handles.add(req.handle)
        if req.bad_words_ids:
            self._bad_words_handles.add(req.handle)
        if req.grammar is not None:
            self._grammar_handles.add(req.handle)
        if has_pen:
            self._penalty_handles.add(req.handle)

    def _host_tensor(self, values: list, dtype: torch.dtype) -> torch.Tensor:
        """Per-request sampling data kept on the host, pinned when the model runs on a GPU, so
        the sampler's copy each step does not wait for the step in flight."""
        t = torch.tensor(values, dtype=dtype)
        return t.pin_memory() if self.device.type == "cuda" else t

    def _forget(self, handle: int) -> None:
        """Drop everything remembered about a handle (finished, aborted or failed)."""
        self.requests.pop(handle, None)
        if self._lora is not None:
            self._lora.release(handle)   # frees its adapter's slot after its last request
            self._held.pop(handle, None)
            self._failed_admissions.pop(handle, None)
        self._never_scheduled.discard(handle)
        self._prompt_lp_handles.discard(handle)
        self._logprob_handles.discard(handle)
        self._min_tokens_handles.discard(handle)
        self._bad_words_handles.discard(handle)
        self._grammar_handles.discard(handle)
        self._penalty_handles.discard(handle)
        if self.pooler is not None:
            self.pooler.forget(handle)

    def abort_request(self, handle: int) -> bool:
        self._forget(handle)
        return self.scheduler.abort_request(handle)

    def has_unfinished_requests(self) -> bool:
        return (
            self.scheduler.has_unfinished_requests()
            or self._in_flight is not None
            or bool(self._carried)
            or bool(self._held)
            or bool(self._failed_admissions)
        )

    # -- one step -----------------------------------------------------------------------------
    def step(self) -> list[CoreOutput]:
        if self._lora is not None:
            self._admit_before_step()
        if self.pooler is not None:
            return self._step_pooling()
        if self.async_scheduling:
            return self._step_overlapped()
        return self._step_sync()

    def _admit_before_step(self) -> None:
        """Let held LoRA requests in; requests whose adapter failed to load fail this step
        (before anything else runs, so no step in flight is touched)."""
        failed = self._admit_lora_requests(step_boundary=True)
        failed.update(self._failed_admissions)
        self._failed_admissions = {}
        if failed:
            raise StepFailedError(list(failed), next(iter(failed.values())))

    def _needs_sync_step(self) -> bool:
        """Sampling that reads each sequence's latest tokens on the host, or logprobs."""
        return bool(
            self._penalty_handles
            or self._min_tokens_handles
            or self._bad_words_handles
            or self._grammar_handles
            or self._logprob_handles
            or self._prompt_lp_handles
        )

    def _step_overlapped(self) -> list[CoreOutput]:
        outputs, self._carried = self._carried, []
        finished = None
        try:
            if self._in_flight is not None:
                launched, self._in_flight = self._in_flight, None
                if self.plans_ahead and not self._needs_sync_step():
                    finished, ahead_error = self._finish_after_launching_next(launched)
                    if ahead_error is not None:
                        raise ahead_error
                else:
                    finished = self._finish(launched)
            # Nothing planned ahead (the plain way, none left, or it would have to preempt):
            # plan now, after the update.
            if self._in_flight is None:
                if self._needs_sync_step():
                    if finished is not None:
                        outputs += self._collect_finished(finished)
                        finished = None
                    return outputs + self._step_sync()
                self._in_flight = self._launch()
        except BaseException:
            # Outputs already read must still reach the caller: hand them over next time.
            if finished is not None:
                outputs += self._collect_finished(finished)
            self._carried = outputs
            raise
        if finished is not None:
            outputs += self._collect_finished(finished)
        return outputs

    def _finish_after_launching_next(
        self, launched: _LaunchedStep
    ) -> tuple[_FinishedStep, Optional[StepFailedError]]:
        """Launch the step after `launched` (planned ahead, into self._in_flight), then read and
        apply `launched`'s tokens. A failure of the step ahead fails only its requests and is
        returned for the caller to raise once `launched`'s outputs are safe; a failure of
        `launched` fails the step ahead too (it ran on `launched`'s tokens) and is raised."""
        ahead_error: Optional[StepFailedError] = None
        try:
            self._in_flight = self._launch(ahead_of=launched)
        except StepFailedError as e:
            ahead_error = e
        try:
            finished = self._finish(launched)
        except StepFailedError as e:
            if self._in_flight is None:
                raise
            ahead, self._in_flight = self._in_flight, None
            ahead_handles = ahead.plan.handles.tolist()
            self._fail_step(ahead_handles)
            failed = set(e.handles)
            raise StepFailedError(e.handles + [h for h in ahead_handles if h not in failed],
                                  e.cause) from e.cause
        return finished, ahead_error

    def _schedule(self, ahead: bool = False) -> Optional[tuple]:
        """schedule() (or schedule_ahead()) and the bookkeeping both step modes share. None when
        nothing is scheduled, else (plan, plan handles [S] int64, sampled handles [N] int64,
        first-scheduled times)."""
        plan = self.scheduler.schedule_ahead() if ahead else self.scheduler.schedule()
        if plan is None:
            return None
        if plan.num_preempted:  # rare steps: only they read the scheduler's count
            self.preemption_warning.record(self.scheduler.stats().num_preemptions)
        if plan.num_seqs == 0:
            return None
        self.last_num_tokens, self.last_num_seqs = int(plan.num_tokens), int(plan.num_seqs)
        self.num_context_tokens += int(plan.seq_lens.sum())
        plan_handles = plan.handles
        first_sched = self._mark_first_scheduled(plan_handles)
        return plan, plan_handles, plan_handles[plan.sampled_seq_indices], first_sched

    def _failed(self, plan_handles: np.ndarray, cause: BaseException) -> StepFailedError:
        """Drop a failed step's requests; the error to raise for them."""
        handles = plan_handles.tolist()
        self._fail_step(handles)
        return StepFailedError(handles, cause)

    def _launch(self, ahead_of: Optional[_LaunchedStep] = None) -> Optional[_LaunchedStep]:
        """schedule() and queue the forward and the draw; None when nothing is scheduled.
        ahead_of: the launched step whose tokens are not read yet; plan one step ahead of it."""
        t0 = time.perf_counter()
        scheduled = self._schedule(ahead=ahead_of is not None)
        if scheduled is None:
            return None
        plan, plan_handles, sample_handles, first_sched = scheduled
        batch = self._build_batch(sample_handles)
        t1 = time.perf_counter()
        try:
            if self.fault_injector is not None:
                self.fault_injector()
            # Only runners that accept previous_tokens are asked to run plans made ahead.
            extra = {} if ahead_of is None else {
                "previous_tokens": ahead_of.pending.device_token_ids}
            lora_ids = self._lora_ids(plan_handles)
            if lora_ids is not None:  # only LoRA runners are given it
                extra["lora_ids"] = lora_ids
            logits = self.runner.execute_model(plan, plan.logits_indices, float32_logits=False,
                                               **extra)  # [N, V] model dtype
            pending = self.sampler.sample_async(logits, batch)
        except Exception as e:  # noqa: BLE001 - anything from the forward fails only this step
            raise self._failed(plan_handles, e) from e
        self.time_host += t1 - t0
        self.time_model += time.perf_counter() - t1
        return _LaunchedStep(plan, sample_handles, first_sched, pending)

    def _finish(self, launched: _LaunchedStep) -> _FinishedStep:
        """Wait for a launched step's tokens and apply them to the scheduler."""
        t0 = time.perf_counter()
        try:
            sampled = launched.pending.wait()
        except Exception as e:  # noqa: BLE001 - a device error surfaces here
            raise self._failed(launched.plan.handles, e) from e
        t1 = time.perf_counter()
        step_outputs = self.scheduler.update(launched.plan, sampled.token_ids)
        self.num_steps += 1
        self.time_model += t1 - t0
        self.time_host += time.perf_counter() - t1
        return _FinishedStep(step_outputs, launched.sample_handles, sampled, launched.first_sched)

    def _collect_finished(self, finished: _FinishedStep) -> list[CoreOutput]:
        t0 = time.perf_counter()
        outputs = self._collect(finished.step_outputs, finished.sample_handles, finished.sampled,
                                {}, finished.first_sched)
        self.time_host += time.perf_counter() - t0
        return outputs

    def _step_sync(self) -> list[CoreOutput]:
        t0 = time.perf_counter()
        scheduled = self._schedule()
        if scheduled is None:
            return []
        plan, plan_handles, sample_handles, first_sched = scheduled
        sample_rows = plan.logits_indices  # [N] int32
        prompt_lp_rows: list[int] = []
        prompt_lp_spans: list[tuple[int, int, int]] = []
        if self._prompt_lp_handles:
            prompt_lp_rows, prompt_lp_spans = self._prompt_logprob_rows(
                plan, plan_handles.tolist()
            )
        rows = sample_rows
        if prompt_lp_rows:
            rows = np.concatenate([np.asarray(prompt_lp_rows, dtype=np.int32), sample_rows])
        batch = self._build_batch(sample_handles)
        t1 = time.perf_counter()
        try:
            if self.fault_injector is not None:
                self.fault_injector()
            lora_ids = self._lora_ids(plan_handles)
            extra = {} if lora_ids is None else {"lora_ids": lora_ids}
            logits = self.runner.execute_model(plan, rows, float32_logits=False,
                                               **extra)  # [len(rows), V] model dtype
            num_plp = len(prompt_lp_rows)
            sampled = self.sampler.sample(logits[num_plp:], batch)
            prompt_lps = self._score_prompt(logits[:num_plp], prompt_lp_spans) if num_plp else {}
        except Exception as e:  # noqa: BLE001 - anything from the forward fails only this step
            raise self._failed(plan_handles, e) from e
        t2 = time.perf_counter()

        step_outputs = self.scheduler.update(plan, sampled.token_ids)
        outputs = self._collect(step_outputs, sample_handles, sampled, prompt_lps, first_sched)
        if prompt_lps:
            # Sequences that only ran a prompt chunk but produced prompt logprobs report them too.
            reported = {o.handle for o in outputs}
            for h, lps in prompt_lps.items():
                if h not in reported and h in self.requests:
                    outputs.append(
                        CoreOutput(
                            h, [], new_prompt_logprobs=lps, first_scheduled_time=first_sched.get(h)
                        )
                    )
        t3 = time.perf_counter()
        self.num_steps += 1
        self.time_model += t2 - t1
        self.time_host += (t1 - t0) + (t3 - t2)
        return outputs

    def _step_pooling(self) -> list[CoreOutput]:
        """One step of a pooling engine: forward, pool, and end the requests whose prompt ran."""
        t0 = time.perf_counter()
        scheduled = self._schedule()
        if scheduled is None:
            return []
        plan, plan_handles, sample_handles, first_sched = scheduled
        handles = plan_handles.tolist()
        prompt_lens = {h: len(self.requests[h].prompt_token_ids) for h in handles}
        t1 = time.perf_counter()
        try:
            if self.fault_injector is not None:
                self.fault_injector()
            hidden = self.runner.execute_hidden(plan)  # [T, H]
            pooled = self.pooler.pool_step(plan, handles, hidden, prompt_lens)
            pooled = {h: self.pooler.finish(v, self.requests[h].params)
                      for h, v in pooled.items()}
        except Exception as e:  # noqa: BLE001 - anything from the forward fails only this step
            raise self._failed(plan_handles, e) from e
        t2 = time.perf_counter()
        # The sampled rows are exactly the finished prompts; 0 is a placeholder token.
        placeholder = np.zeros(len(sample_handles), dtype=np.int32)
        step_outputs = self.scheduler.update(plan, placeholder)
        outputs: list[CoreOutput] = []
        num_cached = step_outputs.num_cached_tokens.tolist()
        for i, h in enumerate(step_outputs.handles.tolist()):
            if h not in self.requests or h not in pooled:
                continue
            outputs.append(CoreOutput(h, [], "length", None, num_cached[i],
                                      first_scheduled_time=first_sched.get(h),
                                      pooled=pooled[h]))
            if int(step_outputs.finish_reasons[i]) == 0:  # cannot happen with max_tokens 1
                self.scheduler.abort_request(h)
            self._forget(h)
        self.num_steps += 1
        self.time_model += t2 - t1
        self.time_host += (t1 - t0) + (time.perf_counter() - t2)
        return outputs

    def _mark_first_scheduled(self, plan_handles: np.ndarray) -> dict[int, float]:
        """Stamp requests scheduled for the first time; returns {handle: time} for them."""
        if not self._never_scheduled:
            return {}
        now = time.time()
        first_sched: dict[int, float] = {}
        never = self._never_scheduled
        for h in plan_handles.tolist():
            if h in never:
                never.discard(h)
                req = self.requests.get(h)
                if req is not None:
                    req.first_scheduled_time = now
                    first_sched[h] = now
        return first_sched

    def _fail_step(self, handles: list[int]) -> None:
        for h in handles:
            self.abort_request(h)
        # K/V written by a failed forward may be partial: never serve it from the prefix cache.
        self.scheduler.reset_prefix_cache()

    def _build_batch(self, sample_handles: np.ndarray) -> SamplingBatch:
        """sample_handles: [N] int64. Bans and grammar bitmasks are brought up to date first.
        The previous step's batch is reused when the same handles are sampled in the same order
        and no row's bans can have changed (grammar bitmasks are refreshed in place)."""
        self._refresh_banned()
        if self._grammar_handles:  # the tokens each sampled structured sequence may take now
            for h in self._grammar_handles.intersection(sample_handles.tolist()):
                grammar = self.requests[h].grammar
                if grammar.active:
                    grammar.fill()
        last = self._last_batch_handles
        if (
            last is not None
            and self._last_batch is not None
            and not self._min_tokens_handles
            and not self._bad_words_handles
            and np.array_equal(last, sample_handles)
        ):
            return self._last_batch
        reqs = [self.requests[h] for h in sample_handles.tolist()]
        batch = SamplingBatch(
            [r.row for r in reqs], device=self.device, columns=[r.columns for r in reqs]
        )
        self._last_batch_handles = sample_handles.copy()
        self._last_batch = batch
        return batch

    def _refresh_banned(self) -> None:
        """Bring each banning row up to date with its history: lift the min_tokens ban of
        requests that now have min_tokens outputs, move bad-word bans to the tokens that would
        complete a bad word now."""
        for h in list(self._min_tokens_handles | self._bad_words_handles):
            req = self.requests.get(h)
            if req is None or len(req.output_token_ids) >= req.params.min_tokens:
                self._min_tokens_handles.discard(h)
            if req is None or req.row is None:
                continue
            bans = _bans_now(req)
            if bans != list(req.row.banned_token_ids):
                req.row.banned_token_ids = bans
                req.columns = row_columns(req.row)
                self._last_batch = None  # its rows' bans are stale now

    def _prompt_logprob_rows(
        self, plan: Any, handles: list[int]
    ) -> tuple[list[int], list[tuple[int, int, int]]]:
        """Token rows whose logits score the next prompt token, for requests asking for prompt
        logprobs. Row at position p predicts prompt token p + 1. Returns the rows and, per request,
        (handle, first prompt position scored, count)."""
        rows: list[int] = []
        spans: list[tuple[int, int, int]] = []
        qsl = plan.query_start_loc
        for i, h in enumerate(handles):
            req = self.requests.get(h)
            if req is None or req.params.prompt_logprobs is None:
                continue
            prompt_len = len(req.prompt_token_ids)
            start_pos = int(plan.num_computed[i])
            n_sched = int(qsl[i + 1] - qsl[i])
            # Positions p in [start_pos, start_pos + n_sched) with p + 1 < prompt_len and p + 1
            # not scored yet.
            first = max(start_pos, req.next_prompt_logprob_pos - 1)
            last = min(start_pos + n_sched, prompt_len - 1)
            if first >= last:
                continue
            base = int(qsl[i]) - start_pos
            rows.extend(range(base + first, base + last))
            spans.append((h, first + 1, last - first))
        return rows, spans

    def _score_prompt(
        self, logits: torch.Tensor, spans: list[tuple[int, int, int]]
    ) -> dict[int, list[dict[int, Logprob]]]:
        logprobs = torch.log_softmax(logits.float(), dim=-1)  # [R, V]
        result: dict[int, list[dict[int, Logprob]]] = {}
        offset = 0
        for h, first_pos, count in spans:
            req = self.requests[h]
            k = int(req.params.prompt_logprobs or 0)
            targets = torch.tensor(
                req.prompt_token_ids[first_pos : first_pos + count], device=logprobs.device
            )
            lp, ranks, top_ids, top_lps = token_logprobs(
                logprobs[offset : offset + count], targets, k
            )
            result[h] = [
                _logprob_dict(int(targets[j]), lp[j], ranks[j], top_ids[j], top_lps[j], k)
                for j in range(count)
            ]
            req.next_prompt_logprob_pos = first_pos + count
            offset += count
        return result

    def _collect(
        self,
        step_outputs: Any,
        sample_handles: np.ndarray,
        sampled: Any,
        prompt_lps: dict[int, list[dict[int, Logprob]]],
        first_sched: dict[int, float],
    ) -> list[CoreOutput]:
        """One CoreOutput per entry of update()'s StepOutputs, read from its numpy columns."""
        handles = step_outputs.handles.tolist()  # [M]
        new_tokens = step_outputs.new_token_ids.tolist()  # [M] -1: none appended
        reasons = step_outputs.finish_reasons.tolist()  # [M]
        num_cached = step_outputs.num_cached_tokens.tolist()  # [M]
        row_of: dict[int, int] = {}
        if self._logprob_handles:
            row_of = {h: j for j, h in enumerate(sample_handles.tolist())}
        requests = self.requests
        outputs: list[CoreOutput] = []
        num_new = 0
        for i, h in enumerate(handles):
            req = requests.get(h)
            if req is None:
                continue
            tok = new_tokens[i]
            if tok >= 0:
                req.output_token_ids.append(tok)
                if req.grammar is not None and not req.grammar.active:
                    if req.grammar.see_reasoning_token(tok):  # reasoning over: mask from now
                        req.row.grammar_bitmask = req.grammar.bitmask
                        req.columns = row_columns(req.row)
                        self._last_batch = None
                elif req.grammar is not None and not req.grammar.accept(tok):
                    # Only a token the mask let through can be drawn; if the grammar still
                    # refuses it (e.g. EOS once it terminated, with ignore_eos), stop masking
                    # rather than mask everything.
                    self._grammar_handles.discard(h)
                    req.row.grammar_bitmask = None
                    req.columns = row_columns(req.row)
                    self._last_batch = None
                new_ids = [tok]
                num_new += 1
            else:
                new_ids = []
            out = CoreOutput(
                h,
                new_ids,
                None,
                None,
                num_cached[i],
                None,
                prompt_lps.get(h) if prompt_lps else None,
                first_sched.get(h) if first_sched else None,
            )
            reason = reasons[i]
            if reason != 0:
                out.finish_reason = _FINISH_REASONS[reason]
                stop_id = int(step_outputs.stop_token_ids[i])
                if reason == 1 and stop_id >= 0 and stop_id != req.eos_token_id:
                    out.stop_reason = stop_id
                self._forget(h)
            j = row_of.get(h)
            if new_ids and j is not None and req.params.logprobs is not None:
                k = int(req.params.logprobs)
                out.new_logprobs = [
                    _logprob_dict(
                        tok,
                        sampled.logprobs[j],
                        sampled.ranks[j],
                        sampled.topk_token_ids[j],
                        sampled.topk_logprobs[j],
                        k,
                    )
                ]
            outputs.append(out)
        self.num_generation_tokens += num_new
        return outputs

    # -- introspection ------------------------------------------------------------------------
    def stats(self) -> Any:
        return self.scheduler.stats()

    def reset_prefix_cache(self) -> bool:
        return self.scheduler.reset_prefix_cache()
