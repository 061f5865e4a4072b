"""Resolve a ModelConfig (where the model is, its HF config, dtype, max length) and build the
model with its weights: a local HF directory (safetensors or .bin), a hub id already in the local
cache (never downloads), a GGUF file, or random weights (load_format="dummy")."""
from __future__ import annotations

import contextlib
import glob
import json
import os
from typing import Any, Iterator, Optional

import torch
from torch import nn

from pagedllm.config import ModelConfig
from pagedllm.layers.rotary_embedding import (rope_parameters_from_config,
                                              rope_scaled_max_positions)
from pagedllm.models import gguf_loader
from pagedllm.models.registry import resolve_model_class

_NAMED_DTYPES = {"float16": torch.float16, "half": torch.float16, "bfloat16": torch.bfloat16,
                 "float32": torch.float32, "float": torch.float32}


def resolve_model_path(model: str, revision: Optional[str] = None,
                       field_name: str = "model") -> str:
    """A local path for `model`: itself if it exists, else the snapshot of a hub id in the local
    HF cache (offline). ValueError naming `field_name` otherwise."""
    if os.path.exists(model):
        return model
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(model, revision=revision, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means "not available offline"
        raise ValueError(f"{field_name}: {model!r} is neither a local path nor a model in the local "
                         f"Hugging Face cache (pagedllm never downloads): {exc}") from None


def resolve_model_config(model_config: ModelConfig,
                         device: torch.device | str = "cpu") -> ModelConfig:
    """Fill model_config.hf_config, .torch_dtype, .max_model_len and .model_path (in place)."""
    from transformers import AutoConfig

    path = resolve_model_path(model_config.model, model_config.revision)
    if not model_config.gguf_file and not path.endswith(".gguf"):
        model_config.gguf_file = gguf_loader.sole_gguf_in_directory(path)
    if gguf_loader.is_gguf(path, model_config.gguf_file) or model_config.load_format == "gguf":
        directory, name = gguf_loader.split_gguf_path(path, model_config.gguf_file)
        model_config.gguf_path = os.path.join(directory, name)
        hf_config = gguf_loader.load_gguf_config(directory, name)
    else:
        model_config.gguf_path = None
        hf_config = AutoConfig.from_pretrained(
            path, trust_remote_code=model_config.trust_remote_code, revision=model_config.revision)
    _, model_class = resolve_model_class(getattr(hf_config, "architectures", None))  # fail early
    _refuse_quantized(hf_config, path)
    if hasattr(model_class, "text_only_config"):
        # A vision-language checkpoint served text-only: the engine runs on its language model's
        # config (vocabulary, KV heads, layers, max positions).
        hf_config = model_class.text_only_config(hf_config)
    model_config.model_path = path
    model_config.hf_config = hf_config
    model_config.torch_dtype = choose_dtype(model_config.dtype, hf_config, torch.device(device))
    derived = derived_max_model_len(hf_config)
    if model_config.max_model_len is None:
        model_config.max_model_len = derived
    elif model_config.max_model_len > derived:
        raise ValueError(f"max_model_len: {model_config.max_model_len} exceeds the model's "
                         f"maximum of {derived} positions")
    return model_config


def _refuse_quantized(hf_config: Any, path: str) -> None:
    """A checkpoint with a quantization_config (AWQ, GPTQ, FP8, bitsandbytes, ...) holds packed
    weights the models here cannot load: say so before loading fails on a weight's name."""
    quant = getattr(hf_config, "quantization_config", None)
    if not quant:
        return
    method = (quant.get("quant_method") if isinstance(quant, dict)
              else getattr(quant, "quant_method", None))
    raise ValueError(f"model: {path} is a quantized checkpoint (quantization_config.quant_method "
                     f"= {method!r}); pagedllm serves unquantized bf16 / fp16 / fp32 weights only")


def derived_max_model_len(hf_config: Any) -> int:
    """The model's longest sequence: its maximum positions, or further where its rope scaling
    reaches further (YaRN: original_max_position_embeddings * factor)."""
    if getattr(hf_config, "max_position_embeddings", None):
        scaled = rope_scaled_max_positions(rope_parameters_from_config(hf_config))
        return max(int(hf_config.max_position_embeddings), scaled or 0)
    for key in ("n_positions", "max_seq_len", "seq_length"):
        value = getattr(hf_config, key, None)
        if value:
            return int(value)
    return 2048


def choose_dtype(requested: str, hf_config: Any, device: torch.device) -> torch.dtype:
    """The dtype named by `requested`; for "auto": float32 on CPU, else the checkpoint's 16-bit
    dtype (bfloat16 for float32 checkpoints)."""
    if requested != "auto":
        return _NAMED_DTYPES[requested]
    if device.type == "cpu":
        return torch.float32   # CPU matmuls are fastest and exact in float32
    stored = getattr(hf_config, "dtype", None) or getattr(hf_config, "torch_dtype", None)
    if isinstance(stored, str):
        stored = _NAMED_DTYPES.get(stored)
    if stored in (torch.float16, torch.bfloat16):
        return stored
    return torch.bfloat16       # float32 checkpoints run in bf16 on GPU, as vLLM does


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def build_model(model_config: ModelConfig, device: torch.device, tp_rank: int = 0,
                tp_size: int = 1) -> nn.Module:
    """Instantiate the model on `device` in model_config.torch_dtype and load its weights."""
    if model_config.hf_config is None:
        resolve_model_config(model_config, device)
    hf_config = model_config.hf_config
    gguf_path = getattr(model_config, "gguf_path", None)
    if gguf_path is not None and not gguf_loader.has_output_weight(gguf_path):
        hf_config.tie_word_embeddings = True   # the file stores no separate LM head
    _, model_class = resolve_model_class(getattr(hf_config, "architectures", None))
    # Read by rope_parameters_from_config: LongRoPE picks its factors by the longest sequence.
    hf_config.engine_max_model_len = model_config.max_model_len
    with _default_dtype(model_config.torch_dtype), torch.device(device):
        model = model_class(hf_config, tp_rank=tp_rank, tp_size=tp_size)
    if model_config.load_format == "dummy":
        initialize_dummy_weights(model, 0 if model_config.seed is None else model_config.seed)
    elif gguf_path is not None:
        model.load_weights(gguf_loader.iterate_gguf_weights(gguf_path, hf_config))
    else:
        model.load_weights(iterate_checkpoint_weights(model_config.model_path,
                                                      model_config.load_format))
    return model.eval()


def initialize_dummy_weights(model: nn.Module, seed: int) -> None:
    """Random weights of the right shapes (for benchmarks): matrices N(0, 0.02), norm gains 1,
    biases 0, so activations stay finite through any depth."""
    gen_device = next(model.parameters()).device
    gen = torch.Generator(device=gen_device).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 0.02, generator=gen)
            elif "norm" in name and name.endswith("weight"):
                param.fill_(1.0)
            else:
                param.zero_()


