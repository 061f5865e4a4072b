"""The OpenAI-compatible server driven by the official `openai` client (sync and async)."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

MODEL = "tiny"
PROMPT = "The quick brown fox"


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=60)


@pytest.fixture
def aclient(server) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=60)


def greedy(client: openai.OpenAI, prompt: str = PROMPT, max_tokens: int = 12, **kw):
    return client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=max_tokens, temperature=0.0, **kw
    )


def test_models_and_version(client, server):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert httpx.get(server.url + "/version").json()["version"]
    assert httpx.get(server.url + "/health").status_code == 200


def test_completion_usage_and_length(client):
    out = greedy(client, max_tokens=10, extra_body={"ignore_eos": True})
    assert out.object == "text_completion" and out.model == MODEL
    assert len(out.choices) == 1
    choice = out.choices[0]
    assert choice.finish_reason == "length"
    assert out.usage.completion_tokens == 10
    n_prompt = len(
        httpx.post(
            str(client.base_url).replace("/v1/", "/tokenize"), json={"prompt": PROMPT}
        ).json()["tokens"]
    )
    assert out.usage.prompt_tokens == n_prompt
    assert out.usage.total_tokens == n_prompt + 10


def test_greedy_matches_llm_generate(client, tiny_llama):
    from pagedllm import LLM, SamplingParams

    prompts = [PROMPT, "Hello, my name is", "def main():"]
    server_texts = [
        greedy(client, p, max_tokens=16, extra_body={"ignore_eos": True}).choices[0].text
        for p in prompts
    ]
    llm = LLM(model=str(tiny_llama), max_model_len=256, dtype="float32", device="cpu")
    outs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True))
    assert server_texts == [o.outputs[0].text for o in outs]


def test_prompt_forms_and_batch(client):
    tokens = httpx.post(
        str(client.base_url).replace("/v1/", "/tokenize"), json={"prompt": PROMPT}
    ).json()["tokens"]
    by_text = greedy(client).choices[0].text
    by_ids = greedy(client, prompt=tokens).choices[0].text
    assert by_ids == by_text
    batch = greedy(client, prompt=[PROMPT, "Other prompt"], n=2)
    assert [c.index for c in batch.choices] == [0, 1, 2, 3]
    assert batch.choices[0].text == by_text == batch.choices[1].text  # greedy: both samples equal
    batch_ids = greedy(client, prompt=[tokens, tokens])
    assert [c.text for c in batch_ids.choices] == [by_text, by_text]


def test_n2_sampling(client):
    out = client.completions.create(
        model=MODEL,
        prompt=PROMPT,
        max_tokens=12,
        n=2,
        temperature=1.0,
        seed=7,
        extra_body={"ignore_eos": True},
    )
    assert sorted(c.index for c in out.choices) == [0, 1]
    assert out.usage.completion_tokens == 24
    assert all(c.finish_reason == "length" for c in out.choices)


def test_logprobs(client):
    out = greedy(client, max_tokens=6, logprobs=3, extra_body={"ignore_eos": True})
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 6
    if "\ufffd" not in "".join(lp.tokens):  # a token may hold half of a UTF-8 character
        assert "".join(lp.tokens) == out.choices[0].text
    assert lp.text_offset == sorted(lp.text_offset)
    for value, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert value <= 0.0
        assert 1 <= len(top) <= 3
        # Greedy: the chosen token is the most likely one.
        assert value == pytest.approx(max(top.values()), abs=1e-4)


def test_echo_prompt_logprobs(client, server):
    """lm-eval-harness's loglikelihood call: echo=True, max_tokens=0, logprobs=1."""
    out = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=0, echo=True, logprobs=1, temperature=0.0
    )
    choice = out.choices[0]
    assert choice.text == PROMPT
    tokens = httpx.post(server.url + "/tokenize", json={"prompt": PROMPT}).json()["tokens"]
    lp = choice.logprobs
    assert len(lp.token_logprobs) == len(tokens)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(v is not None and v <= 0.0 for v in lp.token_logprobs[1:])
    assert out.usage.completion_tokens == 0
    # echo with generation: the prompt is prefixed to the generated text.
    gen = greedy(client, max_tokens=4)
    echoed = greedy(client, max_tokens=4, echo=True)
    assert echoed.choices[0].text == PROMPT + gen.choices[0].text


def test_stop_string(client):
    full = greedy(client, max_tokens=24, extra_body={"ignore_eos": True}).choices[0].text
    assert len(full) > 6
    stop = full[3:6]
    cut = greedy(client, max_tokens=24, stop=[stop], extra_body={"ignore_eos": True}).choices[0]
    assert cut.finish_reason == "stop"
    assert cut.text == full[: full.index(stop)]


