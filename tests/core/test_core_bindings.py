"""pagedllm._C.core through Python: views, lifetimes, errors, and plans equal to a Python reference."""
from __future__ import annotations

import gc
import importlib.util
import random
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from pagedllm._C import core

# The reference lives next to this file; loaded by path (pytest runs with --import-mode=importlib).
_spec = importlib.util.spec_from_file_location("pagedllm_tests_reference_scheduler",
                                               Path(__file__).with_name("reference_scheduler.py"))
reference_scheduler = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = reference_scheduler  # dataclasses look their module up there
_spec.loader.exec_module(reference_scheduler)

PLAN_INT32_FIELDS = ("input_ids", "positions", "slot_mapping", "query_start_loc", "seq_lens", "num_computed",
                     "block_table", "logits_indices", "sampled_seq_indices")


def fake_token(handle: int, position: int) -> int:
    """The test model: a deterministic token for each (request, position)."""
    return (handle * 7919 + position * 104729) % 97


def make_scheduler(**overrides) -> core.Scheduler:
    kwargs = {"num_blocks": 64, "block_size": 4, "max_num_seqs": 8, "max_num_batched_tokens": 32, "max_model_len": 64}
    kwargs.update(overrides)
    return core.Scheduler(core.SchedulerConfig(**kwargs))


def sample_for(plan: core.BatchPlan) -> np.ndarray:
    rows = plan.sampled_seq_indices
    return np.array([fake_token(int(plan.handles[r]), int(plan.seq_lens[r])) for r in rows], dtype=np.int32)


# ---- views --------------------------------------------------------------------------------------

def test_plan_views_have_the_documented_shapes_and_dtypes() -> None:
    s = make_scheduler()
    s.add_request(1, np.arange(10, dtype=np.int32), core.RequestParams(max_tokens=3))
    s.add_request(2, [5, 6, 7], core.RequestParams(max_tokens=3))
    plan = s.schedule()
    S, T, N = plan.num_seqs, plan.num_tokens, plan.num_sampled
    assert (S, T, N) == (2, 13, 2)
    shapes = {"input_ids": (T,), "positions": (T,), "slot_mapping": (T,), "query_start_loc": (S + 1,),
              "seq_lens": (S,), "num_computed": (S,), "block_table": (S, s.config.max_blocks_per_seq),
              "logits_indices": (N,), "sampled_seq_indices": (N,)}
    for name, shape in shapes.items():
        arr = getattr(plan, name)
        assert arr.dtype == np.int32, name
        assert arr.shape == shape, name
        assert arr.flags.c_contiguous and not arr.flags.writeable and not arr.flags.owndata, name
    assert plan.handles.dtype == np.int64 and plan.handles.tolist() == [1, 2]
    assert plan.preempted_handles.dtype == np.int64 and plan.preempted_handles.shape == (0,)
    assert plan.num_preempted == 0
    assert plan.query_start_loc.tolist() == [0, 10, 13]
    assert plan.logits_indices.tolist() == [9, 12]
    assert plan.max_query_len == 10 and plan.max_seq_len == 10
    # Views are zero-copy: the same attribute twice is the same memory.
    assert plan.input_ids.__array_interface__["data"][0] == plan.input_ids.__array_interface__["data"][0]
    with pytest.raises(ValueError):
        plan.input_ids[0] = 1
    out = s.update(plan, sample_for(plan))
    assert len(out) == 2 and out.handles.dtype == np.int64 and out.new_token_ids.dtype == np.int32
    assert [o.handle for o in out] == [1, 2]
    assert out[0].new_token_ids == [fake_token(1, 10)] and out[-1].finish_reason == core.FinishReason.NONE
    with pytest.raises(IndexError):
        out[2]


