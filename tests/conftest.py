"""Session-wide fixtures: tiny random-weight HF model directories, built once per test session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from pagedllm.testing.tiny_models import SUPPORTED_ARCHS, make_tiny_model

# Tiny tensors on a shared 2-core machine: one intra-op thread is ~50x faster than two threads
# contending with other processes, and results do not depend on the thread count.
torch.set_num_threads(int(os.environ.get("PAGEDLLM_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """arch -> directory of a tiny model ("opt", "llama", "qwen2", "qwen3")."""
    root = tmp_path_factory.mktemp("tiny_models")
    return {arch: make_tiny_model(arch, root / arch, seed=0) for arch in SUPPORTED_ARCHS}


@pytest.fixture(scope="session")
def tiny_opt(tiny_model_dirs: dict[str, Path]) -> Path:
    return tiny_model_dirs["opt"]


@pytest.fixture(scope="session")
def tiny_llama(tiny_model_dirs: dict[str, Path]) -> Path:
    return tiny_model_dirs["llama"]


@pytest.fixture(scope="session")
def tiny_qwen2(tiny_model_dirs: dict[str, Path]) -> Path:
    return tiny_model_dirs["qwen2"]


@pytest.fixture(scope="session")
def tiny_qwen3(tiny_model_dirs: dict[str, Path]) -> Path:
    return tiny_model_dirs["qwen3"]


@pytest.fixture(scope="session")
def tiny_thinking_qwen3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Qwen3 with `<think>` / `</think>` as whole tokens, as thinking models have."""
    return make_tiny_model("qwen3", tmp_path_factory.mktemp("thinking") / "qwen3",
                           added_tokens=("<think>", "</think>"))


# PEFT LoRA adapters of the tiny models (pagedllm.testing.lora_adapters): kind -> arguments.
# "all": every projection; "rslora": rsLoRA scaling at another rank; "qv": q and v only;
# "fused": Phi-3's fused qkv_proj / gate_up_proj.
TINY_LORAS = {
    "all": dict(rank=8, alpha=16.0, seed=1),
    "rslora": dict(rank=4, alpha=8.0, seed=2, use_rslora=True),
    "qv": dict(rank=4, alpha=4.0, seed=3, target_modules=("q_proj", "v_proj"), strength=2.0),
    "fused": dict(rank=8, alpha=16.0, seed=4,
                  target_modules=("qkv_proj", "o_proj", "gate_up_proj", "down_proj")),
}


@pytest.fixture(scope="session")
def tiny_lora(tiny_model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """(arch, kind) -> (adapter directory, the base model with it merged: the reference),
    built on first use."""
    from pagedllm.testing.lora_adapters import make_lora_adapter, merge_lora_checkpoint

    root = tmp_path_factory.mktemp("tiny_loras")
    built: dict[tuple[str, str], tuple[Path, Path]] = {}

    def get(arch: str, kind: str) -> tuple[Path, Path]:
        if (arch, kind) not in built:
            base = tiny_model_dirs[arch]
            adapter = make_lora_adapter(base, root / f"{arch}-{kind}", **TINY_LORAS[kind])
            merged = merge_lora_checkpoint(base, adapter, root / f"{arch}-{kind}-merged")
            built[arch, kind] = (adapter, merged)
        return built[arch, kind]

    return get
