"""CUDA graphs for decode steps: one graph per padded batch size, replayed instead of launching
every kernel of the forward pass from Python.

A decode step (every sequence brings exactly one token) of S sequences replays the graph of the
smallest captured size S' >= S. The inputs live in CudaInputBuffers' persistent device tensors
(the addresses the graphs captured); rows S..S'-1 are padding: slot -1 (no cache write), context
length 1 on the null block 0, outputs ignored. The attention kernels size their grids from the
max_query_len / max_seq_len hints, so graphs are captured with the fixed upper bounds 1 and
max_model_len and stay valid for every context length.
Prefill and mixed steps run eagerly.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Optional

import numpy as np
import torch

from pagedllm.worker.input_buffers import (DECODE_GRAPH_BATCH_SIZES, CudaInputBuffers,
                                           padded_batch_size)

logger = logging.getLogger(__name__)


def capture_sizes(max_num_seqs: int) -> list[int]:
    """The sizes of DECODE_GRAPH_BATCH_SIZES up to max_num_seqs, plus max_num_seqs itself."""
    top = min(max_num_seqs, DECODE_GRAPH_BATCH_SIZES[-1])
    return sorted({s for s in DECODE_GRAPH_BATCH_SIZES if s <= top} | {top})


class _DecodePlan:
    """A decode-only plan of `num_seqs` padding rows, used to capture."""

    def __init__(self, num_seqs: int, max_blocks: int, max_seq_len: int):
        self.num_seqs = self.num_tokens = self.num_sampled = num_seqs
        self.max_query_len, self.max_seq_len = 1, max_seq_len
        self.input_ids = np.zeros(num_seqs, np.int32)                   # [S]
        self.positions = np.zeros(num_seqs, np.int32)                   # [S]
        self.slot_mapping = np.full(num_seqs, -1, np.int32)             # [S] never written
        self.query_start_loc = np.arange(num_seqs + 1, dtype=np.int32)  # [S + 1]
        self.seq_lens = np.ones(num_seqs, np.int32)                     # [S]
        self.num_computed = np.zeros(num_seqs, np.int32)                # [S]
        self.block_table = np.zeros((num_seqs, max_blocks), np.int32)   # [S, max_blocks]
        self.logits_indices = np.arange(num_seqs, dtype=np.int32)       # [S]


class DecodeGraphs:
    def __init__(self, model: torch.nn.Module, kv_caches: list[torch.Tensor],
                 buffers: CudaInputBuffers, sizes: list[int], max_model_len: int,
                 max_blocks_per_seq: int):
        self.model = model
        self.kv_caches = kv_caches
        self.buffers = buffers
        self.sizes = tuple(sorted(sizes))   # ascending, as padded_batch_size expects
        self.max_model_len = max_model_len
        self.max_blocks_per_seq = max_blocks_per_seq
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}   # size -> [size, H] hidden states
        self.memory_bytes = 0
        # Host seconds of the replays so far (benchmarks split the gap between steps with them):
        # filling the inputs (numpy + one copy + the table scatter) and launching the graph.
        self.replays = 0
        self.build_seconds = 0.0
        self.launch_seconds = 0.0

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every size, largest first (later graphs reuse the first one's memory pool)."""
        device = self.kv_caches[0].device
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_reserved(device)
        pool = None
        for size in sorted(self.sizes, reverse=True):
            plan = _DecodePlan(size, self.max_blocks_per_seq, self.max_model_len)
            inputs = self.buffers.build(plan, padded_num_seqs=size)  # the views run() will fill
            # Warm-up outside capture: lazy initialisations must not happen inside the graph.
            self.model(inputs.input_ids, inputs.positions, self.kv_caches, inputs.meta)
            torch.cuda.synchronize(device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                out = self.model(inputs.input_ids, inputs.positions, self.kv_caches, inputs.meta)
            if pool is None:
                pool = graph.pool()
            self.graphs[size] = graph
            self.outputs[size] = out
        torch.cuda.synchronize(device)
        self.memory_bytes = torch.cuda.memory_reserved(device) - before
        logger.info("captured %d decode CUDA graphs (batch sizes %d..%d), %.1f MiB",
                    len(self.graphs), self.sizes[0], self.sizes[-1], self.memory_bytes / 2**20)

    def padded_size(self, plan: Any) -> Optional[int]:
        """The captured size that serves this plan, or None (not pure decode, or too large)."""
        num_seqs = int(plan.num_seqs)
        if int(plan.num_tokens) != num_seqs or num_seqs > self.sizes[-1]:
            return None
        if int(plan.max_seq_len) > self.max_model_len:
            return None
        return padded_batch_size(num_seqs, self.sizes)

    def run(self, plan: Any, size: int,
            previous_tokens: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Fill the captured input buffers, replay; hidden states [num_seqs, H].
        previous_tokens: for a plan's deferred rows (CudaInputBuffers.build)."""
        t0 = time.perf_counter()
        self.buffers.build(plan, padded_num_seqs=size, previous_tokens=previous_tokens)
        t1 = time.perf_counter()
        self.graphs[size].replay()
        self.launch_seconds += time.perf_counter() - t1
        self.build_seconds += t1 - t0
        self.replays += 1
        return self.outputs[size][: int(plan.num_tokens)]