def test_seed_reproducible(client):
    def sample(seed):
        return (
            client.completions.create(
                model=MODEL,
                prompt=PROMPT,
                max_tokens=16,
                temperature=1.0,
                seed=seed,
                extra_body={"ignore_eos": True},
            )
            .choices[0]
            .text
        )

    first = sample(1234)
    assert sample(1234) == first
    assert any(sample(s) != first for s in (1, 2, 3))


def test_stream_completion_matches_full(client):
    full = greedy(client, max_tokens=12, extra_body={"ignore_eos": True})
    chunks = list(
        client.completions.create(
            model=MODEL,
            prompt=PROMPT,
            max_tokens=12,
            temperature=0.0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
    )
    content = [c for c in chunks if c.choices]
    assert "".join(c.choices[0].text for c in content) == full.choices[0].text
    # finish_reason rides on the last content chunk only
    assert [c.choices[0].finish_reason for c in content] == [None] * (len(content) - 1) + ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens


def test_chat(client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    out = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=8,
        temperature=0.0,
        logprobs=True,
        top_logprobs=2,
        extra_body={"ignore_eos": True},
    )
    choice = out.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason == "length"
    assert out.usage.completion_tokens == 8
    assert len(choice.logprobs.content) == 8
    assert all(len(t.top_logprobs) == 2 for t in choice.logprobs.content)
    mct = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_completion_tokens=3,
        temperature=0.0,
        extra_body={"ignore_eos": True},
    )
    assert mct.usage.completion_tokens == 3
    assert choice.message.content.startswith(mct.choices[0].message.content)

    stream = list(
        client.chat.completions.create(
            model=MODEL,
            messages=messages,
            max_tokens=8,
            temperature=0.0,
            stream=True,
            n=2,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
    )
    for idx in (0, 1):
        mine = [c.choices[0] for c in stream if c.choices and c.choices[0].index == idx]
        assert mine[0].delta.role == "assistant"
        assert "".join(c.delta.content or "" for c in mine) == choice.message.content
        assert [c.finish_reason for c in mine][-1] == "length"
        assert all(c.finish_reason is None for c in mine[:-1])
    assert stream[-1].usage.completion_tokens == 16


def test_completion_stream_logprobs_cover_every_token(client):
    """As for chat: a token that adds no text yet still gets its logprobs in the stream."""
    kw = dict(model=MODEL, prompt="Emoji test: 😀🎉🚀", max_tokens=24, temperature=0.0,
              logprobs=1, extra_body={"ignore_eos": True})
    full = client.completions.create(**kw).choices[0]
    chunks = [c.choices[0] for c in client.completions.create(stream=True, **kw) if c.choices]
    tokens = [t for c in chunks if c.logprobs for t in c.logprobs.tokens]
    values = [v for c in chunks if c.logprobs for v in c.logprobs.token_logprobs]
    offsets = [o for c in chunks if c.logprobs for o in c.logprobs.text_offset]
    assert (tokens, values, offsets) == (full.logprobs.tokens, full.logprobs.token_logprobs,
                                         full.logprobs.text_offset)
    assert len(tokens) == 24 and "".join(c.text for c in chunks) == full.text


def test_chat_stream_logprobs_cover_every_token(client):
    """Tokens that add no text yet (part of a UTF-8 character) still get their logprobs."""
    messages = [{"role": "user", "content": "Emoji test: 😀🎉🚀"}]
    kw = dict(model=MODEL, messages=messages, max_tokens=24, temperature=0.0, logprobs=True,
              top_logprobs=1, extra_body={"ignore_eos": True})
    full = client.chat.completions.create(**kw).choices[0]
    chunks = [c.choices[0] for c in client.chat.completions.create(stream=True, **kw)
              if c.choices]
    streamed = [t for c in chunks if c.logprobs for t in c.logprobs.content]
    assert [(t.token, t.logprob) for t in streamed] == [
        (t.token, t.logprob) for t in full.logprobs.content]
    assert len(streamed) == 24
    assert "".join(c.delta.content or "" for c in chunks) == full.message.content


async def test_async_client_concurrent(aclient):
    async def one(i: int) -> str:
        out = await aclient.completions.create(
            model=MODEL,
            prompt=f"{PROMPT} {i}",
            max_tokens=8,
            temperature=0.0,
            extra_body={"ignore_eos": True},
        )
        return out.choices[0].text

    async def one_stream(i: int) -> str:
        stream = await aclient.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"hi {i}"}],
            max_tokens=8,
            temperature=0.0,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    texts = await asyncio.gather(*[one(i) for i in range(8)], *[one_stream(i) for i in range(8)])
    # Batched results equal the same requests run alone.
    assert texts[0] == await one(0)
    assert texts[8] == await one_stream(0)
    assert all(texts)
    await aclient.close()



