"""Sampler: greedy, filtering, seeded reproducibility, penalties and logprobs against hand
computations; CPU always, CUDA when present."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pagedllm.worker.sampler import Sampler, SamplingBatch, SamplingRow

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
        ],
    ),
]


def _logits(n: int, v: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, v, generator=torch.Generator().manual_seed(seed)) * 3


@pytest.mark.parametrize("device", DEVICES)
def test_greedy_is_argmax(device: str) -> None:
    logits = _logits(5, 50).to(device)
    out = Sampler().sample(logits, SamplingBatch([SamplingRow() for _ in range(5)], device))
    assert out.token_ids.dtype == np.int32
    assert out.token_ids.tolist() == logits.argmax(-1).tolist()
    assert out.logprobs is None


@pytest.mark.parametrize("device", DEVICES)
def test_mixed_batch_greedy_rows_stay_greedy(device: str) -> None:
    logits = _logits(4, 30).to(device)
    rows = [
        SamplingRow(),
        SamplingRow(temperature=5.0),
        SamplingRow(),
        SamplingRow(temperature=5.0),
    ]
    for _ in range(5):
        out = Sampler().sample(logits, SamplingBatch(rows, device))
        assert out.token_ids[0] == logits[0].argmax() and out.token_ids[2] == logits[2].argmax()


def test_temperature_sampling_follows_softmax() -> None:
    torch.manual_seed(0)
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    counts = np.zeros(4)
    sampler = Sampler()
    rows = [SamplingRow(temperature=0.5) for _ in range(2000)]
    out = sampler.sample(logits.expand(2000, 4).contiguous(), SamplingBatch(rows))
    counts += np.bincount(out.token_ids, minlength=4)
    expected = torch.softmax(logits[0] / 0.5, -1).numpy()
    assert np.allclose(counts / 2000, expected, atol=0.03), (counts / 2000, expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_plain_sampling_follows_softmax_with_banned_tokens(device: str, temperature: float) -> None:
    """The unfiltered path (no softmax pass, log-noise race) draws from softmax(logits / T);
    a banned (-inf) token is never drawn."""
    torch.manual_seed(1)
    logits = torch.tensor([[1.5, 1.0, 0.0, -0.5, 3.0]])
    n = 4000
    rows = [SamplingRow(temperature=temperature, banned_token_ids=[4]) for _ in range(n)]
    sampler = Sampler()
    out = sampler.sample(logits.expand(n, 5).contiguous().to(device), SamplingBatch(rows, device))
    # On CUDA this batch takes the fused kernel (ops.exponential_race_sample), on the CPU torch.
    assert sampler._race_step == (1 if device == "cuda" else 0)
    freq = np.bincount(out.token_ids, minlength=5) / n
    expected = torch.softmax(logits[0, :4] / temperature, -1).numpy()
    assert freq[4] == 0.0
    assert np.allclose(freq[:4], expected, atol=0.025), (freq, expected)


def test_top_k_top_p_min_p_filters() -> None:
    torch.manual_seed(1)
    probs = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05])
    logits = probs.log().expand(3000, 5).contiguous()
    cases = {
        "top_k": (SamplingRow(temperature=1.0, top_k=2), {0, 1}),
        # nucleus 0.7: tokens whose better-mass < 0.7 -> 0 (0), 1 (0.4), 2 (0.7 not < 0.7) -> {0,1}
        "top_p": (SamplingRow(temperature=1.0, top_p=0.7), {0, 1}),
        "top_p_2": (SamplingRow(temperature=1.0, top_p=0.71), {0, 1, 2}),
        # min_p 0.3: keep p >= 0.12 -> {0, 1, 2}
        "min_p": (SamplingRow(temperature=1.0, min_p=0.3), {0, 1, 2}),
        "top_k_then_top_p": (SamplingRow(temperature=1.0, top_k=3, top_p=0.5), {0, 1}),
    }
    for name, (row, allowed) in cases.items():
        out = Sampler().sample(logits, SamplingBatch([row] * 3000))
        seen = set(out.token_ids.tolist())
        assert seen == allowed, (name, seen)


def test_top_k_top_p_per_row_in_one_batch() -> None:
    torch.manual_seed(2)
    logits = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05]).log().expand(4, 5).contiguous()
    rows = [
        SamplingRow(temperature=1.0, top_k=1),
        SamplingRow(temperature=1.0),
        SamplingRow(temperature=1.0, top_p=0.1),
        SamplingRow(temperature=1.0, top_k=5),
    ]
    seen: list[set] = [set() for _ in rows]
    for _ in range(300):
        out = Sampler().sample(logits, SamplingBatch(rows))
        for i, t in enumerate(out.token_ids.tolist()):
            seen[i].add(t)
    assert seen[0] == {0} and seen[2] == {0}
    assert seen[1] == {0, 1, 2, 3, 4} and seen[3] == {0, 1, 2, 3, 4}


@pytest.mark.parametrize("device", DEVICES)
def test_seeded_rows_do_not_depend_on_batch_mates(device: str) -> None:
    vocab = 64

    def run(batch_size: int, position: int, steps: int = 8) -> list[int]:
        g = torch.Generator(device=device).manual_seed(1234)
        tokens = []
        for step in range(steps):
            logits = _logits(batch_size, vocab, seed=100 + step).to(device)
            logits[position] = _logits(1, vocab, seed=step)[0].to(device)
            rows = [SamplingRow(temperature=1.0) for _ in range(batch_size)]
            rows[position] = SamplingRow(temperature=0.9, top_p=0.95, generator=g)
            tokens.append(
                int(Sampler().sample(logits, SamplingBatch(rows, device)).token_ids[position])
            )
        return tokens

    alone = run(1, 0)
    assert run(6, 3) == alone and run(3, 2) == alone
    assert len(set(alone)) > 1  # really sampling, not stuck on one token


def test_penalties_match_hand_computation() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0, -2.0]])
    row = SamplingRow(
        presence_penalty=0.5,
        frequency_penalty=0.25,
        repetition_penalty=2.0,
        prompt_token_ids=[1],
        output_token_ids=[3, 3, 2],
    )
    got = logits.clone()
    Sampler._apply_penalties(got, SamplingBatch([row]))
    # token 0: untouched. token 1 (prompt only): repetition on negative -> -2.
    # token 2 (output x1): 0.5/2 - 0.25*1 - 0.5 = -0.5. token 3 (output x2): 3/2 - 0.5 - 0.5 = 0.5.
    expected = torch.tensor([[2.0, -2.0, -0.5, 0.5, -2.0]])
    assert torch.allclose(got, expected), got
    # And the draw follows the penalised logits: greedy picks 0 instead of 3.
    out = Sampler().sample(logits, SamplingBatch([row]))
    assert out.token_ids.tolist() == [0]


def test_banned_tokens_are_never_sampled() -> None:
    logits = torch.tensor([[0.0, 10.0, 9.0]])
    out = Sampler().sample(logits, SamplingBatch([SamplingRow(banned_token_ids=[1])]))
    assert out.token_ids.tolist() == [2]


@pytest.mark.parametrize("device", DEVICES)
def test_logprobs_and_ranks(device: str) -> None:
    logits = _logits(3, 40, seed=5).to(device)
    rows = [
        SamplingRow(num_logprobs=3),
        SamplingRow(num_logprobs=0),
        SamplingRow(
            temperature=1.0, num_logprobs=5, generator=torch.Generator(device).manual_seed(0)
        ),
    ]
    out = Sampler().sample(logits, SamplingBatch(rows, device))
    ref = torch.log_softmax(logits.double(), -1).cpu()
    for i in range(3):
        t = int(out.token_ids[i])
        assert math.isclose(out.logprobs[i], ref[i, t].item(), abs_tol=1e-5)
        assert out.ranks[i] == int((ref[i] > ref[i, t]).sum()) + 1
    assert out.topk_token_ids.shape == (3, 5)
    top = ref.topk(5, dim=-1)
    assert out.topk_token_ids.tolist() == top.indices.tolist()
    assert np.allclose(out.topk_logprobs, top.values.numpy(), atol=1e-5)
    assert out.ranks[0] == 1 and out.ranks[1] == 1  # greedy rows pick rank 1


def test_logprobs_are_from_raw_logits_not_penalised() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    row = SamplingRow(num_logprobs=1, repetition_penalty=10.0, output_token_ids=[2])
    out = Sampler().sample(logits, SamplingBatch([row]))
    assert out.token_ids.tolist() == [1]
    assert math.isclose(out.logprobs[0], torch.log_softmax(logits, -1)[0, 1].item(), abs_tol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_logit_bias_moves_the_greedy_choice_and_leaves_batch_mates_alone(device: str) -> None:
    logits = torch.tensor([[0.0, 10.0, 9.0, 1.0], [0.0, 10.0, 9.0, 1.0]], device=device)
    rows = [SamplingRow(bias_token_ids=[1, 3], bias_values=[-2.0, 0.5]), SamplingRow()]
    got = logits.clone()
    Sampler._apply_masks_and_bias(got, SamplingBatch(rows, device))
    assert got[0].tolist() == [0.0, 8.0, 9.0, 1.5] and torch.equal(got[1], logits[1])
    out = Sampler().sample(logits, SamplingBatch(rows, device))
    assert out.token_ids.tolist() == [2, 1]
    # As tensors (how the engine passes them: pinned host memory on a GPU engine).
    tensor_rows = [SamplingRow(bias_token_ids=torch.tensor([2]), bias_values=torch.tensor([5.0])),
                   SamplingRow()]
    assert Sampler().sample(logits, SamplingBatch(tensor_rows, device)).token_ids.tolist() == [2, 1]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_allowed_token_ids_restrict_the_draw(device: str, temperature: float) -> None:
    """Only allowed tokens can come out, greedy or sampled, and among them the draw follows
    softmax of their logits (the mask comes before the bias: a bias on a token outside the
    allowed set cannot bring it back)."""
    torch.manual_seed(2)
    logits = torch.tensor([[3.0, 1.0, 0.0, 2.0, 5.0]])
    n = 4000
    rows = [SamplingRow(temperature=temperature, allowed_token_ids=[1, 3],
                        bias_token_ids=[4], bias_values=[50.0]) for _ in range(n)]
    out = Sampler().sample(logits.expand(n, 5).contiguous().to(device), SamplingBatch(rows, device))
    freq = np.bincount(out.token_ids, minlength=5) / n
    assert freq[0] == freq[2] == freq[4] == 0.0
    if temperature == 0.0:
        assert freq[3] == 1.0
    else:
        expected = torch.softmax(torch.tensor([1.0, 2.0]), -1).numpy()
        assert np.allclose(freq[[1, 3]], expected, atol=0.025), freq
