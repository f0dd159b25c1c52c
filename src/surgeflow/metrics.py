"""Prometheus metrics: every metric name and label surgeflow exports is defined in this module.

The objects that count keep plain integer counters, bumped without locks or registry calls on
the hot path, and expose them as ``stats()``. Collectors read those when ``GET /metrics`` is
scraped. Labels are low-cardinality by design: a cache tier, a cache status, never a key, a
tenant or a prompt.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from surgeflow.cache.semantic import SemanticCache
    from surgeflow.queue.base import QueueStats
    from surgeflow.service import Service

METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST

# Per cache tier (label ``tier``: memory, redis): stat name → (metric, help).
_TIER_COUNTERS = {
    "hits": ("surgeflow_cache_hits", "Lookups this cache tier answered."),
    "misses": ("surgeflow_cache_misses", "Lookups this cache tier could not answer."),
    "sets": ("surgeflow_cache_sets", "Entries written to this cache tier."),
    "evictions": ("surgeflow_cache_evictions", "Entries evicted to stay within max_bytes."),
    "expirations": ("surgeflow_cache_expirations", "Entries dropped because they expired."),
    "errors": ("surgeflow_cache_errors", "Operations that failed, so the tier was bypassed."),
    "timeouts": ("surgeflow_cache_timeouts", "Operations that timed out (counted in errors too)."),
}
_TIER_GAUGES = {
    "bytes": ("surgeflow_cache_bytes", "Bytes of values held by this cache tier."),
    "entries": ("surgeflow_cache_entries", "Entries held by this cache tier."),
}
# Chat answers, from the model client: stat name → (metric, help).
_STATUS_STATS = {
    "hit": "hits",
    "stale": "stale_served",
    "semantic": "semantic_hits",
    "miss": "misses",
    "bypass": "bypasses",
}
_CLIENT_COUNTERS = {
    "stale_served": (
        "surgeflow_cache_stale_served",
        "Chat answers served stale while a background call refreshed them.",
    ),
    "refreshes": ("surgeflow_cache_refreshes", "Background refreshes of stale chat answers."),
    "refresh_failures": (
        "surgeflow_cache_refresh_failures",
        "Background refreshes that failed (the stale answer stayed).",
    ),
    "coalesce_leaders": (
        "surgeflow_cache_coalesce_leaders",
        "Upstream calls made for cache misses (one per group of identical concurrent misses).",
    ),
    "coalesced": (
        "surgeflow_cache_coalesced",
        "Cache misses that waited for an identical call already in flight.",
    ),
}


class Metrics:
    """One service's metrics: its own registry (not the process-wide default one), so that
    several services in one process (tests, embedded use) never mix their figures.

    Other parts register their collectors here (`register`), e.g. a semantic cache.
    """

    def __init__(self, service: Service) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.collectors: list[Collector] = []
        self.requests = RequestStats()  # the gateway counts into this
        self.register(CacheCollector(service))
        self.register(RequestCollector(self.requests))
        self.register(EndpointCollector(service))
        self.register(ModelCollector(service))
        self._queue = QueueCollector()
        self.register(self._queue)
        self._service = service

    def __repr__(self) -> str:
        return f"<Metrics collectors={len(self.collectors)}>"

    def register(self, collector: Collector) -> None:
        self.registry.register(collector)
        self.collectors.append(collector)

    async def refresh(self) -> None:
        """Read what can only be read asynchronously (the queue's stats) before a scrape."""
        self._queue.stats = await self._service.queue.stats()

    def render(self) -> bytes:
        """The Prometheus text exposition (content type `METRICS_CONTENT_TYPE`)."""
        return generate_latest(self.registry)


class CacheCollector:
    """The exact cache, read at scrape time: each tier of ``service.cache`` and how the model
    client's chat requests met the cache."""

    def __init__(self, service: Service) -> None:
        self._service = service

    def collect(self) -> Iterator[Metric]:
        tiers = list(_tiers(self._service.cache))
        for stat, (name, documentation) in _TIER_COUNTERS.items():
            counter = CounterMetricFamily(name, documentation, labels=["tier"])
            yield from _per_tier(counter, stat, tiers)
        for stat, (name, documentation) in _TIER_GAUGES.items():
            gauge = GaugeMetricFamily(name, documentation, labels=["tier"])
            yield from _per_tier(gauge, stat, tiers)
        client = self._service.models.stats()
        requests = CounterMetricFamily(
            "surgeflow_cache_requests",
            "Chat requests by how the cache answered them (X-Surgeflow-Cache).",
            labels=["status"],
        )
        for status, stat in _STATUS_STATS.items():
            requests.add_metric([status], client[stat])
        yield requests
        for stat, (name, documentation) in _CLIENT_COUNTERS.items():
            yield CounterMetricFamily(name, documentation, value=client[stat])


def _per_tier(
    metric: CounterMetricFamily | GaugeMetricFamily,
    stat: str,
    tiers: list[tuple[str, dict[str, int | float]]],
) -> Iterator[Metric]:
    """``metric`` with one sample per tier that counts ``stat`` (nothing if none does)."""
    for tier, stats in tiers:
        if stat in stats:
            metric.add_metric([tier], stats[stat])
    if metric.samples:
        yield metric


def _tiers(cache: object) -> Iterable[tuple[str, dict[str, int | float]]]:
    """(tier name, stats) of each tier of ``cache``, nearest first."""
    nested = getattr(cache, "tiers", None)
    if nested is not None:
        for tier in nested:
            yield from _tiers(tier)
        return
    tier_name = getattr(cache, "tier", None)
    stats = getattr(cache, "stats", None)
    if isinstance(tier_name, str) and callable(stats):
        yield tier_name, stats()


class SemanticCollector:
    """The semantic cache, read at scrape time: lookups, hits with their similarity, what
    refused the candidates that were close enough, and the size of the index."""

    def __init__(self, semantic: SemanticCache) -> None:
        self._semantic = semantic

    def collect(self) -> Iterator[Metric]:
        semantic = self._semantic
        stats = semantic.stats()
        yield CounterMetricFamily(
            "surgeflow_semantic_lookups",
            "Semantic cache lookups (exact-cache misses of models with cache.semantic).",
            value=stats["lookups"],
        )
        yield CounterMetricFamily(
            "surgeflow_semantic_below_threshold",
            "Semantic lookups with no candidate as similar as the threshold.",
            value=stats["below_threshold"],
        )
        refused = CounterMetricFamily(
            "surgeflow_semantic_refused",
            "Semantic lookups whose candidates above the threshold a guard refused, by guard.",
            labels=["guard"],
        )
        for key, value in stats.items():
            if key.startswith("refused_"):
                refused.add_metric([key.removeprefix("refused_")], value)
        yield refused
        buckets: list[tuple[str, float]] = [
            (f"{bound:g}", count)
            for bound, count in zip(
                semantic.similarity_bounds, semantic.similarity_buckets, strict=True
            )
        ]
        buckets.append(("+Inf", stats["hits"]))
        yield HistogramMetricFamily(
            "surgeflow_semantic_hit_similarity",
            "Cosine similarity of the semantic hits served.",
            buckets=buckets,
            sum_value=semantic.similarity_sum,
        )
        yield GaugeMetricFamily(
            "surgeflow_semantic_entries", "Prompts in the semantic index.", value=stats["entries"]
        )
        yield CounterMetricFamily(
            "surgeflow_semantic_evictions",
            "Prompts dropped from the semantic index to stay within max_entries.",
            value=stats["evictions"],
        )


# Request durations, seconds: from a cache hit (sub-millisecond) to a long streamed answer.
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class RequestStats:
    """The gateway's requests, counted on the hot path with plain ints: by route template,
    method and status, a duration histogram per route, and how many are in flight."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.counts: dict[tuple[str, str, int], int] = {}
        self.durations: dict[str, list[int]] = {}  # route → per-bucket counts (not cumulative)
        self.duration_sums: dict[str, float] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        self.counts[key] = self.counts.get(key, 0) + 1
        buckets = self.durations.get(route)
        if buckets is None:
            buckets = self.durations[route] = [0] * (len(DURATION_BUCKETS) + 1)
            self.duration_sums[route] = 0.0
        buckets[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
        self.duration_sums[route] += seconds


class RequestCollector:
    """`RequestStats` at scrape time."""

    def __init__(self, stats: RequestStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats
        requests = CounterMetricFamily(
            "surgeflow_http_requests",
            "Gateway requests by route template, method and status.",
            labels=["route", "method", "status"],
        )
        for (route, method, status), count in sorted(stats.counts.items()):
            requests.add_metric([route, method, str(status)], count)
        yield requests
        durations = HistogramMetricFamily(
            "surgeflow_http_request_duration_seconds",
            "Time from a request's arrival to the end of its response, by route template.",
            labels=["route"],
        )
        for route, counts in sorted(stats.durations.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*DURATION_BUCKETS, float("inf")), counts, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else f"{bound:g}", cumulative))
            durations.add_metric([route], buckets, stats.duration_sums[route])
        yield durations
        yield GaugeMetricFamily(
            "surgeflow_http_requests_in_flight",
            "Gateway requests being handled now.",
            value=stats.in_flight,
        )


class EndpointCollector:
    """Each model endpoint, read from its router at scrape time: picks, outcomes, in flight,
    waiting, rejections, ejections and whether it is ejected now. Labels: model, endpoint."""

    def __init__(self, service: Service) -> None:
        self._service = service

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "endpoint"]
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {
            "picks": CounterMetricFamily(
                "surgeflow_endpoint_picks", "Times the router picked this endpoint.", labels=labels
            ),
            "successes": CounterMetricFamily(
                "surgeflow_endpoint_successes", "Calls that succeeded.", labels=labels
            ),
            "failures": CounterMetricFamily(
                "surgeflow_endpoint_failures", "Calls that failed.", labels=labels
            ),
            "rejected": CounterMetricFamily(
                "surgeflow_endpoint_rejections",
                "Calls refused by the endpoint's limits (queue full or timed out).",
                labels=labels,
            ),
            "ejections": CounterMetricFamily(
                "surgeflow_endpoint_ejections", "Times the endpoint was ejected.", labels=labels
            ),
            "inflight": GaugeMetricFamily(
                "surgeflow_endpoint_in_flight", "Calls in flight now.", labels=labels
            ),
            "waiting": GaugeMetricFamily(
                "surgeflow_endpoint_waiting", "Calls queued for a slot now.", labels=labels
            ),
            "ejected": GaugeMetricFamily(
                "surgeflow_endpoint_ejected", "1 while the endpoint is ejected.", labels=labels
            ),
            "ewma_seconds": GaugeMetricFamily(
                "surgeflow_endpoint_latency_ewma_seconds",
                "The endpoint's peak-EWMA latency.",
                labels=labels,
            ),
        }
        for router in self._service.models.snapshot():
            for endpoint in router["endpoints"]:
                name = [router["model"], endpoint["name"]]
                health, limits = endpoint["health"], endpoint["limits"]
                values = {
                    "picks": endpoint["picks"],
                    "successes": health["successes"],
                    "failures": health["failures"],
                    "rejected": limits["rejected"],
                    "ejections": health["ejections"],
                    "inflight": limits["inflight"],
                    "waiting": limits["waiting"],
                    "ejected": 1.0 if health["state"] == "ejected" else 0.0,
                    "ewma_seconds": endpoint["ewma_ms"] / 1000,
                }
                for stat, family in families.items():
                    family.add_metric(name, values[stat])
        yield from families.values()


class ModelCollector:
    """Per model: tokens in and out as the endpoints reported them, and their estimated cost
    (``price_per_1k_input`` / ``price_per_1k_output`` in the model's settings)."""

    def __init__(self, service: Service) -> None:
        self._service = service

    def collect(self) -> Iterator[Metric]:
        tokens = CounterMetricFamily(
            "surgeflow_model_tokens",
            "Tokens of answered calls, by model and direction (in: prompt, out: completion).",
            labels=["model", "direction"],
        )
        cost = CounterMetricFamily(
            "surgeflow_model_cost_estimated",
            "Estimated cost of answered calls, by model (tokens × the configured prices).",
            labels=["model"],
        )
        for model, router in self._service.models.routers.items():
            settings = router.settings
            tokens.add_metric([model, "in"], router.prompt_tokens)
            tokens.add_metric([model, "out"], router.completion_tokens)
            estimate = (
                router.prompt_tokens * settings.price_per_1k_input
                + router.completion_tokens * settings.price_per_1k_output
            ) / 1000
            cost.add_metric([model], estimate)
        yield tokens
        yield cost


class QueueCollector:
    """The queue's depth, leased and dead jobs and the age of the oldest ready one, as read by
    the last `Metrics.refresh` (the queue answers asynchronously; scrapes refresh first)."""

    def __init__(self) -> None:
        self.stats: QueueStats | None = None

    def collect(self) -> Iterator[Metric]:
        stats = self.stats
        if stats is None:
            return
        yield GaugeMetricFamily("surgeflow_queue_ready", "Runs waiting for a worker.", stats.ready)
        yield GaugeMetricFamily("surgeflow_queue_leased", "Runs leased to a worker.", stats.leased)
        yield GaugeMetricFamily(
            "surgeflow_queue_dead", "Runs given up on after max_attempts.", stats.dead
        )
        yield GaugeMetricFamily(
            "surgeflow_queue_oldest_ready_age_seconds",
            "How long the oldest ready run has waited.",
            stats.oldest_ready_age_s,
        )
