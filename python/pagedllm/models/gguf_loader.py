"""GGUF checkpoints: config from the file's metadata (through transformers), tensors read with
the `gguf` library and dequantized to float at load, renamed to Hugging Face names.

llama.cpp's converter permutes the rows of Llama's q and k projections (it interleaves the two
rotary halves of each head for GPT-J-style rotation); we undo that so the weights match the HF
(NeoX-style) layout our Llama uses. Qwen2/Qwen3 GGUFs are written unpermuted.
"""
from __future__ import annotations

import functools
import os
import re
from typing import Any, Iterator

import numpy as np
import torch

# GGUF name (after "blk.N.") -> HF name (after "model.layers.N.")
_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
    "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
}
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm",
                 "output": "lm_head"}
SUPPORTED_GGUF_ARCHS = ("llama", "qwen2", "qwen3")
# Files this large show a progress bar while loading (same threshold as safetensors/.bin).
PROGRESS_BAR_MIN_BYTES = 256 * 1024 * 1024
_ARCHITECTURE_OF_MODEL_TYPE = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                               "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def split_gguf_path(model: str, gguf_file: str | None) -> tuple[str, str]:
    """(directory, file name) of a GGUF given as a file path or a directory plus file name."""
    if gguf_file:
        path = gguf_file if os.path.isabs(gguf_file) else os.path.join(model, gguf_file)
    else:
        path = model
    if not (path.endswith(".gguf") and os.path.isfile(path)):
        raise ValueError(f"gguf_file: {path!r} is not a .gguf file")
    return os.path.dirname(os.path.abspath(path)), os.path.basename(path)


def is_gguf(model: str, gguf_file: str | None) -> bool:
    return bool(gguf_file) or model.endswith(".gguf")


def sole_gguf_in_directory(directory: str) -> str | None:
    """The one .gguf file of a directory without config.json (None if it has a config.json or
    no .gguf); ValueError naming gguf_file when several .gguf files make it ambiguous."""
    if not os.path.isdir(directory) or os.path.isfile(os.path.join(directory, "config.json")):
        return None
    files = sorted(f for f in os.listdir(directory) if f.endswith(".gguf"))
    if len(files) > 1:
        raise ValueError(f"gguf_file: {directory!r} holds several GGUF files {files}; "
                         f"name one with gguf_file")
    return files[0] if files else None


