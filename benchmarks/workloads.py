"""Benchmark workloads: the same random requests for pagedllm and for every peer."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BenchRequest:
    prompt_token_ids: list[int]
    output_len: int


def random_requests(num: int, input_min: int, input_max: int, output_min: int, output_max: int,
                    vocab_size: int, seed: int = 0) -> list[BenchRequest]:
    """Prompts of random token ids; input and output lengths uniform in [min, max] inclusive."""
    if not (1 <= input_min <= input_max and 1 <= output_min <= output_max):
        raise ValueError("lengths: need 1 <= min <= max for input and output")
    rng = np.random.default_rng(seed)
    in_lens = rng.integers(input_min, input_max + 1, size=num)
    out_lens = rng.integers(output_min, output_max + 1, size=num)
    # Stay clear of the highest ids, where special tokens usually live.
    hi = max(2, vocab_size - 1000)
    return [BenchRequest(rng.integers(1, hi, size=int(n)).tolist(), int(m))
            for n, m in zip(in_lens, out_lens)]


# Named workloads of issue 4: (num, input_min, input_max, output_min, output_max)
WORKLOADS = {
    "nano": (256, 100, 1024, 100, 1024),   # nano-vllm's: Qwen3-0.6B shape, seed 0
    "8b": (1000, 1024, 1024, 2048, 2048),  # vllm bench throughput style: Qwen3-8B shape
    "moe": (256, 100, 512, 100, 512),      # shorter than nano: the MoE shape's eager baseline
}
