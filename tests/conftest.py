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