def load_gguf_config(directory: str, file_name: str) -> Any:
    """A transformers config built from the GGUF metadata. Read with our cached reader rather
    than AutoConfig(gguf_file=...), which parses the whole file again (seconds for a 49k-token
    vocabulary) and ignores attention.key_length (Qwen3Config then assumes head_dim 128)."""
    from transformers import AutoConfig

    path = os.path.join(directory, file_name)
    fields = open_gguf(path).fields
    arch = str(fields["general.architecture"].contents())
    if arch not in SUPPORTED_GGUF_ARCHS:
        raise ValueError(f"GGUF architecture {arch!r} is not supported; supported: "
                         f"{list(SUPPORTED_GGUF_ARCHS)}")

    def value(key: str, default: Any = None) -> Any:
        field = fields.get(key)
        return default if field is None else field.contents()

    num_heads = int(value(f"{arch}.attention.head_count"))
    hidden = int(value(f"{arch}.embedding_length"))
    head_dim = value(f"{arch}.attention.key_length") or value(f"{arch}.rope.dimension_count")
    vocab = value(f"{arch}.vocab_size") or len(fields["tokenizer.ggml.tokens"].data)
    config = AutoConfig.for_model(
        arch,
        architectures=[_ARCHITECTURE_OF_MODEL_TYPE[arch]],
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=int(value(f"{arch}.feed_forward_length")),
        num_hidden_layers=int(value(f"{arch}.block_count")),
        num_attention_heads=num_heads,
        num_key_value_heads=int(value(f"{arch}.attention.head_count_kv", num_heads)),
        head_dim=int(head_dim or hidden // num_heads),
        max_position_embeddings=int(value(f"{arch}.context_length", 2048)),
        rms_norm_eps=float(value(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)),
        rope_theta=float(value(f"{arch}.rope.freq_base", 10000.0)),
        bos_token_id=value("tokenizer.ggml.bos_token_id"),
        eos_token_id=value("tokenizer.ggml.eos_token_id"),
        tie_word_embeddings=not has_output_weight(path),
    )
    for tensor in open_gguf(path).tensors:
        if tensor.name == "rope_freqs.weight":
            # Llama 3.1+ GGUFs store their rope scaling as one divisor per frequency
            # (llama.cpp: theta = position * inv_freq / factor); see rotary_embedding.py.
            factors = np.asarray(tensor.data, dtype=np.float32).reshape(-1)
            config.gguf_rope_freq_factors = [float(f) for f in factors]
    return config


def _unpermute_rotary_rows(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Inverse of llama.cpp's q/k permutation: per head, rows ordered (pair, half) go back to
    (half, pair). weight: [num_heads * head_dim, ...] (a bias is [num_heads * head_dim])."""
    shape = weight.shape
    head_dim = shape[0] // num_heads
    w = weight.reshape(num_heads, head_dim // 2, 2, *shape[1:])
    return w.transpose(1, 2).reshape(shape)


@functools.lru_cache(maxsize=2)
def open_gguf(path: str) -> Any:
    """A memory-mapped gguf.GGUFReader; cached because parsing the metadata (a whole tokenizer
    vocabulary) takes seconds and loading needs it more than once."""
    import gguf

    return gguf.GGUFReader(path)


def gguf_architecture(path: str) -> str:
    return str(open_gguf(path).fields["general.architecture"].contents())


def has_output_weight(path: str) -> bool:
    """False when the LM head is tied to the token embedding (no output.weight stored)."""
    return any(t.name == "output.weight" for t in open_gguf(path).tensors)


def iterate_gguf_weights(path: str, hf_config: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, float32 tensor) for every tensor of the GGUF file."""
    from gguf.quants import dequantize

    reader = open_gguf(path)
    arch = str(reader.fields["general.architecture"].contents())
    if arch not in SUPPORTED_GGUF_ARCHS:
        raise ValueError(f"GGUF architecture {arch!r} is not supported; supported: "
                         f"{list(SUPPORTED_GGUF_ARCHS)}")
    from tqdm.auto import tqdm

    num_heads = hf_config.num_attention_heads
    num_kv_heads = getattr(hf_config, "num_key_value_heads", None) or num_heads
    show_bar = os.path.getsize(path) >= PROGRESS_BAR_MIN_BYTES
    for tensor in tqdm(reader.tensors, desc="Dequantizing GGUF weights", disable=not show_bar):
        name = _hf_name(tensor.name)
        if name is None:
            continue   # e.g. rope_freqs: read into the config by load_gguf_config
        array = dequantize(tensor.data, tensor.tensor_type)
        # ggml lists dims fastest-first; HF wants them slowest-first.
        shape = [int(d) for d in reversed(tensor.shape.tolist())]
        # np.array: a writable copy (torch warns on read-only memory).
        weight = torch.from_numpy(np.array(array, dtype=np.float32)).reshape(shape)
        if arch == "llama" and name.endswith("self_attn.q_proj.weight"):
            weight = _unpermute_rotary_rows(weight, num_heads)
        elif arch == "llama" and name.endswith("self_attn.k_proj.weight"):
            weight = _unpermute_rotary_rows(weight, num_kv_heads)
        yield name, weight


def _hf_name(gguf_name: str) -> str | None:
    match = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", gguf_name)
    if match:
        layer, part, kind = match.groups()
        if part not in _LAYER_NAMES:
            return None
        return f"model.layers.{layer}.{_LAYER_NAMES[part]}.{kind}"
    base, _, kind = gguf_name.rpartition(".")
    if base in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[base]}.{kind}"
    return None
