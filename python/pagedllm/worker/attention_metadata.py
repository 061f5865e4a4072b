"""What every attention layer needs to know about a step, built once per step by ModelRunner."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class AttentionMetadata:
    """Device tensors for one forward pass (S sequences, T tokens).

    Invariants: query_start_loc[0] == 0, query_start_loc[S] == T; for sequence i the tokens
    query_start_loc[i]..query_start_loc[i+1]-1 sit at the last positions of its seq_lens[i]
    context, and block_table[i] lists at least ceil(seq_lens[i] / block_size) real blocks.
    """
    slot_mapping: torch.Tensor      # [T] int32, slot of each token's K/V (-1: do not write)
    # [S, W] int32, W <= max_blocks_per_seq: any width covering every row's blocks (the step's
    # used columns, or the full width CUDA graphs captured); padded with null block 0
    block_table: torch.Tensor
    query_start_loc: torch.Tensor   # [S + 1] int32
    seq_lens: torch.Tensor          # [S] int32, context length including this step's tokens
    num_seqs: int
    num_tokens: int
    max_query_len: int
    max_seq_len: int
    # [T] int32 permutation of the tokens, longest context first: the order the CUDA decode
    # kernel starts them in (balances its last wave). A scheduling hint, never the result.
    token_order: Optional[torch.Tensor] = None
    # Tokens of chunks shorter than ops.PREFILL_KERNEL_MIN_QUERY_LEN: ranks [0, n) of token_order
    # hold all of them (the CUDA token kernel covers only those). -1: unknown (it covers all).
    short_chunk_tokens: int = -1
