"""Gemma 3: logits equal transformers' on the tiny model (text-only and the vision-language
checkpoint served text-only), the sliding window and the per-layer-type rotary tables really
matter there, the final-logit soft cap, GeluTanhAndMul, and clear errors for what is not run.
Greedy decoding through the engine (all prompts, chunked prefill, prefix-cache hits) is in
engine/test_llm_greedy.py."""
from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, Gemma3TextConfig
from transformers.activations import ACT2FN

from pagedllm import LLM, SamplingParams
from pagedllm.layers.activation import GeluTanhAndMul
from pagedllm.models.gemma3 import (Gemma3ForCausalLM, layer_types_of,
                                    rope_parameters_by_layer_type)
from pagedllm.testing.cpu_runner import cpu_runner as runner_for
from pagedllm.testing.plans import HandPlanner
from pagedllm.testing.tiny_models import GEMMA3_SLIDING_WINDOW, make_tiny_model

BLOCK_SIZE = 16
TOKENS = list(range(7, 52))   # 45 tokens: well past the 12-token window, over three blocks


def all_position_logits(path, chunk: int = len(TOKENS)) -> torch.Tensor:
    """Our float32 logits at every position of TOKENS, prefilled `chunk` tokens per step."""
    runner = runner_for(path)
    planner = HandPlanner(runner.num_blocks, BLOCK_SIZE, runner.max_blocks_per_seq)
    rows = []
    for start in range(0, len(TOKENS), chunk):
        piece = TOKENS[start: start + chunk]
        plan = planner.plan([(0, piece)], sample_all=False)
        rows.append(runner.execute_model(plan, np.arange(len(piece), dtype=np.int32)))
    return torch.cat(rows)   # [L, V]


@torch.inference_mode()
def hf_all_position_logits(path) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model(torch.tensor([TOKENS])).logits[0]


def edited_copy(path, tmp_path, edit) -> str:
    """A copy of the model directory with edit(config dict) applied to its config.json."""
    copy = tmp_path / "edited"
    shutil.copytree(path, copy)
    config = json.loads((copy / "config.json").read_text())
    edit(config)
    (copy / "config.json").write_text(json.dumps(config))
    return copy


@pytest.mark.parametrize("chunk", [45, 5])
def test_logits_match_transformers(tiny_model_dirs, chunk):
    path = tiny_model_dirs["gemma3"]
    torch.testing.assert_close(all_position_logits(path, chunk), hf_all_position_logits(path),
                               rtol=0, atol=1e-4)


def test_gemma_3_1b_head_layout_matches_transformers(tmp_path):
    # gemma-3-1b's attention: head_dim 256, one KV head, query_pre_attn_scalar 256.
    path = make_tiny_model("gemma3", tmp_path / "hd256", seed=5, head_dim=256,
                           num_attention_heads=2, num_key_value_heads=1,
                           query_pre_attn_scalar=256)
    torch.testing.assert_close(all_position_logits(path, chunk=7), hf_all_position_logits(path),
                               rtol=0, atol=1e-4)


def test_layers_get_their_window_and_rotary_table(tiny_model_dirs):
    model = runner_for(tiny_model_dirs["gemma3"]).model
    windows = [layer.self_attn.attn.sliding_window for layer in model.model.layers]
    assert windows == [GEMMA3_SLIDING_WINDOW, -1, GEMMA3_SLIDING_WINDOW]
    tables = [layer.self_attn.rotary_emb for layer in model.model.layers]
    assert tables[0] is tables[2] is model.model.rotary_embs["sliding_attention"]
    assert tables[1] is model.model.rotary_embs["full_attention"]
    assert model.lm_head.weight is model.model.embed_tokens.weight
    # Gains stored as 1 + w: the checkpoint's zero-centred weights come out centred on one.
    assert 0.5 < float(model.model.layers[0].input_layernorm.weight.mean()) < 1.5
    assert model.model.embed_scale.item() == 8.0   # sqrt(64)


