"""LLM greedy decoding is token-identical to transformers' generate on the tiny models, also
under chunked prefill, preemption, prefix-cache hits and n=2; logprobs match log_softmax."""

from __future__ import annotations

import math

import pytest
from pagedllm import LLM, SamplingParams

from .conftest import PROMPTS, engine_kwargs, hf_generate_greedy, hf_logits

MAX_NEW = 12


def _check_greedy(llm, model, tokenizer, prompts, max_new=MAX_NEW, n=1):
    outs = llm.generate(
        prompts, SamplingParams(temperature=0.0, max_tokens=max_new, n=n), use_tqdm=False
    )
    assert [o.prompt for o in outs] == prompts  # input order
    for prompt, out in zip(prompts, outs):
        ids = tokenizer.encode(prompt)
        assert out.prompt_token_ids == ids and out.finished
        expected = hf_generate_greedy(model, ids, max_new)
        assert len(out.outputs) == n
        # EOS ends generate's output, also as the max_new-th token (then a stop, not a length).
        stopped = expected[-1:] == [tokenizer.eos_token_id]
        for comp in out.outputs:
            assert comp.token_ids == expected, prompt
            assert comp.finish_reason == ("stop" if stopped else "length")
            assert comp.text == tokenizer.decode(
                expected[:-1] if comp.finish_reason == "stop" else expected,
                skip_special_tokens=True,
            )
    return outs


@pytest.mark.parametrize("arch", ["opt", "llama", "qwen3", "phi3", "gemma3", "qwen3_moe",
                                  "mixtral", "qwen2_moe"])
def test_greedy_matches_hf_all_prompts_together(arch, tiny_model_dirs, hf_model, tokenizer_of):
    path = tiny_model_dirs[arch]
    llm = LLM(model=str(path), **engine_kwargs())
    _check_greedy(llm, hf_model(path), tokenizer_of(path), PROMPTS)


# gemma3: chunks and cached prefixes longer than its local layers' 12-token sliding window.
# MoE models: each step groups another mix of prompt chunks and decodes by expert.
@pytest.mark.parametrize("arch", ["llama", "gemma3", "qwen3_moe", "mixtral", "qwen2_moe"])
def test_greedy_with_chunked_prefill(arch, tiny_model_dirs, hf_model, tokenizer_of):
    path = tiny_model_dirs[arch]
    llm = LLM(model=str(path), **engine_kwargs(max_num_batched_tokens=32))
    _check_greedy(llm, hf_model(path), tokenizer_of(path), PROMPTS)
    assert llm.llm_engine.get_stats().num_steps > MAX_NEW + 5  # prompts really came in chunks


def test_greedy_with_preemption(tiny_qwen3, hf_model, tokenizer_of):
    # 16-token blocks of 2 layers x 2 KV heads x 32 dims x fp32 = 16 KiB each: 12 usable blocks
    # cannot hold 17 prompts growing by 12 tokens, so the newest requests get preempted (with
    # the admission reserve off: it exists to avoid exactly this).
    kw = engine_kwargs(kv_cache_space_bytes=13 * 16 * 1024, max_model_len=128,
                       admission_reserve_blocks_per_running=0)
    llm = LLM(model=str(tiny_qwen3), **kw)
    _check_greedy(llm, hf_model(tiny_qwen3), tokenizer_of(tiny_qwen3), PROMPTS)
    stats = llm.llm_engine.get_stats()
    assert stats.num_preemptions > 0
    assert stats.num_blocks_used == 0


def test_greedy_with_admission_reserve_under_cache_pressure(tiny_qwen3, hf_model, tokenizer_of):
    # The preemption test's cache with the anti-churn admission reserve: same tokens as HF.
    kw = engine_kwargs(kv_cache_space_bytes=13 * 16 * 1024, max_model_len=128,
                       admission_reserve_blocks_per_running=1)
    llm = LLM(model=str(tiny_qwen3), **kw)
    _check_greedy(llm, hf_model(tiny_qwen3), tokenizer_of(tiny_qwen3), PROMPTS)
    assert llm.llm_engine.engine_core.scheduler_config.admission_reserve_blocks_per_running == 1
    assert llm.llm_engine.get_stats().num_blocks_used == 0


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_greedy_with_shared_prefixes_hits_the_prefix_cache(arch, tiny_model_dirs, hf_model,
                                                           tokenizer_of):
    path = tiny_model_dirs[arch]
    prefix = "The scheduler decides which requests run in each step of the engine. " * 2
    prompts = [prefix + p for p in PROMPTS[:16]]
    llm = LLM(model=str(path), **engine_kwargs(max_num_batched_tokens=64))
    _check_greedy(llm, hf_model(path), tokenizer_of(path), prompts[:1])
    _check_greedy(llm, hf_model(path), tokenizer_of(path), prompts)
    stats = llm.llm_engine.get_stats()
    assert stats.prefix_cache_hits > 0
    outs = llm.generate(prompts[:2], SamplingParams(temperature=0, max_tokens=2), use_tqdm=False)
    assert all(o.num_cached_tokens > 0 for o in outs)


