"""Tensor parallelism on CPU (gloo): TP=2 gives the same greedy tokens as TP=1, and worker
failures surface as errors instead of hangs."""
from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from pagedllm._C import core
from pagedllm.config import (CacheConfig, DeviceConfig, EngineConfig, ModelConfig,
                             ParallelConfig, SchedulerConfig)
from pagedllm.distributed.tp_executor import TPExecutor, WorkerFailedError
from pagedllm.distributed.tp_worker import FAIL_RANK_ENV
from pagedllm.worker.model_runner import ModelRunner

PROMPTS = [[5, 17, 99, 3, 250, 8, 41], [7] * 23, list(range(30, 70)), [400, 2, 9]]
MAX_TOKENS = 12


@pytest.fixture(autouse=True)
def _one_thread_per_worker(monkeypatch):
    # Worker processes inherit this: one intra-op thread each on the 2-core CI machine.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _config(model_dir, tp: int) -> EngineConfig:
    return EngineConfig(
        model_config=ModelConfig(model=str(model_dir), dtype="float32", max_model_len=256),
        cache_config=CacheConfig(block_size=16, kv_cache_space_bytes=8 << 20),
        scheduler_config=SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=64),
        parallel_config=ParallelConfig(tensor_parallel_size=tp),
        device_config=DeviceConfig(device="cpu"))


def _make_runner(config: EngineConfig):
    if config.parallel_config.tensor_parallel_size > 1:
        return TPExecutor(config, startup_timeout_s=120)
    runner = ModelRunner(config.model_config, config.cache_config, config.device_config,
                         config.parallel_config, scheduler_config=config.scheduler_config)
    runner.initialize()
    return runner


def _greedy(runner, prompts, max_tokens) -> list[list[int]]:
    """Drive the C++ scheduler with argmax sampling; chunked prefill (64-token budget) included."""
    scheduler = core.Scheduler(core.SchedulerConfig(
        num_blocks=runner.num_blocks, block_size=16, max_num_seqs=8, max_num_batched_tokens=64,
        max_model_len=256))
    for handle, prompt in enumerate(prompts):
        scheduler.add_request(handle, np.asarray(prompt, np.int32),
                              core.RequestParams(max_tokens=max_tokens, ignore_eos=True))
    outputs: dict[int, list[int]] = {h: [] for h in range(len(prompts))}
    while scheduler.has_unfinished_requests():
        plan = scheduler.schedule()
        logits = runner.execute_model(plan)                        # [N, V] float32
        sampled = logits.argmax(dim=-1).to(dtype=__import__("torch").int32).numpy()
        for out in scheduler.update(plan, sampled):
            outputs[out.handle].extend(out.new_token_ids)
    return [outputs[h] for h in range(len(prompts))]


# phi3: the checkpoint's fused qkv_proj / gate_up_proj split into each rank's rows. MoE models:
# every expert's intermediate dim split, one all-reduce per expert block (qwen2_moe: with its
# shared expert's partial sum).
@pytest.mark.parametrize("arch", ["llama", "qwen3", "phi3", "gemma3", "qwen3_moe", "mixtral",
                                  "qwen2_moe"])
def test_tp2_greedy_equals_tp1(tiny_model_dirs, arch):
    model_dir = tiny_model_dirs[arch]
    expected = _greedy(_make_runner(_config(model_dir, 1)), PROMPTS, MAX_TOKENS)
    executor = _make_runner(_config(model_dir, 2))
    try:
        # Each rank holds half of the KV heads: the per-rank cache is half the size, so the
        # same byte budget holds twice the blocks.
        assert executor.runner.kv_spec.num_kv_heads == 1
        got = _greedy(executor, PROMPTS, MAX_TOKENS)
    finally:
        executor.close()
    assert all(len(t) == MAX_TOKENS for t in expected)
    assert got == expected


def test_worker_startup_failure_is_reported(tiny_llama, monkeypatch):
    monkeypatch.setenv(FAIL_RANK_ENV, "1")
    start = time.monotonic()
    with pytest.raises(WorkerFailedError, match="(?s)rank 1 failed to start.*injected startup failure"):
        TPExecutor(_config(tiny_llama, 2), startup_timeout_s=120)
    assert time.monotonic() - start < 60


