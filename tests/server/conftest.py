"""Fixtures for the server tests: one real server subprocess (shared by all modules), tiny model."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from server_process import ServerProcess  # noqa: E402

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
    proc = ServerProcess(str(tiny_llama), *SERVER_ARGS)
    try:
        yield proc
    finally:
        code = proc.stop()
        proc.close()
        assert code == 0, f"server exit code {code}"
