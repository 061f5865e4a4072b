"""LLM.beam_search (pagedllm.beam_search, vLLM's algorithm) against the same search written here
directly over transformers' float32 log-softmax: the same beams, in the same order, with the same
cumulative logprobs; beam_width 1 is greedy decoding; EOS ends a beam unless ignore_eos;
vLLM's errors for bad parameters."""

from __future__ import annotations

import pytest
import torch
from pagedllm import LLM, SamplingParams
from pagedllm.beam_search import BeamSearchOutput, beam_score
from pagedllm.sampling_params import BeamSearchParams, SamplingParamsError

from .conftest import PROMPTS, engine_kwargs


@torch.inference_mode()
def reference_beam_search(model, prompt_ids, width, max_tokens, eos, length_penalty,
                          ignore_eos=False):
    """vLLM's beam search, step by step over transformers' logits: [(tokens, cum_logprob)],
    best first."""
    beams, finished = [(list(prompt_ids), 0.0)], []
    for _ in range(max_tokens):
        if not beams:
            break
        candidates = []
        for tokens, cum in beams:
            logprobs = torch.log_softmax(model(torch.tensor([tokens])).logits[0, -1].float(), -1)
            top = torch.topk(logprobs, 2 * width)
            for lp, tok in zip(top.values.tolist(), top.indices.tolist()):
                grown = (tokens + [tok], cum + lp)
                (finished if tok == eos and not ignore_eos else candidates).append(grown)
        candidates.sort(key=lambda b: beam_score(b[0], b[1], eos, length_penalty), reverse=True)
        beams = candidates[:width]
    ranked = sorted(finished + beams, reverse=True,
                    key=lambda b: beam_score(b[0], b[1], eos, length_penalty))
    return ranked[:width]


@pytest.fixture(scope="module")
def llm(tiny_llama):
    return LLM(model=str(tiny_llama), **engine_kwargs())


def _check_against_reference(outs, prompts, model, tok, width, max_tokens, penalty,
                             ignore_eos=False, eos=None):
    for prompt, out in zip(prompts, outs):
        assert isinstance(out, BeamSearchOutput) and len(out.sequences) == width
        want = reference_beam_search(model, tok.encode(prompt), width, max_tokens,
                                     eos if eos is not None else tok.eos_token_id, penalty,
                                     ignore_eos)
        assert [s.tokens for s in out.sequences] == [w[0] for w in want]
        for seq, (_, cum) in zip(out.sequences, want):
            assert seq.cum_logprob == pytest.approx(cum, abs=1e-4)
            assert seq.text == tok.decode(seq.tokens, skip_special_tokens=True)
            assert len(seq.logprobs) == len(seq.tokens) - len(tok.encode(prompt))


@pytest.mark.parametrize("width,penalty", [(3, 1.0), (2, 0.5), (4, 1.5)])
def test_beams_match_the_reference_search(llm, tiny_llama, hf_model, tokenizer_of, width,
                                          penalty):
    prompts = PROMPTS[:4]
    outs = llm.beam_search([{"prompt": p} for p in prompts],
                           BeamSearchParams(beam_width=width, max_tokens=6,
                                            length_penalty=penalty))
    _check_against_reference(outs, prompts, hf_model(tiny_llama), tokenizer_of(tiny_llama),
                             width, 6, penalty)


def test_concurrency_limit_and_plain_prompts_give_the_same_beams(llm):
    params = BeamSearchParams(beam_width=3, max_tokens=5)
    prompts = PROMPTS[4:9]
    together = llm.beam_search(prompts, params)
    in_pairs = llm.beam_search(prompts, params, concurrency_limit=2)
    assert [[s.tokens for s in o.sequences] for o in together] == \
        [[s.tokens for s in o.sequences] for o in in_pairs]


def test_width_one_is_greedy_decoding(llm):
    tok = llm.get_tokenizer()
    prompts = PROMPTS[:5]
    beams = llm.beam_search(prompts, BeamSearchParams(beam_width=1, max_tokens=8,
                                                      ignore_eos=True))
    greedy = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=8,
                                                  ignore_eos=True), use_tqdm=False)
    for prompt, b, g in zip(prompts, beams, greedy):
        assert b.sequences[0].tokens == tok.encode(prompt) + list(g.outputs[0].token_ids)
        assert b.sequences[0].finish_reason == "length"


def test_eos_ends_a_beam_unless_ignored(llm, tiny_llama, hf_model, tokenizer_of, monkeypatch):
    """The tiny model's random weights rarely choose its EOS, so a token the best beam does
    choose (its second one) plays EOS here: beams ending in it are finished and stop there;
    with ignore_eos nothing stops early."""
    tok = tokenizer_of(tiny_llama)
    model = hf_model(tiny_llama)
    width, steps = 4, 6
    prompt = PROMPTS[0]
    prompt_len = len(tok.encode(prompt))
    free = reference_beam_search(model, tok.encode(prompt), width, steps, None, 1.0)
    eos = free[0][0][prompt_len + 1]
    real = llm.get_tokenizer()

    class WithThatEos:                       # the engine's tokenizer, but for its EOS
        eos_token_id = eos

        def __getattr__(self, name):
            return getattr(real, name)

    monkeypatch.setattr(llm, "get_tokenizer", lambda: WithThatEos())
    out = llm.beam_search([prompt], BeamSearchParams(beam_width=width, max_tokens=steps))[0]
    _check_against_reference([out], [prompt], model, tok, width, steps, 1.0, eos=eos)
    ended = [s for s in out.sequences if s.tokens[-1] == eos and len(s.tokens) < prompt_len + steps]
    assert ended and all(s.finish_reason == "stop" for s in ended)
    ignoring = llm.beam_search([prompt], BeamSearchParams(beam_width=width, max_tokens=steps,
                                                          ignore_eos=True))[0]
    _check_against_reference([ignoring], [prompt], model, tok, width, steps, 1.0,
                             ignore_eos=True, eos=eos)
    assert all(len(s.tokens) == prompt_len + steps for s in ignoring.sequences)


def test_bad_parameters_are_clear_errors(llm):
    for bad in (dict(beam_width=0, max_tokens=4), dict(beam_width=2, max_tokens=0),
                dict(beam_width=2, max_tokens=4, temperature=-1.0),
                dict(beam_width=2, max_tokens=4, structured_outputs={"regex": "a"})):
        with pytest.raises(SamplingParamsError):
            BeamSearchParams(**bad)
    with pytest.raises(ValueError, match="max_logprobs"):       # 2 * 11 logprobs per step
        llm.beam_search(["hi"], BeamSearchParams(beam_width=11, max_tokens=2))
    with pytest.raises(TypeError, match="BeamSearchParams"):
        llm.beam_search(["hi"], SamplingParams(max_tokens=2))
    # The engine is still usable.
    assert len(llm.beam_search(["hi"], BeamSearchParams(beam_width=2, max_tokens=2))) == 1