def test_old_plans_stay_unchanged_while_held() -> None:
    s = make_scheduler()
    s.add_request(1, np.arange(20, dtype=np.int32), core.RequestParams(max_tokens=30))
    s.add_request(2, np.arange(50, 57, dtype=np.int32), core.RequestParams(max_tokens=30))
    first = s.schedule()
    snapshot = {name: getattr(first, name).copy() for name in PLAN_INT32_FIELDS}
    lone_view = first.block_table
    s.update(first, sample_for(first))
    for _ in range(20):  # many steps: a buffer reused while held would show here
        plan = s.schedule()
        s.update(plan, sample_for(plan))
    for name, before in snapshot.items():
        np.testing.assert_array_equal(getattr(first, name), before, err_msg=name)
    del first
    gc.collect()
    np.testing.assert_array_equal(lone_view, snapshot["block_table"])  # a view keeps its buffer alive


def test_step_outputs_arrays_and_finish() -> None:
    s = make_scheduler()
    s.add_request(3, [1, 2, 3], core.RequestParams(max_tokens=5, eos_token_id=42))
    plan = s.schedule()
    out = s.update(plan, [42])
    assert out.finish_reasons.tolist() == [int(core.FinishReason.STOP)]
    assert out[0].finished and out[0].stop_token_id == 42 and out[0].finish_reason == core.FinishReason.STOP
    assert not s.has_unfinished_requests() and s.num_unfinished_requests() == 0
    stats = s.stats()
    assert stats.num_blocks_used == 0 and stats.kv_cache_usage == 0.0 and stats.num_blocks_total == 63


# ---- errors ---------------------------------------------------------------------------------------

def test_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="num_blocks"):
        core.SchedulerConfig(num_blocks=1)
    with pytest.raises(ValueError, match="max_num_seqs"):
        core.SchedulerConfig(num_blocks=8, max_num_seqs=0)
    with pytest.raises(ValueError, match="max_num_batched_tokens"):
        core.SchedulerConfig(num_blocks=8, max_num_batched_tokens=1024, max_model_len=4096,
                            enable_chunked_prefill=False)
    with pytest.raises(ValueError, match="min_tokens"):
        core.RequestParams(max_tokens=2, min_tokens=3)
    with pytest.raises(TypeError):
        core.SchedulerConfig(num_blocks="many")
    with pytest.raises(TypeError):
        core.SchedulerConfig(8)  # keyword-only


def test_bad_requests_raise_python_exceptions() -> None:
    s = make_scheduler(num_blocks=5, max_model_len=32)  # 4 usable blocks of 4 tokens
    params = core.RequestParams(max_tokens=2)
    s.add_request(1, [1, 2], params)
    with pytest.raises(ValueError, match="handle"):
        s.add_request(1, [1, 2], params)
    with pytest.raises(ValueError, match="empty"):
        s.add_request(2, [], params)
    with pytest.raises(ValueError):
        s.add_request(2, [1, -1], params)
    with pytest.raises(TypeError):
        s.add_request(2, np.array([1.5, 2.0]), params)
    with pytest.raises(TypeError):
        s.add_request(2, "hello", params)
    with pytest.raises(ValueError):
        s.add_request(2, np.ones((2, 2), dtype=np.int32), params)
    with pytest.raises(ValueError):
        s.add_request(2, np.array([2**40], dtype=np.int64), params)
    with pytest.raises(ValueError, match="KV blocks"):
        s.add_request(2, list(range(15)), core.RequestParams(max_tokens=10))
    with pytest.raises(ValueError, match="max_model_len"):
        s.add_request(2, list(range(32)), params)
    assert s.abort_request(99) is False
    s.check_invariants()


def test_update_misuse_raises() -> None:
    s = make_scheduler()
    other = make_scheduler()
    s.add_request(1, [1, 2, 3], core.RequestParams(max_tokens=4))
    plan = s.schedule()
    with pytest.raises(ValueError, match="sampled_token_ids"):
        s.update(plan, [1, 2])
    with pytest.raises(TypeError):
        s.update(plan, [1.5])
    with pytest.raises(ValueError, match="another Scheduler"):
        other.update(plan, [1])
    s.update(plan, np.array([7], dtype=np.int64))
    with pytest.raises(core.CoreError):
        s.update(plan, [7])
    assert issubclass(core.CoreError, RuntimeError)


