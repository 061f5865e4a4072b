"""Serving benchmark in the form of `vllm bench serve`, against a running pagedllm (or any
OpenAI-compatible) server's streaming /v1/completions.

    python benchmarks/serving.py --base-url http://127.0.0.1:8000 --num-prompts 200 \
        --random-input-len 256 --random-output-len 64 --request-rate inf --max-concurrency 16

Random dataset: prompts of random token ids (sent as token-id prompts, so their length is exact),
input/output lengths uniform in [L * (1 - ratio), L * (1 + ratio)]; every request uses
ignore_eos unless --no-ignore-eos, so it produces exactly its output length. Arrivals follow a
gamma process with mean rate --request-rate (burstiness 1 = Poisson; inf = all at once), at most
--max-concurrency in flight. Reports request throughput, output tok/s, TTFT, TPOT, ITL and E2E
latency (mean, median, p99) as JSON, and plots TTFT/TPOT distributions to a PNG if matplotlib
imports.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from workloads import random_requests  # noqa: E402


@dataclass
class RequestResult:
    success: bool = False
    prompt_len: int = 0
    output_len: int = 0
    ttft: float = 0.0  # seconds to the first content chunk
    latency: float = 0.0  # seconds to the end of the stream
    itl: list[float] = field(default_factory=list)  # gaps between content chunks
    error: str = ""


async def find_vocab_size(client: httpx.AsyncClient) -> int:
    """The server's vocabulary size, by bisecting on which ids /detokenize accepts."""
    lo, hi = 1, 1 << 22  # lo is valid, hi is not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        resp = await client.post("/detokenize", json={"tokens": [mid - 1]})
        if resp.status_code == 200:
            lo = mid
        else:
            hi = mid
    return lo


async def send_one(
    client: httpx.AsyncClient, model: str, prompt: list[int], output_len: int, ignore_eos: bool
) -> RequestResult:
    result = RequestResult(prompt_len=len(prompt))
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": output_len,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": ignore_eos,
    }
    start = time.perf_counter()
    last = start
    try:
        async with client.stream("POST", "/v1/completions", json=body) as resp:
            if resp.status_code != 200:
                result.error = f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}"
                return result
            async for line in resp.aiter_lines():
                if not line.startswith("data: "):
                    continue
                payload = line[6:]
                if payload == "[DONE]":
                    break
                chunk = json.loads(payload)
                if "error" in chunk:
                    result.error = chunk["error"].get("message", "stream error")
                    return result
                now = time.perf_counter()
                if chunk.get("choices") and chunk["choices"][0].get("text"):
                    if result.ttft == 0.0:
                        result.ttft = now - start
                    else:
                        result.itl.append(now - last)
                    last = now
                if chunk.get("usage"):
                    result.output_len = chunk["usage"]["completion_tokens"]
        result.latency = time.perf_counter() - start
        result.success = result.ttft > 0.0
        if not result.success:
            result.error = "no content received"
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    return result


def arrival_gaps(num: int, rate: float, burstiness: float, rng: np.random.Generator) -> np.ndarray:
    """[num] seconds to wait before each request; zeros for an infinite rate."""
    if math.isinf(rate):
        return np.zeros(num)
    theta = 1.0 / (rate * burstiness)
    return rng.gamma(shape=burstiness, scale=theta, size=num)


def summarize(
    results: list[RequestResult], duration: float, percentiles: tuple[float, ...] = (50.0, 99.0)
) -> dict:
    ok = [r for r in results if r.success]
    out_tokens = sum(r.output_len for r in ok)
    in_tokens = sum(r.prompt_len for r in ok)
    ttft = np.array([r.ttft for r in ok]) * 1000.0
    tpot = (
        np.array([(r.latency - r.ttft) / (r.output_len - 1) for r in ok if r.output_len > 1]) * 1000
    )
    itl = np.array([g for r in ok for g in r.itl]) * 1000.0
    e2el = np.array([r.latency for r in ok]) * 1000.0
    metrics = {
        "duration_s": duration,
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "total_input_tokens": in_tokens,
        "total_output_tokens": out_tokens,
        "request_throughput": len(ok) / duration if duration else 0.0,
        "output_throughput": out_tokens / duration if duration else 0.0,
        "total_token_throughput": (in_tokens + out_tokens) / duration if duration else 0.0,
    }
    for name, values in (("ttft", ttft), ("tpot", tpot), ("itl", itl), ("e2el", e2el)):
        metrics[f"mean_{name}_ms"] = float(values.mean()) if len(values) else 0.0
        metrics[f"median_{name}_ms"] = float(np.median(values)) if len(values) else 0.0
        metrics[f"std_{name}_ms"] = float(values.std()) if len(values) else 0.0
        for p in percentiles:
            key = f"p{int(p) if float(p).is_integer() else p}_{name}_ms"
            metrics[key] = float(np.percentile(values, p)) if len(values) else 0.0
    errors = [r.error for r in results if not r.success]
    if errors:
        metrics["first_errors"] = errors[:5]
    return metrics


