"""Replay a throughput workload through the C++ scheduler alone (no model): steps, preemptions,
tokens recomputed after preemption, and the HBM floor of the plans, for several scheduler
settings. With ignore_eos the plans do not depend on the sampled tokens, so for the settings of a
GPU run this reproduces that run's step and preemption counts exactly (a check of the replay).

    python benchmarks/scheduler_sim.py --workload 8b --num-blocks 24200 --max-num-seqs 128 192 256 \
        --admission-reserve 0 1 2

--num-blocks is what the GPU run allocated (its JSON's kv_blocks_total); several sizes show how
much a result owes to where the cohorts of a uniform workload fall against the cache (RESULTS.md,
twentieth session). The floor uses the weight and K/V sizes of the model shape and a read
bandwidth (default: the H100 figure measured in benchmarks/RESULTS.md), as throughput.py does.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pagedllm._C import core  # noqa: E402
from workloads import WORKLOADS, random_requests  # noqa: E402

# (weight bytes, K/V bytes per context token) of the shapes the GPU runs use, bf16.
SHAPE_BYTES = {
    "qwen3-8b": (16_381_470_720, 147_456),
    "qwen3-0.6b": (1_192_099_840, 114_688),
}
VOCAB = 151_936


# Step-time model of W-8B on an H100 (main 6b895bf, 2026-12-05, benchmarks/RESULTS.md): least
# squares over that run's 12,354 logged steps of wall ms = fixed + per sequence + per context token
# read + per prompt/recomputed token; 50-step windows within 1.6% rms of the measured time.
H100_W8B_STEP_MODEL = (7.136, 5.290e-3, 5.006e-5, 2.343e-2)


def fit_step_model(step_log_path: str) -> tuple[float, float, float, float]:
    """The step-time model's coefficients, fitted to a throughput.py --step-log file."""
    with open(step_log_path) as f:
        steps = json.load(f)
    seqs = np.array([s["seqs"] for s in steps], dtype=float)
    tokens = np.array([s["tokens"] for s in steps], dtype=float)
    context = np.array([s["context_tokens"] for s in steps], dtype=float)
    wall = np.array([s["wall_ms"] for s in steps], dtype=float)
    x = np.stack([np.ones_like(seqs), seqs, context, tokens - seqs], axis=1)
    return tuple(float(c) for c in np.linalg.lstsq(x, wall, rcond=None)[0])


def replay(requests, num_blocks: int, max_num_seqs: int, max_num_batched_tokens: int,
           max_model_len: int, prefix_caching: bool, reserve: int = 0,
           block_size: int = 16,
           step_model: tuple[float, float, float, float] = H100_W8B_STEP_MODEL) -> dict:
    config = core.SchedulerConfig(
        num_blocks=num_blocks, block_size=block_size, max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens, max_model_len=max_model_len,
        enable_prefix_caching=prefix_caching, enable_chunked_prefill=True,
        admission_reserve_blocks_per_running=reserve)
    scheduler = core.Scheduler(config)
    for handle, req in enumerate(requests):
        params = core.RequestParams(max_tokens=req.output_len, ignore_eos=True)
        scheduler.add_request(handle, np.asarray(req.prompt_token_ids, dtype=np.int32), params)
    sampled = np.full(max_num_seqs, 7, dtype=np.int32)  # [max_num_seqs] any valid token id
    steps = scheduled = context = 0
    # The tail: steps after the last one that left a request waiting. All of an offline batch's
    # requests are then running; the last admitted runs its whole output from there, so a tail
    # with a small batch is where a schedule loses (RESULTS.md, twentieth session).
    last_waiting_step = tail_rows = 0
    est_ms = 0.0
    fixed_ms, per_seq_ms, per_context_ms, per_prompt_ms = step_model
    while scheduler.has_unfinished_requests():
        plan = scheduler.schedule()
        if plan.num_seqs == 0:
            raise RuntimeError("scheduler made no progress")
        steps += 1
        step_context = int(plan.seq_lens.sum())
        scheduled += int(plan.num_tokens)
        context += step_context
        est_ms += (fixed_ms + per_seq_ms * plan.num_seqs + per_context_ms * step_context
                   + per_prompt_ms * (int(plan.num_tokens) - plan.num_seqs))
        if scheduler.stats().num_waiting:
            last_waiting_step, tail_rows = steps, 0
        else:
            tail_rows += plan.num_seqs
        scheduler.update(plan, sampled[: plan.num_sampled])
    scheduler.check_invariants()
    stats = scheduler.stats()
    # Every prompt token and every output token but the last is computed at least once.
    minimal = sum(len(r.prompt_token_ids) + r.output_len - 1 for r in requests)
    return {
        "max_num_seqs": max_num_seqs,
        "admission_reserve": reserve,
        "steps": steps,
        "est_s": round(est_ms / 1e3, 1),
        "preemptions": int(stats.num_preemptions),
        "tokens_scheduled": scheduled,
        "tokens_recomputed": scheduled - minimal,
        "context_tokens_read": context,
        "tail_steps": steps - last_waiting_step,
        "tail_mean_batch": round(tail_rows / max(steps - last_waiting_step, 1), 1),
        "prefix_cache_hits": int(stats.prefix_cache_hits),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="8b")
    parser.add_argument("--shape", choices=sorted(SHAPE_BYTES), default=None,
                        help="default: qwen3-8b for workload 8b, qwen3-0.6b for nano")
    parser.add_argument("--num-blocks", type=int, nargs="+", default=[24200])
    parser.add_argument("--max-num-seqs", type=int, nargs="+", default=[256])
    parser.add_argument("--max-num-batched-tokens", type=int, default=8192)
    parser.add_argument("--max-model-len", type=int, default=3072)
    parser.add_argument("--no-prefix-caching", action="store_true")
    parser.add_argument("--admission-reserve", type=int, nargs="+", default=[0],
                        help="admission_reserve_blocks_per_running values to replay")
    parser.add_argument("--fit-step-log", default=None,
                        help="fit the step-time model (est_s) to this --step-log file instead of "
                             "the W-8B H100 model")
    parser.add_argument("--read-gbs", type=float, default=3001.1)
    args = parser.parse_args()
    shape = args.shape or ("qwen3-8b" if args.workload == "8b" else "qwen3-0.6b")
    weight_bytes, kv_bytes = SHAPE_BYTES[shape]
    num, in_lo, in_hi, out_lo, out_hi = WORKLOADS[args.workload]
    requests = random_requests(num, in_lo, in_hi, out_lo, out_hi, VOCAB, seed=0)
    step_model = fit_step_model(args.fit_step_log) if args.fit_step_log else H100_W8B_STEP_MODEL
    results = []
    settings = [(b, s, r) for b in args.num_blocks for s in args.max_num_seqs
                for r in args.admission_reserve]
    for num_blocks, seqs, reserve in settings:
        r = {"num_blocks": num_blocks}
        r.update(replay(requests, num_blocks, seqs, args.max_num_batched_tokens,
                        args.max_model_len, not args.no_prefix_caching, reserve,
                        step_model=step_model))
        floor_s = (r["steps"] * weight_bytes + r["context_tokens_read"] * kv_bytes) / (
            args.read_gbs * 1e9)
        r["hbm_floor_s"] = round(floor_s, 1)
        results.append(r)
        print(json.dumps(r), flush=True)
    print(json.dumps({"workload": args.workload, "shape": shape, "step_model_ms": step_model,
                      "results": results}, indent=1))


if __name__ == "__main__":
    main()
