"""Scheduler overhead per engine step, through the Python bindings.

Times `plan = scheduler.schedule(); scheduler.update(plan, sampled)` per step with N running
decode requests of ~1000-token contexts (block size 16, prefix caching on), after every prompt has
been prefilled. No model runs: `sampled` is a preallocated int32 array, so the figure is the cost
the core adds to each step. Prints one JSON object with median and p90 microseconds per N.

    python benchmarks/scheduler_overhead.py [--running 64 256 1024] [--steps 300] [--pin-cpu 0]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
from pagedllm._C import core


def measure(num_running: int, context_len: int, steps: int, seed: int) -> dict:
    block_size = 16
    max_model_len = 2048
    # Room for every request to reach max_model_len: the timed steps never preempt.
    config = core.SchedulerConfig(
        num_blocks=num_running * (max_model_len // block_size) + 1,
        block_size=block_size,
        max_num_seqs=num_running,
        max_num_batched_tokens=8192,
        max_model_len=max_model_len,
        enable_prefix_caching=True,
    )
    scheduler = core.Scheduler(config)
    rng = np.random.default_rng(seed)
    params = core.RequestParams(max_tokens=max_model_len - context_len, ignore_eos=True)
    for handle in range(num_running):
        prompt = rng.integers(0, 32000, size=context_len, dtype=np.int32)  # [context_len] int32
        scheduler.add_request(handle, prompt, params)
    sampled = rng.integers(0, 32000, size=num_running, dtype=np.int32)  # [num_running] int32

    # Prefill every prompt (not timed), until each step is pure decode.
    while True:
        plan = scheduler.schedule()
        scheduler.update(plan, sampled[: plan.num_sampled])
        if plan.num_seqs == num_running and plan.num_tokens == num_running:
            break

    per_step_us = np.empty(steps, dtype=np.float64)  # [steps]
    for i in range(steps):
        t0 = time.perf_counter_ns()
        plan = scheduler.schedule()
        scheduler.update(plan, sampled[: plan.num_sampled])
        per_step_us[i] = (time.perf_counter_ns() - t0) / 1e3
        if plan.num_tokens != num_running:
            raise RuntimeError(f"step {i} was not pure decode ({plan.num_tokens} tokens)")
    scheduler.check_invariants()
    return {
        "running": num_running,
        "context_tokens": context_len,
        "steps": steps,
        "median_us": round(float(np.median(per_step_us)), 1),
        "p90_us": round(float(np.percentile(per_step_us, 90)), 1),
        "mean_us": round(float(per_step_us.mean()), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--running", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--context", type=int, default=1000, help="prompt tokens per request")
    parser.add_argument("--steps", type=int, default=300, help="timed decode steps per size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pin-cpu", type=int, default=None, help="run on this one CPU core")
    args = parser.parse_args()
    if args.pin_cpu is not None:
        os.sched_setaffinity(0, {args.pin_cpu})
    results = [measure(n, args.context, args.steps, args.seed) for n in args.running]
    print(json.dumps({
        "benchmark": "scheduler_overhead",
        "what": "schedule()+update() per decode step via pagedllm._C.core",
        "block_size": 16,
        "prefix_caching": True,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.processor() or platform.platform()}",
        "pinned_cpu": args.pin_cpu,
        "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()
