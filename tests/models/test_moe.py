"""Mixture-of-experts layers (layers/moe.py) and models (Qwen2-MoE, Qwen3-MoE, Mixtral): routing
and the grouped expert computation against a per-token reference, tensor-parallel shards that
sum to the whole, both checkpoint layouts (one tensor per expert as on the hub, stacked as
transformers 5 keeps them) giving transformers' logits, loading errors that name the tensor, and
decode CUDA graphs only where the experts run grouped on the device. Block tests run both
expert paths (grouped and the per-expert loop)."""
from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

import pagedllm.layers.moe
from pagedllm.layers.moe import MoEExperts, SparseMoeBlock, route
from pagedllm.models.loader import iterate_checkpoint_weights
from pagedllm.models.qwen_moe import Qwen2MoeBlock, is_sparse_layer
from pagedllm.models.registry import resolve_model_class
from pagedllm.testing.cpu_runner import copy_with_edited_weights
from pagedllm.testing.cpu_runner import cpu_runner as runner_for
from pagedllm.testing.plans import HandPlanner
from pagedllm.worker import model_runner
from pagedllm.worker.model_runner import ModelRunner

MOE_ARCHS = ("qwen3_moe", "mixtral", "qwen2_moe")
BLOCK_SIZE = 16
TOKENS = list(range(7, 52))
HIDDEN, INTER, EXPERTS = 16, 24, 6


def prompt_logits(runner: ModelRunner, tokens: list[int]) -> torch.Tensor:
    planner = HandPlanner(runner.num_blocks, BLOCK_SIZE, runner.max_blocks_per_seq)
    return runner.execute_model(planner.plan([(0, tokens)], sample_all=False),
                                np.arange(len(tokens), dtype=np.int32))


@torch.inference_mode()
def hf_prompt_logits(path, tokens: list[int]) -> torch.Tensor:
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return hf(torch.tensor([tokens])).logits[0]


@pytest.fixture(params=["grouped", "loop"])
def expert_path(request, monkeypatch) -> str:
    """Runs the test with the experts' matmuls grouped (F.grouped_mm) and again looped."""
    grouped = request.param == "grouped"
    monkeypatch.setattr(pagedllm.layers.moe, "grouped_mm_on_device", lambda *args: grouped)
    return request.param


def random_block(top_k: int, renormalize: bool, seed: int = 0, tp_rank: int = 0,
                 tp_size: int = 1) -> SparseMoeBlock:
    gen = torch.Generator().manual_seed(seed)
    block = SparseMoeBlock(HIDDEN, EXPERTS, top_k, INTER, renormalize, tp_rank=tp_rank,
                           tp_size=tp_size)
    block.gate.weight.copy_(torch.randn(EXPERTS, HIDDEN, generator=gen))
    gate_up = torch.randn(EXPERTS, 2 * INTER, HIDDEN, generator=gen) / HIDDEN ** 0.5
    down = torch.randn(EXPERTS, HIDDEN, INTER, generator=gen) / INTER ** 0.5
    experts = block.experts
    experts.weight_loader(experts.gate_up_proj, gate_up)     # stacked: this rank's slices
    experts.weight_loader(experts.down_proj, down)
    return block


def reference_moe(x, router_weight, gate_up, down, top_k, renormalize) -> torch.Tensor:
    """Token by token, expert by expert, from the full (unsharded) weights."""
    out = torch.zeros_like(x)
    inter = gate_up.shape[1] // 2
    for t in range(x.shape[0]):
        probs = torch.softmax(router_weight @ x[t], dim=-1)
        chosen = probs.argsort(descending=True)[:top_k]
        weights = probs[chosen] / (probs[chosen].sum() if renormalize else 1.0)
        for e, w in zip(chosen.tolist(), weights):
            gate, up = gate_up[e, :inter] @ x[t], gate_up[e, inter:] @ x[t]
            out[t] += w * (down[e] @ (torch.nn.functional.silu(gate) * up))
    return out


