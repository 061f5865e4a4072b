"""Rotary tables against transformers' rope initialisation, KV cache sizing, linear layer
weight loaders (including tensor-parallel slicing, checked on CPU without communication)."""
from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from pagedllm.layers.linear import (ColumnParallelLinear, MergedColumnParallelLinear,
                                    QKVParallelLinear, RowParallelLinear, SplitKPartials)
from pagedllm.layers.rotary_embedding import RotaryEmbedding, rope_parameters_from_config
from pagedllm.worker.kv_cache import KVCacheSpec, allocate_kv_caches, cpu_num_blocks, kv_cache_spec


@pytest.mark.parametrize("scaling", [
    None,
    dict(rope_type="linear", factor=4.0),
    dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
         original_max_position_embeddings=8192),
])
def test_rotary_table_matches_transformers(scaling):
    config = LlamaConfig(hidden_size=1024, num_attention_heads=8, head_dim=128,
                         rope_theta=500000.0, rope_scaling=scaling, max_position_embeddings=1024)
    params = rope_parameters_from_config(config)
    if params["rope_type"] == "default":
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

        inv_freq, _ = LlamaRotaryEmbedding.compute_default_rope_parameters(config=config,
                                                                           device="cpu")
    else:
        inv_freq, _ = ROPE_INIT_FUNCTIONS[params["rope_type"]](config, "cpu")
    rope = RotaryEmbedding(128, 128, 1024, params, is_neox_style=True)
    freqs = torch.outer(torch.arange(1024, dtype=torch.float32), inv_freq.float())
    torch.testing.assert_close(rope.cos_sin_cache[:, :64], freqs.cos(), rtol=0, atol=1e-6)
    torch.testing.assert_close(rope.cos_sin_cache[:, 64:], freqs.sin(), rtol=0, atol=1e-6)


def test_unknown_rope_type_is_rejected():
    with pytest.raises(ValueError, match="rope_scaling.*mrope"):
        RotaryEmbedding(64, 64, 16, {"rope_theta": 1e4, "rope_type": "mrope", "factor": 2.0})


def test_kv_cache_sizing():
    spec = KVCacheSpec(num_layers=2, block_size=16, num_kv_heads=2, head_dim=32,
                       dtype=torch.float32)
    assert spec.bytes_per_block == 2 * 16 * 2 * 32 * 4 * 2        # 16 KiB
    assert cpu_num_blocks(spec, 1 << 20) == 64
    assert cpu_num_blocks(spec, 1 << 20, max_useful_blocks=10) == 10
    assert cpu_num_blocks(spec, None, max_useful_blocks=33) == 33   # default budget, capped
    with pytest.raises(ValueError, match="kv_cache_space_bytes"):
        cpu_num_blocks(spec, spec.bytes_per_block)
    caches = allocate_kv_caches(spec, 5, torch.device("cpu"))
    assert len(caches) == 2 and caches[0].shape == (2, 5, 16, 2, 32)
    assert all(torch.count_nonzero(c) == 0 for c in caches)


def test_kv_cache_spec_from_config_and_tp():
    config = LlamaConfig(hidden_size=256, num_attention_heads=8, num_key_value_heads=2,
                         num_hidden_layers=3)
    assert kv_cache_spec(config, 16, torch.bfloat16) == KVCacheSpec(3, 16, 2, 32, torch.bfloat16)
    assert kv_cache_spec(config, 16, torch.bfloat16, tp_size=2).num_kv_heads == 1
    assert kv_cache_spec(config, 16, torch.bfloat16, tp_size=4).num_kv_heads == 1  # replicated