def _checkpoint_files(path: str, load_format: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    want_safetensors = load_format in ("auto", "safetensors")
    want_pt = load_format in ("auto", "pt")
    if want_safetensors:
        files = _indexed_or_globbed(path, "model.safetensors.index.json", "*.safetensors")
        if files:
            return files
    if want_pt:
        files = _indexed_or_globbed(path, "pytorch_model.bin.index.json", "*.bin")
        files = [f for f in files if not os.path.basename(f).startswith("training_args")]
        if files:
            return files
    raise ValueError(f"model: no {'safetensors or .bin' if load_format == 'auto' else load_format}"
                     f" weights found in {path!r}")


def _indexed_or_globbed(path: str, index_name: str, pattern: str) -> list[str]:
    index = os.path.join(path, index_name)
    if os.path.isfile(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(path, s) for s in shards]
    # Sharded checkpoints without index, or a single file; consolidated.* are Mistral's
    # duplicate originals.
    return sorted(f for f in glob.glob(os.path.join(path, pattern))
                  if not os.path.basename(f).startswith("consolidated"))


def iterate_checkpoint_weights(path: str,
                               load_format: str = "auto") -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor of the checkpoint, with a progress bar for large ones."""
    from tqdm.auto import tqdm

    files = _checkpoint_files(path, load_format)
    total = sum(os.path.getsize(f) for f in files)
    with tqdm(total=total, unit="B", unit_scale=True, desc="Loading weights",
              disable=total < gguf_loader.PROGRESS_BAR_MIN_BYTES) as bar:
        for file in files:
            if file.endswith(".safetensors"):
                from safetensors import safe_open

                with safe_open(file, framework="pt") as f:
                    for name in f.keys():
                        yield name, f.get_tensor(name)
            else:
                state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
                yield from state.items()
                del state
            bar.update(os.path.getsize(file))
