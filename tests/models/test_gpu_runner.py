"""ModelRunner on CUDA (skipped without a GPU): float32 greedy tokens equal transformers, padded
decode inputs (the CUDA-graph layout) leave real rows unchanged, and GPU memory profiling gives a
KV cache that fits."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from pagedllm.config import CacheConfig, DeviceConfig, ModelConfig, ParallelConfig, SchedulerConfig
from pagedllm.testing.plans import HandPlanner
from pagedllm.testing.tiny_models import SUPPORTED_ARCHS
from pagedllm.worker.model_runner import ModelRunner

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
BLOCK_SIZE = 16


def cuda_runner(path, dtype="float32", **cache) -> ModelRunner:
    runner = ModelRunner(ModelConfig(model=str(path), dtype=dtype),
                         CacheConfig(block_size=BLOCK_SIZE, **cache), DeviceConfig(device="cuda"),
                         ParallelConfig(), scheduler_config=SchedulerConfig(
                             max_num_seqs=16, max_num_batched_tokens=1024))
    runner.load_model()
    runner.allocate_kv_cache(runner.determine_num_blocks())
    return runner


def greedy(runner, prompts, n):
    planner = HandPlanner(runner.num_blocks, BLOCK_SIZE, runner.max_blocks_per_seq)
    outs = [[] for _ in prompts]
    chunks = [(i, p) for i, p in enumerate(prompts)]
    for _ in range(n):
        toks = runner.execute_model(planner.plan(chunks)).argmax(-1).tolist()
        for o, t in zip(outs, toks):
            o.append(t)
        chunks = [(i, [t]) for i, t in enumerate(toks)]
    return outs


@pytest.mark.parametrize("arch", SUPPORTED_ARCHS)
def test_cuda_float32_greedy_matches_transformers(tiny_model_dirs, arch):
    runner = cuda_runner(tiny_model_dirs[arch], num_gpu_blocks_override=128)
    assert runner.kv_caches[0].is_cuda
    gen = torch.Generator().manual_seed(2)
    prompts = [torch.randint(3, 512, (n,), generator=gen).tolist() for n in (4, 17, 40)]
    hf = AutoModelForCausalLM.from_pretrained(tiny_model_dirs[arch], dtype=torch.float32).eval()
    for prompt, ours in zip(prompts, greedy(runner, prompts, 16)):
        expected = hf.generate(torch.tensor([prompt]), max_new_tokens=16, min_new_tokens=16,
                               do_sample=False, pad_token_id=0)[0, len(prompt):].tolist()
        assert ours == expected


def test_padded_decode_rows_do_not_change_real_rows(tiny_llama):
    runner = cuda_runner(tiny_llama, num_gpu_blocks_override=64)
    planner = HandPlanner(runner.num_blocks, BLOCK_SIZE, runner.max_blocks_per_seq)
    runner.execute_model(planner.plan([(0, list(range(3, 20))), (1, list(range(5, 9)))]))
    decode = planner.plan([(0, [7]), (1, [8])])
    # A step's inputs are views valid until the next build(): run each before building the next.
    inputs = runner._prepare(decode)
    real = runner.model(inputs.input_ids, inputs.positions, runner.kv_caches, inputs.meta).clone()
    padded = runner._cuda_buffers.build(decode, padded_num_seqs=8)
    assert padded.meta.num_seqs == 8 and padded.input_ids.shape[0] == 8
    assert padded.meta.slot_mapping[2:].eq(-1).all()
    with_pad = runner.model(padded.input_ids, padded.positions, runner.kv_caches, padded.meta)
    torch.testing.assert_close(with_pad[:2], real, rtol=0, atol=1e-5)


def test_gpu_profiling_sizes_cache_within_utilization(tiny_qwen3):
    runner = cuda_runner(tiny_qwen3, gpu_memory_utilization=0.3)
    total = torch.cuda.mem_get_info()[1]
    cache_bytes = sum(c.numel() * c.element_size() for c in runner.kv_caches)
    assert runner.num_blocks >= 2
    assert cache_bytes <= 0.3 * total
