"""Prometheus metrics of the server (prometheus-client), exposed on GET /metrics.

Engine-side state (running/waiting requests, KV usage, prefix cache, preemptions) is read from
`engine.get_stats()` at scrape time, so a scrape always shows the engine as it is now. Token
counters and latency histograms are measured here, in the front end, per request.
Each server owns its own CollectorRegistry (several apps may live in one test process).
"""

from __future__ import annotations

import time
from typing import Any, Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily

_LATENCY_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
)
_ITL_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.015,
    0.02,
    0.025,
    0.03,
    0.04,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
)

# Metric names are vLLM's under this prefix; `--metrics-prefix vllm:` keeps dashboards made for
# vLLM working unchanged.
PREFIX = "pagedllm:"


def _stat(stats: Any, *names: str, default: float = 0.0) -> float:
    """First attribute (or dict key) of `stats` among `names`; engines name counters differently."""
    for name in names:
        if isinstance(stats, dict) and name in stats:
            return float(stats[name])
        value = getattr(stats, name, None)
        if value is not None:
            return float(value() if callable(value) else value)
    return default


class _EngineCounters:
    """Cumulative engine counters exposed as prometheus counters (values owned by the engine)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.values: dict[str, tuple[str, float]] = {}

    def collect(self):  # called by the registry on every scrape
        for name, (doc, value) in self.values.items():
            family = CounterMetricFamily(self.prefix + name, doc)
            family.add_metric([], value)
            yield family


class ServerMetrics:
    def __init__(self, model_name: str, prefix: str = PREFIX) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ["model_name"]
        self.model_name = model_name
        r = self.registry
        self.num_running = Gauge(
            prefix + "num_requests_running", "Requests in the running batch.", labels, registry=r
        )
        self.num_waiting = Gauge(
            prefix + "num_requests_waiting", "Requests waiting to be scheduled.", labels, registry=r
        )
        self.kv_usage = Gauge(
            prefix + "kv_cache_usage_perc",
            "Fraction of KV blocks in use (0..1).",
            labels,
            registry=r,
        )
        self.kv_blocks_used = Gauge(
            prefix + "kv_cache_blocks_used", "KV blocks referenced by requests.", labels, registry=r
        )
        self.kv_blocks_total = Gauge(
            prefix + "kv_cache_blocks_total", "Usable KV blocks.", labels, registry=r
        )
        self.prefix_hit_rate = Gauge(
            prefix + "prefix_cache_hit_rate",
            "Prefix-cache hits / queries in prompt tokens (cumulative).",
            labels,
            registry=r,
        )
        self.in_flight = Gauge(
            prefix + "http_requests_pending",
            "Prompts admitted by the server that have no output yet "
            "(limited by --max-num-waiting).",
            labels,
            registry=r,
        )
        self.prompt_tokens = Counter(
            prefix + "prompt_tokens", "Prompt tokens processed.", labels, registry=r
        )
        self.generation_tokens = Counter(
            prefix + "generation_tokens", "Tokens generated.", labels, registry=r
        )
        self.request_success = Counter(
            prefix + "request_success",
            "Requests finished, by reason.",
            labels + ["finished_reason"],
            registry=r,
        )
        self.request_aborted = Counter(
            prefix + "request_aborted",
            "Engine requests aborted before finishing (client gone, cancelled or failed).",
            labels,
            registry=r,
        )
        self.request_errors = Counter(
            prefix + "request_errors",
            "Requests answered with an error.",
            labels + ["status"],
            registry=r,
        )
        self.ttft = Histogram(
            prefix + "time_to_first_token_seconds",
            "Time to first token.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            prefix + "inter_token_latency_seconds",
            "Time between consecutive output chunks of one request.",
            labels,
            buckets=_ITL_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            prefix + "e2e_request_latency_seconds",
            "End-to-end request latency.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        # Create the unlabelled-by-reason series now, so a scrape shows them at zero from the start.
        for metric in (
            self.prompt_tokens,
            self.generation_tokens,
            self.request_aborted,
            self.ttft,
            self.itl,
            self.e2e,
            self.num_running,
            self.num_waiting,
            self.kv_usage,
            self.kv_blocks_used,
            self.kv_blocks_total,
            self.prefix_hit_rate,
            self.in_flight,
        ):
            metric.labels(model_name)
        self._engine_counters = _EngineCounters(prefix)
        r.register(self._engine_counters)
        # The per-token series, bound once: labels() costs ~10 us and runs for every token.
        self.ttft_series = self.ttft.labels(model_name)
        self.itl_series = self.itl.labels(model_name)
        self.e2e_series = self.e2e.labels(model_name)
        self.generation_tokens_series = self.generation_tokens.labels(model_name)
        self.prompt_tokens_series = self.prompt_tokens.labels(model_name)

    def update_from_engine(self, stats: Any) -> None:
        m = self.model_name
        self.num_running.labels(m).set(_stat(stats, "num_running"))
        self.num_waiting.labels(m).set(_stat(stats, "num_waiting"))
        used = _stat(stats, "num_blocks_used")
        total = _stat(stats, "num_blocks_total")
        self.kv_blocks_used.labels(m).set(used)
        self.kv_blocks_total.labels(m).set(total)
        self.kv_usage.labels(m).set(
            _stat(stats, "kv_cache_usage", default=(used / total) if total else 0.0)
        )
        queries = _stat(stats, "prefix_cache_queries")
        hits = _stat(stats, "prefix_cache_hits")
        self.prefix_hit_rate.labels(m).set(hits / queries if queries else 0.0)
        self._engine_counters.values = {
            "prefix_cache_queries": ("Prompt tokens looked up in the prefix cache.", queries),
            "prefix_cache_hits": ("Prompt tokens found in the prefix cache.", hits),
            "num_preemptions": (
                "Requests preempted (cumulative).",
                _stat(stats, "num_preemptions"),
            ),
        }

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestTimer:
    """Per-request latency bookkeeping: TTFT, inter-token gaps and e2e into the histograms."""

    def __init__(self, metrics: Optional[ServerMetrics]) -> None:
        self.metrics = metrics
        self.start = time.perf_counter()
        self.last: Optional[float] = None
        self.num_generated = 0

    def on_tokens(self, num_new_tokens: int) -> None:
        if num_new_tokens <= 0:
            return
        now = time.perf_counter()
        if self.metrics is not None:
            if self.last is None:
                self.metrics.ttft_series.observe(now - self.start)
            else:
                self.metrics.itl_series.observe(now - self.last)
            self.metrics.generation_tokens_series.inc(num_new_tokens)
        self.last = now
        self.num_generated += num_new_tokens

    def on_prompt(self, num_prompt_tokens: int) -> None:
        if self.metrics is not None:
            self.metrics.prompt_tokens_series.inc(num_prompt_tokens)

    def on_finish(self, finish_reason: Optional[str]) -> None:
        if self.metrics is None:
            return
        self.metrics.e2e_series.observe(time.perf_counter() - self.start)
        reason = finish_reason or "unknown"
        self.metrics.request_success.labels(self.metrics.model_name, reason).inc()
