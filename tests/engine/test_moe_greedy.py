"""Mixture-of-experts variants decode token-identically to transformers' generate: sliding
windows shorter than the prompts (Mixtral and Qwen3-MoE on every layer, Qwen2-MoE on the layers
its layer_types mark), Qwen2-MoE without q/k/v bias, and a Qwen3-MoE with experts on every other
layer (decoder_sparse_step 2), top-3 weights not renormalized. (The tiny models themselves:
test_llm_greedy.py.)"""

from __future__ import annotations

import json
import shutil

import pytest
from pagedllm import LLM, SamplingParams
from pagedllm.testing.tiny_models import make_tiny_model

from .conftest import PROMPTS, engine_kwargs, hf_generate_greedy

MAX_NEW = 12
WINDOW = 8


@pytest.fixture(scope="module")
def moe_variants(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("moe")
    return {
        "mixtral_sliding": make_tiny_model("mixtral", root / "mixtral_sliding", seed=21,
                                           sliding_window=WINDOW),
        "qwen3_moe_sliding": make_tiny_model("qwen3_moe", root / "qwen3_moe_sliding", seed=22,
                                             use_sliding_window=True, sliding_window=WINDOW),
        # Layer 0 windowed, layer 1 not (Qwen2-MoE's pattern: even layers below
        # max_window_layers).
        "qwen2_moe_sliding": make_tiny_model("qwen2_moe", root / "qwen2_moe_sliding", seed=23,
                                             use_sliding_window=True, sliding_window=WINDOW,
                                             max_window_layers=2, qkv_bias=False),
        "qwen3_moe_sparse_step": make_tiny_model("qwen3_moe", root / "qwen3_moe_sparse_step",
                                                 seed=24, num_hidden_layers=4, mlp_only_layers=[],
                                                 decoder_sparse_step=2, num_experts_per_tok=3,
                                                 norm_topk_prob=False),
    }


def greedy_ids(llm, prompts) -> list[list[int]]:
    outs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=MAX_NEW),
                        use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs]


def check_greedy(path, hf_model, tokenizer, prompts, **engine) -> list[list[int]]:
    got = greedy_ids(LLM(model=str(path), **engine_kwargs(**engine)), prompts)
    for prompt, ids in zip(prompts, got):
        assert ids == hf_generate_greedy(hf_model(path), tokenizer.encode(prompt), MAX_NEW), prompt
    return got


@pytest.mark.parametrize("variant", ["mixtral_sliding", "qwen3_moe_sliding",
                                     "qwen2_moe_sliding"])
def test_sliding_window_matches_hf(moe_variants, variant, hf_model, tokenizer_of, tmp_path):
    path = moe_variants[variant]
    tokenizer = tokenizer_of(path)
    prompts = [p for p in PROMPTS if len(tokenizer.encode(p)) > WINDOW]
    assert len(prompts) >= 10
    llm = LLM(model=str(path), **engine_kwargs())
    windows = [layer.self_attn.attn.sliding_window
               for layer in llm.llm_engine.engine_core.runner.model.model.layers]
    expected_windows = {"mixtral_sliding": [WINDOW, WINDOW],
                        "qwen3_moe_sliding": [WINDOW, WINDOW, WINDOW],
                        "qwen2_moe_sliding": [WINDOW, -1]}[variant]   # -1: none
    assert windows == expected_windows
    # Chunks of 32 tokens: windows that start in an earlier chunk.
    windowed = check_greedy(path, hf_model, tokenizer, prompts, max_num_batched_tokens=32)
    # The window matters: the same weights attending to everything decode differently.
    unwindowed = tmp_path / "unwindowed"
    shutil.copytree(path, unwindowed)
    config = json.loads((unwindowed / "config.json").read_text())
    config["sliding_window"] = None
    config.pop("use_sliding_window", None)
    (unwindowed / "config.json").write_text(json.dumps(config))
    assert greedy_ids(LLM(model=str(unwindowed), **engine_kwargs()), prompts) != windowed


def test_qwen2_moe_qkv_bias_follows_the_config(moe_variants, tiny_model_dirs):
    # (Greedy tokens without the bias: test_sliding_window_matches_hf.)
    for path, has_bias in ((moe_variants["qwen2_moe_sliding"], False),
                           (tiny_model_dirs["qwen2_moe"], True)):
        llm = LLM(model=str(path), **engine_kwargs())
        qkv = llm.llm_engine.engine_core.runner.model.model.layers[0].self_attn.qkv_proj
        assert (qkv.bias is not None) == has_bias


def test_experts_every_other_layer_top3_unnormalized_matches_hf(moe_variants, hf_model,
                                                                tokenizer_of):
    path = moe_variants["qwen3_moe_sparse_step"]
    llm = LLM(model=str(path), **engine_kwargs())
    kinds = [type(layer.mlp).__name__
             for layer in llm.llm_engine.engine_core.runner.model.model.layers]
    assert kinds == ["LlamaMLP", "QwenMoeBlock", "LlamaMLP", "QwenMoeBlock"]
    tokenizer = tokenizer_of(path)
    got = greedy_ids(llm, PROMPTS)
    for prompt, ids in zip(PROMPTS, got):
        assert ids == hf_generate_greedy(hf_model(path), tokenizer.encode(prompt), MAX_NEW), prompt
