"""Multi-LoRA serving: greedy tokens under an adapter equal transformers' on the base model with
the adapter merged into its weights (W + scale B A, float32), alone and in batches that mix
adapters and the base model; the prefix cache is shared only within one adapter; at most
max_loras adapters run in a step and the rest wait; unusable adapters are refused clearly."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from pagedllm import LLM, SamplingParams
from pagedllm.lora import LoRARequest

from .conftest import PROMPTS, engine_kwargs, hf_generate_greedy

MAX_NEW = 10
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_NEW)


def _lora_llm(path, **overrides) -> LLM:
    return LLM(model=str(path), **engine_kwargs(enable_lora=True, **overrides))


def _expected(model_dir, prompts, hf_model, tokenizer) -> list[list[int]]:
    model = hf_model(model_dir)
    return [hf_generate_greedy(model, tokenizer.encode(p), MAX_NEW) for p in prompts]


def _tokens(outs) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in outs]


def _record_step_adapters(llm: LLM) -> list[set[int]]:
    """The distinct adapter ids of every step the runner runs from now on."""
    runner = llm.llm_engine.engine_core.runner
    steps: list[set[int]] = []
    execute = runner.execute_model

    def recording(plan, *args, lora_ids=None, **kwargs):
        steps.append(set() if lora_ids is None else set(np.unique(lora_ids).tolist()) - {0})
        return execute(plan, *args, lora_ids=lora_ids, **kwargs)

    runner.execute_model = recording
    return steps


@pytest.mark.parametrize("arch,kind", [("llama", "all"), ("qwen3", "all"), ("llama", "rslora"),
                                       ("qwen3", "qv"), ("phi3", "fused")])
def test_lora_greedy_matches_merged_transformers(arch, kind, tiny_model_dirs, tiny_lora,
                                                 hf_model, tokenizer_of):
    base = tiny_model_dirs[arch]
    adapter, merged = tiny_lora(arch, kind)
    tokenizer = tokenizer_of(base)
    llm = _lora_llm(base)
    lora = LoRARequest("ad", 1, str(adapter))
    outs = llm.generate(PROMPTS, GREEDY, use_tqdm=False, lora_request=lora)
    expected = _expected(merged, PROMPTS, hf_model, tokenizer)
    assert _tokens(outs) == expected
    assert all(o.lora_request is lora for o in outs)
    # The adapter matters: the base model answers differently, and still does afterwards.
    base_expected = _expected(base, PROMPTS, hf_model, tokenizer)
    assert sum(e != b for e, b in zip(expected, base_expected)) >= len(PROMPTS) // 2
    assert _tokens(llm.generate(PROMPTS, GREEDY, use_tqdm=False)) == base_expected


@pytest.mark.parametrize("max_loras,batched_tokens", [(2, None), (1, None), (2, 32)])
def test_mixed_batch_each_request_matches_its_own_reference(max_loras, batched_tokens,
                                                            tiny_llama, tiny_lora, hf_model,
                                                            tokenizer_of):
    """Adapter 1, adapter 2 and the base model in one generate call; with max_loras=1 the
    adapters take turns; with 32-token steps prompts arrive in chunks, so one adapter's
    sequences are not adjacent in a step (the gathered-rows path)."""
    tokenizer = tokenizer_of(tiny_llama)
    dirs = {1: tiny_lora("llama", "all"), 2: tiny_lora("llama", "rslora")}
    loras = {i: LoRARequest(f"ad{i}", i, str(d[0])) for i, d in dirs.items()}
    prompts = PROMPTS[:12]
    which = [(1, 2, 0)[i % 3] for i in range(len(prompts))]
    llm = _lora_llm(tiny_llama, max_loras=max_loras, max_num_batched_tokens=batched_tokens)
    steps = _record_step_adapters(llm)
    outs = llm.generate(prompts, GREEDY, use_tqdm=False,
                        lora_request=[loras.get(w) for w in which])
    refs = {0: _expected(tiny_llama, prompts, hf_model, tokenizer)}
    for i, (_, merged) in dirs.items():
        refs[i] = _expected(merged, prompts, hf_model, tokenizer)
    assert _tokens(outs) == [refs[w][j] for j, w in enumerate(which)]
    assert max(len(s) for s in steps) == max_loras   # never more, and the limit was reached
    assert llm.llm_engine.engine_core.num_lora_waiting == 0


def test_gathered_rows_equal_contiguous_rows(tiny_llama, tiny_lora):
    """One step, sequences [ad1, base, ad1, ad2]: adapter 1's rows are gathered, the others a
    range; each sequence's logits equal those of a run with that sequence alone."""
    import torch

    llm = _lora_llm(tiny_llama, max_loras=2)
    core = llm.llm_engine.engine_core
    for i, kind in ((1, "all"), (2, "rslora")):
        core.add_lora(LoRARequest(f"ad{i}", i, str(tiny_lora("llama", kind)[0])))
    runner = core.runner
    from pagedllm.testing.plans import HandPlanner

    prompts = [[5, 17, 99, 3, 250], [7] * 9, list(range(30, 42)), [400, 2, 9]]
    ids = [1, 0, 1, 2]

    def run(handles_prompts, lora_ids):
        planner = HandPlanner(runner.num_blocks, 16, runner.max_blocks_per_seq)
        plan = planner.plan(handles_prompts)
        lora = np.asarray(lora_ids, np.int64)
        return runner.execute_model(plan, lora_ids=lora if lora.any() else None)

    together = run(list(enumerate(prompts)), ids)
    for i, (prompt, lora_id) in enumerate(zip(prompts, ids)):
        alone = run([(0, prompt)], [lora_id])
        torch.testing.assert_close(together[i], alone[0], rtol=1e-5, atol=1e-5)


