"""benchmarks/serving.py against the test server: it completes and its counts add up."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "serving.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_serving", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module     # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_serving_benchmark_runs(server, tmp_path):
    bench = load_bench()
    out = tmp_path / "result.json"
    plot = tmp_path / "dist.png"
    code = bench.main(["--base-url", server.url, "--num-prompts", "12", "--random-input-len", "16",
                       "--random-output-len", "6", "--request-rate", "50", "--max-concurrency", "4",
                       "--result-file", str(out), "--plot-file", str(plot)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["completed"] == 12 and result["failed"] == 0
    assert result["total_output_tokens"] == 12 * 6      # ignore_eos: exact output lengths
    assert result["total_input_tokens"] == 12 * 16
    assert 0 < result["mean_ttft_ms"] <= result["mean_e2el_ms"]
    assert result["p99_e2el_ms"] >= result["median_e2el_ms"]
    assert result["request_throughput"] > 0 and result["output_throughput"] > 0
    if result.get("plot"):
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_poisson_gaps_and_vocab_probe():
    import numpy as np

    bench = load_bench()
    gaps = bench.arrival_gaps(20_000, rate=4.0, burstiness=1.0, rng=np.random.default_rng(0))
    assert abs(gaps.mean() - 0.25) < 0.01             # mean inter-arrival = 1 / rate
    assert not bench.arrival_gaps(5, float("inf"), 1.0, np.random.default_rng(0)).any()
