"""Greedy decoding with YaRN rope scaling is token-identical to transformers' generate, also
past the pretrained context (which YaRN extends the engine's max_model_len to)."""

from __future__ import annotations

import pytest
from pagedllm import LLM, SamplingParams
from pagedllm.testing.tiny_models import make_tiny_model

from .conftest import PROMPTS, engine_kwargs, hf_generate_greedy

MAX_NEW = 12
# Past 64 positions: beyond original_max_position_embeddings of the models below.
LONG_PROMPTS = [
    "The quick brown fox jumps over the lazy dog. " * 8,
    "A paged KV cache stores keys and values in fixed-size blocks. " * 7,
]


def check_greedy(llm, model, tokenizer, prompts, max_new=MAX_NEW):
    outs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=max_new),
                        use_tqdm=False)
    for prompt, out in zip(prompts, outs):
        ids = tokenizer.encode(prompt)
        assert out.prompt_token_ids == ids
        assert out.outputs[0].token_ids == hf_generate_greedy(model, ids, max_new), prompt


@pytest.fixture(scope="module")
def tiny_qwen3_yarn(tmp_path_factory):
    # head_dim 32, theta 1e6, 64 pretrained positions: beta_fast / beta_slow fall on dims 0 and
    # 3, so the table has kept, blended and stretched frequencies; attention factor 1.14.
    # max_position_embeddings stays at the pretrained 64, as in Qwen's recipe.
    return make_tiny_model("qwen3", tmp_path_factory.mktemp("yarn") / "qwen3", seed=5,
                           max_position_embeddings=64,
                           rope_scaling=dict(rope_type="yarn", factor=4.0,
                                             original_max_position_embeddings=64))


def test_yarn_greedy_matches_hf(tiny_qwen3_yarn, hf_model, tokenizer_of):
    llm = LLM(model=str(tiny_qwen3_yarn), **engine_kwargs(max_model_len=None))
    assert llm.llm_engine.max_model_len == 256           # 64 pretrained positions * 4
    tokenizer = tokenizer_of(tiny_qwen3_yarn)
    assert all(len(tokenizer.encode(p)) > 64 for p in LONG_PROMPTS)
    check_greedy(llm, hf_model(tiny_qwen3_yarn), tokenizer, PROMPTS + LONG_PROMPTS)


def test_yarn_greedy_with_chunked_prefill(tiny_qwen3_yarn, hf_model, tokenizer_of):
    llm = LLM(model=str(tiny_qwen3_yarn), **engine_kwargs(max_model_len=None,
                                                          max_num_batched_tokens=32))
    check_greedy(llm, hf_model(tiny_qwen3_yarn), tokenizer_of(tiny_qwen3_yarn),
                 PROMPTS[:6] + LONG_PROMPTS)
