"""Sampling through the whole engine: seeded reproducibility, stop strings, min_tokens and
penalties against hand-computed references on the tiny Llama."""

from __future__ import annotations

import pytest
import torch
from pagedllm import LLM, SamplingParams

from .conftest import PROMPTS, engine_kwargs, reference_decode


@pytest.fixture(scope="module")
def llm(tiny_llama):
    return LLM(model=str(tiny_llama), **engine_kwargs())


def _ids(out):
    return out.outputs[0].token_ids


def test_seeded_sampling_reproducible_across_runs_and_batches(llm, tiny_llama):
    seeded = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=16, ignore_eos=True)
    alone = _ids(llm.generate([PROMPTS[0]], seeded, use_tqdm=False)[0])
    # In a batch, at another position, next to unseeded and differently seeded requests.
    mates = [
        SamplingParams(temperature=1.0, max_tokens=20, ignore_eos=True),
        SamplingParams(temperature=0.7, seed=5, max_tokens=9, ignore_eos=True),
        seeded,
        SamplingParams(temperature=0.0, max_tokens=3),
    ]
    batch = llm.generate([PROMPTS[3], PROMPTS[5], PROMPTS[0], PROMPTS[9]], mates, use_tqdm=False)
    assert _ids(batch[2]) == alone
    fresh = LLM(model=str(tiny_llama), **engine_kwargs(max_num_batched_tokens=16))
    assert _ids(fresh.generate([PROMPTS[0]], seeded, use_tqdm=False)[0]) == alone
    other_seed = SamplingParams(
        temperature=1.0, top_p=0.9, seed=4321, max_tokens=16, ignore_eos=True
    )
    assert _ids(llm.generate([PROMPTS[0]], other_seed, use_tqdm=False)[0]) != alone


def test_engine_seed_repeats_unseeded_sampling(tiny_llama):
    # vLLM's `seed` (0 by default) makes a run's unseeded sampling repeat in the next run with
    # the same requests; another seed gives other tokens. Each engine here is a fresh one, as a
    # new process would build, and none touches torch's global generator state in between.
    params = [SamplingParams(temperature=1.0, max_tokens=12, ignore_eos=True),
              SamplingParams(temperature=0.8, top_k=20, max_tokens=12, ignore_eos=True)]

    def run(**kwargs):
        kw = engine_kwargs(**kwargs)
        if "seed" not in kwargs:
            del kw["seed"]  # EngineArgs' default
        engine = LLM(model=str(tiny_llama), **kw)
        outs = engine.generate([PROMPTS[1], PROMPTS[2]], params, use_tqdm=False)
        return [_ids(o) for o in outs]

    first = run(seed=7)
    torch.manual_seed(12345)  # user code moving the global state changes nothing
    assert run(seed=7) == first
    assert run(seed=8) != first
    assert run() == run(seed=0)  # the default seed
    assert [len(t) for t in run(seed=None)] == [12, 12]  # None: fresh noise, still runs


def test_stop_strings(llm, tokenizer_of, tiny_llama):
    base = dict(temperature=0.0, max_tokens=24, ignore_eos=True)
    full = llm.generate([PROMPTS[6]], SamplingParams(**base), use_tqdm=False)[0].outputs[0]
    text = full.text
    # A stop string that spans a token boundary somewhere in the middle of the text.
    tok = tokenizer_of(tiny_llama)
    pieces = [tok.decode([t]) for t in full.token_ids]
    boundary = len(pieces[0]) + len(pieces[1]) + len(pieces[2])
    stop = text[boundary - 2 : boundary + 2]
    first = text.find(stop)
    assert len(stop) == 4 and first >= 0
    out = llm.generate([PROMPTS[6]], SamplingParams(**base, stop=[stop]), use_tqdm=False)[
        0
    ].outputs[0]
    assert (out.finish_reason, out.stop_reason) == ("stop", stop)
    assert out.text == text[:first]
    assert out.token_ids == full.token_ids[: len(out.token_ids)] and len(out.token_ids) < 24
    inc = llm.generate(
        [PROMPTS[6]],
        SamplingParams(**base, stop=[stop], include_stop_str_in_output=True),
        use_tqdm=False,
    )[0].outputs[0]
    assert inc.text == text[: first + len(stop)]
    # A stop token id: the text leaves it out, token_ids keep it, stop_reason names it.
    stop_id = full.token_ids[5]
    out = llm.generate(
        [PROMPTS[6]], SamplingParams(**base, stop_token_ids=[stop_id]), use_tqdm=False
    )[0].outputs[0]
    k = full.token_ids.index(stop_id)
    assert out.token_ids == full.token_ids[: k + 1]
    assert (out.finish_reason, out.stop_reason) == ("stop", stop_id)
    assert out.text == tok.decode(full.token_ids[:k])


