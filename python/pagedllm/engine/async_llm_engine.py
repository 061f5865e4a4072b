"""AsyncLLMEngine: the asyncio front end (vLLM's interface) over the synchronous LLMEngine.

Threads: every call into LLMEngine (tokenizing, adds, aborts, steps) runs in ONE worker thread,
so the engine never sees two callers at once and adds/aborts land at step boundaries (they are
queued on the same single-thread executor between steps). One background asyncio task drives the
loop: it awaits a step in the worker thread, hands the outputs to per-request asyncio queues, and
when nothing is unfinished it sleeps on an asyncio.Event that add_request sets (no busy spin).
The loop task starts lazily on the first add_request, on whatever loop is running then, so the
engine can be built at module level (no loop) or inside a running loop (a FastAPI startup hook).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from typing import Any, AsyncGenerator, Callable, Iterable, Optional, Union

from pagedllm.engine.arg_utils import EngineArgs
from pagedllm.engine.llm_engine import EngineStats, LLMEngine, PromptType
from pagedllm.outputs import RequestOutput
from pagedllm.sampling_params import SamplingParams
from pagedllm.usage.usage_lib import UsageContext

logger = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    """The engine loop failed; no request can make progress any more."""


class _Stream:
    """One request's outputs on their way to its generate() (lives on the event loop)."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.consumed = False  # generate() was called for it
        self.finished = False  # the final output (or an error) was queued

    def put(self, item: Any) -> None:
        if not self.finished:
            self.finished = isinstance(item, BaseException) or item.finished
            self.queue.put_nowait(item)


