"""Fixtures for the reliability tests (issue 6): a real server subprocess on a tiny model."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "server"))
sys.path.insert(0, str(Path(__file__).parent))

try:  # 1,000 concurrent streams need ~1,000 sockets on each side (the server inherits this)
    import resource

    _soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if _soft < 8192:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(8192, _hard), _hard))
except (ImportError, ValueError, OSError):
    pass

from server_process import ServerProcess  # noqa: E402

RELIABILITY_ARGS = (
    "--max-model-len",
    "256",
    "--max-num-seqs",
    "256",
    "--served-model-name",
    "tiny",
    "--dtype",
    "float32",
    "--device",
    "cpu",
)


def _server(tiny_llama: Path, *extra: str) -> Iterator[ServerProcess]:
    proc = ServerProcess(str(tiny_llama), *RELIABILITY_ARGS, *extra)
    try:
        yield proc
    finally:
        code = proc.stop()
        proc.close()
        assert code == 0, f"server exit code {code}"


@pytest.fixture(scope="module")
def rserver(tiny_llama: Path) -> Iterator[ServerProcess]:
    yield from _server(tiny_llama)


# The CPU KV cache is calloc'ed: its pages become resident only when a block is first written
# (16 KiB per block of the tiny model), so on a big cache RSS climbs by one block per request
# while fresh blocks are still being handed out -- bounded by the cache size, not a leak. The
# soak server's cache (128 blocks) is fully touched during the warm-up, so what the soak test
# measures after it is real growth.
SOAK_KV_BYTES = 2 * 2**20


@pytest.fixture(scope="module")
def soak_server(tiny_llama: Path) -> Iterator[ServerProcess]:
    yield from _server(tiny_llama, "--kv-cache-space-bytes", str(SOAK_KV_BYTES))
