"""BatchPlan arrays -> device tensors for one forward pass.

CPU: plain tensor copies of the plan's numpy views (the views are read-only and owned by the
core, so they are copied, never aliased).
CUDA (exercised by the GPU tests only): persistent pinned host buffers and persistent device
buffers sized for the largest step, filled with one non_blocking copy each, plus the
longest-first token order the decode attention kernel starts its CTAs in.
Fixed device addresses are what CUDA-graph replay of decode batches needs: a decode batch of S
sequences is padded to a captured size S' >= S with slot -1 (no cache write), seq_len 1 and
null-block rows (they attend to the never-written, zero null block, so stay finite), whose
outputs are ignored.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from pagedllm.worker.attention_metadata import AttentionMetadata


# Decode batch sizes a CUDA-graph runner would capture (vLLM-like: small sizes one by one, then
# multiples of 8). A decode step of S sequences replays the graph of padded_batch_size(S).
DECODE_GRAPH_BATCH_SIZES = (1, 2, 4) + tuple(range(8, 513, 8))


def padded_batch_size(num_seqs: int, sizes: tuple[int, ...] = DECODE_GRAPH_BATCH_SIZES) -> int:
    """The smallest captured size >= num_seqs, or num_seqs itself when it exceeds them all
    (such a step runs eagerly)."""
    for size in sizes:
        if size >= num_seqs:
            return size
    return num_seqs


class StepInputs:
    """input_ids [T], positions [T] and the attention metadata of one step."""

    def __init__(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata):
        self.input_ids = input_ids      # [T] int32
        self.positions = positions      # [T] int32
        self.meta = meta


def longest_first_token_order(query_start_loc: np.ndarray,  # [S + 1] int32
                              seq_lens: np.ndarray,         # [S] int32
                              out: np.ndarray) -> None:     # [>= T] int32, T = qsl[S]
    """out[:T] = the tokens sequence by sequence, longest context first (ties keep plan order).

    The attention kernel's CTAs of a decode batch differ in cost by the context length; started
    longest first, the last wave is made of short ones instead of whichever came last (a
    ragged 256 x 100-1100 batch lost ~20% to that on the H100).
    """
    seq_order = np.argsort(-seq_lens, kind="stable")
    starts = query_start_loc[:-1][seq_order]
    q_lens = (query_start_loc[1:] - query_start_loc[:-1])[seq_order]
    num_tokens = int(query_start_loc[-1])
    if num_tokens == len(seq_lens):        # decode: one token per sequence
        out[:num_tokens] = starts
        return
    # Token p of the new order belongs to the k-th sequence of seq_order when
    # first[k] <= p < first[k] + q_lens[k]; it is token starts[k] + (p - first[k]).
    first = np.cumsum(q_lens) - q_lens
    out[:num_tokens] = np.repeat(starts - first, q_lens) + np.arange(num_tokens, dtype=np.int64)


def _as_int32(array: np.ndarray) -> torch.Tensor:
    return torch.tensor(np.asarray(array, dtype=np.int32))


def used_block_columns(plan: Any, block_size: int) -> int:
    """Block-table columns this plan's attention can read: ceil(max_seq_len / block_size).

    The plan's table is max_model_len / block_size wide; copying only these columns keeps the
    per-step copy proportional to the batch's longest context, not to max_model_len (at
    max_model_len 40,960 a full 256-row table is 2.6 MB per step)."""
    width = int(plan.block_table.shape[1])
    return max(1, min(width, -(-int(plan.max_seq_len) // block_size)))


def build_cpu_inputs(plan: Any, block_size: int) -> StepInputs:
    # No token_order: the CPU kernel would ignore it.
    width = used_block_columns(plan, block_size)
    meta = AttentionMetadata(
        slot_mapping=_as_int32(plan.slot_mapping),
        block_table=_as_int32(plan.block_table[:, :width]),   # [S, width], width <= max_blocks
        query_start_loc=_as_int32(plan.query_start_loc),
        seq_lens=_as_int32(plan.seq_lens),
        num_seqs=int(plan.num_seqs), num_tokens=int(plan.num_tokens),
        max_query_len=int(plan.max_query_len), max_seq_len=int(plan.max_seq_len),
    )
    return StepInputs(_as_int32(plan.input_ids), _as_int32(plan.positions), meta)


class CudaInputBuffers:
    """Persistent pinned + device buffers for the largest step."""

    _TOKEN_FIELDS = ("input_ids", "positions", "slot_mapping", "token_order")

    def __init__(self, max_num_tokens: int, max_num_seqs: int, max_blocks_per_seq: int,
                 device: torch.device):
        self.device = device
        self.max_blocks_per_seq = max_blocks_per_seq

        def pair(*shape):
            # Normal (not inference-mode) tensors even when first built inside
            # torch.inference_mode(): in-place refills then work in and out of inference mode.
            with torch.inference_mode(False):
                host = torch.zeros(shape, dtype=torch.int32, pin_memory=True)
                return host, torch.zeros(shape, dtype=torch.int32, device=device)

        self.host, self.dev = {}, {}
        for name in self._TOKEN_FIELDS:                            # [max_num_tokens] each
            self.host[name], self.dev[name] = pair(max_num_tokens)
        self.host["query_start_loc"], self.dev["query_start_loc"] = pair(max_num_seqs + 1)
        self.host["seq_lens"], self.dev["seq_lens"] = pair(max_num_seqs)
        self.host["block_table"], self.dev["block_table"] = pair(max_num_seqs, max_blocks_per_seq)
        # Set after the copies of a step; the next step waits on it before touching host buffers.
        self._copied: Optional[torch.cuda.Event] = None

    def build(self, plan: Any, padded_num_seqs: Optional[int] = None) -> StepInputs:
        """Copy the plan in; pad the sequence rows to padded_num_seqs (decode graphs) if given."""
        if self._copied is not None:
            self._copied.synchronize()
        num_tokens, num_seqs = int(plan.num_tokens), int(plan.num_seqs)
        rows = padded_num_seqs or num_seqs
        # Decode padding: one padded token per padded sequence.
        tokens = num_tokens + (rows - num_seqs)
        h = {k: v.numpy() for k, v in self.host.items()}
        h["input_ids"][:num_tokens] = plan.input_ids
        h["positions"][:num_tokens] = plan.positions
        h["slot_mapping"][:num_tokens] = plan.slot_mapping
        h["input_ids"][num_tokens:tokens] = 0
        h["positions"][num_tokens:tokens] = 0
        h["slot_mapping"][num_tokens:tokens] = -1
        h["query_start_loc"][: num_seqs + 1] = plan.query_start_loc
        h["query_start_loc"][num_seqs + 1: rows + 1] = np.arange(num_tokens + 1, tokens + 1)
        h["seq_lens"][:num_seqs] = plan.seq_lens
        h["seq_lens"][num_seqs:rows] = 1
        longest_first_token_order(h["query_start_loc"][: rows + 1], h["seq_lens"][:rows],
                                  h["token_order"])
        width = plan.block_table.shape[1]
        h["block_table"][:num_seqs, :width] = plan.block_table
        h["block_table"][num_seqs:rows] = 0

        def to_dev(name: str, n: int) -> torch.Tensor:
            self.dev[name][:n].copy_(self.host[name][:n], non_blocking=True)
            return self.dev[name][:n]

        meta = AttentionMetadata(
            slot_mapping=to_dev("slot_mapping", tokens),
            block_table=to_dev("block_table", rows)[:, :width],
            query_start_loc=to_dev("query_start_loc", rows + 1),
            seq_lens=to_dev("seq_lens", rows),
            num_seqs=rows, num_tokens=tokens,
            max_query_len=int(plan.max_query_len), max_seq_len=int(plan.max_seq_len),
            token_order=to_dev("token_order", tokens),
        )
        inputs = StepInputs(to_dev("input_ids", tokens), to_dev("positions", tokens), meta)
        self._copied = torch.cuda.Event()
        self._copied.record()
        return inputs
