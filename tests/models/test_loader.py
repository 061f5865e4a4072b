"""Model loading: formats (safetensors, .bin, dummy), dtypes, config variants (Mistral with a
sliding window, llama3 rope scaling, OPT post-LN with projections), and clear errors."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from pagedllm.config import ModelConfig
from pagedllm.models.loader import resolve_model_config
from pagedllm.models.registry import supported_architectures
from pagedllm.testing.cpu_runner import cpu_runner as runner_for
from pagedllm.testing.plans import HandPlanner
from pagedllm.testing.tiny_models import make_tiny_model
from pagedllm.worker.model_runner import ModelRunner

BLOCK_SIZE = 16
TOKENS = list(range(7, 52))   # 45 tokens: three blocks, the last one partial


def all_position_logits(runner: ModelRunner, tokens=TOKENS) -> torch.Tensor:
    planner = HandPlanner(runner.num_blocks, BLOCK_SIZE, runner.max_blocks_per_seq)
    plan = planner.plan([(0, tokens)], sample_all=False)
    return runner.execute_model(plan, np.arange(len(tokens), dtype=np.int32))   # [L, V]


@torch.inference_mode()
def hf_all_position_logits(path, tokens=TOKENS) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model(torch.tensor([tokens])).logits[0]


def test_bin_checkpoint_loads_like_safetensors(tiny_llama, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shutil.copy(tiny_llama / "config.json", bin_dir)
    torch.save(load_file(tiny_llama / "model.safetensors"), bin_dir / "pytorch_model.bin")
    expected = all_position_logits(runner_for(tiny_llama))
    torch.testing.assert_close(all_position_logits(runner_for(bin_dir)), expected, rtol=0, atol=0)
    torch.testing.assert_close(all_position_logits(runner_for(bin_dir, load_format="pt")),
                               expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="safetensors"):
        runner_for(bin_dir, load_format="safetensors")


def test_dummy_weights_need_only_config(tiny_qwen3, tmp_path):
    config_only = tmp_path / "config_only"
    config_only.mkdir()
    shutil.copy(tiny_qwen3 / "config.json", config_only)
    first = all_position_logits(runner_for(config_only, load_format="dummy", seed=1))
    again = all_position_logits(runner_for(config_only, load_format="dummy", seed=1))
    other = all_position_logits(runner_for(config_only, load_format="dummy", seed=2))
    assert first.shape == (len(TOKENS), 512) and torch.isfinite(first).all()
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.equal(first, other)
    # seed=None (fresh sampling noise each run) still gives the dummy weights of seed 0.
    unseeded = all_position_logits(runner_for(config_only, load_format="dummy", seed=None))
    zero = all_position_logits(runner_for(config_only, load_format="dummy", seed=0))
    torch.testing.assert_close(unseeded, zero, rtol=0, atol=0)
    with pytest.raises(ValueError, match="no safetensors or .bin weights"):
        runner_for(config_only)


def test_missing_weight_is_named(tiny_llama, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_llama, broken)
    weights = load_file(broken / "model.safetensors")
    del weights["model.layers.1.mlp.down_proj.weight"]
    save_file(weights, broken / "model.safetensors")
    with pytest.raises(ValueError, match="model.layers.1.mlp.down_proj.weight"):
        runner_for(broken)


def test_unsupported_architecture_lists_supported(tiny_llama, tmp_path):
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"],
                                                  "model_type": "gpt2"}))
    with pytest.raises(ValueError) as info:
        runner_for(gpt2, load_format="dummy")
    message = str(info.value)
    assert "GPT2LMHeadModel" in message
    for arch in ("OPTForCausalLM", "LlamaForCausalLM", "MistralForCausalLM",
                 "Qwen2ForCausalLM", "Qwen3ForCausalLM", "Phi3ForCausalLM"):
        assert arch in message
    assert supported_architectures() == sorted(supported_architectures())


def test_hub_id_must_be_in_local_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match="model: 'nobody/no-such-model'"):
        resolve_model_config(ModelConfig(model="nobody/no-such-model"))


def test_hub_id_from_local_cache(tiny_opt, tmp_path, monkeypatch):
    # Lay the tiny model out as the HF cache does: models--org--name/snapshots/<rev>/...
    cache = tmp_path / "hub"
    repo = cache / "models--tiny--opt"
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_opt, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    config = resolve_model_config(ModelConfig(model="tiny/opt"))
    assert config.model_path == str(snapshot)
    assert config.hf_config.architectures == ["OPTForCausalLM"]


def test_dtypes(tiny_llama):
    assert resolve_model_config(ModelConfig(model=str(tiny_llama))).torch_dtype == torch.float32
    bf16 = runner_for(tiny_llama, dtype="bfloat16")
    assert bf16.dtype == torch.bfloat16
    assert bf16.kv_caches[0].dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in bf16.model.parameters())
    ours = all_position_logits(bf16)
    expected = hf_all_position_logits(tiny_llama)
    assert ours.dtype == torch.float32
    # bf16 keeps ~3 significant digits: the logits agree to a few percent of their range.
    assert (ours - expected).abs().max() < 0.05 * expected.abs().max()
    fp16 = runner_for(tiny_llama, dtype="float16")
    assert fp16.dtype == torch.float16
    assert torch.isfinite(all_position_logits(fp16)).all()


def test_max_model_len_is_validated(tiny_llama):
    config = resolve_model_config(ModelConfig(model=str(tiny_llama), max_model_len=100))
    assert config.max_model_len == 100
    with pytest.raises(ValueError, match="max_model_len"):
        resolve_model_config(ModelConfig(model=str(tiny_llama), max_model_len=513))


def test_mistral_with_sliding_window_matches_transformers(tmp_path):
    path = make_tiny_model("llama", tmp_path / "mistral", seed=3)
    config = json.loads((path / "config.json").read_text())
    config.update(architectures=["MistralForCausalLM"], model_type="mistral", sliding_window=8)
    (path / "config.json").write_text(json.dumps(config))
    ours = all_position_logits(runner_for(path))
    torch.testing.assert_close(ours, hf_all_position_logits(path), rtol=0, atol=1e-4)
    # The window matters here: without it the last logits differ.
    config["sliding_window"] = None
    (path / "config.json").write_text(json.dumps(config))
    assert not torch.allclose(all_position_logits(runner_for(path))[-1], ours[-1], atol=1e-3)


def test_llama3_rope_scaling_matches_transformers(tmp_path):
    path = make_tiny_model("llama", tmp_path / "llama3", seed=4, rope_theta=500000.0,
                           rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                             high_freq_factor=4.0,
                                             original_max_position_embeddings=64))
    tokens = list(range(3, 200))   # well past original_max_position_embeddings
    ours = all_position_logits(runner_for(path), tokens)
    torch.testing.assert_close(ours, hf_all_position_logits(path, tokens), rtol=0, atol=1e-4)


def test_opt_post_layernorm_with_projections_matches_transformers(tmp_path):
    path = make_tiny_model("opt", tmp_path / "opt350", seed=6, do_layer_norm_before=False,
                           word_embed_proj_dim=32)
    ours = all_position_logits(runner_for(path))
    torch.testing.assert_close(ours, hf_all_position_logits(path), rtol=0, atol=1e-4)


def test_untied_qwen3_and_tied_llama(tmp_path):
    for arch, tie in (("qwen3", False), ("llama", True)):
        path = make_tiny_model(arch, tmp_path / f"{arch}-{tie}", seed=7, tie_word_embeddings=tie)
        runner = runner_for(path)
        head, embed = runner.model.lm_head.weight, runner.model.model.embed_tokens.weight
        assert (head is embed) == tie
        torch.testing.assert_close(all_position_logits(runner), hf_all_position_logits(path),
                                   rtol=0, atol=1e-4)


def test_auto_dtype_depends_on_device():
    from types import SimpleNamespace

    from pagedllm.models.loader import choose_dtype

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    fp32, fp16 = SimpleNamespace(dtype="float32"), SimpleNamespace(dtype=torch.float16)
    assert choose_dtype("auto", fp32, cpu) == torch.float32
    assert choose_dtype("auto", fp16, cpu) == torch.float32
    assert choose_dtype("auto", fp32, cuda) == torch.bfloat16
    assert choose_dtype("auto", fp16, cuda) == torch.float16
    assert choose_dtype("half", fp32, cpu) == torch.float16
    assert choose_dtype("float", fp16, cuda) == torch.float32
