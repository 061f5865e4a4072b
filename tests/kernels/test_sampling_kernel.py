"""exponential_race_sample (kernels/sampling.h): the CPU twin samples softmax(logits / T),
greedy rows are argmax, the noise is a pure function of (seed, step, row, token), and the CUDA
kernel returns exactly the twin's tokens."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import pagedllm.ops as ops
from pagedllm import _C

HAS_CUDA = torch.cuda.is_available() and bool(_C.with_cuda)


def requires_gpu(fn):
    return pytest.mark.gpu(pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")(fn))


def race(logits, temperature, greedy, seed, step, device="cpu"):
    n = logits.shape[0]
    inv_t = torch.full((n,), 1.0 / temperature) if np.isscalar(temperature) else 1.0 / temperature
    flags = torch.as_tensor(greedy, dtype=torch.int32).expand(n).contiguous()
    return ops.exponential_race_sample(logits.to(device), inv_t.float().to(device),
                                       flags.to(device), seed, step, force_twin=True).cpu()


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_twin_samples_softmax_and_never_a_banned_token(temperature):
    logits = torch.tensor([1.5, 1.0, 0.0, -0.5, 3.0, 0.3, -2.0])
    logits[4] = float("-inf")                      # banned
    n = 20000                                      # identical rows: independent draws
    tokens = race(logits.expand(n, 7).contiguous(), temperature, 0, seed=123, step=1)
    freq = np.bincount(tokens.numpy(), minlength=7) / n
    expected = torch.softmax(logits / temperature, -1).numpy()
    assert freq[4] == 0.0
    sigma = np.sqrt(expected * (1 - expected) / n)
    assert (np.abs(freq - expected) < 5 * sigma + 1e-9).all(), (freq, expected)


def test_twin_steps_and_seeds_give_fresh_draws_and_repeat_exactly():
    logits = torch.zeros(64, 1000)                 # uniform: every draw is pure noise
    a = race(logits, 1.0, 0, seed=7, step=3)
    assert torch.equal(a, race(logits, 1.0, 0, seed=7, step=3))       # a pure function
    assert (a != race(logits, 1.0, 0, seed=7, step=4)).float().mean() > 0.9
    assert (a != race(logits, 1.0, 0, seed=8, step=3)).float().mean() > 0.9
    assert len(set(a.tolist())) > 50               # rows draw independently


def test_twin_greedy_rows_are_argmax_with_first_index_ties():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 333, generator=g)
    logits[2] = 0.0                                # all tied: the first index
    logits[3, 100] = logits[3, 200] = 50.0         # tie between two maxima
    logits[4] = float("-inf")                      # nothing finite: token 0, like torch.argmax
    greedy = torch.tensor([1, 0, 1, 1, 1, 0], dtype=torch.int32)
    tokens = race(logits, 0.8, greedy, seed=1, step=1)
    assert tokens[0] == logits[0].argmax() and tokens[2] == 0
    assert tokens[3] == 100 and tokens[4] == 0


def dominant_token_rows(rows, vocab=151936, token=7):
    """Rows where `token` has probability 1 - 1e-8 and every other token ~1e-13 (logit -30)."""
    logits = torch.full((rows, vocab), -30.0)
    logits[:, token] = 0.0
    return logits


def test_twin_noise_is_finite_in_a_large_vocab():
    # Every draw's Gumbel noise must be finite. Until 2026-12-04 a 24-bit draw of 0xFFFFFF made
    # u = (b + 0.5) / 2^24 round to exactly 1.0 in float, hence noise +inf: once per 2^24 tokens,
    # i.e. in ~0.9% of rows of a 151,936-token vocabulary, a token of any probability won. Here
    # 1,024 rows x 151,936 tokens held ~9 such draws; a correct sampler picks a token other than
    # the dominant one with probability ~1e-5.
    tokens = race(dominant_token_rows(1024), 1.0, 0, seed=5, step=11)
    assert (tokens == 7).all(), (tokens != 7).nonzero().flatten().tolist()


def test_binding_rejects_bad_inputs():
    d = ops._desc
    logits = torch.randn(3, 10)
    out, inv_t = torch.empty(3, dtype=torch.int64), torch.ones(3)
    flags = torch.zeros(3, dtype=torch.int32)
    _C.ops.exponential_race_sample(d(out), d(logits), d(inv_t), d(flags), 1, 1)  # valid
    with pytest.raises(ValueError, match="int64"):
        _C.ops.exponential_race_sample(d(out.int()), d(logits), d(inv_t), d(flags), 1, 1)
    with pytest.raises(ValueError, match="num_rows"):
        _C.ops.exponential_race_sample(d(out), d(logits), d(inv_t[:2]), d(flags), 1, 1)
    with pytest.raises(ValueError, match="int32"):
        _C.ops.exponential_race_sample(d(out), d(logits), d(inv_t), d(flags.long()), 1, 1)
    with pytest.raises(ValueError, match="contiguous"):
        _C.ops.exponential_race_sample(d(out), d(logits.t().contiguous().t()), d(inv_t), d(flags), 1, 1)
    assert not ops.exponential_race_sample_supported(logits)  # CPU: the sampler keeps torch
    with pytest.raises(ValueError, match="no kernel"):
        ops.exponential_race_sample(logits, inv_t, flags, 1, 1)


@requires_gpu
@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16))
@pytest.mark.parametrize("rows,vocab", [(1, 7), (3, 1000), (256, 151936), (17, 4097)])
@pytest.mark.parametrize("offset,pad", [(0, 5), (0, 0), (0, 3), (1, 3)])
def test_cuda_kernel_returns_the_twins_tokens(dtype, rows, vocab, offset, pad):
    """Rows at any offset and stride: the kernel reads a group of four logits as one word only
    when every row start is aligned to four elements (offset 0 and vocab + pad a multiple of 4),
    and element by element otherwise; both must give the twin's tokens, partial last group too."""
    g = torch.Generator().manual_seed(vocab)
    wide = (torch.randn(rows, offset + vocab + pad, generator=g) * 4).to(dtype)
    logits = wide[:, offset:offset + vocab]        # rows with a stride >= vocab
    temperature = torch.rand(rows, generator=g) + 0.3
    greedy = (torch.rand(rows, generator=g) < 0.3).to(torch.int32)
    want = race(logits, temperature, greedy, seed=2**40 + 5, step=2**33 + 9)
    got = race(logits, temperature, greedy, seed=2**40 + 5, step=2**33 + 9, device="cuda")
    assert torch.equal(got, want)
    assert ops.exponential_race_sample_supported(logits.cuda())