def full_weights(block: SparseMoeBlock) -> tuple[torch.Tensor, torch.Tensor]:
    return block.experts.gate_up_proj.detach().clone(), block.experts.down_proj.detach().clone()


@pytest.mark.parametrize("top_k,renormalize", [(1, False), (2, True), (2, False), (4, True),
                                               (6, False)])
def test_block_matches_a_per_token_reference(top_k, renormalize, expert_path):
    block = random_block(top_k, renormalize)
    gate_up, down = full_weights(block)
    for num_tokens in (1, 5, 37):
        x = torch.randn(num_tokens, HIDDEN, generator=torch.Generator().manual_seed(num_tokens))
        expected = reference_moe(x, block.gate.weight, gate_up, down, top_k, renormalize)
        torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


def test_experts_that_receive_no_tokens_are_skipped(expert_path):
    block = random_block(2, True, seed=1)
    # Experts 1 and 4 score far below the others for every token: nothing routes to them.
    block.gate.weight[1] = -50.0 * block.gate.weight.abs().mean() * torch.ones(HIDDEN)
    block.gate.weight[4] = block.gate.weight[1]
    x = torch.randn(9, HIDDEN, generator=torch.Generator().manual_seed(3)).abs()
    _, ids = route(block.gate(x), 2, True)
    assert not torch.isin(ids, torch.tensor([1, 4])).any()
    gate_up, down = full_weights(block)
    # Their weights do not take part: NaNs there change nothing.
    block.experts.gate_up_proj[1] = float("nan")
    block.experts.down_proj[4] = float("nan")
    expected = reference_moe(x, block.gate.weight, gate_up, down, 2, True)
    torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


def test_all_tokens_on_one_expert_and_no_tokens(expert_path):
    block = random_block(1, False, seed=2)
    x = torch.randn(6, HIDDEN, generator=torch.Generator().manual_seed(4)).abs()
    block.gate.weight.zero_()
    block.gate.weight[3] = 1.0                      # every token's top expert is 3
    gate_up, down = full_weights(block)
    expected = reference_moe(x, block.gate.weight, gate_up, down, 1, False)
    assert torch.equal(route(block.gate(x), 1, False)[1], torch.full((6, 1), 3))
    torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)
    assert block(x[:0]).shape == (0, HIDDEN)


def test_block_in_bfloat16_stays_near_float32(expert_path):
    block = random_block(4, False, seed=9)
    x = torch.randn(13, HIDDEN, generator=torch.Generator().manual_seed(10))
    expected = block(x)
    block.to(torch.bfloat16)
    ours = block(x.bfloat16())
    assert ours.dtype == torch.bfloat16
    torch.testing.assert_close(ours.float(), expected, rtol=0.05, atol=0.05)


def test_routing_math_of_each_family():
    logits = torch.randn(7, EXPERTS, generator=torch.Generator().manual_seed(5))
    # Mixtral: the renormalized top-k of the softmax is the softmax of the top-k logits.
    weights, ids = route(logits, 2, renormalize=True)
    top = logits.topk(2, dim=-1)
    assert torch.equal(ids, top.indices)
    torch.testing.assert_close(weights, torch.softmax(top.values, dim=-1))
    # Qwen without norm_topk_prob: the full softmax's probabilities, summing to less than 1.
    weights, ids = route(logits, 3, renormalize=False)
    torch.testing.assert_close(weights, torch.softmax(logits, -1).gather(1, ids))
    assert (weights.sum(-1) < 1).all()
    assert weights.dtype == torch.float32
    assert route(logits.half(), 3, renormalize=True)[0].dtype == torch.float32


