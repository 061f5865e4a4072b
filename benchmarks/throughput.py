"""Offline throughput, in the form of `vllm bench throughput` (random prompts, ignore_eos).

    python benchmarks/throughput.py --model DIR --input-len 128 --output-len 64 --num-prompts 64
    python benchmarks/throughput.py --model-shape qwen3-0.6b --load-format dummy ...

Every EngineArgs flag is accepted (vLLM's spellings). Prints one JSON object: requests/s, output
tok/s, total tok/s, and the mean step time split into host (schedule, batch preparation, update,
output processing) and model (forward + sampling) time.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from model_shapes import SHAPES, write_shape_dir  # noqa: E402
from pagedllm.engine.arg_utils import EngineArgs  # noqa: E402
from pagedllm.engine.llm_engine import LLMEngine  # noqa: E402
from pagedllm.sampling_params import RequestOutputKind, SamplingParams  # noqa: E402
from workloads import WORKLOADS, random_requests  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--input-len", type=int, default=1024)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--num-prompts", type=int, default=1000)
    parser.add_argument(
        "--random-range-ratio",
        type=float,
        default=0.0,
        help="lengths uniform in [len * (1 - r), len * (1 + r)]",
    )
    parser.add_argument(
        "--model-shape",
        choices=sorted(SHAPES),
        default=None,
        help="use a real model's shape (config only; implies --load-format dummy)",
    )
    parser.add_argument(
        "--workload",
        choices=sorted(WORKLOADS),
        default=None,
        help="a named workload of benchmarks/workloads.py (overrides the length/count flags; "
        "the HF peer takes the same name)",
    )
    parser.add_argument("--output-json", type=str, default=None)
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument(
        "--profile-steps",
        type=int,
        default=0,
        help="profile this many steps (torch.profiler, CUDA kernels) once --profile-after steps "
        "have run; prints the kernel table (the throughput figures of such a run are skewed)",
    )
    parser.add_argument("--profile-after", type=int, default=300)
    parser.add_argument(
        "--progress-every",
        type=float,
        default=0.0,
        help="print generated tokens and the running rate every this many seconds (stderr), so "
        "a run cut short still shows its steady-state rate",
    )
    parser.add_argument(
        "--gpu-idle",
        action="store_true",
        help="measure how long the GPU waits between steps (CUDA events around each step's "
        "forward + sampling, all on the current stream); adds gpu_idle_* to the result",
    )
    parser.add_argument(
        "--no-plan-ahead",
        action="store_true",
        help="with async scheduling, plan each step after the previous step's tokens are read "
        "instead of one step ahead (EngineCore.plans_ahead), to measure what planning ahead buys",
    )
    parser.add_argument(
        "--step-log",
        type=str,
        default=None,
        help="write one JSON record per step: tokens, sequences, host ms, model ms, context tokens "
        "read (the K/V the step's attention reads), wall ms",
    )
    EngineArgs.add_cli_args(parser)
    args = parser.parse_args(argv)
    if not 0.0 <= args.random_range_ratio < 1.0:
        parser.error("--random-range-ratio must be in [0, 1)")
    if args.model_shape:
        args.model = write_shape_dir(args.model_shape)
        args.load_format = "dummy"
        args.skip_tokenizer_init = True
    return args


def _bounds(length: int, ratio: float) -> tuple[int, int]:
    return max(1, int(length * (1 - ratio))), max(1, int(length * (1 + ratio)))


def _start_profiler():
    import torch

    prof = torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    )
    prof.__enter__()
    return prof


def _stop_profiler(prof, num_steps: int) -> None:
    import torch

    torch.cuda.synchronize()
    prof.__exit__(None, None, None)
    table = prof.key_averages().table(sort_by="self_device_time_total", row_limit=30)
    print(f"== profile of {num_steps} steps (times are totals over them)", file=sys.stderr)
    print(table, file=sys.stderr)
    print("== kernel timeline " + json.dumps(_kernel_timeline(prof, num_steps)), file=sys.stderr)


def _kernel_timeline(prof, num_steps: int) -> dict:
    """How much of the profiled GPU span ran no kernel, split by gap length: gaps under
    20 us are the GPU waiting between kernels of a step (launch latency, the drain of one
    kernel before the next starts), longer ones the waits between steps. (CUPTI adds a
    little per kernel, so the short gaps are an upper bound.)"""
    from torch.autograd import DeviceType

    spans = sorted((e.time_range.start, e.time_range.end) for e in prof.events()
                   if e.device_type == DeviceType.CUDA)
    if not spans:
        return {}
    busy, short_gaps, long_gaps, num_short = 0.0, 0.0, 0.0, 0
    end = spans[0][0]
    for start, stop in spans:
        gap = start - end
        if gap > 0:
            if gap < 20.0:
                short_gaps, num_short = short_gaps + gap, num_short + 1
            else:
                long_gaps += gap
        busy += max(0.0, stop - max(start, end))
        end = max(end, stop)
    return {"kernels_per_step": round(len(spans) / num_steps, 1),
            "span_us_per_step": round((end - spans[0][0]) / num_steps, 1),
            "kernel_busy_us_per_step": round(busy / num_steps, 1),
            "short_gaps_us_per_step": round(short_gaps / num_steps, 1),
            "mean_short_gap_us": round(short_gaps / max(num_short, 1), 2),
            "long_gaps_us_per_step": round(long_gaps / num_steps, 1)}


def read_bandwidth_gbs() -> float:
    """Device read bandwidth: median time of summing a 4 GiB bf16 tensor (bytes read / time)."""
    import torch

    x = torch.randn(1 << 31, device="cuda", dtype=torch.bfloat16)
    x.sum()
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        x.sum()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    times.sort()
    nbytes = x.numel() * x.element_size()
    del x
    return nbytes / times[len(times) // 2] / 1e9


def _memory_roofline(core, steps: int, context_tokens: int, elapsed: float, num_output: int) -> dict:
    """The HBM floor of this run: every step reads the weights once and the K/V of every
    scheduled sequence's context once; at the measured read bandwidth that takes roofline_s.
    (Prefill FLOPs and activations are ignored: a floor, not a model.)"""
    runner = core.runner
    weight_bytes = sum(p.numel() * p.element_size() for p in runner.model.parameters())
    spec = runner.kv_spec
    kv_bytes_per_token = spec.bytes_per_block // spec.block_size
    read_gbs = read_bandwidth_gbs()
    total_bytes = steps * weight_bytes + context_tokens * kv_bytes_per_token
    roofline_s = total_bytes / (read_gbs * 1e9)
    return {
        "read_bandwidth_gbs": round(read_gbs, 1),
        "weight_bytes": weight_bytes,
        "kv_bytes_per_token": kv_bytes_per_token,
        "bytes_read_floor": total_bytes,
        "roofline_s": round(roofline_s, 3),
        "roofline_output_tokens_per_second": round(num_output / roofline_s, 1),
        "roofline_fraction": round(roofline_s / elapsed, 3),
    }


class _GpuIdleMeter:
    """GPU time between steps: an event before each step's forward and one after its sampling
    (the engine queues both on the current stream). A step's span is start -> end; the gap
    before it is the previous end -> its start, i.e. time the GPU had nothing queued, waiting
    for the host to apply the last tokens and plan, prepare and launch the next step."""

    def __init__(self, core) -> None:
        import torch

        self._events: list[tuple] = []
        runner, sampler = core.runner, core.sampler
        forward, sample = runner.execute_model, sampler.sample_async

        def timed_forward(*a, **k):
            start = torch.cuda.Event(enable_timing=True)
            start.record()
            self._events.append([start, None])
            return forward(*a, **k)

        def timed_sample(*a, **k):
            pending = sample(*a, **k)
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._events[-1][1] = end
            return pending

        runner.execute_model, sampler.sample_async = timed_forward, timed_sample

    def summary(self) -> dict:
        import torch

        torch.cuda.synchronize()
        steps = [(s, e) for s, e in self._events if e is not None]
        busy = sum(s.elapsed_time(e) for s, e in steps)
        gaps = [steps[i - 1][1].elapsed_time(steps[i][0]) for i in range(1, len(steps))]
        span = steps[0][0].elapsed_time(steps[-1][1]) if steps else 0.0
        return {"gpu_idle_steps": len(steps), "gpu_step_busy_ms": round(busy, 1),
                "gpu_idle_between_steps_ms": round(sum(gaps), 1),
                "gpu_idle_fraction": round(sum(gaps) / span, 4) if span else 0.0,
                "gpu_idle_mean_gap_ms": round(sum(gaps) / max(len(gaps), 1), 3)}


def _log_call(step_log: list[list], unfinished: collections.deque, core, context_tokens: int,
              finished: int, costs: tuple) -> None:
    """One engine.step() call into the step log: a record per launched plan (tokens, sequences,
    context tokens read), and the call's host / model / wall ms charged to the plan it finished
    (with async scheduling a call finishes the previous call's plan and launches the next, so
    the wall time of waiting for a step lands on that step). A call that finished nothing (the
    first async launch) charges the plan it launched. context_tokens > 0: a plan was launched."""
    if context_tokens > 0:
        record = [core.last_num_tokens, core.last_num_seqs, 0.0, 0.0, context_tokens, 0.0]
        step_log.append(record)
        unfinished.append(record)
    charged = None
    for _ in range(min(finished, len(unfinished))):
        charged = unfinished.popleft()
    if charged is None and unfinished:
        charged = unfinished[-1]
    if charged is not None:
        for k, cost in zip((2, 3, 5), costs):
            charged[k] += cost


def _summarize_steps(step_log: list[tuple]) -> dict:
    """Mean host / model ms of decode-only steps (tokens == seqs) and of steps with prompt work."""
    kinds: dict[str, list[tuple]] = {"decode": [], "prefill_or_mixed": []}
    for tokens, seqs, host_ms, model_ms, _, _ in step_log:
        kinds["decode" if tokens == seqs else "prefill_or_mixed"].append((seqs, host_ms, model_ms))
    summary = {}
    for kind, rows in kinds.items():
        if rows:
            n = len(rows)
            summary[kind] = {
                "steps": n,
                "mean_seqs": round(sum(r[0] for r in rows) / n, 1),
                "mean_host_ms": round(sum(r[1] for r in rows) / n, 3),
                "mean_model_ms": round(sum(r[2] for r in rows) / n, 3),
                "total_model_s": round(sum(r[2] for r in rows) / 1000, 3),
                "total_host_s": round(sum(r[1] for r in rows) / 1000, 3),
            }
    return summary


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    engine_args = EngineArgs.from_cli_args(args)
    engine = LLMEngine.from_engine_args(engine_args)
    if args.no_plan_ahead:
        engine.engine_core.plans_ahead = False
    vocab = engine.engine_core.vocab_size
    if args.workload:
        num_prompts, in_lo, in_hi, out_lo, out_hi = WORKLOADS[args.workload]
    else:
        num_prompts = args.num_prompts
        in_lo, in_hi = _bounds(args.input_len, args.random_range_ratio)
        out_lo, out_hi = _bounds(args.output_len, args.random_range_ratio)
    requests = random_requests(num_prompts, in_lo, in_hi, out_lo, out_hi, vocab, seed=args.seed)

    # Warm up (first-call allocations, lazy inits) on a throw-away request.
    if args.warmup_steps > 0:
        engine.add_request(
            "warmup",
            requests[0].prompt_token_ids[:16],
            SamplingParams(max_tokens=args.warmup_steps, ignore_eos=True, detokenize=False),
        )
        while engine.has_unfinished_requests():
            engine.step()
    core = engine.engine_core
    idle_meter = _GpuIdleMeter(core) if args.gpu_idle else None
    graphs = getattr(core.runner, "_decode_graphs", None)  # CUDA graphs (single-GPU runner)
    graph0 = (graphs.replays, graphs.build_seconds, graphs.launch_seconds) if graphs else None
    steps0, host0, model0 = core.num_steps, core.time_host, core.time_model
    ctx0 = core.num_context_tokens
    out0 = engine._time_output

    start = time.perf_counter()
    for i, req in enumerate(requests):
        engine.add_request(
            str(i),
            {"prompt_token_ids": req.prompt_token_ids},
            SamplingParams(
                temperature=1.0,
                top_p=1.0,
                max_tokens=req.output_len,
                ignore_eos=True,
                detokenize=False,
                output_kind=RequestOutputKind.FINAL_ONLY,
            ),
        )
    num_output = 0
    step_log: list[list] = []
    unfinished: collections.deque = collections.deque()  # step_log records still on the GPU
    profiler = None
    gen0 = core.num_generation_tokens
    next_progress = start + args.progress_every
    while engine.has_unfinished_requests():
        timed_steps = core.num_steps - steps0
        if args.profile_steps and timed_steps == args.profile_after:
            profiler = _start_profiler()
        if profiler is not None and timed_steps == args.profile_after + args.profile_steps:
            _stop_profiler(profiler, args.profile_steps)
            profiler = None
        h, m, o = core.time_host, core.time_model, engine._time_output
        c, n, w = core.num_context_tokens, core.num_steps, time.perf_counter()
        for out in engine.step():
            if out.finished:
                num_output += len(out.outputs[0].token_ids)
        if args.progress_every and time.perf_counter() >= next_progress:
            now = time.perf_counter()
            done = core.num_generation_tokens - gen0
            print(f"progress: {now - start:.1f} s, {done} output tokens, {done / (now - start):.1f}"
                  f" tok/s, {core.num_steps - steps0} steps, "
                  f"{engine.get_stats().num_running} running", file=sys.stderr, flush=True)
            next_progress = now + args.progress_every
        if args.step_log:
            _log_call(step_log, unfinished, core, context_tokens=core.num_context_tokens - c,
                      finished=core.num_steps - n,
                      costs=(1000 * (core.time_host - h + engine._time_output - o),
                             1000 * (core.time_model - m), 1000 * (time.perf_counter() - w)))
    elapsed = time.perf_counter() - start

    num_prompt = sum(len(r.prompt_token_ids) for r in requests)
    steps = max(core.num_steps - steps0, 1)
    stats = engine.get_stats()
    result = {
        "model": engine_args.model or "(default)",
        "model_shape": args.model_shape,
        "workload": args.workload,
        "device": str(core.device),
        "async_scheduling": core.async_scheduling,
        "plans_ahead": core.plans_ahead,
        "num_requests": len(requests),
        "num_prompt_tokens": num_prompt,
        "num_output_tokens": num_output,
        "elapsed_time": round(elapsed, 4),
        "requests_per_second": round(len(requests) / elapsed, 3),
        "output_tokens_per_second": round(num_output / elapsed, 2),
        "total_tokens_per_second": round((num_prompt + num_output) / elapsed, 2),
        "num_steps": steps,
        "mean_step_ms": round(1000 * elapsed / steps, 3),
        "mean_step_host_ms": round(
            1000 * ((core.time_host - host0) + (engine._time_output - out0)) / steps, 3
        ),
        "mean_step_model_ms": round(1000 * (core.time_model - model0) / steps, 3),
        "num_preemptions": stats.num_preemptions,
        "kv_blocks_total": stats.num_blocks_total,
    }
    if idle_meter is not None:
        result.update(idle_meter.summary())
    if graphs is not None and graphs.replays > graph0[0]:
        n = graphs.replays - graph0[0]
        result["graph_steps"] = n
        result["graph_input_build_ms_mean"] = round(1000 * (graphs.build_seconds - graph0[1]) / n, 4)
        result["graph_launch_ms_mean"] = round(1000 * (graphs.launch_seconds - graph0[2]) / n, 4)
    if str(core.device).startswith("cuda"):
        result.update(_memory_roofline(core, steps, core.num_context_tokens - ctx0, elapsed,
                                       num_output))
    if step_log:
        result["steps_by_kind"] = _summarize_steps(step_log)
        with open(args.step_log, "w") as f:
            json.dump([dict(zip(("tokens", "seqs", "host_ms", "model_ms", "context_tokens", "wall_ms"), r))
                       for r in step_log],
                      f)
    print(json.dumps(result, indent=2))
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
