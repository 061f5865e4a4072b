"""build_cpu_inputs copies only the block-table columns the step can read."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pagedllm.worker.input_buffers import build_cpu_inputs, used_block_columns


def plan_with(seq_lens: list[int], max_blocks: int, block_size: int = 16) -> SimpleNamespace:
    """A decode plan (one token per sequence) whose table rows hold distinct block ids."""
    s = len(seq_lens)
    table = np.zeros((s, max_blocks), np.int32)
    for i, n in enumerate(seq_lens):
        blocks = -(-n // block_size)
        table[i, :blocks] = np.arange(1, blocks + 1) + 100 * i
    return SimpleNamespace(
        num_seqs=s, num_tokens=s, max_query_len=1, max_seq_len=max(seq_lens),
        input_ids=np.arange(s, dtype=np.int32), positions=np.array(seq_lens, np.int32) - 1,
        slot_mapping=np.arange(s, dtype=np.int32), query_start_loc=np.arange(s + 1, dtype=np.int32),
        seq_lens=np.array(seq_lens, np.int32), block_table=table)


@pytest.mark.parametrize("seq_lens,expect", [([1], 1), ([16], 1), ([17, 3], 2), ([40, 100], 7),
                                              ([4096], 256)])
def test_used_block_columns(seq_lens, expect):
    assert used_block_columns(plan_with(seq_lens, 2560), 16) == expect


def test_used_block_columns_never_exceed_the_table():
    plan = plan_with([4096], 256)
    plan.max_seq_len = 5000   # a hint past the table: clipped to its width
    assert used_block_columns(plan, 16) == 256


def test_cpu_inputs_carry_every_needed_block_and_no_more():
    plan = plan_with([40, 100, 3], max_blocks=2560)   # max_model_len 40,960
    meta = build_cpu_inputs(plan, 16).meta
    assert meta.block_table.shape == (3, 7) and meta.block_table.is_contiguous()
    assert meta.block_table.dtype == torch.int32
    for i, n in enumerate([40, 100, 3]):
        blocks = -(-n // 16)
        assert torch.equal(meta.block_table[i, :blocks], torch.from_numpy(plan.block_table[i, :blocks]))
