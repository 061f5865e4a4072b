"""The model's tokenizer through transformers' AutoTokenizer: a local directory, a hub id in the
local cache (offline), or the tokenizer embedded in a GGUF file."""
from __future__ import annotations

import os
from typing import Any

from pagedllm.config import ModelConfig
from pagedllm.models import gguf_loader
from pagedllm.models.loader import resolve_model_path


def get_tokenizer(model_config: ModelConfig) -> Any:
    """A transformers tokenizer for model_config.tokenizer (defaults to the model)."""
    from transformers import AutoTokenizer

    name = model_config.tokenizer or model_config.model
    kwargs = dict(trust_remote_code=model_config.trust_remote_code,
                  revision=model_config.revision,
                  use_fast=model_config.tokenizer_mode != "slow")
    path = resolve_model_path(name, model_config.revision, field_name="tokenizer")
    same_as_model = name == model_config.model
    gguf_file = model_config.gguf_file if same_as_model else None
    if not gguf_file and not path.endswith(".gguf"):
        gguf_file = gguf_loader.sole_gguf_in_directory(path)
    if gguf_loader.is_gguf(path, gguf_file):
        directory, file_name = gguf_loader.split_gguf_path(path, gguf_file)
        return AutoTokenizer.from_pretrained(directory, gguf_file=file_name, **kwargs)
    if os.path.isfile(path):
        raise ValueError(f"tokenizer: {path!r} is a file but not a .gguf file")
    return AutoTokenizer.from_pretrained(path, **kwargs)
