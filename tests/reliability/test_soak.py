"""Soak: many sequential short requests; the server's RSS must not grow (< 5% after warm-up) and
latency must not drift. Sized for CI; PAGEDLLM_SOAK_REQUESTS raises the count (issue 6: 10,000)."""

from __future__ import annotations

import os
import statistics
import time

import httpx
import psutil

from sse import wait_until_idle

WARMUP = 200
MEASURED = int(os.environ.get("PAGEDLLM_SOAK_REQUESTS", "1000"))


# `soak_server` (conftest.py) has a KV cache small enough to be fully paged in by the warm-up.
def test_sequential_requests_rss_and_latency_stable(soak_server):
    rserver = soak_server
    proc = psutil.Process(rserver.proc.pid)
    latencies = []
    with httpx.Client(base_url=rserver.url, timeout=60) as c:

        def one(i: int) -> None:
            stream = i % 2 == 0
            body = {"model": "tiny", "prompt": f"soak {i % 97}", "max_tokens": 4, "stream": stream}
            t0 = time.perf_counter()
            resp = c.post("/v1/completions", json=body)
            latencies.append(time.perf_counter() - t0)
            assert resp.status_code == 200, resp.text
            if stream:
                assert resp.text.endswith("data: [DONE]\n\n")

        for i in range(WARMUP):
            one(i)
        rss_start = proc.memory_info().rss
        latencies.clear()
        for i in range(MEASURED):
            one(WARMUP + i)
        rss_end = proc.memory_info().rss
    growth = (rss_end - rss_start) / rss_start
    print(
        f"soak: {MEASURED} requests, RSS {rss_start / 2**20:.1f} -> {rss_end / 2**20:.1f} MiB "
        f"({growth * 100:+.2f}%), latency first/last 20%: "
        f"{statistics.median(latencies[: MEASURED // 5]) * 1000:.1f} / "
        f"{statistics.median(latencies[-MEASURED // 5 :]) * 1000:.1f} ms"
    )
    assert growth < 0.05
    # Issue 6 asks for < 5% over 10,000 requests: extrapolate this window's growth linearly,
    # forgiving one 8 MiB allocator arena step (RSS moves in such steps).
    projected = max(0, rss_end - rss_start - 8 * 2**20) * (10_000 / MEASURED)
    assert projected < 0.05 * rss_start, f"projected growth {projected / 2**20:.1f} MiB"
    first = statistics.median(latencies[: MEASURED // 5])
    last = statistics.median(latencies[-MEASURED // 5 :])
    assert last < 1.5 * first + 0.005
    after = wait_until_idle(rserver.url)
    assert after["pagedllm:kv_cache_blocks_used"] == 0
