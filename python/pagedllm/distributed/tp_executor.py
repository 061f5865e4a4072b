"""TPExecutor: N model-runner ranks that look like one ModelRunner to EngineCore.

Rank 0 (the driver) lives in the engine process and owns a ModelRunner over its shards; ranks
1..N-1 are `pagedllm.distributed.tp_worker` processes. Each step the driver broadcasts the plan,
then every rank runs the same forward (row-parallel all-reduces, the LM head's all-gather); only
the driver's logits are used, and only the driver samples.

Launch: by default the driver spawns the N-1 workers on this host (one per GPU). With
`PAGEDLLM_TP_EXTERNAL_WORKERS=1` it spawns none and waits for workers started elsewhere with
env:// variables pointing at its store (MASTER_ADDR/MASTER_PORT; see tp_worker.py and the README).

Failure model: a worker that fails at startup is reported with its traceback; a worker that dies
later makes the next step raise (checked before each broadcast, and gloo raises on a closed
peer), so the engine fails cleanly instead of hanging.
"""
from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import time
from datetime import timedelta
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist

from pagedllm.config import EngineConfig
from pagedllm.distributed.parallel_state import init_tensor_parallel
from pagedllm.distributed.plan_broadcast import (
    broadcast_add_lora,
    broadcast_plan,
    broadcast_remove_lora,
    broadcast_shutdown,
)

EXTERNAL_WORKERS_ENV = "PAGEDLLM_TP_EXTERNAL_WORKERS"


