"""longest_first_token_order: the order the CUDA decode-attention kernel starts its tokens in."""
from __future__ import annotations

import numpy as np
import pytest

from pagedllm.worker.input_buffers import longest_first_token_order


def order_of(q_lens, seq_lens):
    qsl = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    out = np.full(int(qsl[-1]) + 3, -7, np.int32)  # longer than T: the tail stays untouched
    longest_first_token_order(qsl, np.asarray(seq_lens, np.int32), out)
    assert (out[int(qsl[-1]):] == -7).all()
    return qsl, out[: int(qsl[-1])]


def test_decode_batch_is_sorted_by_context_longest_first():
    seq_lens = [5, 900, 17, 900, 1, 300]
    _, order = order_of([1] * 6, seq_lens)
    assert order.tolist() == [1, 3, 5, 2, 0, 4]  # ties keep plan order


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
    assert all(seq_lens[a] >= seq_lens[b] for a, b in zip(runs, runs[1:]))
    for s in range(num_seqs):
        tokens = order[owner == s]
        assert tokens.tolist() == list(range(qsl[s], qsl[s + 1]))
