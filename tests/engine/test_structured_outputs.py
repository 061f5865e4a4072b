"""Structured outputs (structured_outputs.py): the bitmask unpacking, the params' validation, and
JSON schema / JSON object / regex / choice / grammar constraints through the engine on the tiny
Llama, whose random weights would otherwise produce anything."""

from __future__ import annotations

import json
import re

import pytest
import torch
from pagedllm import LLM, SamplingParams
from pagedllm.structured_outputs import StructuredOutputsParams, allowed_mask

from .conftest import PROMPTS, engine_kwargs


def test_allowed_mask_reads_every_bit():
    words = torch.tensor([0b1011, -2**31, 0x7FFFFFFF], dtype=torch.int32)  # bit 31 is the sign
    mask = allowed_mask(words, 70)
    want = torch.zeros(70, dtype=torch.bool)
    want[[0, 1, 3, 63]] = True
    want[64:70] = True
    assert torch.equal(mask, want)


def test_params_take_exactly_one_constraint():
    assert StructuredOutputsParams(regex="a+").regex == "a+"
    for bad in ({}, {"regex": "a", "choice": ["b"]}, {"choice": []}, {"choice": [""]},
                {"json_object": False}):
        with pytest.raises(ValueError, match="structured_outputs"):
            StructuredOutputsParams(**bad)
    with pytest.raises(ValueError, match="unknown fields"):
        SamplingParams(structured_outputs={"regex": "a", "rules": 1})
    assert SamplingParams(structured_outputs={"choice": ["x"]}).structured_outputs.choice == ["x"]


@pytest.fixture(scope="module")
def llm(tiny_llama):
    pytest.importorskip("xgrammar")
    return LLM(model=str(tiny_llama), **engine_kwargs())


SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "size": {"type": "integer", "enum": [1, 2, 3]},
                   "tag": {"type": "string", "maxLength": 6}},
    "required": ["ok", "size", "tag"],
    "additionalProperties": False,
}


def _check_schema(text: str) -> None:
    # strict=False: xgrammar's JSON strings admit raw control characters (U+0000-U+001F), which
    # strict JSON wants escaped; random weights do pick such tokens.
    value = json.loads(text, strict=False)
    assert set(value) == {"ok", "size", "tag"}, value
    assert isinstance(value["ok"], bool) and value["size"] in (1, 2, 3)
    assert isinstance(value["tag"], str) and len(value["tag"]) <= 6


def _gen(llm, prompt, **kw):
    kw.setdefault("max_tokens", 96)
    return llm.generate([prompt], SamplingParams(**kw), use_tqdm=False)[0].outputs[0]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_json_schema(llm, temperature):
    so = StructuredOutputsParams(json=SCHEMA, disable_any_whitespace=True)
    for i, prompt in enumerate(PROMPTS[:4]):
        out = _gen(llm, prompt, temperature=temperature, seed=i, structured_outputs=so)
        _check_schema(out.text)
        assert out.finish_reason == "stop"


def test_json_object_regex_choice_and_grammar(llm):
    obj = _gen(llm, PROMPTS[1], temperature=1.0, seed=4, max_tokens=200,
               structured_outputs={"json_object": True, "disable_any_whitespace": True})
    if obj.finish_reason == "stop":  # random weights may run to max_tokens inside a string
        assert isinstance(json.loads(obj.text, strict=False), dict)
    else:
        assert obj.text.startswith("{")
    for seed in range(3):
        out = _gen(llm, PROMPTS[2], temperature=1.0, seed=seed,
                   structured_outputs={"regex": r"[a-c]{3}-[0-9]{2}"})
        assert re.fullmatch(r"[a-c]{3}-[0-9]{2}", out.text) and out.finish_reason == "stop"
        out = _gen(llm, PROMPTS[3], temperature=1.0, seed=seed,
                   structured_outputs={"choice": ["yes", "no", "maybe so"]})
        assert out.text in ("yes", "no", "maybe so")
    out = _gen(llm, PROMPTS[0], temperature=1.0, seed=9,
               structured_outputs={"grammar": 'root ::= "x" [0-9] [0-9]? ";"'})
    assert re.fullmatch(r"x[0-9]{1,2};", out.text)


