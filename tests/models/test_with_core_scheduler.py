"""ModelRunner driven by the real C++ scheduler (pagedllm._C.core): greedy tokens equal
transformers' with whole prompts, with chunked prefill (small token budget), and with a cache
so small that requests are preempted and recomputed."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from pagedllm.config import CacheConfig, DeviceConfig, ModelConfig, ParallelConfig, SchedulerConfig
from pagedllm.testing.hf_reference import hf_greedy
from pagedllm.worker.model_runner import ModelRunner

core = pytest.importorskip("pagedllm._C.core")

BLOCK_SIZE = 16
NEW_TOKENS = 12


def run_with_scheduler(path, prompts, num_blocks, max_num_batched_tokens):
    runner = ModelRunner(ModelConfig(model=str(path)), CacheConfig(block_size=BLOCK_SIZE),
                         DeviceConfig(device="cpu"), ParallelConfig(),
                         scheduler_config=SchedulerConfig(max_num_seqs=8))
    runner.load_model()
    runner.allocate_kv_cache(num_blocks)
    scheduler = core.Scheduler(core.SchedulerConfig(
        num_blocks=num_blocks, block_size=BLOCK_SIZE, max_num_seqs=8,
        max_num_batched_tokens=max_num_batched_tokens, max_model_len=runner.max_model_len))
    for handle, prompt in enumerate(prompts):
        scheduler.add_request(handle, np.asarray(prompt, np.int32),
                              core.RequestParams(max_tokens=NEW_TOKENS, ignore_eos=True))
    outputs = {h: [] for h in range(len(prompts))}
    steps = 0
    while scheduler.has_unfinished_requests():
        plan = scheduler.schedule()
        logits = runner.execute_model(plan)
        sampled = logits.argmax(dim=-1).to(torch.int32).numpy()
        for out in scheduler.update(plan, sampled):
            outputs[out.handle].extend(out.new_token_ids)
        steps += 1
        assert steps < 500
    return [outputs[h] for h in range(len(prompts))], scheduler.stats()


@pytest.mark.parametrize("arch,num_blocks,budget", [
    ("llama", 64, 2048),   # whole prompts in one step
    ("qwen3", 64, 24),     # chunked prefill
    ("opt", 5, 2048),      # 4 usable blocks: running requests outgrow them, preemption
])
def test_scheduler_driven_greedy_matches_transformers(tiny_model_dirs, arch, num_blocks, budget):
    gen = torch.Generator().manual_seed(11)
    prompts = [torch.randint(3, 512, (n,), generator=gen).tolist() for n in (5, 18, 33, 9)]
    ours, stats = run_with_scheduler(tiny_model_dirs[arch], prompts, num_blocks, budget)
    hf = AutoModelForCausalLM.from_pretrained(tiny_model_dirs[arch], dtype=torch.float32).eval()
    for prompt, generated in zip(prompts, ours):
        assert generated == hf_greedy(hf, prompt, NEW_TOKENS)
    if arch == "opt":
        assert stats.num_preemptions > 0
