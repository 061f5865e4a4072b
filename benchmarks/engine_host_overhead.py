"""Host (Python) overhead per engine step at a large decode batch, isolated from model time.

An LLMEngine over a tiny random llama (1 layer, hidden 64, vocab 512) on CPU runs N concurrent
decode requests (ignore_eos, so the batch never shrinks). Per timed step it records:
  host_ms    = EngineCore host time (schedule, batch building, update, collecting outputs)
               + LLMEngine output processing (detokenization, RequestOutputs)
  core_ms / output_ms: the two parts of host_ms
  sample_ms  = EngineCore's model phase minus the model forward and logits head (input
               tensors, logits row selection and the sampler; on a GPU most of it is host
               launch work, on this CPU run it includes the sampler's tensor math)
The model forward (forward_ms) is reported for reference only. Prints one JSON object with the
median and p90 of each per configuration (greedy / temperature 1 + top_p 0.9, detokenize on/off).

    python benchmarks/engine_host_overhead.py [--num-seqs 256] [--steps 60]
        [--output-kind cumulative|delta|final_only] [--configs greedy/detok ...] [--profile]
"""
from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import sys
import tempfile
import time
from typing import Optional

import numpy as np

from pagedllm.engine.arg_utils import EngineArgs
from pagedllm.engine.llm_engine import LLMEngine
from pagedllm.sampling_params import RequestOutputKind, SamplingParams
from pagedllm.testing.tiny_models import make_tiny_model

CONFIGS = {
    "greedy": dict(temperature=0.0),
    "temp1_top_p0.9": dict(temperature=1.0, top_p=0.9),
}
OUTPUT_KINDS = {
    "cumulative": RequestOutputKind.CUMULATIVE,
    "delta": RequestOutputKind.DELTA,
    "final_only": RequestOutputKind.FINAL_ONLY,
}


class _ForwardTimer:
    """Wraps the runner's model forward and logits head so their time can be taken out of the
    model phase."""

    def __init__(self, model) -> None:
        self.model = model
        self.total = 0.0

    def _timed(self, fn, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.total += time.perf_counter() - t0

    def __call__(self, *args, **kwargs):
        return self._timed(self.model, *args, **kwargs)

    def compute_logits(self, *args, **kwargs):
        return self._timed(self.model.compute_logits, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.model, name)


def _stats(values_s: list[float]) -> dict:
    arr = np.asarray(values_s, dtype=np.float64) * 1e3  # [steps] ms
    return {"median": round(float(np.median(arr)), 4),
            "p90": round(float(np.quantile(arr, 0.9)), 4)}


def measure(engine: LLMEngine, num_seqs: int, warmup: int, steps: int, prompt_len: int,
            sampling: dict, detokenize: bool, output_kind: RequestOutputKind, seed: int,
            profiler: Optional[cProfile.Profile] = None) -> dict:
    core = engine.engine_core
    timer = core.runner.model
    rng = np.random.default_rng(seed)
    vocab = core.vocab_size
    params = SamplingParams(max_tokens=warmup + steps + 8, ignore_eos=True, detokenize=detokenize,
                            output_kind=output_kind, **sampling)
    for i in range(num_seqs):
        prompt = rng.integers(3, vocab, size=prompt_len).tolist()  # avoid the special ids 0..2
        engine.add_request(f"r{i}", {"prompt_token_ids": prompt}, params)
    # Prefill everything, then `warmup` pure decode steps (not timed).
    decode_steps = 0
    while decode_steps < warmup:
        engine.step()
        s = core.scheduler.stats()
        if s.num_running == num_seqs and s.num_waiting == 0:
            decode_steps += 1

    host, core_host, output, sample, forward, wall = [], [], [], [], [], []
    for _ in range(steps):
        h0, m0, o0, f0 = core.time_host, core.time_model, engine._time_output, timer.total
        t0 = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        engine.step()
        if profiler is not None:
            profiler.disable()
        wall.append(time.perf_counter() - t0)
        d_core, d_out = core.time_host - h0, engine._time_output - o0
        d_fwd = timer.total - f0
        core_host.append(d_core)
        output.append(d_out)
        host.append(d_core + d_out)
        forward.append(d_fwd)
        sample.append((core.time_model - m0) - d_fwd)
        if core.scheduler.stats().num_running != num_seqs:
            raise RuntimeError("the batch shrank during the timed steps")
    engine.abort_request([f"r{i}" for i in range(num_seqs)])
    for _ in range(3):  # async scheduling: the step already in flight is drained by a step
        if not engine.has_unfinished_requests():
            break
        engine.step()
    if engine.has_unfinished_requests():
        raise RuntimeError("requests left after abort")
    return {
        "host_ms": _stats(host),
        "core_ms": _stats(core_host),
        "output_ms": _stats(output),
        "sample_ms": _stats(sample),
        "forward_ms": _stats(forward),
        "wall_ms": _stats(wall),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num-seqs", type=int, default=256)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--output-kind", choices=sorted(OUTPUT_KINDS), default="cumulative")
    p.add_argument("--configs", nargs="*", default=None,
                   help="subset of <sampling>/<detok|nodetok> names (default: all four)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-model-len", type=int, default=512,
                   help="engine max_model_len: the block table's width grows with it")
    p.add_argument("--output-json", default=None)
    p.add_argument("--profile", action="store_true",
                   help="cProfile the timed steps; the top functions go to stderr")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_tiny_model("llama", os.path.join(tmp, "llama"), num_hidden_layers=1,
                                    max_position_embeddings=max(args.max_model_len, 512))
        engine_args = EngineArgs(
            model=str(model_dir), device="cpu", dtype="float32", seed=args.seed,
            max_model_len=args.max_model_len, max_num_seqs=args.num_seqs,
            kv_cache_space_bytes=256 << 20, disable_log_stats=True,
        )
        engine = LLMEngine.from_engine_args(engine_args)
        engine.engine_core.runner.model = _ForwardTimer(engine.engine_core.runner.model)
        profiler = cProfile.Profile() if args.profile else None
        results = {}
        for name, sampling in CONFIGS.items():
            for detok in (False, True):
                key = f"{name}/{'detok' if detok else 'nodetok'}"
                if args.configs and key not in args.configs:
                    continue
                results[key] = measure(engine, args.num_seqs, args.warmup, args.steps,
                                       args.prompt_len, sampling, detok,
                                       OUTPUT_KINDS[args.output_kind], args.seed, profiler)
    report = {
        "benchmark": "engine_host_overhead",
        "num_seqs": args.num_seqs,
        "steps": args.steps,
        "prompt_len": args.prompt_len,
        "max_model_len": args.max_model_len,
        "output_kind": args.output_kind,
        "machine": platform.processor() or platform.machine(),
        "python": sys.version.split()[0],
        "results": results,
    }
    if profiler is not None:
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(40)
    text = json.dumps(report, indent=1)
    print(text)
    if args.output_json:
        with open(args.output_json, "w") as f:
            f.write(text + "\n")
    return report


if __name__ == "__main__":
    main()
