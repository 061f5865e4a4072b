"""Model classes keyed by the `architectures` names of a Hugging Face config.json."""
from __future__ import annotations

import importlib
from typing import Any, Sequence

# architecture name -> (module under pagedllm.models, class name)
_MODELS: dict[str, tuple[str, str]] = {
    "OPTForCausalLM": ("opt", "OPTForCausalLM"),
    "LlamaForCausalLM": ("llama", "LlamaForCausalLM"),
    "MistralForCausalLM": ("llama", "MistralForCausalLM"),
    "Qwen2ForCausalLM": ("qwen", "Qwen2ForCausalLM"),
    "Qwen3ForCausalLM": ("qwen", "Qwen3ForCausalLM"),
    "Qwen2MoeForCausalLM": ("qwen_moe", "Qwen2MoeForCausalLM"),
    "Qwen3MoeForCausalLM": ("qwen_moe", "Qwen3MoeForCausalLM"),
    "MixtralForCausalLM": ("mixtral", "MixtralForCausalLM"),
    "Phi3ForCausalLM": ("phi3", "Phi3ForCausalLM"),
    "Gemma3ForCausalLM": ("gemma3", "Gemma3ForCausalLM"),
    # Text-only: the language model of the vision-language checkpoints.
    "Gemma3ForConditionalGeneration": ("gemma3", "Gemma3ForConditionalGeneration"),
}


def supported_architectures() -> list[str]:
    return sorted(_MODELS)


def resolve_model_class(architectures: Sequence[str] | None) -> tuple[str, Any]:
    """The first supported architecture of a config and its class; ValueError listing the
    supported architectures if none is."""
    for arch in architectures or ():
        if arch in _MODELS:
            module_name, class_name = _MODELS[arch]
            module = importlib.import_module(f"pagedllm.models.{module_name}")
            return arch, getattr(module, class_name)
    raise ValueError(f"Model architectures {list(architectures or [])} are not supported. "
                     f"Supported architectures: {supported_architectures()}")