def test_greedy_n2_both_match(tiny_opt, hf_model, tokenizer_of):
    llm = LLM(model=str(tiny_opt), **engine_kwargs())
    outs = _check_greedy(llm, hf_model(tiny_opt), tokenizer_of(tiny_opt), PROMPTS[:16], n=2)
    assert [c.index for c in outs[0].outputs] == [0, 1]


def test_logprobs_match_hf_log_softmax(tiny_llama, hf_model, tokenizer_of):
    model, tok = hf_model(tiny_llama), tokenizer_of(tiny_llama)
    llm = LLM(model=str(tiny_llama), **engine_kwargs(max_num_batched_tokens=16))
    params = SamplingParams(
        temperature=0.0, max_tokens=6, logprobs=3, prompt_logprobs=2, ignore_eos=True
    )
    prompts = PROMPTS[:4]
    for out in llm.generate(prompts, params, use_tqdm=False):
        comp = out.outputs[0]
        all_ids = out.prompt_token_ids + comp.token_ids
        ref = hf_logits(model, all_ids).log_softmax(-1)  # [L, V]
        n_prompt = len(out.prompt_token_ids)
        # Prompt logprobs: position 0 has none, position p is scored by row p - 1.
        assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == n_prompt
        for p in range(1, n_prompt):
            entry = out.prompt_logprobs[p]
            tid = all_ids[p]
            assert abs(entry[tid].logprob - ref[p - 1, tid].item()) < 1e-4
            assert entry[tid].rank == int((ref[p - 1] > ref[p - 1, tid]).sum()) + 1
            top = ref[p - 1].topk(2)
            for j, (v, t) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
                assert abs(entry[t].logprob - v) < 1e-4 and entry[t].rank == j + 1
        assert len(comp.logprobs) == len(comp.token_ids)
        total = 0.0
        for i, tid in enumerate(comp.token_ids):
            entry = comp.logprobs[i]
            row = ref[n_prompt - 1 + i]
            assert abs(entry[tid].logprob - row[tid].item()) < 1e-4
            assert entry[tid].rank == 1  # greedy
            assert len(entry) == 3  # top-3 includes the chosen one
            assert entry[tid].decoded_token == tok.decode([tid])
            total += entry[tid].logprob
        assert math.isclose(comp.cumulative_logprob, total, abs_tol=1e-6)


def test_chat_applies_template(tiny_qwen3, tokenizer_of):
    llm = LLM(model=str(tiny_qwen3), **engine_kwargs())
    messages = [{"role": "user", "content": "Hello there"}]
    out = llm.chat(messages, SamplingParams(temperature=0, max_tokens=3), use_tqdm=False)[0]
    text = tokenizer_of(tiny_qwen3).apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|bos|>assistant\n")
    assert out.prompt == text
    assert out.prompt_token_ids == tokenizer_of(tiny_qwen3).encode(text, add_special_tokens=False)
    two = llm.chat(
        [messages, messages], SamplingParams(temperature=0, max_tokens=3), use_tqdm=False
    )
    assert [o.outputs[0].token_ids for o in two] == [out.outputs[0].token_ids] * 2


def test_chat_passes_tools_to_the_template(tiny_qwen3):
    llm = LLM(model=str(tiny_qwen3), **engine_kwargs())
    template = ("{% for t in tools or [] %}[{{ t.function.name }}]{% endfor %}"
                "{% for m in messages %}{{ m.content }}{% endfor %}")
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    messages = [{"role": "user", "content": "Hello there"}]
    params = SamplingParams(temperature=0, max_tokens=1)
    out = llm.chat(messages, params, use_tqdm=False, chat_template=template, tools=tools)[0]
    assert out.prompt == "[get_weather]Hello there"
    plain = llm.chat(messages, params, use_tqdm=False, chat_template=template)[0]
    assert plain.prompt == "Hello there"


def test_tqdm_bar_reports_tokens_per_second(tiny_llama, capsys):
    llm = LLM(model=str(tiny_llama), **engine_kwargs())
    llm.generate(PROMPTS[:3], SamplingParams(max_tokens=4), use_tqdm=True)
    err = capsys.readouterr().err
    assert "Processed prompts" in err and "3/3" in err and "output:" in err and "toks/s" in err
    llm.generate(PROMPTS[:3], SamplingParams(max_tokens=4), use_tqdm=False)
    assert "Processed prompts" not in capsys.readouterr().err


def test_cache_salt_separates_prefix_cache_hits(tiny_llama):
    llm = LLM(model=str(tiny_llama), **engine_kwargs())
    prompt = PROMPTS[11] * 2  # several full blocks

    def hits_after(salt):
        before = llm.llm_engine.get_stats().prefix_cache_hits
        params = SamplingParams(temperature=0, max_tokens=2, cache_salt=salt)
        out = llm.generate([prompt], params, use_tqdm=False)[0].outputs[0].token_ids
        return llm.llm_engine.get_stats().prefix_cache_hits - before, out

    assert hits_after("a")[0] == 0
    hits_b, out_b = hits_after("b")
    assert hits_b == 0                                 # another salt: nothing shared
    hits_a, out_a = hits_after("a")
    assert hits_a > 0 and out_a == out_b               # the same salt hits, same tokens
    assert hits_after(None)[0] == 0                    # unsalted does not see salted blocks
