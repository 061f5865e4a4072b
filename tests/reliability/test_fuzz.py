"""Fuzzing the HTTP API with hypothesis-generated bodies: wrong types, huge numbers, unicode edge
cases (lone surrogates included), invalid UTF-8, deep nesting, 100k-token prompts, n = 10^6,
logprobs = 10^6. Every answer must be 2xx or a clear 4xx JSON error; never a 5xx."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ANY_CHAR_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=60)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | ANY_CHAR_TEXT
)
JSON_ANY = st.recursive(
    SCALARS,
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=12,
)
SMALL_INT = st.integers(-3, 40)
HUGE_INT = st.sampled_from([10**6, 10**9, 2**63, -(2**63), 10**30])


def mixed(*good):
    return st.one_of(*good, HUGE_INT, JSON_ANY)


PROMPT = st.one_of(
    ANY_CHAR_TEXT,
    st.lists(st.integers(-5, 600), max_size=40),
    st.lists(ANY_CHAR_TEXT, max_size=4),
    st.just([7] * 100_000),
    st.just("word " * 20_000),
    JSON_ANY,
)
SAMPLING = {
    "model": st.sampled_from(["tiny", "", "other"]) | JSON_ANY,
    "max_tokens": mixed(SMALL_INT),
    "n": mixed(st.integers(0, 3)),
    "temperature": mixed(st.floats(-1, 3)),
    "top_p": mixed(st.floats(-0.5, 1.5)),
    "top_k": mixed(SMALL_INT),
    "min_p": mixed(st.floats(-0.5, 1.5)),
    "seed": mixed(SMALL_INT),
    "stop": st.one_of(ANY_CHAR_TEXT, st.lists(ANY_CHAR_TEXT, max_size=40), JSON_ANY),
    "stream": st.booleans() | JSON_ANY,
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}) | JSON_ANY,
    "presence_penalty": mixed(st.floats(-3, 3)),
    "frequency_penalty": mixed(st.floats(-3, 3)),
    "repetition_penalty": mixed(st.floats(-1, 3)),
    "ignore_eos": st.booleans() | JSON_ANY,
    "stop_token_ids": st.lists(st.integers(-3, 10**6), max_size=4) | JSON_ANY,
    "min_tokens": mixed(SMALL_INT),
}
COMPLETION = st.fixed_dictionaries(
    {},
    optional={
        **SAMPLING,
        "prompt": PROMPT,
        "logprobs": mixed(st.integers(-1, 6)),
        "echo": st.booleans(),
        "suffix": st.none() | ANY_CHAR_TEXT,
        "best_of": mixed(st.integers(0, 3)),
    },
)
MESSAGE = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "system", "assistant", "x"]),
        "content": st.one_of(ANY_CHAR_TEXT, JSON_ANY),
    }
)
CHAT = st.fixed_dictionaries(
    {},
    optional={
        **SAMPLING,
        "messages": st.lists(MESSAGE, max_size=4) | JSON_ANY,
        "logprobs": st.booleans() | JSON_ANY,
        "top_logprobs": mixed(st.integers(-1, 6)),
        "max_completion_tokens": mixed(SMALL_INT),
        "chat_template_kwargs": st.dictionaries(st.text(max_size=8), JSON_ANY, max_size=3),
    },
)
TOKENIZE = st.fixed_dictionaries(
    {},
    optional={
        "prompt": ANY_CHAR_TEXT | JSON_ANY,
        "messages": st.lists(MESSAGE, max_size=3) | JSON_ANY,
        "add_special_tokens": st.booleans() | JSON_ANY,
    },
)
DETOKENIZE = st.fixed_dictionaries(
    {}, optional={"tokens": st.lists(st.integers(-5, 10**7), max_size=20) | JSON_ANY}
)

FUZZ_SETTINGS = settings(
    max_examples=120, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)


@pytest.fixture(scope="module")
def http(rserver):
    with httpx.Client(base_url=rserver.url, timeout=120) as c:
        yield c


def check(resp: httpx.Response) -> None:
    assert resp.status_code < 500, (resp.status_code, resp.text[:500])
    if resp.status_code >= 400:
        err = resp.json()["error"]
        assert err["message"] and err["type"]
    elif resp.headers.get("content-type", "").startswith("text/event-stream"):
        lines = [line for line in resp.text.split("\n") if line]
        assert lines[-1] == "data: [DONE]"
        for line in lines[:-1]:
            assert "internal_server_error" not in line, line


def post_json(http: httpx.Client, path: str, body) -> httpx.Response:
    # allow_nan: NaN/Infinity literals are part of the attack surface
    data = json.dumps(body, allow_nan=True).encode("utf-8", errors="surrogatepass")
    return http.post(path, content=data, headers={"content-type": "application/json"})


@FUZZ_SETTINGS
@given(body=COMPLETION)
def test_fuzz_completions(http, body):
    check(post_json(http, "/v1/completions", body))


@FUZZ_SETTINGS
@given(body=CHAT)
def test_fuzz_chat(http, body):
    check(post_json(http, "/v1/chat/completions", body))


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(tok=TOKENIZE, detok=DETOKENIZE)
def test_fuzz_tokenize(http, tok, detok):
    check(post_json(http, "/tokenize", tok))
    check(post_json(http, "/detokenize", detok))


@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(
    raw=st.binary(max_size=300),
    path=st.sampled_from(["/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"]),
)
def test_fuzz_raw_bytes(http, raw, path):
    check(http.post(path, content=raw, headers={"content-type": "application/json"}))


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": "hi", "n": 10**6},
        {"prompt": "hi", "logprobs": 10**6},
        {"prompt": [7] * 100_000, "max_tokens": 1},
        {"prompt": "x" * 400_000, "max_tokens": 1},
        {"prompt": "hi", "max_tokens": 10**18},
        {"prompt": "hi", "stop": ["s"] * 10_000},
        {"prompt": "hi", "seed": 10**40},
        {"prompt": "\udcff\ud800"},
        {"prompt": "\x00\x01\u202e\ufeff"},
    ],
)
def test_known_nasty_bodies(http, body):
    resp = post_json(http, "/v1/completions", {"model": "tiny", **body})
    check(resp)


def test_deep_nesting_and_invalid_utf8(http):
    deep = b'{"prompt": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    check(http.post("/v1/completions", content=deep, headers={"content-type": "application/json"}))
    bad_utf8 = b'{"prompt": "\xff\xfe\xc0\xaf", "max_tokens": 2}'
    resp = http.post(
        "/v1/completions", content=bad_utf8, headers={"content-type": "application/json"}
    )
    check(resp)
    assert resp.status_code == 400


def test_server_healthy_after_fuzzing(http, rserver):
    from sse import wait_until_idle

    assert http.get("/health").status_code == 200
    after = wait_until_idle(rserver.url)
    assert after["pagedllm:kv_cache_blocks_used"] == 0
    assert after.get("pagedllm:request_errors_total", 0) > 0  # the fuzzers did get rejections
