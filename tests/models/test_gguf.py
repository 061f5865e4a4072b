"""GGUF loading: a tiny Llama written with gguf.GGUFWriter round-trips exactly (F32) and agrees
with transformers' own GGUF loading (Q8_0); the default SmolLM2 GGUF generates the same greedy
tokens as transformers loading the same file."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

from pagedllm.config import CacheConfig, DeviceConfig, ModelConfig, ParallelConfig, SchedulerConfig
from pagedllm.models.default_model import default_model_path
from pagedllm.testing.hf_reference import hf_greedy
from pagedllm.testing.plans import HandPlanner
from pagedllm.testing.tiny_models import make_tiny_model
from pagedllm.transformers_utils.tokenizer import get_tokenizer
from pagedllm.worker.model_runner import ModelRunner

BLOCK_SIZE = 16
_HF_TO_GGUF_LAYER = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
}


def _llama_cpp_permute(w: np.ndarray, num_heads: int) -> np.ndarray:
    """What llama.cpp's converter does to q/k rows: per head, (half, pair) -> (pair, half)."""
    head_dim = w.shape[0] // num_heads
    return (w.reshape(num_heads, 2, head_dim // 2, *w.shape[1:]).swapaxes(1, 2)
            .reshape(w.shape))


def write_gguf(hf_dir: Path, out: Path, quant: str) -> Path:
    """The HF checkpoint as llama.cpp's converter would write it (Llama or Qwen3)."""
    import gguf
    from gguf.quants import quantize

    config = AutoConfig.from_pretrained(hf_dir)
    arch = config.model_type
    weights = load_file(hf_dir / "model.safetensors")
    writer = gguf.GGUFWriter(str(out), arch)
    writer.add_name(f"tiny-{arch}")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(0 if quant == "F32" else 7)
    if config.rope_parameters.get("rope_type") == "llama3":
        # llama.cpp's form of llama3 scaling: a divisor per frequency, from transformers' own
        # llama3 and default frequencies.
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
        exponents = torch.arange(0, config.head_dim, 2, dtype=torch.int64).float()
        plain = 1.0 / (config.rope_parameters["rope_theta"] ** (exponents / config.head_dim))
        writer.add_tensor("rope_freqs.weight", (plain / scaled).float().numpy())
    for name, tensor in weights.items():
        array = tensor.float().numpy()
        if name.startswith("model.layers."):
            _, _, layer, rest = name.split(".", 3)
            module, kind = rest.rsplit(".", 1)
            gguf_name = f"blk.{layer}.{_HF_TO_GGUF_LAYER[module]}.{kind}"
            if arch == "llama" and module == "self_attn.q_proj":
                array = _llama_cpp_permute(array, config.num_attention_heads)
            elif arch == "llama" and module == "self_attn.k_proj":
                array = _llama_cpp_permute(array, config.num_key_value_heads)
        else:
            gguf_name = {"model.embed_tokens.weight": "token_embd.weight",
                         "model.norm.weight": "output_norm.weight",
                         "lm_head.weight": "output.weight"}[name]
        if quant == "Q8_0" and array.ndim == 2:
            qtype = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(gguf_name, quantize(np.ascontiguousarray(array), qtype),
                              raw_dtype=qtype)
        else:
            writer.add_tensor(gguf_name, np.ascontiguousarray(array))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def gguf_runner(model: str, gguf_file: str | None = None) -> ModelRunner:
    runner = ModelRunner(ModelConfig(model=model, gguf_file=gguf_file),
                         CacheConfig(block_size=BLOCK_SIZE, kv_cache_space_bytes=64 << 20),
                         DeviceConfig(device="cpu"), ParallelConfig(),
                         scheduler_config=SchedulerConfig(max_num_seqs=4))
    runner.load_model()
    runner.allocate_kv_cache(runner.determine_num_blocks())
    return runner


def hf_model_from_gguf(path: str):
    """transformers' own GGUF path (its dequantization and q/k un-permutation), without
    `accelerate` (which from_pretrained(gguf_file=...) requires and which is not installed)."""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    from transformers.initialization import no_init_weights

    config = AutoConfig.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    with no_init_weights():   # every weight comes from the file; random init only costs time
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(path, return_tensors=True, model_to_load=model)["tensors"]
    missing, _ = model.load_state_dict(tensors, strict=False)
    assert set(missing) <= {"lm_head.weight"}, missing
    if "lm_head.weight" in missing:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.eval()


def prefill_logits(runner: ModelRunner, tokens: list[int]) -> torch.Tensor:
    planner = HandPlanner(runner.num_blocks, BLOCK_SIZE, runner.max_blocks_per_seq)
    rows = np.arange(len(tokens), dtype=np.int32)     # every position
    return runner.execute_model(planner.plan([(0, tokens)], sample_all=False), rows)


@pytest.fixture(scope="module")
def tiny_llama_for_gguf(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf")
    return make_tiny_model("llama", root / "hf", seed=5), root


def test_tiny_gguf_f32_round_trip_matches_safetensors(tiny_llama_for_gguf):
    hf_dir, root = tiny_llama_for_gguf
    path = write_gguf(hf_dir, root / "tiny-f32.gguf", "F32")
    tokens = list(range(3, 40))
    from_gguf = prefill_logits(gguf_runner(str(path)), tokens)
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        expected = hf(torch.tensor([tokens])).logits[0]
    torch.testing.assert_close(from_gguf, expected, rtol=0, atol=1e-4)


def test_tiny_gguf_q8_dir_plus_file_matches_transformers_gguf(tiny_llama_for_gguf):
    hf_dir, root = tiny_llama_for_gguf
    path = write_gguf(hf_dir, root / "tiny-q8.gguf", "Q8_0")
    tokens = list(range(100, 140))
    ours = prefill_logits(gguf_runner(str(root), gguf_file="tiny-q8.gguf"), tokens)
    with torch.inference_mode():
        expected = hf_model_from_gguf(str(path))(torch.tensor([tokens])).logits[0]
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-4)


def test_tiny_qwen3_gguf_untied_with_qk_norm(tmp_path):
    # head_dim 32 != hidden / heads = 16: only attention.key_length says so.
    hf_dir = make_tiny_model("qwen3", tmp_path / "hf", seed=8, tie_word_embeddings=False)
    path = write_gguf(hf_dir, tmp_path / "tiny-qwen3.gguf", "F32")
    tokens = list(range(20, 60))
    runner = gguf_runner(str(path))
    assert runner.model.lm_head.weight is not runner.model.model.embed_tokens.weight
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        expected = hf(torch.tensor([tokens])).logits[0]
    torch.testing.assert_close(prefill_logits(runner, tokens), expected, rtol=0, atol=1e-4)


def test_tiny_llama3_gguf_with_rope_freqs(tmp_path):
    hf_dir = make_tiny_model("llama", tmp_path / "hf", seed=9, rope_theta=500000.0,
                             rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                               high_freq_factor=4.0,
                                               original_max_position_embeddings=64))
    path = write_gguf(hf_dir, tmp_path / "tiny-llama3.gguf", "F32")
    runner = gguf_runner(str(path))
    assert len(runner.hf_config.gguf_rope_freq_factors) == 16
    tokens = list(range(3, 300))   # long enough for every frequency band to matter
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        expected = hf(torch.tensor([tokens])).logits[0]
    torch.testing.assert_close(prefill_logits(runner, tokens), expected, rtol=0, atol=1e-4)