@pytest.mark.parametrize("tp_size", [2, 3])
def test_tensor_parallel_shards_sum_to_the_whole(tp_size):
    whole = random_block(2, True, seed=6)
    x = torch.randn(11, HIDDEN, generator=torch.Generator().manual_seed(7))
    parts = [random_block(2, True, seed=6, tp_rank=r, tp_size=tp_size) for r in range(tp_size)]
    inter = INTER // tp_size
    for rank, part in enumerate(parts):
        rows = slice(rank * inter, (rank + 1) * inter)
        gate_up = whole.experts.gate_up_proj
        assert torch.equal(part.experts.gate_up_proj,
                           torch.cat([gate_up[:, :INTER][:, rows], gate_up[:, INTER:][:, rows]], 1))
        assert torch.equal(part.experts.down_proj, whole.experts.down_proj[:, :, rows])
    # What the all-reduce adds up.
    summed = sum(part.partial_output(x) for part in parts)
    torch.testing.assert_close(summed, whole(x), rtol=1e-5, atol=1e-5)


def test_qwen2_moe_shared_expert_shards_sum_to_the_whole(tiny_model_dirs):
    # The routed experts and the gated shared expert: one sum of partials for both.
    path = tiny_model_dirs["qwen2_moe"]
    config = AutoConfig.from_pretrained(path)
    _, model_class = resolve_model_class(config.architectures)
    blocks = []
    for rank, tp_size in ((0, 1), (0, 2), (1, 2)):
        model = model_class(config, tp_rank=rank, tp_size=tp_size)
        model.load_weights(iterate_checkpoint_weights(str(path)))
        blocks.append(model.model.layers[0].mlp)
    whole, *parts = blocks
    assert isinstance(whole, Qwen2MoeBlock)
    x = torch.randn(10, config.hidden_size, generator=torch.Generator().manual_seed(8))
    summed = parts[0].partial_output(x) + parts[1].partial_output(x)
    torch.testing.assert_close(summed, whole(x), rtol=1e-5, atol=1e-5)


def test_expert_block_refuses_other_activations_and_top_k():
    with pytest.raises(ValueError, match="hidden_act: only 'silu'"):
        SparseMoeBlock(HIDDEN, EXPERTS, 2, INTER, True, hidden_act="gelu")
    with pytest.raises(ValueError, match="num_experts_per_tok: 7"):
        SparseMoeBlock(HIDDEN, EXPERTS, 7, INTER, True)
    with pytest.raises(ValueError, match="moe intermediate_size=24 is not divisible by 5"):
        MoEExperts(EXPERTS, HIDDEN, INTER, tp_rank=0, tp_size=5)


def test_qwen_moe_layer_plan_follows_mlp_only_layers_and_sparse_step(tiny_model_dirs):
    config = AutoConfig.from_pretrained(tiny_model_dirs["qwen3_moe"])
    assert [is_sparse_layer(config, i) for i in range(3)] == [True, False, True]
    config.mlp_only_layers, config.decoder_sparse_step = [], 2
    assert [is_sparse_layer(config, i) for i in range(4)] == [False, True, False, True]
    runner = runner_for(tiny_model_dirs["qwen3_moe"])
    kinds = [type(layer.mlp).__name__ for layer in runner.model.model.layers]
    assert kinds == ["QwenMoeBlock", "LlamaMLP", "QwenMoeBlock"]


@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_hub_layout_loads_each_expert_and_matches_transformers(tiny_model_dirs, arch):
    path = tiny_model_dirs[arch]
    checkpoint = load_file(path / "model.safetensors")
    block = "block_sparse_moe" if arch == "mixtral" else "mlp"
    gate, up, down = ("w1", "w3", "w2") if arch == "mixtral" else ("gate_proj", "up_proj",
                                                                    "down_proj")
    runner = runner_for(path)
    experts = runner.model.model.layers[0].mlp.experts
    for e in range(8):
        name = f"model.layers.0.{block}.experts.{e}.{{}}.weight"
        assert torch.equal(experts.gate_up_proj[e],
                           torch.cat([checkpoint[name.format(gate)], checkpoint[name.format(up)]]))
        assert torch.equal(experts.down_proj[e], checkpoint[name.format(down)])
    torch.testing.assert_close(prompt_logits(runner, TOKENS), hf_prompt_logits(path, TOKENS),
                               rtol=0, atol=1e-4)


