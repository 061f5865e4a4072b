"""A server with --api-key, --metrics-public (and --metrics-prefix vllm:) and a model without a
chat template: auth on every route, the missing-template 400, the CLI clients, and a graceful
exit 0 on SIGINT with a stream in flight."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from server_process import ServerProcess

KEY = "s3cret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def keyed_server(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory):
    model = tmp_path_factory.mktemp("no_template") / "model"
    shutil.copytree(tiny_llama, model)
    cfg_path = model / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("chat_template", None)
    cfg_path.write_text(json.dumps(cfg))
    (model / "chat_template.jinja").unlink(missing_ok=True)
    proc = ServerProcess(
        str(model),
        "--api-key",
        KEY,
        "--metrics-public",
        "--metrics-prefix",
        "vllm:",
        "--allowed-origins",
        '["https://app.example"]',
        "--max-model-len",
        "256",
        "--served-model-name",
        "tiny",
        "--device",
        "cpu",
        via_cli=True,   # `pagedllm serve MODEL ...`, the README's entry point
    )
    yield proc
    proc.close()


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/v1/models"),
        ("POST", "/v1/completions"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/tokenize"),
        ("POST", "/detokenize"),
        ("GET", "/version"),
    ],
)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": KEY},
        {"Authorization": f"Basic {KEY}"},
        {"Authorization": f"Bearer {KEY}x"},
    ],
)
def test_auth_required_401(keyed_server, method, path, headers):
    resp = httpx.request(method, keyed_server.url + path, headers=headers, json={})
    assert resp.status_code == 401
    err = resp.json()["error"]
    assert err["type"] == "authentication_error" and err["message"]


def test_auth_ok_and_public_routes(keyed_server):
    assert httpx.get(keyed_server.url + "/health").status_code == 200
    # /ping answers as /health (GET and POST, as vLLM), also without the key.
    assert httpx.get(keyed_server.url + "/ping").status_code == 200
    assert httpx.post(keyed_server.url + "/ping").status_code == 200
    metrics = httpx.get(keyed_server.url + "/metrics")  # --metrics-public
    assert metrics.status_code == 200
    # --metrics-prefix vllm: vLLM's names, for dashboards made for vLLM.
    assert "vllm:num_requests_running{" in metrics.text
    assert "vllm:kv_cache_usage_perc{" in metrics.text
    assert "pagedllm:" not in metrics.text
    assert httpx.get(keyed_server.url + "/v1/models", headers=AUTH).status_code == 200
    resp = httpx.post(
        keyed_server.url + "/v1/completions",
        headers=AUTH,
        timeout=60,
        json={"model": "tiny", "prompt": "hi", "max_tokens": 2},
    )
    assert resp.status_code == 200, resp.text

def test_cors_preflight_needs_no_key_and_names_the_origin(keyed_server):
    url = keyed_server.url + "/v1/chat/completions"
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    ok = httpx.options(url, headers=preflight)
    assert ok.status_code == 200, ok.text
    assert ok.headers["access-control-allow-origin"] == "https://app.example"
    other = httpx.options(url, headers=dict(preflight, Origin="https://evil.example"))
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    # A real cross-origin call still needs the key; its 401 carries the CORS header.
    denied = httpx.get(keyed_server.url + "/v1/models", headers={"Origin": "https://app.example"})
    assert denied.status_code == 401
    assert denied.headers["access-control-allow-origin"] == "https://app.example"


def test_missing_chat_template_400(keyed_server):
    resp = httpx.post(
        keyed_server.url + "/v1/chat/completions",
        headers=AUTH,
        timeout=60,
        json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert resp.status_code == 400
    assert "chat template" in resp.json()["error"]["message"]


def run_cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pagedllm.entrypoints.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_complete_and_chat(keyed_server):
    expected = httpx.post(
        keyed_server.url + "/v1/completions",
        headers=AUTH,
        timeout=60,
        json={"model": "tiny", "prompt": "Once upon", "max_tokens": 6, "temperature": 0},
    ).json()["choices"][0]["text"]
    common = ["--url", keyed_server.base_url, "--api-key", KEY, "--max-tokens", "6",
              "--temperature", "0"]
    done = run_cli("complete", *common, "-q", "Once upon")
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected + "\n"
    # stdin mode: one completion per line
    lines = run_cli("complete", *common, stdin="Once upon\nOnce upon\n")
    assert lines.stdout == (expected + "\n") * 2
    # This model has no chat template: the chat client reports the server's 400 and fails.
    chat = run_cli("chat", "--url", keyed_server.base_url, "--api-key", KEY, "-q", "hello")
    assert chat.returncode != 0 and "chat template" in chat.stderr
    unauthorized = run_cli(
        "complete", "--url", keyed_server.base_url, "--api-key", "bad", "-q", "x"
    )
    assert unauthorized.returncode != 0 and "401" in unauthorized.stderr


def test_prompts_and_bodies_never_logged_at_info(keyed_server):
    marker = "zebra-marker-7f3c"
    for path, body in (
        ("/v1/completions", {"model": "tiny", "prompt": marker, "max_tokens": 2}),
        (
            "/v1/chat/completions",
            {"model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": marker}]},
        ),
        ("/v1/completions", {"model": "tiny", "prompt": marker, "max_tokens": -1}),
    ):
        httpx.post(keyed_server.url + path, headers=AUTH, json=body, timeout=60)
    assert "Serving on http://127.0.0.1:" in keyed_server.log()
    assert marker not in keyed_server.log()
    assert KEY not in keyed_server.log()


def test_default_bind_is_loopback():
    from pagedllm.entrypoints.cli import make_parser

    args = make_parser().parse_args(["serve"])
    assert args.host == "127.0.0.1" and args.port == 8000 and args.model_tag is None
    args = make_parser().parse_args(
        ["serve", "some/model", "--max-num-seqs", "3", "--api-key", "k"]
    )
    assert args.model_tag == "some/model" and args.max_num_seqs == 3 and args.api_key == "k"


def test_sigint_finishes_in_flight_stream_and_exits_0(keyed_server):
    body = {
        "model": "tiny",
        "prompt": "Finish me",
        "max_tokens": 40,
        "ignore_eos": True,
        "stream": True,
    }
    events: list[str] = []
    with httpx.Client(timeout=60, headers=AUTH) as c:
        with c.stream("POST", keyed_server.url + "/v1/completions", json=body) as resp:
            lines = resp.iter_lines()
            events.append(next(lines))
            stopper = threading.Thread(target=keyed_server.stop, args=(signal.SIGINT,))
            stopper.start()
            events.extend(line for line in lines if line)
            stopper.join()
    assert events[-1] == "data: [DONE]"
    last = json.loads(events[-2][6:])
    assert last["choices"][0]["finish_reason"] == "length"
    assert keyed_server.proc.returncode == 0, keyed_server.log()
    with pytest.raises(httpx.TransportError):
        httpx.get(keyed_server.url + "/health", timeout=2)


def test_cli_chat_against_server_with_template(server):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}]
    expected = httpx.post(server.base_url + "/chat/completions", timeout=60, json={
        "model": "tiny", "messages": messages, "max_tokens": 6, "temperature": 0}).json()
    reply = expected["choices"][0]["message"]["content"]
    done = run_cli("chat", "--url", server.base_url, "--max-tokens", "6", "--temperature", "0",
                   "--system-prompt", "Be brief.", "-q", "hello")
    assert done.returncode == 0, done.stderr
    assert done.stdout == reply + "\n"
    # stdin: a two-turn conversation (the second turn sees the first answer)
    second = httpx.post(server.base_url + "/chat/completions", timeout=60, json={
        "model": "tiny", "max_tokens": 6, "temperature": 0,
        "messages": messages + [{"role": "assistant", "content": reply},
                                {"role": "user", "content": "again"}]}).json()
    convo = run_cli("chat", "--url", server.base_url, "--max-tokens", "6", "--temperature", "0",
                    "--system-prompt", "Be brief.", stdin="hello\nagain\n")
    assert convo.stdout == reply + "\n" + second["choices"][0]["message"]["content"] + "\n"


def test_startup_log_names_model_dtype_device_blocks(server):
    line = next(x for x in server.log().splitlines() if "max_model_len" in x)
    assert "served as tiny" in line and "max_model_len 256" in line
    assert "dtype torch.float32" in line and "device cpu" in line and "KV blocks" in line