def test_directory_with_one_gguf_needs_no_file_name(tiny_llama_for_gguf, tmp_path):
    hf_dir, _ = tiny_llama_for_gguf
    write_gguf(hf_dir, tmp_path / "only.gguf", "F32")
    runner = gguf_runner(str(tmp_path))
    assert runner.model_config.gguf_path == str(tmp_path / "only.gguf")
    write_gguf(hf_dir, tmp_path / "second.gguf", "F32")
    with pytest.raises(ValueError, match="gguf_file.*several"):
        gguf_runner(str(tmp_path))


def test_gguf_path_errors(tmp_path):
    with pytest.raises(ValueError, match="gguf_file"):
        ModelRunner(ModelConfig(model=str(tmp_path), gguf_file="missing.gguf"), CacheConfig(),
                    DeviceConfig("cpu"), ParallelConfig())


def test_default_model_path_is_the_smollm2_gguf():
    path = default_model_path()
    assert path.endswith("SmolLM2-135M-Instruct.Q4_1.gguf") and os.path.isfile(path)


@pytest.mark.slow
def test_default_smollm2_greedy_matches_transformers_gguf():
    path = default_model_path()
    model_config = ModelConfig(model=path)
    tokenizer = get_tokenizer(model_config)
    runner = gguf_runner(path)
    assert runner.eos_token_id == tokenizer.eos_token_id == 2
    prompts = [
        tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                      add_generation_prompt=True, tokenize=False)
        for text in ("What is the capital of France?", "Write a haiku about the sea.")
    ] + ["The three primary colors are", "def fibonacci(n):"]
    prompt_ids = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts]

    planner = HandPlanner(runner.num_blocks, BLOCK_SIZE, runner.max_blocks_per_seq)
    ours = [[] for _ in prompt_ids]
    chunks = [(i, ids) for i, ids in enumerate(prompt_ids)]
    for _ in range(16):
        tokens = runner.execute_model(planner.plan(chunks)).argmax(-1).tolist()
        for out, tok in zip(ours, tokens):
            out.append(tok)
        chunks = [(i, [tok]) for i, tok in enumerate(tokens)]

    hf = hf_model_from_gguf(path)
    for ids, generated in zip(prompt_ids, ours):
        expected = hf_greedy(hf, ids, 16)
        assert generated == expected, (tokenizer.decode(generated), tokenizer.decode(expected))
    assert "Paris" in tokenizer.decode(ours[0])
