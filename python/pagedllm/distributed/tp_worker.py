"""A tensor-parallel worker process (ranks 1..N-1): `python -m pagedllm.distributed.tp_worker`.

The driver (rank 0, inside the engine) spawns these on one host; on other hosts a launcher
(torchrun, Ray, a job script) starts them with torch.distributed's env:// variables:
RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT and LOCAL_RANK (the GPU index on that host).
MASTER_ADDR:MASTER_PORT is the driver's TCPStore; the engine configuration comes from there, so a
worker needs no arguments of its own.

Handshake through the store (so that the driver never blocks on a rank that is already dead):
  worker sets joined/<rank>  -> everyone joins the process group
  worker sets blocks/<rank>  (KV blocks that fit on its device) or error/<rank> (a traceback)
  driver sets num_blocks     (the minimum over ranks) -> workers allocate, set ready/<rank>
Then the worker executes every plan the driver broadcasts (and loads / drops the LoRA adapters
it is told to) until it is told to shut down.
"""
from __future__ import annotations

import os
import pickle
import sys
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist

from pagedllm.distributed.parallel_state import init_tensor_parallel
from pagedllm.distributed.plan_broadcast import receive_command

# Test hook: a rank listed here raises while loading its model (startup-failure tests).
FAIL_RANK_ENV = "PAGEDLLM_TP_TEST_FAIL_RANK"


def run_worker(rank: int, world_size: int, host: str, port: int, local_rank: int) -> int:
    timeout = timedelta(seconds=float(os.environ.get("PAGEDLLM_TP_TIMEOUT_S", "600")))
    store = dist.TCPStore(host, port, world_size, is_master=False, timeout=timeout)
    config = pickle.loads(store.get("config"))
    try:
        store.set(f"joined/{rank}", "1")
        cpu_group = init_tensor_parallel(config, store, rank, world_size, local_rank, timeout)
        from pagedllm.worker.model_runner import ModelRunner

        runner = ModelRunner(config.model_config, config.cache_config, config.device_config,
                             config.parallel_config, rank=rank,
                             scheduler_config=config.scheduler_config,
                             lora_config=config.lora_config)
        if os.environ.get(FAIL_RANK_ENV) == str(rank):
            raise RuntimeError(f"injected startup failure on rank {rank} ({FAIL_RANK_ENV})")
        runner.load_model()
        store.set(f"blocks/{rank}", str(runner.determine_num_blocks()))
    except BaseException:
        store.set(f"error/{rank}", traceback.format_exc())
        return 1
    runner.allocate_kv_cache(int(store.get("num_blocks")))
    store.set(f"ready/{rank}", "1")
    while True:
        command = receive_command(cpu_group)
        if command.kind == "shutdown":
            break
        if command.kind == "execute":
            runner.execute_model(command.plan, command.rows, lora_ids=command.lora_ids)
        elif command.kind == "add_lora":
            # The driver loaded it first: a failure here (files gone since) ends this worker,
            # and the driver's next step reports the dead rank.
            runner.add_lora(command.lora_request)
        elif command.kind == "remove_lora":
            runner.remove_lora(command.lora_int_id)
    dist.destroy_process_group()
    return 0


def main() -> int:
    try:
        rank = int(os.environ["RANK"])
        world_size = int(os.environ["WORLD_SIZE"])
        host = os.environ["MASTER_ADDR"]
        port = int(os.environ["MASTER_PORT"])
    except KeyError as e:
        print(f"pagedllm tp_worker: environment variable {e.args[0]} is not set "
              "(RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT are required)", file=sys.stderr)
        return 2
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if rank == 0:
        print("pagedllm tp_worker: rank 0 is the engine itself; start workers with RANK >= 1",
              file=sys.stderr)
        return 2
    torch.set_grad_enabled(False)
    return run_worker(rank, world_size, host, port, local_rank)


if __name__ == "__main__":
    sys.exit(main())
