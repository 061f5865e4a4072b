"""The server in this process, with a handle on its engine: back-pressure (503) with a slowed
engine, and a fault injected into one model forward failing only that step's requests."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest

from server_process import InProcessServer

STEP_DELAY_S = 0.02


@pytest.fixture(scope="module")
def local_server(tiny_llama: Path):
    srv = InProcessServer(
        str(tiny_llama),
        "--max-num-waiting",
        "1",
        "--max-num-seqs",
        "1",
        "--max-model-len",
        "256",
        "--served-model-name",
        "tiny",
        "--device",
        "cpu",
    )
    yield srv
    assert srv.stop() == 0


@pytest.fixture
def slow_steps(local_server):
    """Every engine step takes >= STEP_DELAY_S, so a 100-token request lasts >= 2 s."""
    local_server.engine._fault_injector = lambda: time.sleep(STEP_DELAY_S)
    yield
    local_server.engine._fault_injector = None


def test_back_pressure_503(local_server, slow_steps):
    """max_num_seqs=1: A runs, B waits (1 waiting = the limit), C is refused with 503."""
    url = local_server.url + "/v1/completions"
    long_body = {
        "model": "tiny",
        "prompt": "Long one",
        "max_tokens": 100,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.Client(timeout=60) as a, httpx.Client(timeout=60) as b:
        with a.stream("POST", url, json=long_body) as ra:
            assert ra.status_code == 200
            a_lines = ra.iter_lines()  # kept referenced: dropping it would close A's connection
            assert next(a_lines).startswith("data: ")  # A is running
            with b.stream("POST", url, json=long_body) as rb:
                assert rb.status_code == 200  # headers go out at once; B waits for the slot
                time.sleep(0.1)
                resp = httpx.post(
                    url, timeout=60, json={"model": "tiny", "prompt": "C", "max_tokens": 2}
                )
                assert resp.status_code == 503, resp.text
                err = resp.json()["error"]
                assert err["code"] == "server_overloaded" and err["type"] == "server_overloaded"
    # After A and B went away the server accepts again.
    ok = httpx.post(url, timeout=60, json={"model": "tiny", "prompt": "D", "max_tokens": 2})
    assert ok.status_code == 200, ok.text


def test_fault_in_one_forward_fails_only_that_step(local_server):
    url = local_server.url + "/v1/completions"
    body = {"model": "tiny", "prompt": "Fault", "max_tokens": 8, "ignore_eos": True}
    fired = threading.Event()

    def explode() -> None:
        if not fired.is_set():
            fired.set()
            raise RuntimeError("injected fault")

    local_server.engine._fault_injector = explode
    try:
        failed = httpx.post(url, json=body, timeout=60)
        assert failed.status_code == 500
        err = failed.json()["error"]
        assert err["type"] == "internal_server_error" and err["code"] == 500
        with httpx.stream("POST", url, json={**body, "stream": True}, timeout=60) as resp:
            events = [line for line in resp.iter_lines() if line]
        assert events[-1] == "data: [DONE]"  # the next request is served normally
        assert json.loads(events[-2][6:])["choices"][0]["finish_reason"] == "length"
    finally:
        local_server.engine._fault_injector = None
    # The engine survived: healthy, and the same request succeeds.
    assert httpx.get(local_server.url + "/health").status_code == 200
    assert httpx.post(url, json=body, timeout=60).status_code == 200


def test_fault_mid_stream_sends_error_event(local_server):
    url = local_server.url + "/v1/completions"
    steps = {"n": 0}

    def explode_on_third() -> None:
        steps["n"] += 1
        if steps["n"] == 3:
            raise RuntimeError("injected fault")

    local_server.engine._fault_injector = explode_on_third
    try:
        with httpx.stream(
            "POST",
            url,
            timeout=60,
            json={
                "model": "tiny",
                "prompt": "x",
                "max_tokens": 8,
                "ignore_eos": True,
                "stream": True,
            },
        ) as resp:
            assert resp.status_code == 200
            events = [line for line in resp.iter_lines() if line]
    finally:
        local_server.engine._fault_injector = None
    assert events[-1] == "data: [DONE]"
    error = json.loads(events[-2][6:])["error"]
    assert error["code"] == 500 and error["type"] == "internal_server_error"
    assert httpx.get(local_server.url + "/health").status_code == 200


def test_disconnect_frees_blocks_within_one_step(local_server, slow_steps):
    """Steps take >= 20 ms here, so 'freed within one engine step' is measurable in steps."""
    engine = local_server.engine
    body = {"model": "tiny", "prompt": "Leave early", "max_tokens": 150, "ignore_eos": True,
            "stream": True}
    with httpx.Client(timeout=60) as c:
        with c.stream("POST", local_server.url + "/v1/completions", json=body) as resp:
            lines = resp.iter_lines()
            for _ in range(3):
                assert next(lines).startswith("data: ")
                next(lines)   # the blank line after each event
            assert engine.get_stats().num_blocks_used > 0
            steps_at_close = engine.get_stats().num_steps
        # the connection is closed here
    deadline = time.monotonic() + 5
    while engine.get_stats().num_blocks_used > 0 and time.monotonic() < deadline:
        time.sleep(0.002)
    stats = engine.get_stats()
    assert stats.num_blocks_used == 0 and stats.num_running == 0
    # The abort lands at the next step boundary; +1 because the snapshot read at close may lag
    # the step that was running then. Without the abort this would be ~150 steps.
    assert stats.num_steps - steps_at_close <= 2


def test_disconnect_stops_a_beam_search(local_server, slow_steps):
    """use_beam_search runs one engine request per beam per step: a client that leaves must stop
    the search, not only the step in flight (a runaway search would add ~50 steps a second)."""
    engine = local_server.engine
    body = {"model": "tiny", "prompt": "Leave early", "max_tokens": 100, "n": 2,
            "ignore_eos": True, "use_beam_search": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(local_server.url + "/v1/completions", json=body, timeout=0.5)
    steps_at_close = engine.get_stats().num_steps
    assert steps_at_close > 5            # the search was under way
    time.sleep(1.0)
    stats = engine.get_stats()
    assert stats.num_running == 0 and stats.num_blocks_used == 0
    assert stats.num_steps - steps_at_close <= 3
