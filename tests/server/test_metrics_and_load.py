"""/metrics (parsed by prometheus_client), disconnects freeing KV blocks, 200 concurrent streams."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

MODEL = "tiny"


def scrape(url: str) -> dict[str, float]:
    """sample name -> value (label sets summed), from the text exposition format."""
    text = httpx.get(url + "/metrics", timeout=30).text
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("finished_reason") is not None:
                key = f"{sample.name}[{sample.labels['finished_reason']}]"
                values[key] = values.get(key, 0.0) + sample.value
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return values


def wait_until_idle(url: str, timeout: float = 10.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        m = scrape(url)
        idle = (
            m["pagedllm:kv_cache_blocks_used"] == 0
            and m["pagedllm:num_requests_running"] == 0
            and m["pagedllm:num_requests_waiting"] == 0
        )
        if idle or time.monotonic() > deadline:
            return m
        time.sleep(0.05)


def test_metrics_parse_and_counters_move(server):
    before = scrape(server.url)
    for name in (
        "pagedllm:num_requests_running",
        "pagedllm:num_requests_waiting",
        "pagedllm:kv_cache_usage_perc",
        "pagedllm:prefix_cache_hit_rate",
        "pagedllm:num_preemptions_total",
        "pagedllm:kv_cache_blocks_total",
    ):
        assert name in before, name
    assert before["pagedllm:kv_cache_blocks_total"] > 0
    body = {
        "model": MODEL,
        "prompt": "Counting tokens here",
        "max_tokens": 5,
        "temperature": 0,
        "ignore_eos": True,
    }
    resp = httpx.post(server.url + "/v1/completions", json=body, timeout=60).json()
    # The same prompt again: its full blocks may come from the prefix cache.
    httpx.post(server.url + "/v1/completions", json=body, timeout=60)
    after = wait_until_idle(server.url)
    n_prompt = resp["usage"]["prompt_tokens"]
    g = lambda m, k: m.get(k, 0.0)  # noqa: E731
    assert (
        g(after, "pagedllm:prompt_tokens_total") - g(before, "pagedllm:prompt_tokens_total")
        == 2 * n_prompt
    )
    assert (
        g(after, "pagedllm:generation_tokens_total") - g(before, "pagedllm:generation_tokens_total")
        == 10
    )
    assert (
        g(after, "pagedllm:request_success_total[length]")
        - g(before, "pagedllm:request_success_total[length]")
    ) == 2
    for hist in ("time_to_first_token_seconds", "e2e_request_latency_seconds"):
        key = f"pagedllm:{hist}_count"
        assert g(after, key) - g(before, key) == 2
    key = "pagedllm:inter_token_latency_seconds_count"
    assert g(after, key) - g(before, key) == 8
    assert g(after, "pagedllm:prefix_cache_queries_total") > g(
        before, "pagedllm:prefix_cache_queries_total"
    )
    assert after["pagedllm:kv_cache_usage_perc"] == 0.0


def test_disconnect_mid_stream_frees_blocks(server):
    body = {
        "model": MODEL,
        "prompt": "A long story begins " * 4,
        "max_tokens": 150,
        "stream": True,
        "ignore_eos": True,
    }
    with httpx.Client(timeout=60) as c:
        with c.stream("POST", server.url + "/v1/completions", json=body) as resp:
            assert resp.status_code == 200
            lines = resp.iter_lines()
            got = 0
            for line in lines:
                if line.startswith("data: "):
                    got += 1
                if got == 3:
                    break
            during = scrape(server.url)
            assert during["pagedllm:num_requests_running"] >= 1
            assert during["pagedllm:kv_cache_blocks_used"] >= 1
        # leaving the block closes the connection mid-stream
    closed_at = time.monotonic()
    after = wait_until_idle(server.url, timeout=10.0)
    assert after["pagedllm:kv_cache_blocks_used"] == 0
    assert after["pagedllm:num_requests_running"] == 0
    assert time.monotonic() - closed_at < 5.0
    assert after["pagedllm:request_aborted_total"] == during["pagedllm:request_aborted_total"] + 1
    # No success sample exists before a first request finished (when this test runs alone).
    success = "pagedllm:request_success_total"
    assert after.get(success, 0.0) >= during.get(success, 0.0)


def test_disconnect_non_streaming_aborts(server):
    before = scrape(server.url)
    body = {"model": MODEL, "prompt": "Wait", "max_tokens": 240, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/completions", json=body, timeout=0.05)
    after = wait_until_idle(server.url, timeout=10.0)
    assert after["pagedllm:kv_cache_blocks_used"] == 0
    assert after["pagedllm:num_requests_running"] == 0
    assert after["pagedllm:request_aborted_total"] == before["pagedllm:request_aborted_total"] + 1


async def test_200_concurrent_streams_complete(server):
    n_streams = 200
    limits = httpx.Limits(max_connections=n_streams, max_keepalive_connections=n_streams)

    async def one(c: httpx.AsyncClient, i: int) -> tuple[str, int]:
        chat = i % 2 == 1
        path = "/v1/chat/completions" if chat else "/v1/completions"
        body = {
            "model": MODEL,
            "max_tokens": 4 + i % 5,
            "stream": True,
            "ignore_eos": True,
            "temperature": 0.0,
        }
        if chat:
            body["messages"] = [{"role": "user", "content": f"question {i}"}]
        else:
            body["prompt"] = f"prompt number {i}"
        finish = None
        done = False
        async with c.stream("POST", path, json=body) as resp:
            assert resp.status_code == 200
            async for line in resp.aiter_lines():
                if not line:
                    continue
                assert line.startswith("data: ")
                payload = line[6:]
                if payload == "[DONE]":
                    done = True
                    continue
                assert not done
                chunk = json.loads(payload)
                assert "error" not in chunk, chunk
                if chunk["choices"][0]["finish_reason"] is not None:
                    finish = chunk["choices"][0]["finish_reason"]
        assert done
        return finish, i

    async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as c:
        results = await asyncio.gather(*[one(c, i) for i in range(n_streams)])
    assert [r[0] for r in results] == ["length"] * n_streams
    after = wait_until_idle(server.url)
    assert after["pagedllm:kv_cache_blocks_used"] == 0
