"""The tiny test models are real HF model directories: transformers loads them and their
tokenizers round-trip any unicode text."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from pagedllm.testing.tiny_models import EOS_ID, SUPPORTED_ARCHS, make_tiny_model

TEXTS = [
    "Hello, world!",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\r\n",
    "日本語のテキスト、中文文本和한국어",
    "emoji 😀🎉🚀👍🏽 family 👨‍👩‍👧‍👦 flags 🇫🇷",
    "mixed: café naïve Ωμέγα ∑∫√ \u200b zero-width",
]


@pytest.mark.parametrize("arch", SUPPORTED_ARCHS)
def test_transformers_loads_tiny_model(tiny_model_dirs, arch):
    path = tiny_model_dirs[arch]
    config = AutoConfig.from_pretrained(path)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    assert head_dim >= 32
    assert config.vocab_size == 512
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert tokenizer.eos_token_id == EOS_ID
    ids = tokenizer("The quick brown fox").input_ids
    logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), 512)
    assert torch.isfinite(logits).all()
    gen = json.loads((path / "generation_config.json").read_text())
    assert gen["eos_token_id"] == EOS_ID


@pytest.mark.parametrize("arch", SUPPORTED_ARCHS)
def test_tokenizer_round_trips_unicode(tiny_model_dirs, arch):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dirs[arch])
    for text in TEXTS:
        ids = tokenizer(text).input_ids
        assert max(ids) < 512
        assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_chat_template_is_present(tiny_llama):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}],
                                         add_generation_prompt=True, tokenize=False)
    assert text == "<|bos|>user\nhi<|eos|>\n<|bos|>assistant\n"


def test_same_seed_same_weights_and_overrides(tmp_path):
    from safetensors.torch import load_file

    a = make_tiny_model("qwen3", tmp_path / "a", seed=3, num_hidden_layers=1)
    b = make_tiny_model("qwen3", tmp_path / "b", seed=3, num_hidden_layers=1)
    c = make_tiny_model("qwen3", tmp_path / "c", seed=4, num_hidden_layers=1)
    wa, wb, wc = (load_file(p / "model.safetensors") for p in (a, b, c))
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not torch.equal(wa["model.embed_tokens.weight"], wc["model.embed_tokens.weight"])
    assert AutoConfig.from_pretrained(a).num_hidden_layers == 1


def test_unknown_arch_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="arch"):
        make_tiny_model("gpt2", tmp_path)
