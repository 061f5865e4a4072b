"""Faults: a tokenizer error fails only its request; a dead engine turns /health 503 and makes the
server exit non-zero instead of hanging. Step failures: tests/server/test_inprocess.py."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from server_process import InProcessServer

ARGS = ("--max-model-len", "256", "--served-model-name", "tiny", "--device", "cpu")


@pytest.fixture
def fresh_server(tiny_llama: Path):
    srv = InProcessServer(str(tiny_llama), *ARGS)
    yield srv
    srv.stop()


def test_tokenizer_error_fails_only_that_request(fresh_server):
    tokenizer = fresh_server.engine.engine.get_tokenizer()
    real_encode = tokenizer.encode

    def encode(text, *args, **kwargs):
        if "POISON" in text:
            raise RuntimeError("tokenizer exploded")
        return real_encode(text, *args, **kwargs)

    tokenizer.encode = encode
    url = fresh_server.url + "/v1/completions"
    with httpx.Client(timeout=60) as c:
        bad = c.post(url, json={"model": "tiny", "prompt": "POISON pill", "max_tokens": 4})
        assert bad.status_code == 500
        assert bad.json()["error"]["type"] == "internal_server_error"
        for prompt in ("fine one", "fine two"):
            ok = c.post(url, json={"model": "tiny", "prompt": prompt, "max_tokens": 4})
            assert ok.status_code == 200, ok.text
        assert c.get(fresh_server.url + "/health").status_code == 200
    assert fresh_server.stop() == 0


def test_dead_engine_health_503_and_exit_nonzero(fresh_server):
    def broken_step():
        raise SystemError("engine loop broke")  # outside a model forward: not recoverable

    fresh_server.engine.engine.step_with_failures = broken_step
    url = fresh_server.url
    with httpx.Client(timeout=60) as c:
        resp = c.post(
            url + "/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 4}
        )
        assert resp.status_code == 503
        assert resp.json()["error"]["type"] == "engine_dead"
        for route in ("/health", "/ping"):
            try:
                health = c.get(url + route).status_code
            except httpx.TransportError:
                health = None  # already gone: also acceptable, it did not hang
            assert health in (503, None), route
    deadline = time.monotonic() + 30
    while fresh_server._thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not fresh_server._thread.is_alive(), "server kept running on a dead engine"
    assert fresh_server.exit_code == 1