def test_a_plan_never_applied_is_planned_again() -> None:
    s = make_scheduler()
    s.add_request(1, list(range(10)), core.RequestParams(max_tokens=2))
    failed = s.schedule()  # the step "fails": no update()
    retry = s.schedule()
    np.testing.assert_array_equal(retry.input_ids, failed.input_ids)
    np.testing.assert_array_equal(retry.num_computed, failed.num_computed)
    assert s.stats().num_blocks_used == 3  # the failed step's blocks were returned
    with pytest.raises(core.CoreError):
        s.update(failed, [1])
    out = s.update(retry, [1])
    assert out[0].new_token_ids == [1]
    s.check_invariants()


def test_concurrent_adds_and_aborts_while_stepping() -> None:
    s = make_scheduler(num_blocks=256, max_num_seqs=16, max_model_len=64)
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn() -> None:
        rng = random.Random(1)
        h = 1000
        try:
            while not stop.is_set():
                h += 1
                s.add_request(h, [rng.randrange(50) for _ in range(rng.randrange(1, 20))],
                              core.RequestParams(max_tokens=rng.randrange(1, 8)))
                if rng.random() < 0.3:
                    s.abort_request(h - rng.randrange(5))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=churn)
    t.start()
    try:
        for _ in range(300):
            plan = s.schedule()
            s.update(plan, np.full(plan.num_sampled, 3, dtype=np.int32))
    finally:
        stop.set()
        t.join()
    assert not errors
    s.check_invariants()
    while s.has_unfinished_requests():
        plan = s.schedule()
        s.update(plan, np.full(plan.num_sampled, 3, dtype=np.int32))
    assert s.stats().num_blocks_used == 0


# ---- against the Python reference ---------------------------------------------------------------