@pytest.mark.parametrize("edit", [
    pytest.param(lambda c: c.update(sliding_window=4096), id="no-window"),
    pytest.param(lambda c: c.update(sliding_window=GEMMA3_SLIDING_WINDOW + 1), id="window+1"),
    pytest.param(lambda c: c["rope_parameters"].update(
        sliding_attention=c["rope_parameters"]["full_attention"]), id="one-rope-table"),
    pytest.param(lambda c: c.update(query_pre_attn_scalar=c["head_dim"]), id="head-dim-scale"),
])
def test_the_tiny_model_depends_on_what_is_matched(tiny_model_dirs, tmp_path, edit):
    # The matches above and in the greedy tests mean something: a wrong window (also off by
    # one), one rotary table for both layer types or the wrong attention scale change logits.
    path = tiny_model_dirs["gemma3"]
    changed = all_position_logits(edited_copy(path, tmp_path, edit))
    assert (changed - hf_all_position_logits(path)).abs().max() > 0.1


def test_final_logit_softcapping_matches_transformers(tmp_path):
    path = make_tiny_model("gemma3", tmp_path / "capped", seed=1, final_logit_softcapping=3.0)
    ours, ref = all_position_logits(path), hf_all_position_logits(path)
    assert ours.abs().max() < 3.0 and ours.abs().max() > 2.5   # the cap bites
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-4)
    # Logprobs come from the capped logits.
    llm = LLM(model=str(path), device="cpu", dtype="float32", max_model_len=128,
              kv_cache_space_bytes=4 << 20)
    params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=1)
    out = llm.generate({"prompt_token_ids": TOKENS}, params, use_tqdm=False)[0]
    expected = ref.log_softmax(-1)
    for p in range(1, len(TOKENS)):
        got = out.prompt_logprobs[p][TOKENS[p]].logprob
        assert abs(got - expected[p - 1, TOKENS[p]].item()) < 1e-4


def test_multimodal_checkpoint_serves_its_language_model(tmp_path):
    path = make_tiny_model("gemma3_multimodal", tmp_path / "mm", seed=2)
    runner = runner_for(path)
    # The engine runs on the text config: 3 layers of 2 KV heads, the tiny vocabulary.
    assert runner.hf_config.architectures == ["Gemma3ForConditionalGeneration"]
    assert runner.vocab_size == 512 and runner.kv_spec.num_layers == 3
    assert runner.kv_spec.num_kv_heads == 2 and runner.max_model_len == 512
    ours = all_position_logits(path)
    torch.testing.assert_close(ours, hf_all_position_logits(path), rtol=0, atol=1e-4)
    # transformers 5 in-memory names (model.language_model.*, model.vision_tower.*) load too.
    weights = load_file(path / "model.safetensors")
    renamed = {}
    for name, tensor in weights.items():
        for old, new in (("language_model.model.", "model.language_model."),
                         ("vision_tower.", "model.vision_tower."),
                         ("multi_modal_projector.", "model.multi_modal_projector.")):
            if name.startswith(old):
                name = new + name[len(old):]
                break
        renamed[name] = tensor
    assert any(n.startswith("model.language_model.") for n in renamed)
    save_file(renamed, path / "model.safetensors", metadata={"format": "pt"})
    torch.testing.assert_close(all_position_logits(path), ours, rtol=0, atol=0)


