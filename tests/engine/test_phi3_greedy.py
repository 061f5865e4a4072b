"""Phi-3 family greedy decoding is token-identical to transformers' generate: full rotary
(Phi-3 / Phi-4), Phi-4-mini's partial rotary (0.75) with tied embeddings, a sliding window
shorter than the prompts, and LongRoPE with the short and the long factors."""

from __future__ import annotations

import json
import shutil

import pytest
from pagedllm import LLM, SamplingParams
from pagedllm.testing.tiny_models import make_tiny_model

from .conftest import PROMPTS, engine_kwargs, hf_generate_greedy

MAX_NEW = 12


def greedy_ids(llm, prompts, max_new=MAX_NEW) -> list[list[int]]:
    outs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=max_new),
                        use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs]


def check_greedy(llm, model, tokenizer, prompts, max_new=MAX_NEW) -> list[list[int]]:
    got = greedy_ids(llm, prompts, max_new)
    for prompt, ids in zip(prompts, got):
        assert ids == hf_generate_greedy(model, tokenizer.encode(prompt), max_new), prompt
    return got


def _longrope(rotary_half: int) -> dict:
    # Distinct per-frequency factors, long ones stretching far more than short ones.
    short = [1.0 + 0.05 * i for i in range(rotary_half)]
    long = [1.0 + 2.5 * i for i in range(rotary_half)]
    return dict(rope_type="longrope", short_factor=short, long_factor=long)


@pytest.fixture(scope="module")
def phi3_variants(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("phi3")
    return {
        # Phi-4-mini's shape: rotary over 24 of 32 dims, LM head tied to the embedding.
        "partial": make_tiny_model("phi3", root / "partial", seed=11, partial_rotary_factor=0.75,
                                   tie_word_embeddings=True),
        # Phi-3-mini-4k's config sets a sliding window (2047 there); 8 here, under the prompts.
        "sliding": make_tiny_model("phi3", root / "sliding", seed=12, sliding_window=8),
        # Phi-3.5-mini / Phi-4-mini: LongRoPE past 48 pretrained positions, partial rotary.
        "longrope": make_tiny_model("phi3", root / "longrope", seed=13,
                                    partial_rotary_factor=0.75, rope_scaling=_longrope(12),
                                    original_max_position_embeddings=48),
    }


def test_phi3_greedy_with_chunked_prefill(tiny_model_dirs, hf_model, tokenizer_of):
    # (All prompts in one batch: test_llm_greedy.py.)
    path = tiny_model_dirs["phi3"]
    llm = LLM(model=str(path), **engine_kwargs(max_num_batched_tokens=32))
    check_greedy(llm, hf_model(path), tokenizer_of(path), PROMPTS)


def test_phi4_mini_partial_rotary_matches_hf(phi3_variants, hf_model, tokenizer_of):
    path = phi3_variants["partial"]
    llm = LLM(model=str(path), **engine_kwargs())
    rotary = llm.llm_engine.engine_core.runner.model.model.layers[0].self_attn.rotary_emb
    assert (rotary.rotary_dim, rotary.head_size) == (24, 32)
    check_greedy(llm, hf_model(path), tokenizer_of(path), PROMPTS)


def test_phi3_sliding_window_matches_hf(phi3_variants, hf_model, tokenizer_of, tmp_path):
    path = phi3_variants["sliding"]
    tokenizer = tokenizer_of(path)
    prompts = [p for p in PROMPTS if len(tokenizer.encode(p)) > 8]
    assert len(prompts) >= 10
    llm = LLM(model=str(path), **engine_kwargs())
    windowed = check_greedy(llm, hf_model(path), tokenizer, prompts)
    # The window matters: the same weights attending to everything decode differently.
    unwindowed = tmp_path / "unwindowed"
    shutil.copytree(path, unwindowed)
    config = json.loads((unwindowed / "config.json").read_text())
    config["sliding_window"] = None
    (unwindowed / "config.json").write_text(json.dumps(config))
    assert greedy_ids(LLM(model=str(unwindowed), **engine_kwargs()), prompts) != windowed


def test_longrope_short_factors_within_the_pretrained_context(phi3_variants, hf_model,
                                                              tokenizer_of):
    # max_model_len 48 = original_max_position_embeddings: the short factors, as transformers
    # uses for every sequence of at most 48 tokens.
    path = phi3_variants["longrope"]
    tokenizer = tokenizer_of(path)
    prompts = [p for p in PROMPTS if len(tokenizer.encode(p)) + MAX_NEW <= 48]
    assert len(prompts) >= 12
    llm = LLM(model=str(path), **engine_kwargs(max_model_len=48))
    check_greedy(llm, hf_model(path), tokenizer, prompts)


def test_longrope_long_factors_past_the_pretrained_context(phi3_variants, hf_model,
                                                           tokenizer_of):
    # max_model_len past 48: the long factors, as transformers uses for prompts longer than 48
    # tokens (on shorter ones it would take the short factors until the sequence passes 48).
    path = phi3_variants["longrope"]
    tokenizer = tokenizer_of(path)
    prompts = []
    for prompt in PROMPTS:
        longer = prompt
        while len(tokenizer.encode(longer)) <= 48:
            longer += " " + prompt
        prompts.append(longer)
    llm = LLM(model=str(path), **engine_kwargs(max_num_batched_tokens=64))
    check_greedy(llm, hf_model(path), tokenizer, prompts)
