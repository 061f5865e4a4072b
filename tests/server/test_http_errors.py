"""Raw HTTP: every error case of issue 5 (OpenAI-shaped JSON, exact status), SSE framing,
tokenize/detokenize, and a server that keeps serving after all of it."""

from __future__ import annotations

import json

import httpx
import pytest

MODEL = "tiny"


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def completion(**overrides):
    body = {"model": MODEL, "prompt": "Hello world", "max_tokens": 4}
    body.update(overrides)
    return body


def assert_error(resp: httpx.Response, status: int, param: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    if param is not None:
        assert err["param"] == param
    return err


@pytest.mark.parametrize(
    "overrides, param",
    [
        ({"max_tokens": -1}, "max_tokens"),
        ({"temperature": -0.5}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"n": 0}, "n"),
        ({"n": 1_000_000}, "n"),
        ({"logprobs": 1_000_000}, "logprobs"),
        ({"stop": ["x"] * 1000}, "stop"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": [[]]}, "prompt"),
        ({"prompt": [10**9]}, "prompt"),
        ({"prompt": [-1]}, "prompt"),
        ({"max_tokens": 250, "prompt": "word " * 100}, "max_tokens"),  # beyond max_model_len=256
        ({"prompt": "word " * 400, "max_tokens": 1}, "max_tokens"),
        ({"prompt": 12}, "prompt"),
        ({"seed": 2**70}, "seed"),
        ({"frequency_penalty": 5}, "frequency_penalty"),
        ({"stream_options": {"include_usage": True}}, None),  # without stream=true
        ({"logit_bias": {"x": 1}}, "logit_bias"),
        ({"logit_bias": {"-3": 1}}, "logit_bias"),
        ({"logit_bias": {"1000000": 1}}, "logit_bias"),  # outside the vocabulary
        ({"logit_bias": {str(i): 1 for i in range(2000)}}, "logit_bias"),
        ({"allowed_token_ids": []}, "allowed_token_ids"),
        ({"allowed_token_ids": [1, 10**9]}, "allowed_token_ids"),
        ({"bad_words": [" "]}, "bad_words"),
        ({"bad_words": ["x"] * 1000}, "bad_words"),
        ({"structured_outputs": {"regex": "[a-"}}, None),
        ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, None),
        ({"structured_outputs": {"choice": ["a"]}, "response_format": {"type": "json_object"}},
         None),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"response_format": {"type": "xml"}}, "response_format"),
    ],
)
def test_completion_bad_parameters_400(http, overrides, param):
    err = assert_error(http.post("/v1/completions", json=completion(**overrides)), 400, param)
    assert err["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "body",
    [
        b'{"prompt": "x",',
        b"not json",
        b"[1, 2]",
        b'{"prompt": NaN}',
        b"\xff\xfe\x00garbage",
        b"[" * 100_000 + b"]" * 100_000,
    ],
)
def test_malformed_bodies_400(http, body):
    assert_error(
        http.post("/v1/completions", content=body, headers={"content-type": "application/json"}),
        400,
    )


def test_non_finite_float_400(http):
    resp = http.post(
        "/v1/completions",
        content=b'{"prompt": "x", "temperature": Infinity}',
        headers={"content-type": "application/json"},
    )
    assert_error(resp, 400, "temperature")


def test_chat_bad_parameters_400(http):
    base = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    assert_error(http.post("/v1/chat/completions", json={**base, "messages": []}), 400, "messages")
    assert_error(
        http.post(
            "/v1/chat/completions", json={**base, "messages": [{"role": "wizard", "content": "x"}]}
        ),
        400,
    )
    assert_error(
        http.post("/v1/chat/completions", json={**base, "max_tokens": -3}), 400, "max_tokens"
    )
    assert_error(http.post("/v1/chat/completions", json={**base, "top_logprobs": 5}), 400)
    assert_error(
        http.post("/v1/chat/completions", json={**base, "max_tokens": 10_000}), 400, "max_tokens"
    )
    assert_error(
        http.post(
            "/v1/chat/completions",
            json={**base, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
        ),
        400,
        "messages",
    )


def test_unknown_model_404(http):
    err = assert_error(http.post("/v1/completions", json=completion(model="gpt-9")), 404, "model")
    assert err["code"] == "model_not_found"
    assert_error(
        http.post(
            "/v1/chat/completions",
            json={"model": "nope", "messages": [{"role": "user", "content": "x"}]},
        ),
        404,
        "model",
    )


def test_unknown_route_and_method_shaped(http):
    assert_error(http.get("/v1/nothing-here"), 404)
    assert_error(http.get("/v1/completions"), 405)


def test_body_too_large_413(http):
    from pagedllm.entrypoints.openai.protocol import MAX_BODY_BYTES

    big = b'{"prompt": "' + b"a" * (MAX_BODY_BYTES + 10) + b'"}'
    assert_error(
        http.post("/v1/completions", content=big, headers={"content-type": "application/json"}), 413
    )


def test_server_still_serves_after_errors(http):
    assert http.get("/health").status_code == 200
    resp = http.post("/v1/completions", json=completion())
    assert resp.status_code == 200 and resp.json()["choices"][0]["text"] is not None


def parse_sse(raw: bytes) -> list[str]:
    """The data payloads of an SSE body, checking OpenAI's framing on the way."""
    text = raw.decode("utf-8")
    assert text.endswith("\n\n")
    events = text[:-2].split("\n\n")
    payloads = []
    for event in events:
        assert event.startswith("data: ") and "\n" not in event, repr(event)
        payloads.append(event[len("data: ") :])
    return payloads


@pytest.mark.parametrize(
    "path, body",
    [
        (
            "/v1/completions",
            completion(
                max_tokens=6, stream=True, stream_options={"include_usage": True}, ignore_eos=True
            ),
        ),
        (
            "/v1/chat/completions",
            {
                "model": MODEL,
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 6,
                "stream": True,
                "ignore_eos": True,
                "stream_options": {"include_usage": True},
            },
        ),
    ],
)
def test_sse_framing(http, path, body):
    with http.stream("POST", path, json=body) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        raw = resp.read()
    payloads = parse_sse(raw)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert len({c["id"] for c in chunks}) == 1
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 6
    content = [c for c in chunks[:-1]]
    finishes = [c["choices"][0]["finish_reason"] for c in content]
    assert finishes[-1] == "length" and all(f is None for f in finishes[:-1])
    assert all("usage" not in c for c in content)
    if "chat" in path:
        assert content[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert all("role" not in c["choices"][0]["delta"] for c in content[1:])


def test_stream_error_after_validation_is_json_not_sse(http):
    resp = http.post("/v1/completions", json=completion(stream=True, max_tokens=-5))
    assert_error(resp, 400, "max_tokens")


def test_tokenize_detokenize(http):
    tok = http.post("/tokenize", json={"prompt": "Hello world"}).json()
    assert tok["count"] == len(tok["tokens"]) and tok["max_model_len"] == 256
    text = http.post("/detokenize", json={"tokens": tok["tokens"]}).json()["prompt"]
    assert text.endswith("Hello world")
    no_special = http.post("/tokenize", json={"prompt": "Hello world", "add_special_tokens": False})
    assert no_special.json()["count"] <= tok["count"]
    chat = http.post("/tokenize", json={"messages": [{"role": "user", "content": "hi"}]}).json()
    assert chat["count"] > 1
    assert_error(http.post("/detokenize", json={"tokens": [10**8]}), 400, "tokens")
    assert_error(http.post("/tokenize", json={}), 400)