def test_prefix_cache_is_shared_only_within_an_adapter(tiny_llama, tiny_lora, hf_model,
                                                       tokenizer_of):
    tokenizer = tokenizer_of(tiny_llama)
    prompt = PROMPTS[1]   # 40+ tokens: two full 16-token blocks to share
    ad1 = LoRARequest("ad1", 1, str(tiny_lora("llama", "all")[0]))
    ad2 = LoRARequest("ad2", 2, str(tiny_lora("llama", "rslora")[0]))
    refs = {None: _expected(tiny_llama, [prompt], hf_model, tokenizer)[0],
            ad1: _expected(tiny_lora("llama", "all")[1], [prompt], hf_model, tokenizer)[0],
            ad2: _expected(tiny_lora("llama", "rslora")[1], [prompt], hf_model, tokenizer)[0]}
    llm = _lora_llm(tiny_llama, max_loras=2)
    engine = llm.llm_engine

    def run(lora, salt=None):
        hits = engine.get_stats().prefix_cache_hits
        params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW, cache_salt=salt)
        out = llm.generate([prompt], params, use_tqdm=False, lora_request=lora)[0]
        assert out.outputs[0].token_ids == refs[lora]
        return engine.get_stats().prefix_cache_hits - hits, out.num_cached_tokens

    assert run(None) == (0, 0)
    assert run(ad1) == (0, 0)          # the base model's blocks are not the adapter's
    hit, cached = run(ad1)
    assert hit > 0 and cached >= 32    # the adapter's own blocks are
    assert run(ad2) == (0, 0)
    assert run(None)[0] > 0
    # A user's cache_salt still separates requests under the same adapter.
    assert run(ad1, salt="tenant-a") == (0, 0)
    assert run(ad1, salt="tenant-a")[0] > 0
    assert run(ad2, salt="tenant-a") == (0, 0)


def test_prefix_cache_salt_is_one_to_one():
    from pagedllm.engine.core import prefix_cache_salt

    salts = [prefix_cache_salt(s, i) for s in (None, "", "x", "\x00", "\x00lora1\x00x",
                                               "\x00\x00lora1\x00x", "lora1")
             for i in (0, 1, 11)]
    keys = {(s or "", i) for s in (None, "", "x", "\x00", "\x00lora1\x00x",
                                   "\x00\x00lora1\x00x", "lora1") for i in (0, 1, 11)}
    assert len(set(salts)) == len(keys)
    assert prefix_cache_salt("mine") == "mine" and prefix_cache_salt(None) == ""


def test_more_adapters_than_slots_all_finish(tiny_llama, tiny_lora, hf_model, tokenizer_of):
    """Three adapters, one slot, one adapter loaded at a time (max_cpu_loras=1): the requests
    queue by adapter, each adapter is loaded when its turn comes, nothing hangs."""
    tokenizer = tokenizer_of(tiny_llama)
    kinds = {1: "all", 2: "rslora", 3: "qv"}
    loras = {i: LoRARequest(k, i, str(tiny_lora("llama", k)[0])) for i, k in kinds.items()}
    prompts = PROMPTS[:9]
    which = [3, 1, 2] * 3
    llm = _lora_llm(tiny_llama, max_loras=1, max_cpu_loras=1)
    steps = _record_step_adapters(llm)
    outs = llm.generate(prompts, GREEDY, use_tqdm=False,
                        lora_request=[loras[w] for w in which])
    refs = {i: _expected(tiny_lora("llama", k)[1], prompts, hf_model, tokenizer)
            for i, k in kinds.items()}
    assert _tokens(outs) == [refs[w][j] for j, w in enumerate(which)]
    assert all(len(s) <= 1 for s in steps)
    assert len(llm.llm_engine.list_loras()) == 1