def test_constrained_request_leaves_batch_mates_alone(llm):
    greedy = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    alone = _gen(llm, PROMPTS[5], temperature=0.0, max_tokens=12, ignore_eos=True).token_ids
    so = SamplingParams(temperature=1.0, seed=2, n=2, max_tokens=96,
                        structured_outputs=StructuredOutputsParams(json=SCHEMA,
                                                                   disable_any_whitespace=True))
    outs = llm.generate([PROMPTS[4], PROMPTS[5]], [so, greedy], use_tqdm=False)
    assert len(outs[0].outputs) == 2
    for choice in outs[0].outputs:
        _check_schema(choice.text)
    assert outs[1].outputs[0].token_ids == alone


def test_bad_constraints_raise_value_error(llm):
    for so, field in (({"regex": "[a-"}, "regex"), ({"json": "{not json"}, "json"),
                      ({"grammar": "root ::= ("}, "grammar")):
        with pytest.raises(ValueError, match=f"structured_outputs.{field}"):
            llm.generate([PROMPTS[0]], SamplingParams(structured_outputs=so), use_tqdm=False)


def test_missing_xgrammar_is_a_clear_error(monkeypatch):
    import sys

    from pagedllm.structured_outputs import GrammarCompiler

    monkeypatch.setitem(sys.modules, "xgrammar", None)  # import xgrammar -> ImportError
    with pytest.raises(ValueError, match=r'pip install "pagedllm\[structured\]"'):
        GrammarCompiler(tokenizer=None, vocab_size=10, stop_token_ids=[0])


# ---- thinking models: the grammar starts after the reasoning (reasoning_parser) --------------

CHOICES = ["yes", "no"]


@pytest.fixture(scope="module")
def thinking(tiny_thinking_qwen3):
    pytest.importorskip("xgrammar")
    llm = LLM(model=str(tiny_thinking_qwen3), reasoning_parser="qwen3", **engine_kwargs())
    tok = llm.get_tokenizer()
    start, end = (tok.convert_tokens_to_ids(t) for t in ("<think>", "</think>"))
    return llm, start, end


def _choice_after(llm, prompt, end_bias, max_tokens=12):
    params = SamplingParams(temperature=0, max_tokens=max_tokens,
                            structured_outputs={"choice": CHOICES},
                            logit_bias={end_bias[0]: end_bias[1]} if end_bias else None)
    return llm.generate([prompt], params, use_tqdm=False)[0].outputs[0]


def test_grammar_waits_for_the_end_of_reasoning(thinking):
    llm, start, end = thinking
    tok = llm.get_tokenizer()
    # Reasoning is free: with the grammar waiting, the model's own tokens come out unchanged.
    free = llm.generate(["Hello there"], SamplingParams(temperature=0, max_tokens=8),
                        use_tqdm=False)[0].outputs[0]
    waiting = _choice_after(llm, "Hello there", None, max_tokens=8)
    assert end not in free.token_ids and waiting.token_ids == free.token_ids
    # The bias makes </think> the first token; the answer after it is held to the choice.
    out = _choice_after(llm, "Hello there", (end, 100.0))
    assert out.token_ids[0] == end and out.finish_reason == "stop"
    assert tok.decode(out.token_ids[1:], skip_special_tokens=True) in CHOICES
    assert out.token_ids.count(end) == 1  # once the grammar applies, the bias cannot win


def test_grammar_applies_at_once_when_the_prompt_ended_the_reasoning(thinking):
    llm, start, end = thinking
    tok = llm.get_tokenizer()
    # A template that turns thinking off writes an empty <think></think> into the prompt.
    ended = {"prompt_token_ids": tok.encode("Hello there") + [start, end]}
    out = _choice_after(llm, ended, (end, 100.0))
    assert end not in out.token_ids and out.text in CHOICES
    # Reasoning opened in the prompt and not closed: the output still starts in it.
    opened = {"prompt_token_ids": tok.encode("Hello there") + [start]}
    assert _choice_after(llm, opened, (end, 100.0)).token_ids[0] == end


def test_without_reasoning_parser_the_grammar_applies_from_the_first_token(tiny_thinking_qwen3):
    pytest.importorskip("xgrammar")
    llm = LLM(model=str(tiny_thinking_qwen3), **engine_kwargs())
    end = llm.get_tokenizer().convert_tokens_to_ids("</think>")
    out = _choice_after(llm, "Hello there", (end, 100.0))
    assert end not in out.token_ids and out.text in CHOICES


def test_reasoning_parser_needs_its_tokens(tiny_llama):
    with pytest.raises(ValueError, match="no single token for '<think>'"):
        LLM(model=str(tiny_llama), reasoning_parser="qwen3", **engine_kwargs())
    with pytest.raises(ValueError, match="unknown parser"):
        LLM(model=str(tiny_llama), reasoning_parser="nope", **engine_kwargs())
