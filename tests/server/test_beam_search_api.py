"""vLLM's use_beam_search on /v1/completions and /v1/chat/completions: n beams, best first, the
same beams as LLM.beam_search on the same model (itself checked against a reference search and
vLLM), in full and streamed answers; beam search with logprobs or a grammar is a 400."""

from __future__ import annotations

import json

import httpx
import pytest
from pagedllm import LLM
from pagedllm.sampling_params import BeamSearchParams

PROMPT = "The quick brown fox"


@pytest.fixture(scope="module")
def offline(tiny_llama):
    return LLM(model=str(tiny_llama), device="cpu", dtype="float32", max_model_len=256)


def _beams(offline, prompt_ids, width, max_tokens):
    out = offline.beam_search([{"prompt_token_ids": prompt_ids}],
                              BeamSearchParams(beam_width=width, max_tokens=max_tokens,
                                               ignore_eos=True))[0]
    return [s.tokens[len(prompt_ids):] for s in out.sequences]


def test_completion_beams_equal_llm_beam_search(server, offline):
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 6, "n": 3, "use_beam_search": True,
            "ignore_eos": True, "return_token_ids": True, "length_penalty": 1.0}
    resp = httpx.post(server.url + "/v1/completions", json=body, timeout=60)
    assert resp.status_code == 200, resp.text
    choices = resp.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2]
    want = _beams(offline, choices[0]["prompt_token_ids"], 3, 6)
    assert [c["token_ids"] for c in choices] == want
    assert len({tuple(w) for w in want}) == 3
    tok = offline.get_tokenizer()
    assert [c["text"] for c in choices] == [tok.decode(w, skip_special_tokens=True) for w in want]
    assert all(c["finish_reason"] == "length" for c in choices)
    assert resp.json()["usage"]["completion_tokens"] == 18

    # Streamed: the same texts, one choice each.
    body.update(stream=True, return_token_ids=False)
    texts = {0: "", 1: "", 2: ""}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                for c in json.loads(line[6:])["choices"]:
                    texts[c["index"]] += c["text"]
    assert [texts[i] for i in range(3)] == [c["text"] for c in choices]


def test_chat_beams_equal_llm_beam_search(server, offline):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Hello there"}],
            "max_tokens": 5, "n": 2, "use_beam_search": True, "ignore_eos": True,
            "return_token_ids": True}
    resp = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
    assert resp.status_code == 200, resp.text
    data = resp.json()
    want = _beams(offline, data["prompt_token_ids"], 2, 5)
    assert [c["token_ids"] for c in data["choices"]] == want


@pytest.mark.parametrize("extra", [{"logprobs": 2}, {"logprobs": 0}, {"prompt_logprobs": 1},
                                   {"structured_outputs": {"regex": "a+"}},
                                   {"response_format": {"type": "json_object"}},
                                   {"n": 2, "length_penalty": float("inf")}])
def test_beam_search_refusals_are_400(server, extra):
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 4, "use_beam_search": True}
    body.update(extra)
    resp = httpx.post(server.url + "/v1/completions",
                      content=json.dumps(body, allow_nan=True),
                      headers={"content-type": "application/json"}, timeout=60)
    assert resp.status_code == 400, resp.text
