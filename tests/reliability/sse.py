"""Reading and checking OpenAI SSE streams (shared by the reliability tests)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families


@dataclass
class StreamResult:
    texts: dict[int, str] = field(default_factory=dict)  # choice index -> text
    finish: dict[int, str] = field(default_factory=dict)  # choice index -> finish_reason
    usage: dict | None = None
    done: bool = False


def check_stream_lines(lines: list[str]) -> StreamResult:
    """Parses a complete stream and asserts OpenAI's framing: only `data:` events, JSON chunks,
    one finish_reason per choice on its last chunk, nothing after [DONE]."""
    out = StreamResult()
    for line in lines:
        if line == "":
            continue
        assert line.startswith("data: "), line
        payload = line[6:]
        assert not out.done, "event after [DONE]"
        if payload == "[DONE]":
            out.done = True
            continue
        chunk = json.loads(payload)
        assert "error" not in chunk, chunk
        if not chunk["choices"]:
            out.usage = chunk["usage"]
            continue
        for choice in chunk["choices"]:
            idx = choice["index"]
            assert idx not in out.finish, f"chunk for choice {idx} after its finish_reason"
            piece = choice.get("text")
            if piece is None:
                piece = (choice.get("delta") or {}).get("content") or ""
            out.texts[idx] = out.texts.get(idx, "") + piece
            if choice["finish_reason"] is not None:
                out.finish[idx] = choice["finish_reason"]
    assert out.done, "stream ended without [DONE]"
    return out


def scrape(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics", timeout=30).text
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return values


def wait_until_idle(url: str, timeout: float = 20.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        m = scrape(url)
        if (
            m["pagedllm:kv_cache_blocks_used"] == 0
            and m["pagedllm:num_requests_running"] == 0
            and m["pagedllm:num_requests_waiting"] == 0
        ) or time.monotonic() > deadline:
            return m
        time.sleep(0.05)