def test_logit_bias_allowed_token_ids_and_bad_words(client, tiny_llama):
    """OpenAI's logit_bias (string token ids, clamped to [-100, 100]) and vLLM's
    allowed_token_ids and bad_words reach the sampler as LLM.generate's SamplingParams do (the
    engine tests check what they do to the tokens)."""
    from pagedllm import LLM, SamplingParams

    llm = LLM(model=str(tiny_llama), max_model_len=256, dtype="float32", device="cpu")
    base = dict(temperature=0.0, max_tokens=12, ignore_eos=True)
    plain = llm.generate([PROMPT], SamplingParams(**base), use_tqdm=False)[0].outputs[0]
    first = plain.token_ids[0]
    tok = llm.get_tokenizer()
    word = next(w for w in (tok.decode([t]) for t in plain.token_ids) if w.strip()
                and len(tok.encode(w, add_special_tokens=False)) == 1)
    cases = [  # (server fields, engine fields)
        ({"extra_body": {"bad_words": [word]}}, {"bad_words": [word]}),
        ({"logit_bias": {str(first): -1000}}, {"logit_bias": {first: -100.0}}),
        ({"logit_bias": {"17": 5}}, {"logit_bias": {17: 5.0}}),
        ({"extra_body": {"allowed_token_ids": [5, 9, 23]}}, {"allowed_token_ids": [5, 9, 23]}),
    ]
    for server_kw, engine_kw in cases:
        extra = server_kw.pop("extra_body", {})
        got = greedy(client, max_tokens=12, extra_body={"ignore_eos": True, **extra}, **server_kw)
        want = llm.generate([PROMPT], SamplingParams(**base, **engine_kw), use_tqdm=False)[0]
        assert got.choices[0].text == want.outputs[0].text, (server_kw, engine_kw)
        assert want.outputs[0].token_ids != plain.token_ids
    allowed = llm.generate([PROMPT], SamplingParams(**base, allowed_token_ids=[5, 9, 23]),
                           use_tqdm=False)[0].outputs[0].token_ids
    assert set(allowed) <= {5, 9, 23}


def test_structured_outputs_and_response_format(client, tiny_llama):
    """vLLM's structured_outputs extra and OpenAI's response_format constrain completions and
    chat; the server's text equals LLM.generate's under the same constraint."""
    pytest.importorskip("xgrammar")
    import json

    from pagedllm import LLM, SamplingParams

    schema = {"type": "object", "properties": {"ok": {"type": "boolean"},
                                               "n": {"type": "integer", "enum": [1, 2, 3]}},
              "required": ["ok", "n"], "additionalProperties": False}
    compact = {"json": schema, "disable_any_whitespace": True}
    out = greedy(client, max_tokens=64, extra_body={"structured_outputs": compact})
    value = json.loads(out.choices[0].text)
    assert set(value) == {"ok", "n"} and out.choices[0].finish_reason == "stop"

    llm = LLM(model=str(tiny_llama), max_model_len=256, dtype="float32", device="cpu")
    got = greedy(client, max_tokens=48, extra_body={"response_format": {"type": "json_object"}})
    want = llm.generate([PROMPT], SamplingParams(temperature=0.0, max_tokens=48,
                                                 structured_outputs={"json_object": True}),
                        use_tqdm=False)[0].outputs[0].text
    assert got.choices[0].text == want and want.lstrip().startswith("{")

    messages = [{"role": "user", "content": "Give me JSON."}]
    plain = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=24,
                                           temperature=0.0)
    shaped = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=24, temperature=0.0,
        response_format={"type": "json_schema", "json_schema": {"name": "r", "schema": schema}},
    )
    assert not plain.choices[0].message.content.lstrip().startswith("{")
    assert shaped.choices[0].message.content.lstrip().startswith("{")


def test_cors_allows_every_origin_by_default(server):
    """As vLLM: without --allowed-origins any page may call the API from a browser."""
    resp = httpx.options(server.url + "/v1/completions", headers={
        "Origin": "https://anywhere.example", "Access-Control-Request-Method": "POST"})
    assert resp.status_code == 200
    assert resp.headers["access-control-allow-origin"] in ("*", "https://anywhere.example")