@requires_gpu
@pytest.mark.parametrize("kind", ["equal", "ties", "peaked", "spread"])
def test_cuda_kernel_skips_only_losers(kind):
    """The kernel skips the exact noise of elements whose score cannot reach their warp's best
    (sampling.cu: noise_log_floor). The token must still be the twin's where the noise alone
    decides (equal logits), where logits tie in large groups, where one token leads by far, and
    for the engine's usual spread."""
    rows, vocab = 64, 151936
    g = torch.Generator().manual_seed(3)
    if kind == "equal":
        logits = torch.zeros(rows, vocab)
    elif kind == "ties":
        logits = torch.randint(0, 4, (rows, vocab), generator=g).float() * 0.5
    elif kind == "peaked":
        logits = torch.randn(rows, vocab, generator=g) * 8
    else:
        logits = torch.randn(rows, vocab, generator=g)
    logits = logits.to(torch.bfloat16)
    temperature = torch.rand(rows, generator=g) + 0.3
    want = race(logits, temperature, 0, seed=11, step=5)
    got = race(logits, temperature, 0, seed=11, step=5, device="cuda")
    assert torch.equal(got, want)


@requires_gpu
def test_cuda_kernel_noise_is_finite_in_a_large_vocab():
    # As test_twin_noise_is_finite_in_a_large_vocab, over 8,192 rows (~74 draws that would have
    # rounded to u = 1 before the fix) and in bfloat16, the logits' dtype in the engine.
    logits = dominant_token_rows(8192).to(device="cuda", dtype=torch.bfloat16)
    inv_t = torch.ones(8192, device="cuda")
    flags = torch.zeros(8192, dtype=torch.int32, device="cuda")
    tokens = ops.exponential_race_sample(logits, inv_t, flags, seed=5, step=11)
    assert (tokens == 7).all(), (tokens != 7).nonzero().flatten().tolist()


@requires_gpu
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
def test_cuda_kernel_edge_rows_across_chunks(dtype):
    """The CUDA kernel cuts rows into 8,192-element chunks and merges their winners: ties across
    chunks go to the smaller index, -0 ties +0, rows with no finite score give token 0 (all -inf)
    or ignore NaNs, exactly as the twin's one sequential pass."""
    vocab = 3 * 8192 + 5
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(8, vocab, generator=g)
    logits[0, 20000] = logits[0, 100] = 40.0            # tie in chunks 2 and 0: index 100
    logits[1, 9000] = logits[1, 8191] = 40.0            # tie at a chunk border: index 8191
    logits[2] = 0.0
    logits[2, 5] = -0.0                                 # +0 / -0 tie: index 0
    logits[3] = float("-inf")                           # nothing finite: token 0
    logits[4, :] = float("nan")
    logits[4, 17000] = 1.0                              # NaNs never win
    logits[5, vocab - 1] = 60.0                         # the max in the last, partial chunk
    greedy = torch.tensor([1, 1, 1, 1, 1, 1, 0, 0], dtype=torch.int32)
    logits = logits.to(dtype)
    want = race(logits, 0.7, greedy, seed=99, step=4)
    got = race(logits, 0.7, greedy, seed=99, step=4, device="cuda")
    assert torch.equal(got, want)
    assert want[:6].tolist() == [100, 8191, 0, 0, 17000, vocab - 1]
