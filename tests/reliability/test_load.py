"""Load (1,000 concurrent streams), a disconnect storm, and greedy determinism inside a batch."""

from __future__ import annotations

import asyncio
import random

import httpx

from sse import check_stream_lines, wait_until_idle

MODEL = "tiny"
STOPS = [None, ["a"], ["e", "zz"], [" "], ["ing", "the", "x"]]


def limits(n: int) -> httpx.Limits:
    return httpx.Limits(max_connections=n, max_keepalive_connections=n)


async def stream_lines(c: httpx.AsyncClient, path: str, body: dict) -> list[str]:
    async with c.stream("POST", path, json=body) as resp:
        assert resp.status_code == 200, await resp.aread()
        return [line async for line in resp.aiter_lines()]


async def test_1000_concurrent_streams(rserver):
    rng = random.Random(0)
    specs = []
    for i in range(1000):
        n = 2 if i % 4 == 0 else 1
        stop = rng.choice(STOPS)
        body = {
            "model": MODEL,
            "max_tokens": rng.randint(1, 24),
            "n": n,
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": rng.choice([0.0, 0.9]),
            "seed": i,
        }
        if stop:
            body["stop"] = stop
        if i % 3 == 0:
            path = "/v1/chat/completions"
            body["messages"] = [{"role": "user", "content": f"question {i} " * rng.randint(1, 6)}]
        else:
            path = "/v1/completions"
            body["prompt"] = f"request {i} " * rng.randint(1, 10)
        specs.append((path, body))

    async with httpx.AsyncClient(base_url=rserver.url, timeout=600, limits=limits(1000)) as c:
        all_lines = await asyncio.gather(*[stream_lines(c, p, b) for p, b in specs])

    for (path, body), lines in zip(specs, all_lines):
        res = check_stream_lines(lines)
        n = body["n"]
        assert sorted(res.finish) == list(range(n)), (path, body, res)
        for idx in range(n):
            assert res.finish[idx] in ("stop", "length")
            text = res.texts.get(idx, "")
            for s in body.get("stop") or []:
                assert s not in text
        assert (
            res.usage is not None and 1 <= res.usage["completion_tokens"] <= n * body["max_tokens"]
        )
    after = wait_until_idle(rserver.url)
    assert after["pagedllm:kv_cache_blocks_used"] == 0
    assert after["pagedllm:num_requests_running"] == 0
    assert after["pagedllm:num_requests_waiting"] == 0


async def test_disconnect_storm_leaves_others_intact(rserver):
    prompts = [f"storm prompt {k} " * (1 + k % 5) for k in range(20)]

    def body(k: int, n: int = 1) -> dict:
        return {
            "model": MODEL,
            "prompt": prompts[k],
            "max_tokens": 32,
            "temperature": 0.0,
            "ignore_eos": True,
            "stream": True,
            "n": n,
        }

    async with httpx.AsyncClient(base_url=rserver.url, timeout=600, limits=limits(500)) as c:
        # Reference: each prompt alone, on an unloaded server.
        reference = []
        for k in range(len(prompts)):
            res = check_stream_lines(await stream_lines(c, "/v1/completions", body(k)))
            reference.append(res.texts[0])
        rng = random.Random(1)
        # (prompt, disconnects?, after how many events, n): every 5th request has n=2
        plan = [
            (i % len(prompts), rng.random() < 0.3, rng.randint(1, 30), 2 if i % 5 == 0 else 1)
            for i in range(500)
        ]

        async def one(k: int, leave: bool, after_events: int, n: int):
            if not leave:
                res = check_stream_lines(await stream_lines(c, "/v1/completions", body(k, n)))
                assert sorted(res.texts) == list(range(n))
                return k, res
            async with c.stream("POST", "/v1/completions", json=body(k, n)) as resp:
                seen = 0
                async for line in resp.aiter_lines():
                    seen += line.startswith("data: ")
                    if seen >= after_events:
                        break  # leaving the block drops the connection mid-stream
            return k, None

        results = await asyncio.gather(*[one(*p) for p in plan])
    completed = [(k, r) for k, r in results if r is not None]
    assert len(completed) == sum(1 for _, leave, _, _ in plan if not leave)
    mismatched = [(k, reference[k], t) for k, r in completed for t in r.texts.values()
                  if t != reference[k]]
    assert mismatched == [], f"{len(mismatched)} streams differ from the unloaded run (prompt, " \
                             f"reference, got): {mismatched[:3]}"
    after = wait_until_idle(rserver.url)
    assert after["pagedllm:kv_cache_blocks_used"] == 0
    assert after["pagedllm:num_requests_running"] == 0


async def test_greedy_same_alone_and_in_batch_of_64(rserver):
    body = {
        "model": MODEL,
        "prompt": "Determinism check",
        "max_tokens": 24,
        "temperature": 0.0,
        "ignore_eos": True,
        "logprobs": 0,
    }
    async with httpx.AsyncClient(base_url=rserver.url, timeout=600, limits=limits(64)) as c:
        alone = (await c.post("/v1/completions", json=body)).json()["choices"][0]
        others = [{**body, "prompt": f"filler {i} " * (1 + i % 7)} for i in range(63)]
        batch = await asyncio.gather(*[c.post("/v1/completions", json=b) for b in [body] + others])
    inside = batch[0].json()["choices"][0]
    assert inside["text"] == alone["text"]
    assert inside["logprobs"]["tokens"] == alone["logprobs"]["tokens"]