@pytest.mark.parametrize("tp_size", [1, 2])
def test_sharded_linears_rebuild_the_full_product(tp_size):
    """Each rank's slice, concatenated (column) or summed (row), equals the unsharded layer."""
    torch.manual_seed(0)
    x = torch.randn(3, 8)
    full_w, full_b = torch.randn(12, 8), torch.randn(12)
    col = [ColumnParallelLinear(8, 12, bias=True, tp_rank=r, tp_size=tp_size)
           for r in range(tp_size)]
    for layer in col:
        layer.weight.weight_loader(layer.weight, full_w)
        layer.bias.weight_loader(layer.bias, full_b)
    torch.testing.assert_close(torch.cat([layer(x) for layer in col], -1), x @ full_w.T + full_b)

    row_w, row_b = torch.randn(5, 8), torch.randn(5)
    rows = [RowParallelLinear(8, 5, bias=True, tp_rank=r, tp_size=tp_size) for r in range(tp_size)]
    for layer in rows:
        layer.weight.weight_loader(layer.weight, row_w)
        layer.bias.weight_loader(layer.bias, row_b)
    partial = sum(torch.nn.functional.linear(x[:, r * 8 // tp_size:(r + 1) * 8 // tp_size],
                                             layer.weight) for r, layer in enumerate(rows))
    torch.testing.assert_close(partial + row_b, x @ row_w.T + row_b)


def test_qkv_and_merged_loaders_place_shards():
    q, k, v = torch.randn(4 * 32, 64), torch.randn(2 * 32, 64), torch.randn(2 * 32, 64)
    qkv = QKVParallelLinear(64, 32, 4, 2, bias=False)
    for shard, w in (("q", q), ("k", k), ("v", v)):
        qkv.weight.weight_loader(qkv.weight, w, shard)
    torch.testing.assert_close(qkv.weight.data, torch.cat([q, k, v]))
    # Two ranks: each holds half the q heads and one of the two kv heads.
    rank1 = QKVParallelLinear(64, 32, 4, 2, bias=False, tp_rank=1, tp_size=2)
    for shard, w in (("q", q), ("k", k), ("v", v)):
        rank1.weight.weight_loader(rank1.weight, w, shard)
    torch.testing.assert_close(rank1.weight.data, torch.cat([q[64:], k[32:], v[32:]]))
    with pytest.raises(ValueError, match="shard_id"):
        qkv.weight.weight_loader(qkv.weight, q, "x")

    gate, up = torch.randn(6, 4), torch.randn(6, 4)
    merged = MergedColumnParallelLinear(4, [6, 6], bias=False)
    merged.weight.weight_loader(merged.weight, up, 1)
    merged.weight.weight_loader(merged.weight, gate, 0)
    torch.testing.assert_close(merged.weight.data, torch.cat([gate, up]))
    with pytest.raises(ValueError, match="does not fit"):
        merged.weight.weight_loader(merged.weight, torch.randn(6, 5), 0)


def test_padded_decode_batch_sizes():
    from pagedllm.worker.input_buffers import padded_batch_size

    assert [padded_batch_size(n) for n in (1, 2, 3, 5, 8, 9, 17, 512)] == [1, 2, 4, 8, 8, 16,
                                                                           24, 512]
    assert padded_batch_size(600) == 600


def test_split_k_slices_rule(monkeypatch):
    import pagedllm.layers.linear as linear
    from pagedllm.layers.linear import SPLIT_K_MAX_ROWS, split_k_slices

    assert split_k_slices(64, 1024, 2048) == 4           # Qwen3-0.6B o_proj
    assert split_k_slices(128, 1024, 3072) == 4          # Qwen3-0.6B down_proj
    assert split_k_slices(16, 4096, 12288) == 2          # Qwen3-8B down_proj
    assert split_k_slices(64, 4096, 4096) == 1           # square: no measured gain
    assert split_k_slices(SPLIT_K_MAX_ROWS + 1, 1024, 2048) == 1  # prefill-sized
    assert split_k_slices(0, 1024, 2048) == 1
    assert split_k_slices(16, 1024, 1000) == 1           # K/S not a multiple of 64
    # The constants are read at call time (benchmarks/constant_ab.sh edits them for A/B runs).
    monkeypatch.setattr(linear, "SPLIT_K_WIDE_MIN_K_OVER_N", 1)
    assert split_k_slices(64, 4096, 4096) == 2
    monkeypatch.setattr(linear, "SPLIT_K_MAX_ROWS", 256)
    assert split_k_slices(192, 4096, 12288) == 2


def test_row_parallel_linear_splits_only_on_cuda_half_precision():
    # On the CPU (and in float32 anywhere) the layer returns the plain product even when asked.
    layer = RowParallelLinear(2048, 1024, bias=False)
    layer.weight.data.normal_()
    x = torch.randn(8, 2048)
    out = layer(x, into_fused_norm=True)
    assert isinstance(out, torch.Tensor)
    torch.testing.assert_close(out, x @ layer.weight.T)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows,k,n", [(1, 2048, 1024), (128, 3072, 1024), (100, 12288, 4096),
                                      (129, 2048, 1024), (64, 4096, 4096)])
