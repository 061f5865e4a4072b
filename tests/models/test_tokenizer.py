"""get_tokenizer: model directory, separate tokenizer path, slow mode, GGUF-embedded tokenizer."""
from __future__ import annotations

import pytest

from pagedllm.config import ModelConfig
from pagedllm.models.default_model import default_model_path
from pagedllm.transformers_utils.tokenizer import get_tokenizer

TEXT = "Grüße 👋🏽 from 東京!"


@pytest.mark.parametrize("mode", ["auto", "slow"])
def test_tokenizer_from_model_dir(tiny_qwen3, mode):
    tokenizer = get_tokenizer(ModelConfig(model=str(tiny_qwen3), tokenizer_mode=mode))
    ids = tokenizer(TEXT).input_ids
    assert tokenizer.decode(ids) == TEXT
    assert tokenizer.eos_token_id == 2


def test_separate_tokenizer_path(tiny_llama, tiny_opt):
    tokenizer = get_tokenizer(ModelConfig(model=str(tiny_opt), tokenizer=str(tiny_llama)))
    assert tokenizer(TEXT).input_ids[0] == tokenizer.bos_token_id == 1


def test_non_gguf_file_is_rejected(tiny_llama):
    with pytest.raises(ValueError, match="tokenizer"):
        get_tokenizer(ModelConfig(model=str(tiny_llama / "config.json")))


def test_missing_tokenizer_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match="tokenizer: 'nobody/nothing'"):
        get_tokenizer(ModelConfig(model="nobody/nothing"))


@pytest.mark.slow
def test_gguf_tokenizer_of_default_model():
    tokenizer = get_tokenizer(ModelConfig(model=default_model_path()))
    assert tokenizer.eos_token_id == 2
    assert tokenizer.decode(tokenizer("The capital of France").input_ids) == "The capital of France"
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert chat.endswith("<|im_start|>assistant\n")