class WorkerFailedError(RuntimeError):
    """A tensor-parallel worker failed to start or died."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TPExecutor:
    def __init__(self, config: EngineConfig, startup_timeout_s: float = 600.0) -> None:
        self.config = config
        self.world_size = config.parallel_config.tensor_parallel_size
        if self.world_size < 2:
            raise ValueError("tensor_parallel_size: TPExecutor needs >= 2 ranks")
        self._procs: list[subprocess.Popen] = []
        self._closed = False
        self._timeout = timedelta(seconds=startup_timeout_s)
        external = os.environ.get(EXTERNAL_WORKERS_ENV) == "1"
        host = os.environ.get("MASTER_ADDR", "127.0.0.1") if external else "127.0.0.1"
        port = int(os.environ["MASTER_PORT"]) if external and "MASTER_PORT" in os.environ \
            else _free_port()
        self._store = dist.TCPStore(host if external else "127.0.0.1", port, self.world_size,
                                    is_master=True, timeout=self._timeout,
                                    wait_for_workers=False)
        self._store.set("config", pickle.dumps(config))
        try:
            if not external:
                self._spawn_workers(port)
            self._wait_for("joined", startup_timeout_s)
            self._cpu_group = init_tensor_parallel(config, self._store, 0, self.world_size, 0,
                                                   self._timeout)
            from pagedllm.worker.model_runner import ModelRunner

            self.runner = ModelRunner(config.model_config, config.cache_config,
                                      config.device_config, config.parallel_config, rank=0,
                                      scheduler_config=config.scheduler_config,
                                      lora_config=config.lora_config)
            self.runner.load_model()
            own_blocks = self.runner.determine_num_blocks()
            blocks = self._wait_for("blocks", startup_timeout_s)
            # Every rank allocates the same count: the scheduler's block ids index all of them.
            self.num_blocks = min([own_blocks] + [int(b) for b in blocks])
            self._store.set("num_blocks", str(self.num_blocks))
            self.runner.allocate_kv_cache(self.num_blocks)
            self._wait_for("ready", startup_timeout_s)
        except BaseException:
            self.close()
            raise

    # ---- what EngineCore reads from a runner -------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        # vocab_size, hf_config, dtype, device, max_model_len, eos_token_id(s), block_size ...
        if name in ("runner", "__setstate__"):
            raise AttributeError(name)
        return getattr(self.runner, name)

    # The ranks take their inputs from the broadcast plan on the CPU; a plan's deferred tokens
    # (made one step ahead) exist only on this rank's GPU, so the engine does not plan ahead.
    # Set here: __getattr__ would otherwise answer with the local runner's True.
    accepts_previous_tokens = False

    def execute_model(self, plan: Any, logits_rows: Optional[np.ndarray] = None,
                      float32_logits: bool = True,
                      lora_ids: Optional[np.ndarray] = None) -> torch.Tensor:
        self._check_usable()
        rows = np.asarray(plan.logits_indices if logits_rows is None else logits_rows, np.int32)
        try:
            broadcast_plan(plan, rows, self._cpu_group, lora_ids)
        except RuntimeError as e:
            raise WorkerFailedError(f"tensor-parallel broadcast failed: {e}") from e
        return self.runner.execute_model(plan, rows, float32_logits, lora_ids=lora_ids)

    # LoRA adapters: checked on the driver only (same model, same files); loaded and dropped on
    # every rank, the driver first, so that a bad adapter fails before any worker is told.
    def check_lora(self, lora_request: Any) -> None:
        self.runner.check_lora(lora_request)

    def add_lora(self, lora_request: Any) -> None:
        self._check_usable()
        self.runner.add_lora(lora_request)
        try:
            broadcast_add_lora(lora_request, self._cpu_group)
        except RuntimeError as e:
            raise WorkerFailedError(f"tensor-parallel broadcast failed: {e}") from e

    def remove_lora(self, lora_int_id: int) -> bool:
        self._check_usable()
        removed = self.runner.remove_lora(lora_int_id)
        try:
            broadcast_remove_lora(lora_int_id, self._cpu_group)
        except RuntimeError as e:
            raise WorkerFailedError(f"tensor-parallel broadcast failed: {e}") from e
        return removed

    def _check_usable(self) -> None:
        if self._closed:
            raise WorkerFailedError("tensor-parallel executor is shut down")
        self._check_workers_alive()

    # ---- lifecycle ---------------------------------------------------------------------------
    def _spawn_workers(self, port: int) -> None:
        for rank in range(1, self.world_size):
            env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(self.world_size),
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank),
                       NCCL_NVLS_ENABLE="0")
            self._procs.append(subprocess.Popen(
                [sys.executable, "-m", "pagedllm.distributed.tp_worker"], env=env))

    def _check_workers_alive(self) -> None:
        for rank, proc in enumerate(self._procs, start=1):
            code = proc.poll()
            if code is not None:
                raise WorkerFailedError(
                    f"tensor-parallel worker rank {rank} exited with code {code}")

    def _wait_for(self, stage: str, timeout_s: float) -> list[str]:
        """Values of `<stage>/<rank>` for ranks 1..N-1; raises on a worker error, death or
        timeout rather than blocking forever."""
        deadline = time.monotonic() + timeout_s
        pending = set(range(1, self.world_size))
        values: dict[int, str] = {}
        while pending:
            for rank in sorted(pending):
                if self._store.check([f"error/{rank}"]):
                    message = self._store.get(f"error/{rank}").decode(errors="replace")
                    raise WorkerFailedError(
                        f"tensor-parallel worker rank {rank} failed to start:\n{message}")
                if self._store.check([f"{stage}/{rank}"]):
                    values[rank] = self._store.get(f"{stage}/{rank}").decode()
                    pending.discard(rank)
            self._check_workers_alive()
            if pending and time.monotonic() > deadline:
                raise WorkerFailedError(f"tensor-parallel workers {sorted(pending)} did not reach "
                                        f"'{stage}' within {timeout_s:.0f} s")
            if pending:
                time.sleep(0.02)
        return [values[r] for r in range(1, self.world_size)]

    def close(self) -> None:
        """Tell workers to stop, wait briefly, then kill stragglers. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if dist.is_initialized():
            try:
                if all(p.poll() is None for p in self._procs):
                    broadcast_shutdown(self._cpu_group)
            except Exception:   # noqa: BLE001 - a dead peer: the kill below still runs
                pass
        for proc in self._procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if dist.is_initialized():
            dist.destroy_process_group()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:   # noqa: BLE001 - interpreter shutdown
            pass