def test_multimodal_greedy_matches_transformers_generate(tmp_path):
    path = make_tiny_model("gemma3_multimodal", tmp_path / "mm", seed=2)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    llm = LLM(model=str(path), device="cpu", dtype="float32", max_model_len=128,
              kv_cache_space_bytes=4 << 20, max_num_batched_tokens=16)
    prompts = [TOKENS, TOKENS[:9], [5, 9, 300, 41]]
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                        SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True),
                        use_tqdm=False)
    for prompt, out in zip(prompts, outs):
        with torch.inference_mode():
            expected = hf.generate(torch.tensor([prompt]), max_new_tokens=10, min_new_tokens=10,
                                   do_sample=False, pad_token_id=0)[0, len(prompt):].tolist()
        assert out.outputs[0].token_ids == expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gelu_tanh_and_mul_matches_transformers(dtype):
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(7, 2 * 40, generator=gen) * 3).to(dtype)
    gate, up = x[:, :40], x[:, 40:]
    out = GeluTanhAndMul()(x)
    assert out.shape == (7, 40) and out.dtype == dtype
    # Bit for bit what Gemma3MLP computes (GELU rounded to the dtype, then the product).
    torch.testing.assert_close(out, ACT2FN["gelu_pytorch_tanh"](gate) * up, rtol=0, atol=0)
    # And the tanh formula itself, in float64.
    g, u = gate.double(), up.double()
    formula = 0.5 * g * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (g + 0.044715 * g ** 3))) * u
    tol = 1e-5 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(out.double(), formula, rtol=tol, atol=tol)
    assert not torch.equal(out, (F.gelu(gate.float()) * up.float()).to(dtype))  # not erf GELU


def _tiny_text_config(**overrides) -> Gemma3TextConfig:
    kwargs = dict(vocab_size=16, hidden_size=32, intermediate_size=16, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                  max_position_embeddings=32, sliding_window=4,
                  layer_types=["sliding_attention", "full_attention"])
    kwargs.update(overrides)
    return Gemma3TextConfig(**kwargs)


@pytest.mark.parametrize("overrides, field", [
    (dict(attn_logit_softcapping=50.0), "attn_logit_softcapping"),
    (dict(use_bidirectional_attention=True), "use_bidirectional_attention"),
    (dict(hidden_activation="gelu"), "hidden_activation"),
    (dict(rope_parameters={"full_attention": {"rope_type": "mrope", "factor": 2.0,
                                              "rope_theta": 1e6},
                           "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}),
     "rope_scaling"),
])
def test_unsupported_variants_are_named(overrides, field):
    with pytest.raises(ValueError, match=field):
        Gemma3ForCausalLM(_tiny_text_config(**overrides))


def test_attn_softcapping_checkpoint_fails_at_load(tiny_model_dirs, tmp_path):
    path = edited_copy(tiny_model_dirs["gemma3"], tmp_path,
                       lambda c: c.update(attn_logit_softcapping=50.0))
    with pytest.raises(ValueError, match="attn_logit_softcapping"):
        LLM(model=str(path), device="cpu", dtype="float32", kv_cache_space_bytes=4 << 20)


def test_embedding_scale_is_rounded_to_the_model_dtype():
    # sqrt(3072) = 55.43 is 55.5 in bf16, as transformers' Gemma3TextScaledWordEmbedding has it.
    config = _tiny_text_config(hidden_size=3072, num_hidden_layers=1,
                               layer_types=["full_attention"])
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = Gemma3ForCausalLM(config)
    finally:
        torch.set_default_dtype(old)
    assert model.model.embed_scale.dtype == torch.bfloat16
    assert model.model.embed_scale.item() == 55.5
    assert Gemma3ForCausalLM(config).model.embed_scale.item() == pytest.approx(3072 ** 0.5)


def test_transformers_4_config_fields():
    # Before layer_types / per-type rope_parameters: sliding_window_pattern, rope_theta and
    # rope_scaling (global layers), rope_local_base_freq (local layers).
    config = SimpleNamespace(num_hidden_layers=7, sliding_window_pattern=3, rope_theta=1e6,
                             rope_scaling={"type": "linear", "factor": 8.0},
                             rope_local_base_freq=1e4)
    assert layer_types_of(config) == ["sliding_attention", "sliding_attention", "full_attention",
                                      "sliding_attention", "sliding_attention", "full_attention",
                                      "sliding_attention"]
    assert rope_parameters_by_layer_type(config) == {
        "full_attention": {"type": "linear", "factor": 8.0, "rope_theta": 1e6,
                           "rope_type": "linear"},
        "sliding_attention": {"rope_theta": 1e4, "rope_type": "default"}}
