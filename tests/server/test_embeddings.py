"""POST /v1/embeddings on a pooling server (--runner pooling): the vectors LLM.embed gives,
float and base64, usage, dimensions, OpenAI's client; each runner answers the other's APIs 404."""

from __future__ import annotations

import base64
import json
import shutil
import sys
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from server_process import serve_for_fixture  # noqa: E402

INPUTS = ["Hello, world!", "The quick brown fox jumps over the lazy dog. " * 3, "A"]
ENGINE = {"max_model_len": 256, "dtype": "float32", "device": "cpu"}


@pytest.fixture(scope="module")
def embed_model(tiny_qwen3: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny qwen3 marked Matryoshka, so that `dimensions` is allowed."""
    path = tmp_path_factory.mktemp("embed") / "qwen3_mrl"
    shutil.copytree(tiny_qwen3, path)
    config = json.loads((path / "config.json").read_text())
    config["is_matryoshka"] = True
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def embed_server(embed_model: Path):
    yield from serve_for_fixture(str(embed_model), "--runner", "pooling", "--max-model-len",
                                 "256", "--served-model-name", "tiny-embed", "--dtype",
                                 "float32", "--device", "cpu")


@pytest.fixture(scope="module")
def reference(embed_model: Path):
    """LLM.embed's vectors for INPUTS (plus the tokenizer)."""
    from pagedllm import LLM

    llm = LLM(str(embed_model), runner="pooling", kv_cache_space_bytes=8 << 20, **ENGINE)
    outs = llm.embed(INPUTS, use_tqdm=False)
    return llm, [np.array(o.outputs.embedding, dtype=np.float32) for o in outs]


def _post(server, body, path="/v1/embeddings"):
    return httpx.post(server.url + path, json=body, timeout=60)


def test_float_embeddings_equal_llm_embed(embed_server, reference):
    llm, expected = reference
    resp = _post(embed_server, {"model": "tiny-embed", "input": INPUTS, "user": "u1"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["object"] == "list" and body["model"] == "tiny-embed"
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    for item, exp in zip(body["data"], expected):
        assert item["object"] == "embedding"
        np.testing.assert_allclose(np.array(item["embedding"], dtype=np.float32), exp,
                                   atol=1e-6, rtol=1e-5)
    num_tokens = sum(len(llm.get_tokenizer().encode(t)) for t in INPUTS)
    assert body["usage"] == {"prompt_tokens": num_tokens, "total_tokens": num_tokens}


def test_base64_and_token_id_inputs(embed_server, reference):
    llm, expected = reference
    tok = llm.get_tokenizer()
    ids = [tok.encode(t) for t in INPUTS]
    resp = _post(embed_server, {"input": ids, "encoding_format": "base64"})
    assert resp.status_code == 200, resp.text
    for item, exp in zip(resp.json()["data"], expected):
        got = np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
        np.testing.assert_allclose(got, exp, atol=1e-6, rtol=1e-5)
    single = _post(embed_server, {"input": ids[0]}).json()  # one prompt as a list of ids
    assert len(single["data"]) == 1 and single["usage"]["prompt_tokens"] == len(ids[0])
    np.testing.assert_allclose(single["data"][0]["embedding"], expected[0], atol=1e-6, rtol=1e-5)


def test_openai_client_and_dimensions(embed_server, reference):
    _, expected = reference
    client = openai.OpenAI(base_url=embed_server.base_url, api_key="none", max_retries=0)
    resp = client.embeddings.create(model="tiny-embed", input=INPUTS[0])  # base64 by default
    np.testing.assert_allclose(np.array(resp.data[0].embedding, dtype=np.float32), expected[0],
                               atol=1e-6, rtol=1e-5)
    assert resp.usage.prompt_tokens == resp.usage.total_tokens > 0
    small = client.embeddings.create(model="tiny-embed", input=INPUTS, dimensions=8,
                                     encoding_format="float")
    for item in small.data:
        vec = np.array(item.embedding)
        assert vec.shape == (8,) and abs(np.linalg.norm(vec) - 1.0) < 1e-5


def test_embedding_errors(embed_server):
    for body, param in [({"input": ""}, "input"), ({"input": []}, None),
                        ({"input": [10 ** 9]}, "input"), ({"input": "hi", "dimensions": 0}, None),
                        ({"input": "hi", "dimensions": 10 ** 6}, None),
                        ({"input": "hi", "encoding_format": "bytes"}, None),
                        ({"input": [1] * 300}, "input")]:
        resp = _post(embed_server, body)
        assert resp.status_code == 400, (body, resp.text)
        assert resp.json()["error"]["type"] == "invalid_request_error"
    resp = _post(embed_server, {"input": "hi", "model": "nope"})
    assert resp.status_code == 404
    # A pooling server does not generate (vLLM: those routes are 404s).
    for path, body in [("/v1/completions", {"prompt": "hi", "max_tokens": 2}),
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": "h"}]})]:
        resp = _post(embed_server, body, path)
        assert resp.status_code == 404, resp.text
        assert "--runner generate" in resp.json()["error"]["message"]
    assert httpx.get(embed_server.url + "/health", timeout=30).status_code == 200


def test_generating_server_refuses_embeddings(server):
    resp = _post(server, {"input": "hi"})
    assert resp.status_code == 404, resp.text
    assert "--runner pooling" in resp.json()["error"]["message"]