@pytest.mark.parametrize("arch", ["qwen3_moe", "mixtral"])
def test_transformers_stacked_layout_loads(tiny_model_dirs, arch, tmp_path):
    # What transformers 5 holds in memory, written with save_original_format=False:
    # mlp.experts.gate_up_proj [E, 2I, H] and mlp.experts.down_proj [E, H, I].
    hf = AutoModelForCausalLM.from_pretrained(tiny_model_dirs[arch], dtype=torch.float32)
    stacked = tmp_path / arch
    hf.save_pretrained(stacked, save_original_format=False)
    names = load_file(stacked / "model.safetensors").keys()
    assert "model.layers.0.mlp.experts.gate_up_proj" in names
    assert not any(".experts.0." in n or "block_sparse_moe" in n for n in names)
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(tiny_model_dirs[arch] / f, stacked / f)
    ours = prompt_logits(runner_for(stacked), TOKENS)
    torch.testing.assert_close(ours, prompt_logits(runner_for(tiny_model_dirs[arch]), TOKENS),
                               rtol=0, atol=0)


@pytest.mark.parametrize("tp_size", [2, 4])
def test_each_rank_loads_its_slice_of_every_expert(tiny_model_dirs, tp_size):
    path = tiny_model_dirs["mixtral"]
    config = AutoConfig.from_pretrained(path)
    checkpoint = load_file(path / "model.safetensors")
    _, model_class = resolve_model_class(config.architectures)
    n = config.intermediate_size // tp_size
    name = "model.layers.1.block_sparse_moe.experts.5.{}.weight"
    for rank in range(tp_size):
        model = model_class(config, tp_rank=rank, tp_size=tp_size)
        model.load_weights(iterate_checkpoint_weights(str(path)))
        experts = model.model.layers[1].mlp.experts
        rows = slice(rank * n, (rank + 1) * n)
        assert torch.equal(experts.gate_up_proj[5], torch.cat(
            [checkpoint[name.format("w1")][rows], checkpoint[name.format("w3")][rows]]))
        assert torch.equal(experts.down_proj[5], checkpoint[name.format("w2")][:, rows])


@pytest.mark.parametrize("arch,removed,named", [
    ("qwen3_moe", "model.layers.2.mlp.experts.3.up_proj.weight",
     r"layers\.2\.mlp\.experts\.3\.up_proj\.weight"),
    ("qwen2_moe", "model.layers.0.mlp.experts.7.down_proj.weight",
     r"layers\.0\.mlp\.experts\.7\.down_proj\.weight"),
    # The block is named as transformers 5 names it (mlp, not the hub's block_sparse_moe).
    ("mixtral", "model.layers.1.block_sparse_moe.experts.0.w3.weight",
     r"layers\.1\.mlp\.experts\.0\.w3\.weight"),
])
def test_missing_expert_tensor_is_named(tiny_model_dirs, tmp_path, arch, removed, named):
    broken = copy_with_edited_weights(tiny_model_dirs[arch], tmp_path / "broken",
                                      lambda w: w.pop(removed))
    with pytest.raises(ValueError, match=rf"missing weights: \['model\.{named}'\]"):
        runner_for(broken)


