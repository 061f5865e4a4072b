"""Hand-built BatchPlans for tests: a minimal block allocator with the core's array layout, so
model tests do not depend on the C++ scheduler. Not a scheduler: the caller says which tokens
each sequence computes in each step."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np


@dataclass
class HandPlan:
    """Same fields and meanings as pagedllm._C.core.BatchPlan (see core.pyi)."""
    num_seqs: int
    num_tokens: int
    num_sampled: int
    max_query_len: int
    max_seq_len: int
    input_ids: np.ndarray         # [T] int32
    positions: np.ndarray         # [T] int32
    slot_mapping: np.ndarray      # [T] int32
    query_start_loc: np.ndarray   # [S + 1] int32
    seq_lens: np.ndarray          # [S] int32
    num_computed: np.ndarray      # [S] int32
    block_table: np.ndarray       # [S, max_blocks] int32
    logits_indices: np.ndarray    # [N] int32
    sampled_seq_indices: np.ndarray  # [N] int32
    handles: np.ndarray           # [S] int64
    preempted_handles: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


class HandPlanner:
    """Gives each sequence blocks from a free list (lowest id first; block 0 is the null block)
    as its tokens are scheduled."""

    def __init__(self, num_blocks: int, block_size: int, max_blocks_per_seq: int):
        self.block_size = block_size
        self.max_blocks_per_seq = max_blocks_per_seq
        self.free_blocks = list(range(1, num_blocks))
        self.blocks: dict[int, list[int]] = {}
        self.num_computed: dict[int, int] = {}

    def free(self, handle: int) -> None:
        self.free_blocks = sorted(self.free_blocks + self.blocks.pop(handle))
        del self.num_computed[handle]

    def plan(self, chunks: Sequence[tuple[int, Sequence[int]]],
             sample_all: bool = True) -> HandPlan:
        """chunks: (handle, the token ids it computes this step), in row order. Every sequence
        is sampled at its last token when sample_all."""
        ids, positions, slots, qsl, seq_lens, computed, handles = [], [], [], [0], [], [], []
        for handle, tokens in chunks:
            start = self.num_computed.setdefault(handle, 0)
            blocks = self.blocks.setdefault(handle, [])
            end = start + len(tokens)
            while len(blocks) * self.block_size < end:
                blocks.append(self.free_blocks.pop(0))
            for pos in range(start, end):
                positions.append(pos)
                slots.append(blocks[pos // self.block_size] * self.block_size
                             + pos % self.block_size)
            ids.extend(tokens)
            qsl.append(qsl[-1] + len(tokens))
            seq_lens.append(end)
            computed.append(start)
            handles.append(handle)
            self.num_computed[handle] = end
        table = np.zeros((len(chunks), self.max_blocks_per_seq), dtype=np.int32)
        for row, (handle, _) in enumerate(chunks):
            table[row, : len(self.blocks[handle])] = self.blocks[handle]
        qsl_arr = np.asarray(qsl, dtype=np.int32)
        logits = (qsl_arr[1:] - 1) if sample_all else np.zeros(0, np.int32)
        query_lens = np.diff(qsl_arr)
        return HandPlan(
            num_seqs=len(chunks), num_tokens=int(qsl_arr[-1]), num_sampled=len(logits),
            max_query_len=int(query_lens.max(initial=0)), max_seq_len=max(seq_lens, default=0),
            input_ids=np.asarray(ids, np.int32), positions=np.asarray(positions, np.int32),
            slot_mapping=np.asarray(slots, np.int32), query_start_loc=qsl_arr,
            seq_lens=np.asarray(seq_lens, np.int32), num_computed=np.asarray(computed, np.int32),
            block_table=table, logits_indices=logits.astype(np.int32),
            sampled_seq_indices=np.arange(len(logits), dtype=np.int32),
            handles=np.asarray(handles, np.int64),
        )
