"""Prometheus metrics under TGI's names, so dashboards built for TGI work unchanged.

Counters are kept as plain ints and exposed by a collector. TGI's keep TGI's exact sample names
(``tgi_request_count``, no ``_total``): prometheus_client writes a counter family only as
``name_total``, so a ``# TYPE tgi_request_count_total counter`` line would stand above samples of
another name; they are declared untyped instead, which is what the samples then are to a scraper.
Our own counters follow Prometheus' convention, ``tokenspout_*_total``. Gauges are read from the
engine at scrape time; nothing here runs per token.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from engine import Engine, EngineStats, FinishEvent

disable_created_metrics()  # type: ignore[no-untyped-call]  # TGI exposes no *_created series; keep the output the same

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_TOKENS = (1, 4, 16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
_RATES = (1, 5, 10, 20, 40, 60, 80, 100, 150, 200, 300, 500, 1000, 2000)
_RECENT = 0.2  # weight of the newest request in the moving average of time in a slot


class Metrics(Collector):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.requests = 0
        self.successes = 0
        self.failures: Counter[str] = Counter()
        self.kv_cells_used = 0
        self.kv_cells_cached = 0
        self.service_seconds: float | None = None  # recent seconds a request holds a slot (Retry-After)
        self.registry = CollectorRegistry()
        self.registry.register(self)
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes and friends
        r = self.registry
        self.input_length = Histogram(
            "tgi_request_input_length", "Prompt tokens", buckets=_TOKENS, registry=r
        )
        self.generated_tokens = Histogram(
            "tgi_request_generated_tokens", "Generated tokens", buckets=_TOKENS, registry=r
        )
        self.queue_duration = Histogram(
            "tgi_request_queue_duration", "Seconds waiting for a slot", buckets=_SECONDS, registry=r
        )
        self.duration = Histogram(
            "tgi_request_duration", "Seconds from submit to end", buckets=_SECONDS, registry=r
        )
        self.time_per_token = Histogram(
            "tgi_request_mean_time_per_token_duration",
            "Mean seconds per generated token",
            buckets=_SECONDS,
            registry=r,
        )
        self.first_token = Histogram(
            "tokenspout_time_to_first_token_seconds",
            "Seconds from submit to the first token",
            buckets=_SECONDS,
            registry=r,
        )
        self.decode_rate = Histogram(
            "tokenspout_decode_tokens_per_second",
            "Per-request decode speed after the first token",
            buckets=_RATES,
            registry=r,
        )

    # -- recording (event loop only) ---------------------------------------------------------------
    def request(self) -> None:
        self.requests += 1

    def failure(self, kind: str) -> None:
        self.failures[kind] += 1

    def success(self, event: FinishEvent) -> None:
        self.successes += 1
        usage, timing = event.usage, event.timing
        self.input_length.observe(usage.prompt_tokens)
        self.generated_tokens.observe(usage.completion_tokens)
        self.queue_duration.observe(timing.queued)
        self.duration.observe(timing.total)
        self.first_token.observe(timing.first_token)
        in_slot = max(timing.total - timing.queued, 0.0)
        previous = self.service_seconds
        self.service_seconds = in_slot if previous is None else previous + _RECENT * (in_slot - previous)
        decoding = timing.total - timing.first_token
        if usage.completion_tokens > 0:
            self.time_per_token.observe(timing.total / usage.completion_tokens)
        if usage.completion_tokens > 1 and decoding > 0:
            self.decode_rate.observe((usage.completion_tokens - 1) / decoding)

    # -- exposition --------------------------------------------------------------------------------
    def collect(self) -> Iterator[Metric]:
        yield _tgi_counter("tgi_request_count", "Generation requests received", self.requests)
        yield _tgi_counter("tgi_request_success", "Generation requests that finished", self.successes)
        failures = Metric("tgi_request_failure", "Generation requests that failed, by error type", "unknown")
        for kind, count in sorted(self.failures.items()):
            failures.add_sample("tgi_request_failure", {"err": kind}, count)
        yield failures
        stats = self.engine.stats()
        yield GaugeMetricFamily("tgi_queue_size", "Requests waiting for a slot", stats.waiting)
        yield GaugeMetricFamily("tgi_batch_current_size", "Sequences in the running batch", stats.running)
        yield GaugeMetricFamily(
            "tokenspout_requests_admitted",
            "Requests counted against --max-concurrent-requests",
            stats.admitted,
        )
        yield GaugeMetricFamily("tokenspout_slots_free", "Free sequence slots", stats.free_slots)
        yield GaugeMetricFamily(
            "tokenspout_kv_cells_used", "KV cache cells held by running requests", self.kv_cells_used
        )
        yield GaugeMetricFamily(
            "tokenspout_kv_cells_cached",
            "KV cache cells kept in free slots for the prompt cache",
            self.kv_cells_cached,
        )
        yield CounterMetricFamily("tokenspout_decode_steps", "llama_decode steps run", stats.steps)
        yield CounterMetricFamily(
            "tokenspout_prompt_tokens_cached",
            "Prompt tokens whose KV came from the prompt cache",
            stats.prompt_tokens_cached,
        )
        yield CounterMetricFamily(
            "tokenspout_prompt_tokens_computed", "Prompt tokens prefilled", stats.prompt_tokens_computed
        )
        yield _counter_by_source(
            "tokenspout_spec_draft_tokens",
            "Speculative draft tokens decoded for verification, by draft source",
            stats.draft_tokens,
        )
        yield _counter_by_source(
            "tokenspout_spec_accepted_tokens",
            "Speculative draft tokens the model agreed with (tokens gained), by draft source",
            stats.draft_tokens_accepted,
        )
        yield GaugeMetricFamily(
            "tokenspout_prompt_cache_bytes",
            "Host RAM held by the prompt cache's saved sequence states",
            stats.prompt_cache_bytes,
        )
        yield GaugeMetricFamily(
            "tokenspout_prompt_cache_entries",
            "Sequence states saved in the prompt cache",
            stats.prompt_cache_entries,
        )
        yield from self._router_gauges(stats)

    def _router_gauges(self, stats: EngineStats) -> Iterator[Metric]:
        """The gauges load-aware routers read (llm-d / Gateway API endpoint picker, vLLM's production-stack
        router), under vLLM's names and its ``model_name`` label, so a picker set up for vLLM can route
        to tokenspout unchanged."""
        label = [self.engine.model_id]
        for name, documentation, value in (
            ("vllm:num_requests_running", "Requests decoding in a slot", stats.running),
            ("vllm:num_requests_waiting", "Requests admitted and waiting for a slot", stats.waiting),
            (
                "vllm:kv_cache_usage_perc",
                "Fraction of KV cache cells held by running requests (1 means full)",
                stats.kv_cells_running / stats.kv_cells_total if stats.kv_cells_total else 0.0,
            ),
        ):
            gauge = GaugeMetricFamily(name, documentation, labels=["model_name"])
            gauge.add_metric(label, value)
            yield gauge

    async def render(self) -> bytes:
        cells = await self.engine.kv_cells()
        self.kv_cells_used, self.kv_cells_cached = cells.used, cells.cached
        return generate_latest(self.registry)


def _tgi_counter(name: str, documentation: str, value: int) -> Metric:
    """A TGI counter under its exact sample name: untyped (see the module's docstring)."""
    metric = Metric(name, documentation, "unknown")
    metric.add_sample(name, {}, value)
    return metric


def _counter_by_source(name: str, documentation: str, counts: dict[str, int]) -> CounterMetricFamily:
    """A counter labelled ``source`` (grammar, pool, lookup, draft_model): every source is listed, so
    a dashboard's series exist before its first draft."""
    metric = CounterMetricFamily(name, documentation, labels=["source"])
    for source, value in counts.items():
        metric.add_metric([source], value)
    return metric