def test_worker_death_fails_the_next_step(tiny_llama):
    executor = _make_runner(_config(tiny_llama, 2))
    try:
        proc = executor._procs[0]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        with pytest.raises(WorkerFailedError, match="rank 1 exited"):
            _greedy(executor, PROMPTS[:1], 2)
    finally:
        executor.close()
    assert all(p.poll() is not None for p in executor._procs)


def test_llm_with_tensor_parallel_size_2_matches_tp1(tiny_qwen3):
    """The public path: LLM(..., tensor_parallel_size=2) through EngineArgs and EngineCore."""
    from pagedllm import LLM, SamplingParams

    prompts = ["hello world", "the quick brown fox jumps", "a"]
    params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    kwargs = dict(model=str(tiny_qwen3), dtype="float32", device="cpu", max_model_len=128,
                  kv_cache_space_bytes=4 << 20)
    expected = [o.outputs[0].token_ids for o in
                LLM(**kwargs).generate(prompts, params, use_tqdm=False)]
    llm = LLM(tensor_parallel_size=2, **kwargs)
    try:
        core = llm.llm_engine.engine_core
        # Async scheduling without planning ahead: the ranks cannot see device-side tokens.
        assert core.async_scheduling and not core.plans_ahead
        got = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    finally:
        llm.llm_engine.shutdown()
    assert got == expected
    assert all(len(t) == 10 for t in got)


def test_externally_launched_worker_joins_through_env(tiny_llama, monkeypatch):
    """The multi-host path: the engine spawns no worker; one started by hand with env://
    variables (as torchrun would) joins through MASTER_ADDR/MASTER_PORT."""
    import socket
    import subprocess
    import sys

    from pagedllm.distributed.tp_executor import EXTERNAL_WORKERS_ENV

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(EXTERNAL_WORKERS_ENV, "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    worker = subprocess.Popen(
        [sys.executable, "-m", "pagedllm.distributed.tp_worker"],
        env=dict(os.environ, RANK="1", WORLD_SIZE="2", LOCAL_RANK="0"))
    try:
        executor = TPExecutor(_config(tiny_llama, 2), startup_timeout_s=120)
        try:
            assert executor._procs == []          # nothing spawned by the engine
            got = _greedy(executor, PROMPTS[:2], 6)
        finally:
            executor.close()
        assert worker.wait(timeout=30) == 0       # told to shut down, exits cleanly
    finally:
        if worker.poll() is None:
            worker.kill()
    expected = _greedy(_make_runner(_config(tiny_llama, 1)), PROMPTS[:2], 6)
    assert got == expected


# phi3: an adapter on the fused qkv_proj / gate_up_proj, its B rows split per shard and rank.
@pytest.mark.parametrize("arch,kinds", [("llama", ("all", "rslora")), ("phi3", ("fused",))])
def test_lora_tp2_equals_tp1(tiny_model_dirs, tiny_lora, arch, kinds):
    """Adapters under tensor parallelism: column-parallel layers keep their rows of B,
    row-parallel ones their columns of A (summed by the all-reduce); adapters load on every
    rank and the step's adapter ids travel with the plan. A mixed batch in 32-token steps."""
    from pagedllm import LLM, SamplingParams
    from pagedllm.lora import LoRARequest

    loras = [LoRARequest(k, i + 1, str(tiny_lora(arch, k)[0])) for i, k in enumerate(kinds)]
    prompts = ["hello world", "the quick brown fox jumps over the lazy dog", "a", "1 2 3 4 5",
               "Paris is the capital of", "def main():"]
    which = [loras[i % len(loras)] if i % 3 != 2 else None for i in range(len(prompts))]
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    kwargs = dict(model=str(tiny_model_dirs[arch]), dtype="float32", device="cpu",
                  max_model_len=128, kv_cache_space_bytes=4 << 20, max_num_batched_tokens=32,
                  enable_lora=True, max_loras=2)
    expected = [o.outputs[0].token_ids for o in
                LLM(**kwargs).generate(prompts, params, use_tqdm=False, lora_request=which)]
    llm = LLM(tensor_parallel_size=2, **kwargs)
    try:
        got = [o.outputs[0].token_ids for o in
               llm.generate(prompts, params, use_tqdm=False, lora_request=which)]
        # Dropping an adapter reaches the workers too; the base model still runs.
        assert llm.llm_engine.remove_lora(1)
        base = llm.generate(prompts[:1], params, use_tqdm=False)
    finally:
        llm.llm_engine.shutdown()
    assert got == expected
    assert len(base[0].outputs[0].token_ids) == 8
