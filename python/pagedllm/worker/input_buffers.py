"""BatchPlan arrays -> device tensors for one forward pass.

CPU: plain tensor copies of the plan's numpy views (the views are read-only and owned by the
core, so they are copied, never aliased).
CUDA: one persistent pinned host buffer and one device buffer sized for the largest step, filled
with one non_blocking copy per step (layout in CudaInputBuffers), plus the longest-first token
order the decode attention kernel starts its CTAs in.
Plans made one step ahead (Scheduler.schedule_ahead) carry deferred rows: input ids that are
the previous step's sampled tokens, still on the device. They are filled there, after the copy
and before the forward, from `previous_tokens` (that step's PendingSample.device_token_ids);
the stream orders the fill after the sampling that produces them.
Fixed device addresses are what CUDA-graph replay of decode batches needs: a decode batch of S
sequences is padded to a captured size S' >= S with slot -1 (no cache write), seq_len 1 and
null-block rows (they attend to the never-written, zero null block, so stay finite), whose
outputs are ignored.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from pagedllm.ops import PREFILL_KERNEL_MIN_QUERY_LEN
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
                              out: np.ndarray) -> int:      # [>= T] int32, T = qsl[S]
    """out[:T] = the tokens sequence by sequence: the chunks shorter than
    PREFILL_KERNEL_MIN_QUERY_LEN first, each group longest context first (ties keep plan order).
    Returns the number of tokens in those short chunks (paged_attention's short_chunk_tokens).

    The token kernel's CTAs of a decode batch differ in cost by the context length; started
    longest first, the last wave is made of short ones instead of whichever came last (a
    ragged 256 x 100-1100 batch lost ~20% to that on the H100). Short chunks first lets it
    skip the long chunks' tokens, which the tensor-core kernel computes.
    """
    q_lens = query_start_loc[1:] - query_start_loc[:-1]
    num_tokens = int(query_start_loc[-1])
    if num_tokens == len(seq_lens) and (q_lens == 1).all():  # decode: one token per sequence
        out[:num_tokens] = query_start_loc[:-1][np.argsort(-seq_lens, kind="stable")]
        return num_tokens
    is_long = q_lens >= PREFILL_KERNEL_MIN_QUERY_LEN
    short_tokens = int(q_lens[~is_long].sum())
    seq_order = np.lexsort((-seq_lens.astype(np.int64), is_long))  # by is_long, then longest
    starts = query_start_loc[:-1][seq_order]
    q_lens = q_lens[seq_order]
    # Token p of the new order belongs to the k-th sequence of seq_order when
    # first[k] <= p < first[k] + q_lens[k]; it is token starts[k] + (p - first[k]).
    first = np.cumsum(q_lens) - q_lens
    out[:num_tokens] = np.repeat(starts - first, q_lens) + np.arange(num_tokens, dtype=np.int64)
    return short_tokens


def _as_int32(array: np.ndarray) -> torch.Tensor:
    return torch.tensor(np.asarray(array, dtype=np.int32))


def deferred_rows_of(plan: Any, previous_tokens: Optional[torch.Tensor]
                     ) -> tuple[int, np.ndarray, np.ndarray, bool]:
    """(D, deferred_rows [D], deferred_sources [D], identity) of a plan, checked against the
    previous step's tokens [N_prev] int32. identity: row i takes token i for every i (a decode
    batch whose sequences did not change), which needs no index tensors."""
    n = int(getattr(plan, "num_deferred", 0))
    if n == 0:
        return 0, np.zeros(0, np.int32), np.zeros(0, np.int32), True
    if previous_tokens is None:
        raise ValueError("plan has deferred input tokens (made by schedule_ahead) but no "
                         "previous_tokens were given")
    if previous_tokens.dtype != torch.int32 or previous_tokens.dim() != 1:
        raise ValueError(f"previous_tokens: expected a 1-D int32 tensor, got "
                         f"{previous_tokens.dtype} of shape {tuple(previous_tokens.shape)}")
    rows, sources = plan.deferred_rows, plan.deferred_sources
    if int(sources.max()) >= previous_tokens.numel() or int(sources.min()) < 0:
        raise ValueError(f"plan's deferred_sources reach past the {previous_tokens.numel()} "
                         f"previous tokens")
    identity = bool((rows == np.arange(n)).all() and (sources == rows).all())
    return n, rows, sources, identity


def used_block_columns(plan: Any, block_size: int) -> int:
    """Block-table columns this plan's attention can read: ceil(max_seq_len / block_size).

    The plan's table is max_model_len / block_size wide; copying only these columns keeps the
    per-step copy proportional to the batch's longest context, not to max_model_len (at
    max_model_len 40,960 a full 256-row table is 2.6 MB per step)."""
    width = int(plan.block_table.shape[1])
    return max(1, min(width, -(-int(plan.max_seq_len) // block_size)))


def build_cpu_inputs(plan: Any, block_size: int,
                     previous_tokens: Optional[torch.Tensor] = None) -> StepInputs:
    # No token_order: the CPU kernel would ignore it.
    num_deferred, rows, sources, _ = deferred_rows_of(plan, previous_tokens)
    input_ids = _as_int32(plan.input_ids)
    if num_deferred:
        input_ids[torch.from_numpy(rows.astype(np.int64))] = previous_tokens.cpu()[
            torch.from_numpy(sources.astype(np.int64))]
    width = used_block_columns(plan, block_size)
    meta = AttentionMetadata(
        slot_mapping=_as_int32(plan.slot_mapping),
        block_table=_as_int32(plan.block_table[:, :width]),   # [S, width], width <= max_blocks
        query_start_loc=_as_int32(plan.query_start_loc),
        seq_lens=_as_int32(plan.seq_lens),
        num_seqs=int(plan.num_seqs), num_tokens=int(plan.num_tokens),
        max_query_len=int(plan.max_query_len), max_seq_len=int(plan.max_seq_len),
    )
    return StepInputs(input_ids, _as_int32(plan.positions), meta)


class CudaInputBuffers:
    """Persistent pinned + device int32 buffers for the largest step; one host-to-device copy.

    A step of T tokens and S rows (padding included) whose block table needs W columns
    (used_block_columns) lays its arrays out back to back, at offsets that depend on (T, S) only:

        input_ids [T] | positions [T] | slot_mapping [T] | token_order [T]
        | query_start_loc [S + 1] | seq_lens [S] | block_table [S, W]
        | deferred_rows [D] | deferred_sources [D]    (only when not the identity, see build)

    The host fills the pinned buffer, one non_blocking copy moves the prefix it wrote, and the
    step's tensors are views of the device buffer. A decode graph of size N was captured with the
    views of T = S = N, so a replay of that size finds its inputs where the graph reads them.
    The block table is the exception: a graph reads the persistent full-width `graph_block_table`
    [max_num_seqs, max_blocks], and each graph step scatters its W used columns into it on the
    device. Columns past W keep stale ids from earlier steps; no kernel reads them, since a row
    reads only its first ceil(seq_len / block_size) entries. The copy thus grows with the batch's
    longest context, not with max_model_len (a full 256-row table is 2.6 MB at 40,960 tokens).

    Invariant: a step's tensors are valid until the next build(), which rewrites the buffer at
    offsets of its own shape; the engine keeps it since every build follows the previous step's
    kernels on the same stream. Hold two steps' inputs at once only after cloning the first.
    device may be the CPU (tests): the same layout without pinned memory or events.
    """

    def __init__(self, max_num_tokens: int, max_num_seqs: int, max_blocks_per_seq: int,
                 block_size: int, device: torch.device):
        self.device = torch.device(device)
        self.block_size = block_size
        self.max_blocks_per_seq = max_blocks_per_seq
        self._on_cuda = self.device.type == "cuda"
        size = 4 * max_num_tokens + 4 * max_num_seqs + 1 + max_num_seqs * max_blocks_per_seq
        # Normal (not inference-mode) tensors even when first built inside
        # torch.inference_mode(): in-place refills then work in and out of inference mode.
        with torch.inference_mode(False):
            self.host = torch.zeros(size, dtype=torch.int32, pin_memory=self._on_cuda)
            self.dev = torch.zeros(size, dtype=torch.int32, device=self.device)
            self.graph_block_table = torch.zeros((max_num_seqs, max_blocks_per_seq),
                                                 dtype=torch.int32, device=self.device)
        self._host_np = self.host.numpy()
        # Set after the copy of a step; the next step waits on it before touching the host buffer.
        self._copied: Optional[torch.cuda.Event] = None

    def build(self, plan: Any, padded_num_seqs: Optional[int] = None,
              previous_tokens: Optional[torch.Tensor] = None) -> StepInputs:
        """Copy the plan in. padded_num_seqs (a decode graph's size, >= plan.num_seqs): pad the
        rows to it and hand out the graph's full-width block table. previous_tokens: the
        previous step's sampled tokens [N_prev] int32 on this device, for deferred rows."""
        num_deferred, d_rows, d_sources, identity = deferred_rows_of(plan, previous_tokens)
        if self._copied is not None:
            self._copied.synchronize()
        num_tokens, num_seqs = int(plan.num_tokens), int(plan.num_seqs)
        rows = padded_num_seqs or num_seqs
        tokens = num_tokens + (rows - num_seqs)  # decode padding: one token per padded row
        width = used_block_columns(plan, self.block_size)
        o_qsl = 4 * tokens
        o_lens = o_qsl + rows + 1
        o_table = o_lens + rows
        end = o_table + rows * width
        o_deferred = end
        if num_deferred and not identity:
            end += 2 * num_deferred
        if end > self._host_np.size:
            raise ValueError(f"step of {tokens} tokens / {rows} rows x {width} blocks does not fit "
                             f"the input buffers ({self._host_np.size} int32)")
        h = self._host_np
        for k, (field, pad) in enumerate((("input_ids", 0), ("positions", 0),
                                          ("slot_mapping", -1))):
            h[k * tokens: k * tokens + num_tokens] = getattr(plan, field)
            h[k * tokens + num_tokens: (k + 1) * tokens] = pad  # padded rows (slot -1: no write)
        qsl, lens = h[o_qsl: o_lens], h[o_lens: o_table]
        qsl[: num_seqs + 1] = plan.query_start_loc
        qsl[num_seqs + 1:] = np.arange(num_tokens + 1, tokens + 1)
        lens[:num_seqs] = plan.seq_lens
        lens[num_seqs:] = 1  # padding rows: one key on the null block
        short_tokens = longest_first_token_order(qsl, lens, h[3 * tokens: 4 * tokens])
        table = h[o_table: o_deferred].reshape(rows, width)
        table[:num_seqs] = plan.block_table[:, :width]
        table[num_seqs:] = 0
        if o_deferred < end:
            h[o_deferred: o_deferred + num_deferred] = d_rows
            h[o_deferred + num_deferred: end] = d_sources
        self.dev[:end].copy_(self.host[:end], non_blocking=True)

        d = self.dev
        if num_deferred:
            # The previous step's tokens, still on the device, into the rows left -1.
            if identity:
                d[:num_deferred].copy_(previous_tokens[:num_deferred])
            else:
                rows_dev = d[o_deferred: o_deferred + num_deferred]
                src_dev = d[o_deferred + num_deferred: end]
                d[:tokens].index_put_((rows_dev,), previous_tokens.index_select(0, src_dev))
        if padded_num_seqs is not None:
            block_table = self.graph_block_table[:rows]                   # [S, max_blocks]
            block_table[:, :width].copy_(d[o_table: o_deferred].view(rows, width))
        else:
            block_table = d[o_table: o_deferred].view(rows, width)               # [S, W]
        meta = AttentionMetadata(
            slot_mapping=d[2 * tokens: 3 * tokens],
            block_table=block_table,
            query_start_loc=d[o_qsl: o_lens],
            seq_lens=d[o_lens: o_table],
            num_seqs=rows, num_tokens=tokens,
            max_query_len=int(plan.max_query_len), max_seq_len=int(plan.max_seq_len),
            token_order=d[3 * tokens: 4 * tokens],
            short_chunk_tokens=short_tokens,
        )
        inputs = StepInputs(d[:tokens], d[tokens: 2 * tokens], meta)
        if self._on_cuda:
            self._copied = torch.cuda.Event()
            self._copied.record()
        return inputs
