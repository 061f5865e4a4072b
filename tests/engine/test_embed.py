"""LLM.embed on the tiny decoder models equals transformers' final-norm hidden states: LAST and
MEAN pooling, normalized or not, under chunked prefill and prefix-cache hits; Matryoshka
dimensions; the sentence-transformers pooling config; vLLM's errors; AsyncLLMEngine.encode."""

from __future__ import annotations

import asyncio
import json
import shutil

import pytest
import torch
from pagedllm import LLM, PoolingParams, SamplingParams

from .conftest import PROMPTS, engine_kwargs

# The longest prompt (~30 tokens) and the repeated ones span several 16-token prefill chunks.
LONG = "The scheduler decides which requests run in each step of the engine. " * 4
EMBED_PROMPTS = [LONG, PROMPTS[0], PROMPTS[1], PROMPTS[5], PROMPTS[6]]
CHUNK = 16


@torch.inference_mode()
def hf_hidden(model, ids: list[int]) -> torch.Tensor:
    """The last layer's hidden states [T, H]: transformers applies the final norm to it."""
    return model(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0].float()


def _pooled(model, ids, pooling, normalize=True):
    h = hf_hidden(model, ids)
    v = h[-1] if pooling == "LAST" else h.mean(dim=0)
    return torch.nn.functional.normalize(v, dim=-1) if normalize else v


def _embed_llm(path, **kw) -> LLM:
    return LLM(str(path), runner="pooling",
               **engine_kwargs(max_num_batched_tokens=CHUNK, **kw))


def _assert_close(out, expected):
    got = torch.tensor(out.outputs.embedding)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_last_token_matches_hf(arch, tiny_model_dirs, hf_model):
    path = tiny_model_dirs[arch]
    model = hf_model(path)
    llm = _embed_llm(path)
    tok = llm.get_tokenizer()
    assert len(tok.encode(LONG)) > CHUNK  # the long prompt runs in several chunks
    outs = llm.embed(EMBED_PROMPTS, use_tqdm=False)
    assert len(outs) == len(EMBED_PROMPTS)
    for prompt, out in zip(EMBED_PROMPTS, outs):
        assert out.prompt_token_ids == tok.encode(prompt) and out.finished
        _assert_close(out, _pooled(model, out.prompt_token_ids, "LAST"))
        assert abs(sum(x * x for x in out.outputs.embedding) - 1.0) < 1e-5
    # Again: the prompts' full blocks now come from the prefix cache; the result is the same.
    again = llm.embed(EMBED_PROMPTS[:2], use_tqdm=False)
    assert again[0].num_cached_tokens > 0
    for first, second in zip(outs, again):
        _assert_close(second, torch.tensor(first.outputs.embedding))


def test_mean_pooling_matches_hf_and_skips_prefix_cache(tiny_qwen3, hf_model):
    model = hf_model(tiny_qwen3)
    llm = _embed_llm(tiny_qwen3, pooler_config={"pooling_type": "MEAN"})
    prompts = EMBED_PROMPTS + [LONG]  # the repeat is in the same batch as its first copy
    outs = llm.embed(prompts, use_tqdm=False)
    for out in outs:
        _assert_close(out, _pooled(model, out.prompt_token_ids, "MEAN"))
    again = llm.embed([LONG, PROMPTS[1]], use_tqdm=False)  # cached blocks would skip positions
    for out in again:
        assert out.num_cached_tokens == 0
        _assert_close(out, _pooled(model, out.prompt_token_ids, "MEAN"))


def test_unnormalized_and_engine_default(tiny_qwen3, hf_model):
    model = hf_model(tiny_qwen3)
    llm = _embed_llm(tiny_qwen3, pooler_config={"pooling_type": "LAST", "normalize": False})
    [raw] = llm.embed(PROMPTS[0], use_tqdm=False)
    _assert_close(raw, _pooled(model, raw.prompt_token_ids, "LAST", normalize=False))
    [normed] = llm.embed(PROMPTS[0], PoolingParams(use_activation=True), use_tqdm=False)
    _assert_close(normed, _pooled(model, raw.prompt_token_ids, "LAST"))
    [old_name] = llm.embed([PROMPTS[0]], PoolingParams(normalize=True), use_tqdm=False)
    _assert_close(old_name, _pooled(model, raw.prompt_token_ids, "LAST"))
    # encode() gives the tensor itself.
    [enc] = llm.encode({"prompt_token_ids": raw.prompt_token_ids}, use_tqdm=False)
    assert isinstance(enc.outputs.data, torch.Tensor)
    torch.testing.assert_close(enc.outputs.data, torch.tensor(raw.outputs.embedding))