def test_missing_router_and_stray_expert_tensors_are_errors(tiny_model_dirs, tmp_path):
    path = tiny_model_dirs["qwen3_moe"]
    no_router = copy_with_edited_weights(path, tmp_path / "no_router",
                            lambda w: w.pop("model.layers.0.mlp.gate.weight"))
    with pytest.raises(ValueError, match=r"missing weights.*layers\.0\.mlp\.gate\.weight"):
        runner_for(no_router)

    def add(name):
        return lambda w: w.update({name: w["model.layers.0.mlp.experts.0.up_proj.weight"] * 1})

    unknown = copy_with_edited_weights(path, tmp_path / "unknown",
                          add("model.layers.0.mlp.experts.0.w9.weight"))
    with pytest.raises(ValueError, match=r"experts\.0\.w9\.weight' matches no model parameter"):
        runner_for(unknown)
    extra = copy_with_edited_weights(path, tmp_path / "extra",
                        add("model.layers.0.mlp.experts.8.up_proj.weight"))
    with pytest.raises(ValueError, match="expert 8 is out of range: the layer has 8 experts"):
        runner_for(extra)
    # Experts on a layer that has none (layer 1 is dense).
    dense = copy_with_edited_weights(path, tmp_path / "dense",
                        add("model.layers.1.mlp.experts.0.up_proj.weight"))
    with pytest.raises(ValueError, match=r"has no parameter 'model\.layers\.1\.mlp\.experts\."
                                         r"gate_up_proj'"):
        runner_for(dense)


def test_misshapen_stacked_experts_are_errors(tiny_model_dirs, tmp_path):
    hf = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["mixtral"], dtype=torch.float32)
    stacked = tmp_path / "stacked"
    hf.save_pretrained(stacked, save_original_format=False)
    name = "model.layers.0.mlp.experts.gate_up_proj"

    def truncate(weights):
        weights[name] = weights[name][:, :40].clone()

    broken = copy_with_edited_weights(stacked, tmp_path / "broken", truncate)
    with pytest.raises(ValueError, match=r"stacked gate_up_proj of shape \(8, 40, 64\): expected "
                                         r"\[8, 64, hidden\]"):
        runner_for(broken)


@pytest.mark.parametrize("grouped", [True, False])
def test_decode_cuda_graphs_follow_the_expert_path(tiny_model_dirs, monkeypatch, caplog, grouped):
    """Graphs for MoE models exactly when their experts run grouped on the device (bf16 on
    sm90 in production); the decision only (no GPU here): as if on CUDA with an attention
    kernel for the heads."""
    import pagedllm.ops

    monkeypatch.setattr(pagedllm.ops, "cuda_attention_supported", lambda *args: True)
    monkeypatch.setattr(pagedllm.layers.moe, "grouped_mm_on_device", lambda *args: grouped)
    decisions, models = {}, {}
    for arch in ("llama",) + MOE_ARCHS:
        runner = runner_for(tiny_model_dirs[arch])
        runner.device = torch.device("cuda")
        decisions[arch] = runner._graphs_enabled()
        models[arch] = runner.model
    assert decisions == {"llama": True, "qwen3_moe": grouped, "mixtral": grouped,
                         "qwen2_moe": grouped}
    assert model_runner.model_supports_cuda_graphs(models["mixtral"]) == grouped
    # The log line says so when the model is loaded for CUDA (not with enforce_eager).
    monkeypatch.setattr(model_runner, "build_model", lambda *args, **kwargs: models["mixtral"])
    for eager, logged in ((False, not grouped), (True, False)):
        runner = runner_for(tiny_model_dirs["mixtral"], enforce_eager=eager)
        runner.device = torch.device("cuda")
        caplog.clear()
        with caplog.at_level(logging.INFO, logger=model_runner.__name__):
            runner.load_model()
        said = "MixtralForCausalLM: decode steps run eagerly (no CUDA graphs)" in caplog.text
        assert said == logged
        assert runner._graphs_enabled() == (grouped and not eager)


def test_grouped_path_needs_16_byte_rows(monkeypatch):
    monkeypatch.setattr(pagedllm.layers.moe, "grouped_mm_on_device", lambda *args: True)
    assert MoEExperts(4, 16, 12, params_dtype=torch.float32).grouped      # 48-byte rows
    odd = MoEExperts(4, 16, 12, params_dtype=torch.bfloat16)              # 24-byte rows
    assert not odd.grouped and not odd.supports_cuda_graphs
    assert MoEExperts(4, 16, 32, params_dtype=torch.bfloat16).grouped
    assert not MoEExperts(4, 20, 32, params_dtype=torch.bfloat16).grouped  # hidden 40 bytes