def _random_scenario(seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    bs = rng.choice([1, 2, 4, 8, 16])
    max_model_len = rng.randrange(8, 80)
    max_num_seqs = rng.randrange(1, 6)
    chunked = rng.random() < 0.7
    budget = rng.randrange(1, 48) if chunked else max_model_len + rng.randrange(0, 16)
    caching = rng.random() < 0.8
    # Enough blocks for every running request at full length: the reference never preempts.
    num_blocks = max_num_seqs * -(-max_model_len // bs) + 1 + rng.randrange(0, 8)
    kw = {"num_blocks": num_blocks, "block_size": bs, "max_num_seqs": max_num_seqs, "max_num_batched_tokens": budget,
              "max_model_len": max_model_len, "enable_prefix_caching": caching, "enable_chunked_prefill": chunked}
    ref = reference_scheduler.ReferenceScheduler(**kw)
    s = core.Scheduler(core.SchedulerConfig(**kw))
    prefixes = [[rng.randrange(97) for _ in range(max_model_len)] for _ in range(3)]
    handle = 0
    live: set[int] = set()
    seen = {"partial_chunks": 0, "finished": 0, "aborted": 0, "hit_tokens": 0}
    for step in range(150):
        for _ in range(rng.choice([0, 0, 1, 2])):
            handle += 1
            n = rng.randrange(1, max_model_len)
            base = rng.choice(prefixes)
            prompt = [base[i] if rng.random() < 0.9 else rng.randrange(97) for i in range(n)]
            kwargs = {"max_tokens": rng.choice([0, 1, 3, 10, 40]), "eos": rng.choice([-1, 5]),
                      "stop_ids": tuple(rng.sample(range(97), 2)) if rng.random() < 0.3 else (),
                      "salt": rng.choice(["", "", "s"]), "arrival_time": float(rng.randrange(0, 1000))}
            kwargs["min_tokens"] = rng.randrange(0, kwargs["max_tokens"] + 1) if rng.random() < 0.3 else 0
            params = core.RequestParams(max_tokens=kwargs["max_tokens"], min_tokens=kwargs["min_tokens"],
                                        eos_token_id=kwargs["eos"], stop_token_ids=list(kwargs["stop_ids"]),
                                        cache_salt=kwargs["salt"], arrival_time=kwargs["arrival_time"])
            try:
                s.add_request(handle, prompt, params)
            except ValueError:
                continue  # too long for max_model_len / the cache: the reference is not told either
            ref.add(handle, prompt, **kwargs)
            live.add(handle)
        if live and rng.random() < 0.1:
            victim = rng.choice(sorted(live))
            assert s.abort_request(victim) == ref.abort(victim)
            live.discard(victim)
            seen["aborted"] += 1
        plan = s.schedule()
        want = ref.schedule()
        for name, expected in want.items():
            np.testing.assert_array_equal(getattr(plan, name), expected, err_msg=f"seed {seed} step {step} {name}")
        assert plan.preempted_handles.size == 0
        seen["partial_chunks"] += plan.num_seqs - plan.num_sampled
        sampled = sample_for(plan)
        got = s.update(plan, sampled)
        expected_out = ref.update(want, sampled)
        assert [(o.handle, o.new_token_ids, int(o.finish_reason), o.stop_token_id) for o in got] == expected_out, \
            f"seed {seed} step {step}"
        for h, _, reason, _ in expected_out:
            if reason:
                live.discard(h)
                seen["finished"] += 1
        s.check_invariants()
    stats = s.stats()
    assert (stats.prefix_cache_queries, stats.prefix_cache_hits) == (ref.queries, ref.hits)
    seen["hit_tokens"] = stats.prefix_cache_hits
    return seen


@pytest.mark.parametrize("seed", range(40))
def test_plans_match_the_python_reference(seed: int) -> None:
    _random_scenario(seed)


def test_reference_scenarios_cover_chunks_hits_aborts_and_finishes() -> None:
    totals = {"partial_chunks": 0, "finished": 0, "aborted": 0, "hit_tokens": 0}
    for seed in range(100, 110):
        for key, value in _random_scenario(seed).items():
            totals[key] += value
    assert all(v > 10 for v in totals.values()), totals


def test_accepts_lists_tuples_and_torch_tensors() -> None:
    torch = pytest.importorskip("torch")
    s = make_scheduler()
    s.add_request(1, torch.tensor([1, 2, 3]), core.RequestParams(max_tokens=2))
    s.add_request(2, (4, 5), core.RequestParams(max_tokens=2))
    s.add_request(3, np.array([7, 8], dtype=np.uint16), core.RequestParams(max_tokens=2))
    plan = s.schedule()
    assert plan.input_ids.tolist() == [1, 2, 3, 4, 5, 7, 8]
    out = s.update(plan, torch.tensor([9, 9, 9], dtype=torch.int64))
    assert out.new_token_ids.tolist() == [9, 9, 9]
    with pytest.raises(ValueError):
        s.add_request(4, np.array([2**33], dtype=np.uint64), core.RequestParams(max_tokens=2))


def test_stub_names_exist_at_runtime() -> None:
    """Every class, attribute and method core.pyi declares exists in the compiled module."""
    import ast

    pyi = Path(__file__).resolve().parents[2] / "python" / "pagedllm" / "_C" / "core.pyi"
    tree = ast.parse(pyi.read_text())
    missing = []
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        cls = getattr(core, node.name, None)
        if cls is None:
            missing.append(node.name)
            continue
        for item in node.body:
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                name = item.target.id
            elif isinstance(item, ast.Assign) and isinstance(item.targets[0], ast.Name):
                name = item.targets[0].id
            elif isinstance(item, ast.FunctionDef):
                name = item.name
            else:
                continue
            if not hasattr(cls, name):
                missing.append(f"{node.name}.{name}")
    assert not missing, missing