def test_min_tokens_matches_reference(llm, hf_model, tokenizer_of, tiny_llama):
    model, tok = hf_model(tiny_llama), tokenizer_of(tiny_llama)
    ids = tok.encode(PROMPTS[6])
    free = (
        llm.generate(
            [PROMPTS[6]],
            SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True),
            use_tqdm=False,
        )[0]
        .outputs[0]
        .token_ids
    )
    stop_id = free[1]  # would stop after 2 tokens
    min_tokens = 6

    def ban_before_min(logits, prompt, out):
        if len(out) < min_tokens:
            logits[stop_id] = float("-inf")
        return logits

    expected = reference_decode(model, ids, 16, ban_before_min, stop_ids=(stop_id,))
    out = llm.generate(
        [PROMPTS[6]],
        SamplingParams(
            temperature=0.0,
            max_tokens=16,
            ignore_eos=True,
            stop_token_ids=[stop_id],
            min_tokens=min_tokens,
        ),
        use_tqdm=False,
    )[0].outputs[0]
    assert out.token_ids == expected
    assert len(out.token_ids) >= min_tokens and stop_id not in out.token_ids[:min_tokens]


@pytest.mark.parametrize(
    "penalties",
    [
        dict(repetition_penalty=1.8),
        dict(frequency_penalty=1.5),
        dict(presence_penalty=2.0),
        dict(repetition_penalty=0.7, frequency_penalty=0.5, presence_penalty=-0.5),
    ],
)
def test_penalties_match_reference(llm, hf_model, tokenizer_of, tiny_llama, penalties):
    model, tok = hf_model(tiny_llama), tokenizer_of(tiny_llama)
    prompt = PROMPTS[1]
    ids = tok.encode(prompt)
    rep = penalties.get("repetition_penalty", 1.0)
    freq = penalties.get("frequency_penalty", 0.0)
    pres = penalties.get("presence_penalty", 0.0)

    def penalise(logits, prompt_ids, out):
        for t in set(prompt_ids) | set(out):
            if rep != 1.0:
                logits[t] = logits[t] / rep if logits[t] > 0 else logits[t] * rep
        for t in set(out):
            logits[t] -= freq * out.count(t) + pres
        return logits

    expected = reference_decode(model, ids, 14, penalise)
    plain = reference_decode(model, ids, 14)
    out = llm.generate(
        [prompt],
        SamplingParams(temperature=0.0, max_tokens=14, ignore_eos=True, **penalties),
        use_tqdm=False,
    )[0].outputs[0]
    assert out.token_ids == expected
    if penalties != dict(repetition_penalty=0.7, frequency_penalty=0.5, presence_penalty=-0.5):
        assert expected != plain  # the penalty really changed the output


def test_max_tokens_none_runs_to_max_model_len(tiny_llama):
    llm = LLM(model=str(tiny_llama), **engine_kwargs(max_model_len=40))
    out = llm.generate(
        [PROMPTS[0]],
        SamplingParams(temperature=0.0, max_tokens=None, ignore_eos=True),
        use_tqdm=False,
    )[0]
    assert len(out.prompt_token_ids) + len(out.outputs[0].token_ids) == 40
    assert out.outputs[0].finish_reason == "length"
    with pytest.raises(ValueError, match="max_model_len"):
        llm.generate(["word " * 60], SamplingParams(), use_tqdm=False)