def test_errors_are_clear_and_leave_the_engine_usable(tiny_llama, tiny_lora, tmp_path):
    adapter = str(tiny_lora("llama", "all")[0])   # rank 8
    plain = LLM(model=str(tiny_llama), **engine_kwargs())
    with pytest.raises(ValueError, match="enable_lora"):
        plain.generate(["hi"], GREEDY, use_tqdm=False, lora_request=LoRARequest("a", 1, adapter))

    llm = _lora_llm(tiny_llama, max_lora_rank=4)
    engine = llm.llm_engine

    def refused(lora, match):
        with pytest.raises(ValueError, match=match):
            llm.generate(["hi", "there"], GREEDY, use_tqdm=False, lora_request=lora)
        assert not engine.has_unfinished_requests()

    refused(LoRARequest("big", 1, adapter), "rank 8 is larger than max_lora_rank 4")
    refused(LoRARequest("nowhere", 2, str(tmp_path / "missing")), "no such directory")
    from pagedllm.testing.lora_adapters import make_lora_adapter

    broken = {
        "head": dict(target_modules=("lm_head",)),
        "bias": dict(config_overrides={"bias": "all"}),
        "dora": dict(config_overrides={"use_dora": True}),
    }
    made = {name: make_lora_adapter(tiny_llama, tmp_path / name, rank=4, **kw)
            for name, kw in broken.items()}
    refused(LoRARequest("head", 3, str(made["head"])), "not supported for this model")
    refused(LoRARequest("bias", 4, str(made["bias"])), "bias='all' is not supported")
    refused(LoRARequest("dora", 5, str(made["dora"])), "use_dora=True is not supported")
    # A listed module that exists is fine next to one this model lacks (as PEFT allows), but
    # a tensor for a module without LoRA support is refused.
    mixed = make_lora_adapter(tiny_llama, tmp_path / "mixed", rank=4,
                              target_modules=("q_proj", "lm_head"))
    refused(LoRARequest("mixed", 6, str(mixed)), r"lm_head.*not supported")
    ok = make_lora_adapter(tiny_llama, tmp_path / "ok", rank=4)
    no_weights = shutil.copytree(ok, tmp_path / "no_weights")
    (no_weights / "adapter_model.safetensors").unlink()
    refused(LoRARequest("noweights", 7, str(no_weights)), "no adapter_model.safetensors")
    with pytest.raises(ValueError, match="lora_int_id"):
        LoRARequest("zero", 0, adapter)
    # One id, one adapter.
    llm.generate(["hi"], GREEDY, use_tqdm=False, lora_request=LoRARequest("ok", 8, str(ok)))
    refused(LoRARequest("other", 8, str(made["bias"])), "already names adapter 'ok'")
    # Still serving, with and without the adapter.
    outs = llm.generate(["hi", "there"], GREEDY, use_tqdm=False,
                        lora_request=[LoRARequest("ok", 8, str(ok)), None])
    assert all(len(o.outputs[0].token_ids) > 0 for o in outs)


def test_adapter_that_fails_to_load_fails_only_its_requests(tiny_llama, tiny_lora, tmp_path):
    """Checked at add time, gone by the time its slot comes: its requests fail with the
    loading error; the other adapter's and the base model's finish."""
    src = tiny_lora("llama", "all")[0]
    doomed = shutil.copytree(src, tmp_path / "doomed")
    llm = _lora_llm(tiny_llama, max_loras=1)
    engine = llm.llm_engine
    params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW)
    engine.add_request("first", "hello", params, lora_request=LoRARequest("ok", 1, str(src)))
    engine.add_request("doomed", "hello", params,
                       lora_request=LoRARequest("doomed", 2, str(doomed)))
    engine.add_request("base", "hello", params)
    (doomed / "adapter_model.safetensors").unlink()   # checked already; loads once 1 is done
    finished, failed = set(), {}
    while engine.has_unfinished_requests():
        outs, errors = engine.step_with_failures()
        finished |= {o.request_id for o in outs if o.finished}
        failed.update(errors)
    assert finished == {"first", "base"}
    assert set(failed) == {"doomed"}
    assert "adapter_model.safetensors" in str(failed["doomed"])
    assert engine.get_stats().num_unfinished_requests == 0