def test_matryoshka_dimensions(tiny_qwen3, hf_model, tmp_path):
    model = hf_model(tiny_qwen3)
    mrl = tmp_path / "mrl"
    shutil.copytree(tiny_qwen3, mrl)
    config = json.loads((mrl / "config.json").read_text())
    config["is_matryoshka"] = True
    (mrl / "config.json").write_text(json.dumps(config))
    llm = _embed_llm(mrl)
    [out, full] = llm.embed([PROMPTS[0]] * 2, [PoolingParams(dimensions=8), PoolingParams()],
                            use_tqdm=False)
    raw = _pooled(model, out.prompt_token_ids, "LAST", normalize=False)
    _assert_close(out, torch.nn.functional.normalize(raw[:8], dim=-1))
    assert len(full.outputs.embedding) == config["hidden_size"]
    with pytest.raises(ValueError, match="dimensions"):
        llm.embed(PROMPTS[0], PoolingParams(dimensions=config["hidden_size"] + 1),
                  use_tqdm=False)
    with pytest.raises(ValueError, match="dimensions"):
        PoolingParams(dimensions=0)
    # A model without is_matryoshka refuses dimensions (vLLM's rule).
    plain = _embed_llm(tiny_qwen3)
    with pytest.raises(ValueError, match="Matryoshka"):
        plain.embed(PROMPTS[0], PoolingParams(dimensions=8), use_tqdm=False)
    assert not plain.llm_engine.has_unfinished_requests()


def test_sentence_transformers_pooling_config(tiny_qwen3, hf_model, tmp_path):
    model = hf_model(tiny_qwen3)
    st = tmp_path / "st"
    shutil.copytree(tiny_qwen3, st)
    (st / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.models.Pooling"},
    ]))
    (st / "1_Pooling").mkdir()
    (st / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 64, "pooling_mode_mean_tokens": True,
         "pooling_mode_lasttoken": False}))
    llm = _embed_llm(st)
    assert llm.llm_engine.engine_core.pooler.pooling_type == "MEAN"
    [out] = llm.embed(PROMPTS[1], use_tqdm=False)
    _assert_close(out, _pooled(model, out.prompt_token_ids, "MEAN"))
    # The engine's pooler_config wins over the model's.
    last = _embed_llm(st, pooler_config={"pooling_type": "LAST"})
    assert last.llm_engine.engine_core.pooler.pooling_type == "LAST"


def test_errors(tiny_qwen3):
    llm = _embed_llm(tiny_qwen3)
    with pytest.raises(ValueError, match="only supported for generative models"):
        llm.generate(PROMPTS[0], SamplingParams(max_tokens=2), use_tqdm=False)
    with pytest.raises(ValueError, match="only supported for generative models"):
        llm.chat([{"role": "user", "content": "hi"}], use_tqdm=False)
    with pytest.raises(ValueError, match="cannot generate"):
        llm.llm_engine.add_request("x", PROMPTS[0], SamplingParams())
    with pytest.raises(ValueError, match="max_model_len"):
        llm.embed({"prompt_token_ids": [5] * 256}, use_tqdm=False)
    with pytest.raises(ValueError, match="empty"):
        llm.embed({"prompt_token_ids": []}, use_tqdm=False)
    assert not llm.llm_engine.has_unfinished_requests()
    gen = LLM(str(tiny_qwen3), **engine_kwargs())
    with pytest.raises(ValueError, match="only supported for pooling"):
        gen.embed(PROMPTS[0], use_tqdm=False)
    with pytest.raises(ValueError, match="runner='pooling'"):
        gen.llm_engine.add_request("x", PROMPTS[0], PoolingParams())
    with pytest.raises(ValueError, match="pooling_type"):
        _embed_llm(tiny_qwen3, pooler_config={"pooling_type": "CLS"})
    with pytest.raises(ValueError, match="pooler_config"):
        LLM(str(tiny_qwen3), pooler_config={"pooling_type": "MEAN"}, **engine_kwargs())


def test_task_embed_alias_and_async_encode(tiny_qwen3, hf_model):
    from pagedllm import AsyncEngineArgs, AsyncLLMEngine

    model = hf_model(tiny_qwen3)
    llm = LLM(str(tiny_qwen3), task="embed", **engine_kwargs())
    assert llm.llm_engine.runner_type == "pooling"
    engine = AsyncLLMEngine.from_engine_args(
        AsyncEngineArgs(model=str(tiny_qwen3), convert="embed", **engine_kwargs()))

    async def run():
        async def one(i, prompt):
            outs = [o async for o in engine.encode(prompt, PoolingParams(), f"r{i}")]
            return outs

        return await asyncio.gather(*(one(i, p) for i, p in enumerate(PROMPTS[:3])))

    try:
        results = asyncio.run(run())
    finally:
        engine.shutdown()
    for outs in results:
        assert len(outs) == 1 and outs[0].finished
        expected = _pooled(model, outs[0].prompt_token_ids, "LAST")
        torch.testing.assert_close(outs[0].outputs.data, expected, atol=2e-5, rtol=1e-4)


def test_failed_step_leaves_engine_usable(tiny_qwen3, hf_model):
    model = hf_model(tiny_qwen3)
    llm = _embed_llm(tiny_qwen3, pooler_config={"pooling_type": "MEAN"})
    core = llm.llm_engine.engine_core
    calls = []

    def fail_second_step():
        calls.append(1)
        if len(calls) == 2:  # mid-prefill of the long prompt: its partial sum must not survive
            raise RuntimeError("injected")

    core.fault_injector = fail_second_step
    with pytest.raises(RuntimeError, match="step failed"):
        llm.embed(LONG, use_tqdm=False)
    core.fault_injector = None
    assert not llm.llm_engine.has_unfinished_requests() and not core.pooler._sums
    [out] = llm.embed(LONG, use_tqdm=True)
    _assert_close(out, _pooled(model, out.prompt_token_ids, "MEAN"))