def test_invalid_requests_raise_value_error(llm):
    with pytest.raises(ValueError, match="logprobs"):
        llm.generate([PROMPTS[0]], SamplingParams(logprobs=100), use_tqdm=False)
    with pytest.raises(ValueError, match="prompt_token_ids"):
        llm.generate([{"prompt_token_ids": [1, 10**6]}], SamplingParams(), use_tqdm=False)
    with pytest.raises(ValueError, match="sampling_params"):
        llm.generate(PROMPTS[:2], [SamplingParams()], use_tqdm=False)
    # Nothing was left behind by the failed calls.
    assert not llm.llm_engine.has_unfinished_requests()


def test_logit_bias_and_allowed_token_ids(llm):
    """vLLM's logit_bias and allowed_token_ids through the engine (async scheduling, the
    default): a -100 bias bans the greedy choice, +100 forces a token even when sampling, an
    allowed set bounds every sampled token, and batch mates are untouched."""
    greedy = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    alone = [_ids(o) for o in llm.generate([PROMPTS[0], PROMPTS[1]], greedy, use_tqdm=False)]
    first = alone[0][0]
    biased = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True,
                            logit_bias={first: -100.0})
    outs = llm.generate([PROMPTS[0], PROMPTS[1]], [biased, greedy], use_tqdm=False)
    assert first not in _ids(outs[0])
    assert _ids(outs[1]) == alone[1]
    forced = SamplingParams(temperature=1.0, max_tokens=8, ignore_eos=True, logit_bias={17: 100.0})
    assert _ids(llm.generate([PROMPTS[2]], forced, use_tqdm=False)[0]) == [17] * 8
    allowed = SamplingParams(temperature=1.0, max_tokens=24, ignore_eos=True,
                             allowed_token_ids=[5, 9, 23])
    tokens = _ids(llm.generate([PROMPTS[3]], allowed, use_tqdm=False)[0])
    assert len(tokens) == 24 and set(tokens) <= {5, 9, 23}
    vocab = llm.llm_engine.engine_core.vocab_size
    with pytest.raises(ValueError, match=f"logit_bias has token id {vocab}, outside"):
        llm.generate([PROMPTS[0]], SamplingParams(logit_bias={vocab: 1.0}), use_tqdm=False)
    with pytest.raises(ValueError, match=f"allowed_token_ids has token id {vocab + 3}, outside"):
        llm.generate([PROMPTS[0]], SamplingParams(allowed_token_ids=[1, vocab + 3]),
                     use_tqdm=False)


def test_bad_words(llm):
    """vLLM's bad_words: a word's tokens never appear in a row. A one-token word is never
    generated; for a longer word only its completion is banned (its first tokens may appear).
    Bans are matched on generated tokens, so they follow the history step by step."""
    tok = llm.get_tokenizer()
    greedy = dict(temperature=0.0, max_tokens=16, ignore_eos=True)
    plain = _ids(llm.generate([PROMPTS[0]], SamplingParams(**greedy), use_tqdm=False)[0])
    # A two-token word of the plain run (one whose text tokenizes back to those two tokens):
    # the ban must break that pair.
    spelled = [(tok.decode(plain[i:i + 2]), plain[i:i + 2]) for i in range(len(plain) - 1)]
    word, seqs = next((w, llm.llm_engine._bad_words_token_ids([w])) for w, pair in spelled
                      if pair in llm.llm_engine._bad_words_token_ids([w]))
    out = _ids(llm.generate([PROMPTS[0]], SamplingParams(**greedy, bad_words=[word]),
                            use_tqdm=False)[0])
    assert out != plain
    for seq in seqs:
        assert not any(out[i:i + len(seq)] == seq for i in range(len(out))), (seq, out)
    # Sampled, and next to a batch mate that has no bad words.
    single = tok.decode([plain[0]])
    sampled = SamplingParams(temperature=1.0, max_tokens=32, ignore_eos=True, seed=3,
                             bad_words=[single])
    outs = llm.generate([PROMPTS[1], PROMPTS[2]], [sampled, SamplingParams(**greedy)],
                        use_tqdm=False)
    banned_singles = [s[0] for s in llm.llm_engine._bad_words_token_ids([single]) if len(s) == 1]
    assert banned_singles and not set(banned_singles) & set(_ids(outs[0]))
    assert _ids(outs[1]) == _ids(llm.generate([PROMPTS[2]], SamplingParams(**greedy),
                                              use_tqdm=False)[0])
    with pytest.raises(ValueError, match="bad_words"):
        SamplingParams(bad_words=["  "])
