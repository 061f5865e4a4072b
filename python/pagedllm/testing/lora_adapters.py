"""PEFT LoRA adapters for tests, written without peft, and their merged-weights reference.

make_lora_adapter(base, out) writes what PEFT's save_pretrained would for a LoRA on the tiny
model: adapter_config.json and adapter_model.safetensors with
base_model.model.<module>.lora_A.weight [r, in] and .lora_B.weight [out, r] for every
nn.Linear of the Hugging Face model whose name ends in one of the target modules. B is random
(PEFT starts it at zero), large enough that the adapter changes the greedy tokens.

merge_lora_checkpoint(base, adapter, out) is the oracle: a copy of the base model directory
whose weights are W + scale * B A (scale = lora_alpha / r, or / sqrt(r) with rsLoRA), computed
on the Hugging Face checkpoint from the adapter's files alone, for transformers to run.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Sequence

import torch

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_PREFIX = "base_model.model."


def make_lora_adapter(base_model_dir: str | Path, out_dir: str | Path, *, rank: int = 8,
                      alpha: float = 16.0, target_modules: Sequence[str] = DEFAULT_TARGETS,
                      seed: int = 1, use_rslora: bool = False, strength: float = 1.0,
                      config_overrides: dict | None = None) -> Path:
    """Write a PEFT adapter for the model in `base_model_dir` into `out_dir`; returns it.
    strength scales B: 1.0 makes each delta about as large as the base layer's output.
    config_overrides: adapter_config.json fields to set (tests of refused adapters)."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base_model_dir), dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    scale = alpha / (math.sqrt(rank) if use_rslora else rank)
    tensors: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or name.rsplit(".", 1)[-1] not in target_modules:
            continue
        out_features, in_features = module.weight.shape
        # x A^T has unit-ish entries for unit-ish x; B then matches the base weight's scale.
        a = torch.randn(rank, in_features, generator=gen) / math.sqrt(in_features)
        b_std = float(module.weight.detach().std()) * math.sqrt(in_features / rank) * strength / scale
        b = torch.randn(out_features, rank, generator=gen) * b_std
        tensors[f"{_PREFIX}{name}.lora_A.weight"] = a.contiguous()
        tensors[f"{_PREFIX}{name}.lora_B.weight"] = b.contiguous()
    if not tensors:
        raise ValueError(f"target_modules {list(target_modules)} match no linear of the model")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha,
        "target_modules": list(target_modules), "use_rslora": use_rslora, "bias": "none",
        "lora_dropout": 0.0, "fan_in_fan_out": False, "modules_to_save": None,
        "base_model_name_or_path": str(base_model_dir), "inference_mode": True,
    }
    config.update(config_overrides or {})
    (out / "adapter_config.json").write_text(json.dumps(config, indent=1))
    return out


def merge_lora_checkpoint(base_model_dir: str | Path, adapter_dir: str | Path,
                          out_dir: str | Path) -> Path:
    """A copy of the base model directory with the adapter merged into its weights."""
    from safetensors.torch import load_file, save_file

    base, adapter, out = Path(base_model_dir), Path(adapter_dir), Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(base, out)
    config = json.loads((adapter / "adapter_config.json").read_text())
    rank = config["r"]
    scale = config["lora_alpha"] / (math.sqrt(rank) if config.get("use_rslora") else rank)
    lora = load_file(str(adapter / "adapter_model.safetensors"))
    weights = load_file(str(out / "model.safetensors"))
    for key, a in lora.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[len(_PREFIX): -len(".lora_A.weight")]
        b = lora[f"{_PREFIX}{module}.lora_B.weight"]
        w = weights[f"{module}.weight"]
        weights[f"{module}.weight"] = (w.double() + scale * (b.double() @ a.double())).to(w.dtype)
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out
