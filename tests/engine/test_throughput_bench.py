"""benchmarks/throughput.py on the CPU: the step log adds up, step_log_summary.py's
groups account for every step against the floor it computes, and scheduler_sim.py's step-time
model is fitted and summed as documented."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    sys.path.insert(0, str(BENCHMARKS))  # throughput.py imports its sibling modules
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


@pytest.mark.parametrize("scheduling", ("--async-scheduling", "--no-async-scheduling"))
def test_step_log_records_every_step(tmp_path, scheduling):
    bench = load("throughput")
    log = tmp_path / "steps.json"
    result = bench.main(["--input-len", "16", "--output-len", "5", "--num-prompts", "3",
                         "--step-log", str(log), "--max-num-batched-tokens", "32", scheduling])
    steps = json.loads(log.read_text())
    assert len(steps) == result["num_steps"]
    # Each prompt token is computed once, each output token but the last is fed back once.
    assert sum(s["tokens"] for s in steps) == 3 * 16 + 3 * (5 - 1)
    for s in steps:
        assert s["context_tokens"] >= s["tokens"] >= s["seqs"] > 0
        assert s["wall_ms"] >= s["model_ms"] >= 0.0
    assert any(s["tokens"] > s["seqs"] for s in steps)    # prompt chunks
    assert any(s["tokens"] == s["seqs"] for s in steps)   # pure decode steps
    # Every call's wall time is charged to some step.
    assert sum(s["wall_ms"] for s in steps) <= 1000 * result["elapsed_time"] + 1.0


def test_step_log_summary_groups_and_floor():
    summary = load("step_log_summary")
    run = {"read_bandwidth_gbs": 1.0, "weight_bytes": 10**6, "kv_bytes_per_token": 1000}
    steps = ([{"tokens": 300, "seqs": 3, "context_tokens": 300, "wall_ms": 100.0}]
             + [{"tokens": 250, "seqs": 250, "context_tokens": 10000, "wall_ms": 20.0}] * 4
             + [{"tokens": 10, "seqs": 10, "context_tokens": 100, "wall_ms": 5.0}] * 2)
    rows = {r["group"]: r for r in summary.summarize(steps, run)}
    assert set(rows) == {"prefill / mixed", "decode, >= 200 seqs", "decode, < 33 seqs"}
    big = rows["decode, >= 200 seqs"]
    assert big["steps"] == 4 and big["wall_ms"] == 80.0
    # Floor per step: (10^6 + 10,000 * 1,000) bytes at 1 GB/s = 11 ms.
    assert big["floor_ms"] == pytest.approx(44.0)
    assert big["efficiency"] == pytest.approx(44.0 / 80.0, abs=1e-4)
    assert sum(r["share"] for r in rows.values()) == pytest.approx(1.0, abs=1e-3)


def test_scheduler_sim_step_model_fit_and_estimate(tmp_path):
    # A step log made from known coefficients: the fit recovers them.
    sim = load("scheduler_sim")
    truth = (6.5, 4e-3, 5e-5, 2.5e-2)
    rng = np.random.default_rng(0)
    steps = []
    for _ in range(200):
        seqs = int(rng.integers(1, 256))
        tokens = seqs + int(rng.integers(0, 2)) * int(rng.integers(1, 8000))
        context = int(rng.integers(tokens, 600_000))
        wall = truth[0] + truth[1] * seqs + truth[2] * context + truth[3] * (tokens - seqs)
        steps.append({"seqs": seqs, "tokens": tokens, "context_tokens": context, "wall_ms": wall})
    log = tmp_path / "steps.json"
    log.write_text(json.dumps(steps))
    assert sim.fit_step_model(str(log)) == pytest.approx(truth, rel=1e-6)

    # The estimate is the model summed over the replay's plans. Pricing one term at a time at
    # 1 s per unit makes each estimate a count: steps, sequence rows, context tokens, and prompt
    # or recomputed tokens, which with the rows add up to every token scheduled.
    requests = sim.random_requests(6, 20, 40, 3, 9, 50_000, seed=1)

    def estimate(model):
        # 8 blocks of 16 hold 7 * 16 tokens: too few for the ~50-token sequences, so it preempts.
        return sim.replay(requests, num_blocks=8, max_num_seqs=4, max_num_batched_tokens=32,
                          max_model_len=64, prefix_caching=True, step_model=model)

    steps = estimate((1000.0, 0, 0, 0))
    rows = estimate((0, 1000.0, 0, 0))
    context = estimate((0, 0, 1000.0, 0))
    prompt = estimate((0, 0, 0, 1000.0))
    assert steps["preemptions"] > 0 and steps["tokens_recomputed"] > 0
    assert steps["est_s"] == steps["steps"]
    assert context["est_s"] == context["context_tokens_read"]
    assert rows["est_s"] + prompt["est_s"] == steps["tokens_scheduled"]
    assert rows["est_s"] >= steps["steps"]  # at least one row a step


def test_scheduler_sim_tail():
    # The tail (steps after the last one that left a request waiting) holds at least the last
    # admitted request's whole output; with room for everyone at once nothing ever waits after
    # the first step's admissions, so the whole replay is tail.
    sim = load("scheduler_sim")
    requests = sim.random_requests(6, 20, 40, 3, 9, 50_000, seed=1)
    tight = sim.replay(requests, num_blocks=8, max_num_seqs=4, max_num_batched_tokens=32,
                       max_model_len=64, prefix_caching=True)
    assert tight["preemptions"] > 0
    assert min(r.output_len for r in requests) <= tight["tail_steps"] < tight["steps"]
    assert 1 <= tight["tail_mean_batch"] <= 4
    roomy = sim.replay(requests, num_blocks=64, max_num_seqs=8, max_num_batched_tokens=512,
                       max_model_len=64, prefix_caching=True)
    assert roomy["preemptions"] == 0
    assert roomy["tail_steps"] == roomy["steps"]
    # Unchunked and never preempted, a request is a row of output_len steps (prefill, then
    # one decode step per further token).
    total_rows = sum(r.output_len for r in requests)
    assert roomy["tail_mean_batch"] == pytest.approx(total_rows / roomy["steps"], abs=0.05)