def test_split_k_partials_through_rms_norm_match_the_plain_layer(dtype, rows, k, n):
    from pagedllm.layers.layernorm import RMSNorm
    from pagedllm.layers.linear import SplitKPartials, split_k_slices

    torch.manual_seed(rows)
    layer = RowParallelLinear(k, n, bias=False, params_dtype=dtype).cuda()
    layer.weight.data.normal_(std=k ** -0.5)
    norm = RMSNorm(n, 1e-6, params_dtype=dtype).cuda()
    norm.weight.data.uniform_(0.5, 1.5)
    x = torch.randn(rows, k, device="cuda", dtype=dtype)
    residual = torch.randn(rows, n, device="cuda", dtype=dtype)
    got = layer(x, into_fused_norm=True)
    slices = split_k_slices(rows, n, k)
    assert isinstance(got, SplitKPartials) == (slices > 1)
    plain = layer(x)
    if slices > 1:
        assert got.partials.shape == (slices, rows, n) and got.partials.dtype == torch.float32
        # The partials add up to the product (float32 sums of bf16 products: within rounding).
        torch.testing.assert_close(got.sum(), plain, rtol=2e-2, atol=2e-2)
    out, res = norm(got, residual.clone())
    out_ref, res_ref = norm(plain.clone(), residual.clone())
    torch.testing.assert_close(res, res_ref, rtol=2e-2, atol=3e-2)
    torch.testing.assert_close(out, out_ref, rtol=2e-2, atol=3e-2)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu,
                         pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")])])
@pytest.mark.parametrize("qk_norm", [False, True])
def test_attention_kv_write_fused_into_rotary_equals_the_separate_write(monkeypatch, device,
                                                                        qk_norm):
    """LlamaAttention with the cache write in the rotary kernel (default) and as its own
    reshape_and_cache: the same cache and the same output, bit for bit."""
    from pagedllm.models import llama
    from pagedllm.worker.attention_metadata import AttentionMetadata

    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    config = LlamaConfig(hidden_size=256, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=64, max_position_embeddings=256, rms_norm_eps=1e-6)
    attn = llama.LlamaAttention(config, 0, llama.DecoderOptions(qk_norm=qk_norm), 0, 1, None,
                                llama.make_rotary_embedding(config)).to(device=device, dtype=dtype)
    for p in attn.parameters():
        p.data.normal_(0.0, 0.5)
    # Two sequences: a 5-token prefill and one decode row at position 40.
    lens, block_size = [5, 41], 16
    positions = torch.tensor([0, 1, 2, 3, 4, 40], device=device)
    slots = torch.tensor([16, 17, 18, 19, 20, 2 * 16 + 8], dtype=torch.int32, device=device)
    meta = AttentionMetadata(
        slot_mapping=slots, block_table=torch.tensor([[1, 0, 0], [3, 4, 2]], dtype=torch.int32,
                                                     device=device),
        query_start_loc=torch.tensor([0, 5, 6], dtype=torch.int32, device=device),
        seq_lens=torch.tensor(lens, dtype=torch.int32, device=device), num_seqs=2, num_tokens=6,
        max_query_len=5, max_seq_len=41)
    hidden = torch.randn(6, 256, device=device, dtype=dtype)
    base = torch.randn(2, 5, block_size, 2, 64, device=device, dtype=dtype)  # older context
    results = []
    for fused in (True, False):
        monkeypatch.setattr(llama, "FUSED_KV_WRITE", fused)
        cache = base.clone()
        out = attn(positions, hidden, cache, meta)
        if isinstance(out, SplitKPartials):  # o_proj's decode split-K (CUDA): compare the sum
            out = out.sum()
        results.append((out, cache))
    (out_f, cache_f), (out_s, cache_s) = results
    assert torch.equal(cache_f, cache_s) and not torch.equal(cache_f, base)
    assert torch.equal(out_f, out_s)
