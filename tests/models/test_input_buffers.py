"""Step inputs: build_cpu_inputs and CudaInputBuffers copy only the block-table columns a step can
read; CudaInputBuffers lays a step out in one buffer (graph steps at fixed addresses)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pagedllm.worker.input_buffers import CudaInputBuffers, build_cpu_inputs, used_block_columns


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


# CudaInputBuffers' layout logic runs on the CPU too (no pinned memory, no events).
def cpu_buffers(max_blocks: int = 2560) -> CudaInputBuffers:
    return CudaInputBuffers(max_num_tokens=64, max_num_seqs=8, max_blocks_per_seq=max_blocks,
                            block_size=16, device=torch.device("cpu"))


def test_buffers_eager_step_views_hold_the_plan_with_a_compact_table():
    plan = plan_with([40, 100, 3], max_blocks=2560)
    inputs = cpu_buffers().build(plan)
    meta = inputs.meta
    assert inputs.input_ids.tolist() == plan.input_ids.tolist()
    assert inputs.positions.tolist() == plan.positions.tolist()
    assert meta.slot_mapping.tolist() == plan.slot_mapping.tolist()
    assert meta.query_start_loc.tolist() == [0, 1, 2, 3]
    assert meta.seq_lens.tolist() == [40, 100, 3]
    assert meta.token_order.tolist() == [1, 0, 2]                 # longest context first
    assert meta.short_chunk_tokens == 3                           # every decode row
    assert meta.block_table.shape == (3, 7)                       # ceil(100 / 16) columns
    assert torch.equal(meta.block_table, torch.from_numpy(plan.block_table[:, :7]))
    assert (meta.num_seqs, meta.num_tokens) == (3, 3)


def test_buffers_graph_step_pads_rows_and_scatters_into_the_full_width_table():
    bufs = cpu_buffers(max_blocks=64)
    wide = plan_with([1000, 20], max_blocks=64)                   # 63 columns
    bufs.build(wide, padded_num_seqs=4)
    narrow = plan_with([17, 5, 30], max_blocks=64)                # 2 columns
    inputs = bufs.build(narrow, padded_num_seqs=4)
    meta = inputs.meta
    assert inputs.input_ids.tolist() == [0, 1, 2, 0]              # padding token 0
    assert meta.slot_mapping.tolist() == [0, 1, 2, -1]            # padding: no cache write
    assert meta.query_start_loc.tolist() == [0, 1, 2, 3, 4]
    assert meta.seq_lens.tolist() == [17, 5, 30, 1]               # padding: one key
    assert meta.short_chunk_tokens == 4                           # padding rows included
    assert meta.block_table.shape == (4, 64)                      # the width graphs captured
    for i, n in enumerate([17, 5, 30]):                           # every block a row reads
        blocks = -(-n // 16)
        assert torch.equal(meta.block_table[i, :blocks], torch.from_numpy(narrow.block_table[i, :blocks]))
    assert meta.block_table[3, 0] == 0                            # padding reads the null block
    # Past the used columns the wide step's ids remain (stale, never read): only W moved.
    assert torch.equal(meta.block_table[0, 2:63], torch.from_numpy(wide.block_table[0, 2:63]))


def test_buffers_graph_views_keep_their_addresses_across_steps():
    bufs = cpu_buffers(max_blocks=64)
    first = bufs.build(plan_with([100, 7], max_blocks=64), padded_num_seqs=8)
    second = bufs.build(plan_with([3, 3, 3, 900, 12], max_blocks=64), padded_num_seqs=8)

    def ptrs(x):
        m = x.meta
        return [t.data_ptr() for t in (x.input_ids, x.positions, m.slot_mapping, m.block_table,
                                       m.query_start_loc, m.seq_lens, m.token_order)]
    assert ptrs(first) == ptrs(second)                            # what a replay depends on
    assert second.meta.seq_lens.tolist() == [3, 3, 3, 900, 12, 1, 1, 1]


def test_buffers_a_build_rewrites_the_previous_steps_views():
    """The contract the runner relies on: views are valid until the next build() only."""
    bufs = cpu_buffers(max_blocks=64)
    first = bufs.build(plan_with([18, 5], max_blocks=64))
    assert first.meta.seq_lens.tolist() == [18, 5]
    bufs.build(plan_with([18, 5], max_blocks=64), padded_num_seqs=8)   # another layout
    assert first.meta.seq_lens.tolist() != [18, 5]


def test_decode_graphs_run_fills_inputs_replays_and_counts_host_time():
    """DecodeGraphs.run on stand-ins for the graph (no CUDA needed): the padded inputs are built,
    the size's graph replays once, and the host time of both parts is counted."""
    from pagedllm.worker.cuda_graphs import DecodeGraphs

    class FakeGraph:
        def __init__(self):
            self.replays = 0

        def replay(self):
            self.replays += 1

    bufs = cpu_buffers(max_blocks=64)
    graphs = DecodeGraphs(model=None, kv_caches=[], buffers=bufs, sizes=[4, 8],
                          max_model_len=1024, max_blocks_per_seq=64)
    graphs.graphs = {4: FakeGraph(), 8: FakeGraph()}
    graphs.outputs = {4: torch.arange(4.0).view(4, 1), 8: torch.arange(8.0).view(8, 1)}
    plan = plan_with([100, 7, 30], max_blocks=64)
    assert graphs.padded_size(plan) == 4
    hidden = graphs.run(plan, 4)
    assert hidden.tolist() == [[0.0], [1.0], [2.0]]            # the real rows only
    assert graphs.graphs[4].replays == 1 and graphs.graphs[8].replays == 0
    assert graphs.replays == 1 and graphs.build_seconds > 0 and graphs.launch_seconds >= 0
    assert bufs.graph_block_table[0, :7].tolist() == plan.block_table[0, :7].tolist()
