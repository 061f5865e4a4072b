"""Phi-3 checkpoints store q/k/v and gate/up already fused: they load into our fused parameters
(every tensor-parallel rank taking its rows of each part), logits equal transformers', and a
missing or misshapen tensor is a clear error. Phi-3 GGUF files are refused by name."""
from __future__ import annotations


import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

from pagedllm.config import ModelConfig
from pagedllm.models.loader import iterate_checkpoint_weights, resolve_model_config
from pagedllm.models.phi3 import Phi3ForCausalLM
from pagedllm.testing.cpu_runner import copy_with_edited_weights
from pagedllm.testing.cpu_runner import cpu_runner as runner_for
from pagedllm.testing.plans import HandPlanner

BLOCK_SIZE = 16
TOKENS = list(range(7, 52))
QKV = "model.layers.{}.self_attn.qkv_proj.weight"
GATE_UP = "model.layers.{}.mlp.gate_up_proj.weight"


def test_fused_checkpoint_tensors_load_and_match_transformers(tiny_model_dirs):
    path = tiny_model_dirs["phi3"]
    checkpoint = load_file(path / "model.safetensors")
    assert QKV.format(0) in checkpoint and GATE_UP.format(0) in checkpoint
    assert not any(".q_proj." in name or ".gate_proj." in name for name in checkpoint)
    runner = runner_for(path)
    params = dict(runner.model.named_parameters())
    for layer in range(2):
        # One rank: the fused parameter is the checkpoint tensor, part after part in order.
        assert torch.equal(params[QKV.format(layer)], checkpoint[QKV.format(layer)])
        assert torch.equal(params[GATE_UP.format(layer)], checkpoint[GATE_UP.format(layer)])
    planner = HandPlanner(runner.num_blocks, BLOCK_SIZE, runner.max_blocks_per_seq)
    ours = runner.execute_model(planner.plan([(0, TOKENS)], sample_all=False),
                                np.arange(len(TOKENS), dtype=np.int32))
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.inference_mode():
        expected = hf(torch.tensor([TOKENS])).logits[0]
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("tp_size", [2, 4])   # 4 ranks over 2 KV heads: each KV head twice
def test_each_tensor_parallel_rank_takes_its_rows_of_every_part(tiny_model_dirs, tp_size):
    path = tiny_model_dirs["phi3"]
    config = AutoConfig.from_pretrained(path)
    checkpoint = load_file(path / "model.safetensors")
    d, heads, kv_heads = 32, config.num_attention_heads, config.num_key_value_heads
    inter = config.intermediate_size
    q, k, v = checkpoint[QKV.format(1)].split([heads * d, kv_heads * d, kv_heads * d])
    gate, up = checkpoint[GATE_UP.format(1)].split([inter, inter])
    q_rows, inter_rows = heads * d // tp_size, inter // tp_size
    kv_rows = max(kv_heads // tp_size, 1) * d
    for rank in range(tp_size):
        model = Phi3ForCausalLM(config, tp_rank=rank, tp_size=tp_size)
        model.load_weights(iterate_checkpoint_weights(str(path)))
        params = dict(model.named_parameters())
        kv_src = rank * kv_heads // tp_size   # the KV head this rank's query heads read
        expected_qkv = torch.cat([q[rank * q_rows:(rank + 1) * q_rows],
                                  k[kv_src * kv_rows:(kv_src + 1) * kv_rows],
                                  v[kv_src * kv_rows:(kv_src + 1) * kv_rows]])
        assert torch.equal(params[QKV.format(1)], expected_qkv)
        expected_gate_up = torch.cat([gate[rank * inter_rows:(rank + 1) * inter_rows],
                                      up[rank * inter_rows:(rank + 1) * inter_rows]])
        assert torch.equal(params[GATE_UP.format(1)], expected_gate_up)


def test_missing_fused_tensor_is_named(tiny_model_dirs, tmp_path):
    broken = copy_with_edited_weights(tiny_model_dirs["phi3"], tmp_path / "broken",
                          lambda w: w.pop(QKV.format(1)))
    with pytest.raises(ValueError, match=r"missing weights.*layers\.1\.self_attn\.qkv_proj"):
        runner_for(broken)


def test_misshapen_fused_tensor_is_named(tiny_model_dirs, tmp_path):
    def truncate(weights):
        weights[GATE_UP.format(0)] = weights[GATE_UP.format(0)][:200].clone()

    broken = copy_with_edited_weights(tiny_model_dirs["phi3"], tmp_path / "broken", truncate)
    with pytest.raises(ValueError, match=r"layers\.0\.mlp\.gate_up_proj\.weight' has 200 rows; "
                                         r"expected 256 \(128 \+ 128\)"):
        runner_for(broken)


def test_phi3_gguf_is_refused_by_name(tmp_path):
    import gguf

    path = tmp_path / "phi3.gguf"
    writer = gguf.GGUFWriter(str(path), "phi3")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match="GGUF architecture 'phi3' is not supported"):
        resolve_model_config(ModelConfig(model=str(path)))