def test_add_remove_list_loras(tiny_llama, tiny_lora):
    llm = _lora_llm(tiny_llama, max_loras=1, max_cpu_loras=2)
    engine = llm.llm_engine
    loras = [LoRARequest(k, i, str(tiny_lora("llama", k)[0]))
             for i, k in ((1, "all"), (2, "rslora"), (3, "qv"))]
    for lora in loras:
        assert engine.add_lora(lora)
    assert engine.list_loras() == {2, 3}        # the least recently used went first
    assert engine.remove_lora(3) and engine.list_loras() == {2}
    assert not engine.remove_lora(3)           # unknown now
    out = llm.generate(["hello"], GREEDY, use_tqdm=False, lora_request=loras[0])[0]
    assert out.outputs[0].token_ids and engine.list_loras() == {1, 2}


def test_chat_with_lora_request(tiny_qwen3, tiny_lora):
    lora = LoRARequest("ad", 1, str(tiny_lora("qwen3", "all")[0]))
    llm = _lora_llm(tiny_qwen3)
    messages = [{"role": "user", "content": "Hello, world!"}]
    chat = llm.chat(messages, GREEDY, use_tqdm=False, lora_request=lora)[0]
    plain = llm.generate([{"prompt_token_ids": chat.prompt_token_ids}], GREEDY,
                         use_tqdm=False, lora_request=lora)[0]
    base = llm.chat(messages, GREEDY, use_tqdm=False)[0]
    assert chat.outputs[0].token_ids == plain.outputs[0].token_ids
    assert chat.outputs[0].token_ids != base.outputs[0].token_ids


def test_async_engine_generate_with_lora(tiny_llama, tiny_lora):
    import asyncio

    from pagedllm import AsyncEngineArgs, AsyncLLMEngine

    lora = LoRARequest("ad", 1, str(tiny_lora("llama", "all")[0]))
    expected = _tokens(_lora_llm(tiny_llama).generate(["Hello, world!"], GREEDY,
                                                      use_tqdm=False, lora_request=lora))[0]
    engine = AsyncLLMEngine.from_engine_args(
        AsyncEngineArgs(model=str(tiny_llama), **engine_kwargs(enable_lora=True)))

    async def run():
        last = None
        async for out in engine.generate("Hello, world!", GREEDY, "r1", lora_request=lora):
            last = out
        return last.outputs[0].token_ids

    try:
        assert asyncio.run(run()) == expected
    finally:
        engine.shutdown()


def test_decode_graphs_replay_only_steps_without_adapters(tiny_llama, tiny_lora):
    """CUDA graphs are captured with no adapter active: a step with adapters must run eagerly,
    one without may replay (a stand-in for the graphs records which path each step took)."""
    llm = _lora_llm(tiny_llama)
    core = llm.llm_engine.engine_core
    runner = core.runner
    core.add_lora(LoRARequest("ad", 1, str(tiny_lora("llama", "all")[0])))
    replayed: list[int] = []

    class Graphs:
        def padded_size(self, plan):
            return int(plan.num_seqs)

        def run(self, plan, size, previous_tokens):
            replayed.append(size)
            inputs = runner._prepare(plan, previous_tokens)
            return runner.model(inputs.input_ids, inputs.positions, runner.kv_caches,
                                inputs.meta)

    from pagedllm.testing.plans import HandPlanner

    planner = HandPlanner(runner.num_blocks, 16, runner.max_blocks_per_seq)
    runner._decode_graphs = Graphs()
    try:
        with_lora = runner.execute_model(planner.plan([(0, [5, 17, 99])]),
                                         lora_ids=np.asarray([1]))
        assert replayed == [] and runner.lora_manager.batch.groups == []
        runner.execute_model(planner.plan([(1, [5, 17, 99])]))
        assert replayed == [1]
    finally:
        runner._decode_graphs = None
    assert with_lora.shape == (1, 512)


def test_memory_bound_covers_a_full_rank_adapter(tiny_llama, tiny_lora):
    """The KV-cache sizing keeps max_cpu_loras adapters' worth of memory: for an adapter of
    rank max_lora_rank on every projection the bound is exact."""
    llm = _lora_llm(tiny_llama, max_lora_rank=8, max_loras=1, max_cpu_loras=3)
    core = llm.llm_engine.engine_core
    core.add_lora(LoRARequest("ad", 1, str(tiny_lora("llama", "all")[0])))   # rank 8
    manager = core.runner.lora_manager
    assert manager.max_memory_bytes() == 3 * manager.adapter(1).num_bytes()
