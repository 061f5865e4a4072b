"""The model families and serving features added after the GPU path, on that path (skipped
without CUDA). The tiny models' head_dim 32 has no CUDA attention kernel, so these tests build
them at sizes the kernels serve: every architecture's float32 greedy tokens equal transformers'
with CUDA graphs on (float32 MoE models decode eagerly; bf16 ones run their experts grouped,
inside graphs), Gemma 3 at head_dim 256 with its sliding windows, Phi-4-mini's partial rotary
(96 of 128) through the fused K/V write; LoRA adapters and base requests in one batch equal
transformers on the merged weights, and adapter-free decodes still replay graphs; pooling
equals transformers' hidden states."""
from __future__ import annotations

import gc

import pytest
import torch

from pagedllm import LLM, SamplingParams
from pagedllm.layers.moe import SparseMoeBlock, route

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

# Config overrides that give each tiny architecture a head size with a CUDA kernel.
KERNEL_SIZED = {
    "opt": dict(hidden_size=128, word_embed_proj_dim=128, ffn_dim=256),       # 128 / 2 heads
    "llama": dict(head_dim=64),
    "qwen2": dict(head_dim=64),
    "qwen3": dict(head_dim=64),
    "phi3": dict(hidden_size=512, partial_rotary_factor=0.75),  # 512 / 4 heads; rotary 96
    "gemma3": dict(head_dim=256),
    "qwen3_moe": dict(head_dim=64),
    "mixtral": dict(head_dim=64),
    "qwen2_moe": dict(head_dim=64),
}
MOE = ("qwen3_moe", "mixtral", "qwen2_moe")
NEW_TOKENS = 16


def _prompts(seed: int, lengths=(3, 11, 17, 40, 100, 33, 64, 5)) -> list[list[int]]:
    # Lengths on both sides of Gemma 3's 12-token window and of the 16-token blocks.
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 500, (n,), generator=g).tolist() for n in lengths]


def _cuda_llm(path, **kw) -> LLM:
    args = dict(model=str(path), device="cuda", dtype="float32", max_model_len=512,
                max_num_seqs=16, gpu_memory_utilization=0.3, seed=0)
    args.update(kw)
    return LLM(**args)


def _greedy(llm: LLM, prompts, lora_request=None) -> list[list[int]]:
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False,
                        lora_request=lora_request)
    return [list(o.outputs[0].token_ids) for o in outs]


@torch.inference_mode()
def _hf_greedy(model_dir, prompts) -> list[list[int]]:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    return [hf.generate(torch.tensor([p]), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                        do_sample=False, pad_token_id=0)[0, len(p):].tolist() for p in prompts]


def _release() -> None:
    """Frees the GPU memory of engines the caller has just deleted (the caller must `del` its
    own reference: a helper cannot)."""
    gc.collect()
    torch.cuda.empty_cache()


def _replays(llm: LLM) -> int:
    """How many decode steps have replayed a CUDA graph so far."""
    return llm.llm_engine.engine_core.runner._decode_graphs.replays


@pytest.fixture(scope="module")
def kernel_sized(tmp_path_factory):
    """arch -> a tiny model directory at a CUDA-kernel head size, built on first use."""
    from pagedllm.testing.tiny_models import make_tiny_model

    built = {}

    def get(arch):
        if arch not in built:
            built[arch] = make_tiny_model(arch, tmp_path_factory.mktemp(f"{arch}_k"), seed=0,
                                          **KERNEL_SIZED[arch])
        return built[arch]

    return get


@pytest.mark.parametrize("arch", list(KERNEL_SIZED))
def test_each_architecture_greedy_matches_transformers_on_the_cuda_path(kernel_sized, arch):
    path = kernel_sized(arch)
    llm = _cuda_llm(path)
    # Graphs are captured only when the attention runs in our kernels; float32 MoE experts
    # loop over experts sized on the host, so those decode eagerly.
    assert (llm.llm_engine.engine_core.runner._decode_graphs is None) == (arch in MOE)
    prompts = _prompts(seed=len(arch))
    got = _greedy(llm, prompts)
    if arch not in MOE:
        assert _replays(llm) > 0, "no decode step replayed a CUDA graph"
    assert got == _hf_greedy(path, prompts)
    del llm
    _release()


def test_moe_eager_tokens_equal_enforce_eager(kernel_sized):
    """float32 MoE engines refuse graphs by themselves; asking for eager changes nothing."""
    path = kernel_sized("qwen3_moe")
    prompts = _prompts(seed=7)
    first = _cuda_llm(path)
    a = _greedy(first, prompts)
    del first
    _release()
    second = _cuda_llm(path, enforce_eager=True)
    assert _greedy(second, prompts) == a
    del second
    _release()