def plot(results: list[RequestResult], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ok = [r for r in results if r.success]
    ttft = [r.ttft * 1000 for r in ok]
    tpot = [(r.latency - r.ttft) / (r.output_len - 1) * 1000 for r in ok if r.output_len > 1]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, values, name in ((axes[0], ttft, "TTFT (ms)"), (axes[1], tpot, "TPOT (ms)")):
        ax.hist(values, bins=40)
        ax.set_xlabel(name)
        ax.set_ylabel("requests")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


async def run(args: argparse.Namespace) -> dict:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    concurrency = args.max_concurrency or args.num_prompts
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(args.timeout)
    async with httpx.AsyncClient(
        base_url=args.base_url, headers=headers, limits=limits, timeout=timeout
    ) as client:
        model = args.model
        if model is None:
            model = (await client.get("/v1/models")).json()["data"][0]["id"]
        vocab = args.vocab_size or await find_vocab_size(client)
        lo_in = max(1, int(args.random_input_len * (1 - args.random_range_ratio)))
        hi_in = max(lo_in, int(args.random_input_len * (1 + args.random_range_ratio)))
        lo_out = max(1, int(args.random_output_len * (1 - args.random_range_ratio)))
        hi_out = max(lo_out, int(args.random_output_len * (1 + args.random_range_ratio)))
        requests = random_requests(args.num_prompts, lo_in, hi_in, lo_out, hi_out, vocab, args.seed)
        if args.warmup:
            await send_one(client, model, requests[0].prompt_token_ids, 4, True)

        gaps = arrival_gaps(
            len(requests), args.request_rate, args.burstiness, np.random.default_rng(args.seed)
        )
        sem = asyncio.Semaphore(concurrency)

        async def limited(req) -> RequestResult:
            async with sem:
                return await send_one(
                    client, model, req.prompt_token_ids, req.output_len, args.ignore_eos
                )

        start = time.perf_counter()
        tasks = []
        for req, gap in zip(requests, gaps):
            if gap > 0:
                await asyncio.sleep(gap)
            tasks.append(asyncio.create_task(limited(req)))
        results = await asyncio.gather(*tasks)
        duration = time.perf_counter() - start

    metrics = summarize(results, duration)
    metrics.update(
        {
            "model": model,
            "base_url": args.base_url,
            "num_prompts": args.num_prompts,
            "random_input_len": args.random_input_len,
            "random_output_len": args.random_output_len,
            "random_range_ratio": args.random_range_ratio,
            "request_rate": args.request_rate,
            "burstiness": args.burstiness,
            "max_concurrency": args.max_concurrency,
            "ignore_eos": args.ignore_eos,
            "seed": args.seed,
        }
    )
    if args.plot_file:
        metrics["plot"] = str(args.plot_file) if plot(results, Path(args.plot_file)) else None
    return metrics


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base-url", default="http://127.0.0.1:8000")
    p.add_argument("--model", default=None, help="default: the first model the server lists")
    p.add_argument("--api-key", default=None)
    p.add_argument("--dataset-name", default="random", choices=["random"])
    p.add_argument("--num-prompts", type=int, default=200)
    p.add_argument("--random-input-len", type=int, default=256)
    p.add_argument("--random-output-len", type=int, default=64)
    p.add_argument("--random-range-ratio", type=float, default=0.0)
    p.add_argument(
        "--vocab-size",
        type=int,
        default=None,
        help="token ids are drawn below this; default: asked of the server",
    )
    p.add_argument(
        "--request-rate",
        type=float,
        default=float("inf"),
        help="requests per second (inf: send all at once)",
    )
    p.add_argument("--burstiness", type=float, default=1.0, help="1.0 = Poisson arrivals")
    p.add_argument("--max-concurrency", type=int, default=None)
    p.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--result-file", default=None, help="write the JSON result here")
    p.add_argument("--plot-file", default=None, help="PNG of TTFT/TPOT histograms")
    return p


def validate(args: argparse.Namespace) -> None:
    if args.num_prompts < 1:
        raise ValueError("num_prompts: must be >= 1")
    if not (args.request_rate > 0):
        raise ValueError("request_rate: must be > 0 (or inf)")
    if args.burstiness <= 0:
        raise ValueError("burstiness: must be > 0")
    if args.max_concurrency is not None and args.max_concurrency < 1:
        raise ValueError("max_concurrency: must be >= 1")
    if not (0.0 <= args.random_range_ratio < 1.0):
        raise ValueError("random_range_ratio: must be in [0, 1)")


def main(argv: Optional[list[str]] = None) -> int:
    args = make_parser().parse_args(argv)
    validate(args)
    metrics = asyncio.run(run(args))
    text = json.dumps(metrics, indent=2)
    print(text)
    if args.result_file:
        Path(args.result_file).write_text(text + "\n")
    return 0 if metrics["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