class AsyncLLMEngine:
    def __init__(self, engine: LLMEngine, *, log_requests: bool = False) -> None:
        self.engine = engine
        self.log_requests = log_requests
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="pagedllm-engine"
        )
        self._streams: dict[str, _Stream] = {}
        # Ids added to the engine whose final output/error is not queued yet. Touched only on
        # the event loop, so "nothing active -> sleep" needs no lock.
        self._active: set[str] = set()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._loop_task: Optional[asyncio.Task] = None
        self._wakeup: Optional[asyncio.Event] = None
        self._dead_error: Optional[BaseException] = None
        self._stats: EngineStats = engine.get_stats()
        self._shutdown = False

    @classmethod
    def from_engine_args(
        cls,
        engine_args: EngineArgs,
        usage_context: UsageContext = UsageContext.ENGINE_CONTEXT,
        **_: Any,
    ) -> "AsyncLLMEngine":
        engine = LLMEngine.from_engine_args(engine_args, usage_context)
        log_requests = not getattr(engine_args, "disable_log_requests", True)
        return cls(engine, log_requests=log_requests)

    # -- state ------------------------------------------------------------------------------------
    @property
    def is_running(self) -> bool:
        return (
            self._loop_task is not None and not self._loop_task.done() and self._dead_error is None
        )

    @property
    def errored(self) -> bool:
        return self._dead_error is not None

    @property
    def dead_error(self) -> BaseException:
        return EngineDeadError(f"engine loop has died: {self._dead_error!r}")

    @property
    def is_stopped(self) -> bool:
        return self._shutdown

    @property
    def _fault_injector(self) -> Optional[Callable[[], None]]:
        return self.engine.engine_core.fault_injector

    @_fault_injector.setter
    def _fault_injector(self, fn: Optional[Callable[[], None]]) -> None:
        # Runs in the worker thread before every model forward; raising fails that step only.
        self.engine.engine_core.fault_injector = fn

    async def get_tokenizer(self, lora_request: Any = None) -> Any:
        return self.engine.get_tokenizer()

    async def get_model_config(self) -> Any:
        return self.engine.get_model_config()

    async def check_health(self) -> None:
        if self._dead_error is not None:
            raise self.dead_error
        if self._shutdown:
            raise EngineDeadError("engine was shut down")

    def get_stats(self) -> EngineStats:
        """The snapshot taken after the latest step/add/abort (never touches the engine)."""
        return self._stats

    # -- the loop ---------------------------------------------------------------------------------
    def _ensure_loop(self) -> None:
        if self._dead_error is not None:
            raise self.dead_error
        if self._shutdown:
            raise EngineDeadError("engine was shut down")
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._loop_task is None or self._loop_task.done():
            # First use, or the previous loop went away (e.g. one asyncio.run() per test).
            self._loop = loop
            self._wakeup = asyncio.Event()
            self._loop_task = loop.create_task(self._run_engine_loop(), name="pagedllm-engine-loop")

    async def _in_worker(self, fn: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def _step_in_worker(
        self,
    ) -> tuple[list[RequestOutput], dict[str, BaseException], EngineStats, set[str]]:
        outputs, failed = self.engine.step_with_failures()
        live = set(self.engine.output_processor.requests)
        return outputs, failed, self.engine.get_stats(), live

    async def _run_engine_loop(self) -> None:
        assert self._wakeup is not None
        try:
            while True:
                if not self._active:
                    # No await between this check and wait(): an add cannot slip in between.
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                active_before = set(self._active)
                outputs, failed, stats, live = await self._in_worker(self._step_in_worker)
                self._stats = stats
                for out in outputs:
                    self._deliver(out)
                for rid, err in failed.items():
                    self._fail_stream(rid, err)
                # Invariant: every active id is live in the engine. Anything else would never
                # finish (and would make this loop spin), so fail it loudly instead.
                lost = [r for r in active_before if r in self._active and r not in live]
                for rid in lost:
                    self._fail_stream(rid, RuntimeError(f"request {rid!r} was lost by the engine"))
                # Let generate() consumers run between steps even when steps are very short.
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # noqa: BLE001 - anything else kills the engine
            logger.exception("pagedllm engine loop failed")
            self._dead_error = e
            err = EngineDeadError(f"engine loop has died: {e!r}")
            err.__cause__ = e
            for stream in list(self._streams.values()):
                stream.put(err)
            self._streams.clear()
            self._active.clear()

    def _deliver(self, out: RequestOutput) -> None:
        stream = self._streams.get(out.request_id)
        if stream is None:
            return
        stream.put(out)
        self._drop_if_done(stream)

    def _fail_stream(self, request_id: str, err: BaseException) -> None:
        self._active.discard(request_id)
        stream = self._streams.get(request_id)
        if stream is not None:
            stream.put(err)
            self._drop_if_done(stream)

    def _drop_if_done(self, stream: _Stream) -> None:
        if stream.finished:
            self._active.discard(stream.request_id)
        # A finished stream that nobody consumes yet stays until generate() drains it.
        if stream.finished and stream.consumed and stream.queue.empty():
            self._streams.pop(stream.request_id, None)

    # -- requests ---------------------------------------------------------------------------------
    async def add_request(
        self,
        request_id: str,
        prompt: PromptType,
        sampling_params: Optional[SamplingParams] = None,
        arrival_time: Optional[float] = None,
        lora_request: Any = None,
        trace_headers: Any = None,
        priority: int = 0,
        **_: Any,
    ) -> None:
        """Queue a request; its outputs wait for generate(request_id).
        ValueError for a duplicate id or an invalid prompt/params; EngineDeadError if dead."""
        self._ensure_loop()
        if request_id in self._streams:
            raise ValueError(f"request_id: {request_id!r} is already in use")
        arrival_time = time.time() if arrival_time is None else arrival_time
        stream = _Stream(request_id)
        self._streams[request_id] = stream  # reserve the id before awaiting
        try:
            stats = await self._in_worker(
                self._add_in_worker, request_id, prompt, sampling_params, arrival_time, priority,
                lora_request,
            )
        except BaseException:
            self._streams.pop(request_id, None)
            raise
        self._stats = stats
        self._active.add(request_id)
        if self.log_requests:
            logger.info("added request %s", request_id)
        assert self._wakeup is not None
        self._wakeup.set()

    def _add_in_worker(
        self,
        request_id: str,
        prompt: PromptType,
        params: Optional[SamplingParams],
        arrival_time: float,
        priority: int,
        lora_request: Any = None,
    ) -> EngineStats:
        self.engine.add_request(request_id, prompt, params, arrival_time, priority, lora_request)
        return self.engine.get_stats()

    async def abort_request(self, request_id: Union[str, Iterable[str]]) -> None:
        """End the request(s): each stream gets a final output with finish_reason "abort" and
        the KV blocks are freed at the next step boundary. Unknown/finished ids are ignored."""
        if self._dead_error is not None or self._shutdown:
            return
        ids = [request_id] if isinstance(request_id, str) else list(request_id)
        finals, stats = await self._in_worker(self._abort_in_worker, ids)
        self._stats = stats
        for out in finals:
            self._deliver(out)

    def _abort_in_worker(self, ids: list[str]) -> tuple[list[RequestOutput], EngineStats]:
        finals = self.engine.abort_request(ids)
        self._stats = self.engine.get_stats()
        return finals, self._stats

    async def reset_prefix_cache(self) -> bool:
        return await self._in_worker(self.engine.reset_prefix_cache)

    # LoRA adapters (vLLM's methods), run between steps like every engine call.
    async def add_lora(self, lora_request: Any) -> bool:
        return await self._in_worker(self.engine.add_lora, lora_request)

    async def remove_lora(self, lora_id: int) -> bool:
        return await self._in_worker(self.engine.remove_lora, lora_id)

    async def list_loras(self) -> set[int]:
        return await self._in_worker(self.engine.list_loras)

    def generate(
        self,
        prompt: Any = None,
        sampling_params: Optional[SamplingParams] = None,
        request_id: Optional[str] = None,
        *,
        lora_request: Any = None,
        trace_headers: Any = None,
        priority: int = 0,
        **_: Any,
    ) -> AsyncGenerator[RequestOutput, None]:
        """Two forms: generate(request_id) streams a request added with add_request();
        generate(prompt, sampling_params, request_id) adds and streams (vLLM's form; keywords
        work too). The stream ends after the output with finished=True."""
        if sampling_params is None and (request_id is None or prompt is None):
            rid = request_id if prompt is None else prompt
            if not isinstance(rid, str):
                raise ValueError(
                    "generate: pass a request_id (after add_request) or "
                    "(prompt, sampling_params, request_id)"
                )
            return self._stream_outputs(rid, add=None)
        if request_id is None:
            raise ValueError(
                "request_id: generate(prompt, sampling_params, request_id) needs an id"
            )
        add = (prompt, sampling_params or SamplingParams(), priority, lora_request)
        return self._stream_outputs(request_id, add=add)

    def encode(
        self,
        prompt: Any,
        pooling_params: Any = None,
        request_id: Optional[str] = None,
        *,
        priority: int = 0,
        **_: Any,
    ) -> AsyncGenerator[Any, None]:
        """vLLM's encode: a pooling engine's request, streamed as one final
        PoolingRequestOutput (outputs None if it was aborted)."""
        from pagedllm.pooling_params import as_pooling_params

        if request_id is None:
            raise ValueError("request_id: encode(prompt, pooling_params, request_id) needs an id")
        add = (prompt, as_pooling_params(pooling_params), priority, None)
        return self._stream_outputs(request_id, add=add)

    async def _stream_outputs(
        self, request_id: str, add: Optional[tuple[Any, SamplingParams, int, Any]]
    ) -> AsyncGenerator[RequestOutput, None]:
        if add is not None:
            prompt, params, priority, lora_request = add
            await self.add_request(request_id, prompt, params, priority=priority,
                                   lora_request=lora_request)
        if self._dead_error is not None:
            raise self.dead_error
        stream = self._streams.get(request_id)
        if stream is None:
            raise ValueError(
                f"request_id: {request_id!r} is unknown (add_request it first) "
                "or already finished and consumed"
            )
        if stream.consumed:
            raise ValueError(f"request_id: generate() was already called for {request_id!r}")
        stream.consumed = True
        finished = False
        try:
            while True:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            if stream.queue.empty() and stream.finished:
                self._streams.pop(request_id, None)
            if not finished and self._dead_error is None and not self._shutdown:
                # The consumer went away (client disconnect, cancellation): free the request.
                self._streams.pop(request_id, None)
                self._active.discard(request_id)
                try:
                    self._executor.submit(self._abort_in_worker, [request_id])
                except RuntimeError:
                    pass  # executor already shut down

    # -- shutdown ---------------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop the loop, fail waiting generates with EngineDeadError, release the worker."""
        if self._shutdown:
            return
        self._shutdown = True
        err = EngineDeadError("engine was shut down")
        for stream in list(self._streams.values()):
            if self._loop is not None and not self._loop.is_closed():
                try:
                    self._loop.call_soon_threadsafe(stream.put, err)
                except RuntimeError:
                    pass
        self._streams.clear()
        if self._loop_task is not None and not self._loop_task.done():
            loop = self._loop_task.get_loop()
            if not loop.is_closed():
                loop.call_soon_threadsafe(self._loop_task.cancel)
        self._executor.shutdown(wait=True, cancel_futures=True)
        self.engine.shutdown()

    def __del__(self) -> None:
        try:
            self._executor.shutdown(wait=False, cancel_futures=True)
        except Exception:  # noqa: BLE001 - interpreter teardown
            pass