def test_lora_mixed_batch_on_the_cuda_path(kernel_sized, tmp_path):
    from pagedllm.lora import LoRARequest
    from pagedllm.testing.lora_adapters import make_lora_adapter, merge_lora_checkpoint

    base = kernel_sized("llama")
    adapters = {1: make_lora_adapter(base, tmp_path / "a1", rank=8, alpha=16.0, seed=1),
                2: make_lora_adapter(base, tmp_path / "a2", rank=4, alpha=8.0, seed=2,
                                     use_rslora=True)}
    merged = {i: merge_lora_checkpoint(base, a, tmp_path / f"m{i}") for i, a in adapters.items()}
    loras = {i: LoRARequest(f"ad{i}", i, str(a)) for i, a in adapters.items()}
    prompts = _prompts(seed=3)
    which = [(1, 2, 0)[i % 3] for i in range(len(prompts))]
    expected = {0: _hf_greedy(base, prompts)}
    expected.update({i: _hf_greedy(m, prompts) for i, m in merged.items()})
    llm = _cuda_llm(base, enable_lora=True, max_loras=2)
    got = _greedy(llm, prompts, lora_request=[loras.get(w) for w in which])
    for k, (w, tokens) in enumerate(zip(which, got)):
        assert tokens == expected[w][k], (k, w)
    # Steps with an adapter run eagerly; once only base requests remain, decodes replay.
    assert _replays(llm) == 0
    assert _greedy(llm, prompts) == expected[0]
    assert _replays(llm) > 0
    del llm
    _release()


@pytest.mark.parametrize("pooling", ["LAST", "MEAN"])
def test_pooling_matches_transformers_hidden_states_on_cuda(kernel_sized, pooling):
    from transformers import AutoModelForCausalLM

    path = kernel_sized("qwen3")
    llm = _cuda_llm(path, runner="pooling", max_num_batched_tokens=32,
                    pooler_config={"pooling_type": pooling})
    prompts = _prompts(seed=5)
    outs = llm.embed([{"prompt_token_ids": p} for p in prompts], use_tqdm=False)
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    with torch.inference_mode():
        for prompt, out in zip(prompts, outs):
            hidden = hf(torch.tensor([prompt]), output_hidden_states=True).hidden_states[-1][0]
            pooled = hidden[-1] if pooling == "LAST" else hidden.mean(dim=0)
            torch.testing.assert_close(torch.tensor(out.outputs.embedding),
                                       torch.nn.functional.normalize(pooled, dim=-1),
                                       atol=1e-4, rtol=1e-3)
    del llm
    _release()


def _moe_block(dtype, seed=0, hidden=256, inter=128, experts=16, top_k=4):

    gen = torch.Generator().manual_seed(seed)
    block = SparseMoeBlock(hidden, experts, top_k, inter, renormalize=True)
    with torch.no_grad():
        # Router logits of unit scale, as trained routers give (not peaked near one expert).
        block.gate.weight.copy_(torch.randn(experts, hidden, generator=gen) / hidden ** 0.5)
        block.experts.gate_up_proj.copy_(torch.randn(experts, 2 * inter, hidden, generator=gen)
                                         / hidden ** 0.5)
        block.experts.down_proj.copy_(torch.randn(experts, hidden, inter, generator=gen)
                                      / inter ** 0.5)
    return block.to(device="cuda", dtype=dtype)


@pytest.mark.parametrize("num_tokens", [1, 7, 64, 300])
def test_moe_block_grouped_bf16_matches_the_loop_and_float32(num_tokens, monkeypatch):
    import pagedllm.layers.moe as moe

    block = _moe_block(torch.bfloat16)
    assert block.experts.grouped and block.experts.supports_cuda_graphs   # bf16 on sm90
    x = torch.randn(num_tokens, 256, generator=torch.Generator().manual_seed(num_tokens))
    exact_block = _moe_block(torch.float32)              # float32 on CUDA: the loop
    with torch.inference_mode():
        xb = x.cuda().bfloat16()
        grouped = block(xb).float()
        monkeypatch.setattr(moe, "grouped_mm_on_device", lambda *args: False)
        assert not block.experts.grouped
        looped = block(xb).float()
        exact = exact_block(x.cuda())
        # Rounding the router's input and weights to bf16 can swap a token's k-th expert for
        # the (k+1)-th: compare with float32 where both chose the same experts.
        chosen = [route(b.gate(v), b.top_k, b.renormalize)[1].sort(dim=-1).values
                  for b, v in ((block, xb), (exact_block, x.cuda()))]
    same = (chosen[0] == chosen[1]).all(dim=-1)
    assert same.float().mean().item() >= 0.75
    scale = exact.abs().mean().item()
    torch.testing.assert_close(grouped, looped, rtol=0.02, atol=0.02 * scale)
    torch.testing.assert_close(grouped[same], exact[same], rtol=0.03, atol=0.06 * scale)


def test_moe_block_grouped_is_captured_by_a_cuda_graph():
    """No host sync on the grouped path: the block captures, and a replay on new inputs (new
    routing) gives the eager result bit for bit."""
    block = _moe_block(torch.bfloat16, seed=1)
    static_x = torch.zeros(48, 256, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        block(static_x)                                      # warm-up outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = block(static_x)
        for seed in (2, 3):
            x = torch.randn(48, 256, generator=torch.Generator().manual_seed(seed))
            static_x.copy_(x.cuda().bfloat16())
            graph.replay()
            assert torch.equal(static_out, block(static_x))


def test_moe_bf16_decodes_in_cuda_graphs(kernel_sized):
    path = kernel_sized("qwen3_moe")
    prompts = _prompts(seed=9)               # 8 sequences: a captured batch size, no padding
    graphs = _cuda_llm(path, dtype="bfloat16")
    assert graphs.llm_engine.engine_core.runner._decode_graphs is not None
    got = _greedy(graphs, prompts)
    assert _replays(graphs) > 0
    del graphs
    _release()
    eager = _cuda_llm(path, dtype="bfloat16", enforce_eager=True)
    assert _greedy(eager, prompts) == got
    del eager
    _release()
