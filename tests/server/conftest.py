"""Fixtures for the server tests: one real server subprocess (shared by all modules), tiny model."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from server_process import ServerProcess, serve_for_fixture  # noqa: E402

# Small enough to start in seconds on a 2-core CPU, large enough for 200+ concurrent streams.
SERVER_ARGS = (
    "--max-model-len",
    "256",
    "--max-num-seqs",
    "64",
    "--served-model-name",
    "tiny",
    "--dtype",
    "float32",
    "--device",
    "cpu",
)


@pytest.fixture(scope="session")
def server(tiny_llama: Path) -> Iterator[ServerProcess]:
    yield from serve_for_fixture(str(tiny_llama), *SERVER_ARGS)


@pytest.fixture(scope="session")
def thinking_server(tiny_thinking_qwen3: Path) -> Iterator[ServerProcess]:
    """The tiny Qwen3 with <think> tokens behind --reasoning-parser qwen3."""
    pytest.importorskip("xgrammar")
    yield from serve_for_fixture(str(tiny_thinking_qwen3), "--max-model-len", "256",
                                 "--served-model-name", "tiny", "--dtype", "float32",
                                 "--device", "cpu", "--reasoning-parser", "qwen3")
