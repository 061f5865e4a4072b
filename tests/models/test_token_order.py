"""longest_first_token_order: the order the CUDA token kernel starts its tokens in (short chunks
first, then the long ones the tensor-core kernel takes; each group longest context first)."""
from __future__ import annotations

import numpy as np
import pytest

from pagedllm.ops import PREFILL_KERNEL_MIN_QUERY_LEN
from pagedllm.worker.input_buffers import longest_first_token_order


def order_of(q_lens, seq_lens, with_count=False):
    qsl = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    out = np.full(int(qsl[-1]) + 3, -7, np.int32)  # longer than T: the tail stays untouched
    short_tokens = longest_first_token_order(qsl, np.asarray(seq_lens, np.int32), out)
    assert (out[int(qsl[-1]):] == -7).all()
    return (qsl, out[: int(qsl[-1])], short_tokens) if with_count else (qsl, out[: int(qsl[-1])])


def test_decode_batch_is_sorted_by_context_longest_first():
    seq_lens = [5, 900, 17, 900, 1, 300]
    _, order, short_tokens = order_of([1] * 6, seq_lens, with_count=True)
    assert order.tolist() == [1, 3, 5, 2, 0, 4]  # ties keep plan order
    assert short_tokens == 6


def test_short_chunks_lead_and_are_counted():
    assert PREFILL_KERNEL_MIN_QUERY_LEN == 16
    q_lens = [20, 1, 16, 15, 1, 300]
    seq_lens = [20, 50, 900, 15, 400, 300]
    qsl, order, short_tokens = order_of(q_lens, seq_lens, with_count=True)
    assert short_tokens == 1 + 15 + 1
    # short: seq 4 (400), seq 1 (50), seq 3 (15); long: seq 2 (900), seq 5 (300), seq 0 (20)
    expect = [list(range(qsl[s], qsl[s + 1])) for s in (4, 1, 3, 2, 5, 0)]
    assert order.tolist() == sum(expect, [])
    _, _, none_short = order_of([16, 100], [16, 100], with_count=True)
    assert none_short == 0


@pytest.mark.parametrize("seed", range(5))
def test_mixed_batch_keeps_each_sequence_contiguous_and_in_order(seed):
    rng = np.random.default_rng(seed)
    num_seqs = int(rng.integers(1, 40))
    q_lens = rng.integers(1, 50, num_seqs)
    seq_lens = q_lens + rng.integers(0, 2000, num_seqs)
    qsl, order = order_of(q_lens, seq_lens)
    assert sorted(order.tolist()) == list(range(int(qsl[-1])))  # a permutation
    owner = np.searchsorted(qsl, order, side="right") - 1     # sequence of each position
    runs = [owner[0]] + [o for prev, o in zip(owner, owner[1:]) if o != prev]
    assert len(runs) == num_seqs                              # each sequence in one run
    is_long = q_lens >= PREFILL_KERNEL_MIN_QUERY_LEN
    assert all(is_long[a] <= is_long[b] for a, b in zip(runs, runs[1:]))  # short chunks lead
    assert all(seq_lens[a] >= seq_lens[b] for a, b in zip(runs, runs[1:])
               if is_long[a] == is_long[b])
    short_tokens = longest_first_token_order(qsl, seq_lens.astype(np.int32), order.copy())
    assert short_tokens == int(q_lens[~is_long].sum())
    for s in range(num_seqs):
        tokens = order[owner == s]
        assert tokens.tolist() == list(range(qsl[s], qsl[s + 1]))
