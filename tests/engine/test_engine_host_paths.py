"""The engine's per-step host shortcuts give the same results as the plain paths they replace:
SamplingBatch from cached columns, batch reuse across steps, the min_tokens ban lifting, and the
tokenizer backend decode used by the detokenizer."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from engine.conftest import engine_kwargs
from pagedllm.engine.arg_utils import EngineArgs
from pagedllm.engine.detokenizer import IncrementalDetokenizer, backend_decoder
from pagedllm.engine.llm_engine import LLMEngine
from pagedllm.sampling_params import SamplingParams
from pagedllm.testing.tiny_models import EOS_ID
from pagedllm.worker.sampler import SamplingBatch, SamplingRow, row_columns


def _engine(path, **overrides) -> LLMEngine:
    return LLMEngine.from_engine_args(EngineArgs(model=str(path), **engine_kwargs(**overrides)))


def test_batch_from_columns_matches_batch_from_rows():
    gen = torch.Generator().manual_seed(1)
    rows = [
        SamplingRow(),
        SamplingRow(temperature=0.7, top_p=0.9, top_k=5, min_p=0.1, num_logprobs=3),
        SamplingRow(temperature=1.0, generator=gen, banned_token_ids=[2]),
        SamplingRow(temperature=0.0, repetition_penalty=1.2, num_logprobs=0),
    ]
    plain = SamplingBatch(rows)
    cached = SamplingBatch(rows, columns=[row_columns(r) for r in rows])
    for name in ("all_greedy", "any_penalties", "any_banned", "any_seeded", "max_num_logprobs",
                 "need_top_p", "need_top_k", "need_min_p"):
        assert getattr(plain, name) == getattr(cached, name), name
    assert (plain.all_greedy, plain.any_penalties, plain.any_banned, plain.any_seeded) == (
        False, True, True, True)
    assert plain.max_num_logprobs == 3
    assert plain.temperature.tolist() == pytest.approx([1.0, 0.7, 1.0, 1.0])
    assert plain.greedy_mask.tolist() == [True, False, False, True]
    assert plain.top_k.tolist() == [0, 5, 0, 0]
    for name in ("temperature", "greedy_mask", "top_p", "top_k", "min_p"):
        assert torch.equal(getattr(plain, name), getattr(cached, name)), name


def test_empty_and_greedy_batches():
    empty = SamplingBatch([])
    assert empty.all_greedy and empty.max_num_logprobs is None and empty.temperature.numel() == 0
    greedy = SamplingBatch([SamplingRow(), SamplingRow(num_logprobs=0)])
    assert greedy.all_greedy and not greedy.need_top_p and greedy.max_num_logprobs == 0


def test_batch_reused_while_composition_is_unchanged(tiny_llama):
    # One step() per sampled token holds for the synchronous step only (the overlapped one
    # needs one more call to hand back the last step's outputs).
    engine = _engine(tiny_llama, async_scheduling=False)
    core = engine.engine_core
    params = SamplingParams(max_tokens=6, ignore_eos=True, detokenize=False)
    engine.add_request("a", [5, 6, 7], params)
    engine.add_request("b", [8, 9, 10, 11], SamplingParams(max_tokens=3, ignore_eos=True))
    batches = []
    while engine.has_unfinished_requests():
        engine.step()
        batches.append(core._last_batch)
    # Steps 1-3 sample both requests (one batch object); "b" then finishes and a new batch
    # holds only "a" for steps 4-6.
    assert len(batches) == 6
    assert batches[0] is batches[1] is batches[2]
    assert batches[3] is not batches[2] and batches[3] is batches[4] is batches[5]
    assert len(batches[0].rows) == 2 and len(batches[3].rows) == 1
    assert not core.requests and not core._never_scheduled


def test_min_tokens_ban_lifts_and_batch_is_rebuilt(tiny_llama):
    engine = _engine(tiny_llama)
    core = engine.engine_core
    engine.add_request("m", [5, 6, 7], SamplingParams(max_tokens=8, min_tokens=3))
    seen_banned = []
    while engine.has_unfinished_requests():
        engine.step()
        seen_banned.append(core._last_batch.any_banned)
        if core.requests:
            assert core.requests[1].banned_ids == [EOS_ID]
    # EOS is banned for the first 3 samples, never after (the request may stop at EOS then).
    assert len(seen_banned) >= 4
    assert seen_banned[:3] == [True, True, True]
    assert not any(seen_banned[3:])


def test_backend_decode_equals_tokenizer_decode(tokenizer_of, tiny_llama):
    tok = tokenizer_of(tiny_llama)
    fast = backend_decoder(tok)
    assert fast is not None  # the tiny models use a plain fast tokenizer
    rng = random.Random(0)
    for _ in range(500):
        ids = [rng.randrange(len(tok)) for _ in range(rng.randint(0, 5))]
        for skip in (True, False):
            assert fast(ids, skip) == tok.decode(ids, skip_special_tokens=skip)


def test_detokenizer_same_text_with_and_without_backend_decode(tokenizer_of, tiny_llama):
    tok = tokenizer_of(tiny_llama)
    rng = np.random.default_rng(0)
    prompt = [5, 6, 7, 8]
    params = SamplingParams(stop=["xyz"])
    fast = IncrementalDetokenizer(tok, prompt, params)
    slow = IncrementalDetokenizer(tok, prompt, params, fast_decode=None)
    assert fast._fast_decode is not None and slow._fast_decode is None
    for token in rng.integers(0, len(tok), size=300).tolist():
        assert fast.update([token], False) == slow.update([token], False)
        assert fast.text == slow.text


def test_bans_follow_min_tokens_and_bad_words():
    """engine.core._bans_now: stop / EOS ids while fewer than min_tokens outputs; a one-token
    bad word always; a longer one's last token only when the output ends with its other tokens."""
    from types import SimpleNamespace

    from pagedllm.engine.core import _bans_now

    def bans(out, min_tokens=0):
        req = SimpleNamespace(output_token_ids=out, banned_ids=[0, 2],
                              params=SimpleNamespace(min_tokens=min_tokens),
                              bad_words_ids=[[5], [7, 8], [1, 2, 3]])
        return _bans_now(req)

    assert bans([]) == [5]
    assert bans([9, 7]) == [5, 8]
    assert bans([7, 9]) == [5]
    assert bans([4, 1, 2]) == [5, 3]
    assert bans([2]) == [5]                      # [1, 2, 3] needs both of its first tokens
    assert bans([7], min_tokens=2) == [0, 2, 5, 8]
    assert bans([7, 4], min_tokens=2) == [5]     # min_tokens reached: stop ids allowed again
