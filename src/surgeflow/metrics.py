"""Prometheus metrics: every metric name and label surgeflow exports is defined in this module.

The objects that count keep plain integer counters, bumped without locks or registry calls on
the hot path, and expose them as ``stats()``. Collectors read those when ``GET /metrics`` is
scraped. Labels are low-cardinality by design: a cache tier, a cache status, never a key, a
tenant or a prompt.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from surgeflow.routing.health import HealthState

if TYPE_CHECKING:
    from surgeflow.cache.semantic import SemanticCache
    from surgeflow.queue.base import QueueStats
    from surgeflow.service import Service
    from surgeflow.workflow.runner import StepEvent

METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST
K = TypeVar("K")

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
        self.workflows = WorkflowStats()  # workers and inline invokes count into this
        self.register(CacheCollector(service))
        self.register(RequestCollector(self.requests))
        self.register(WorkflowCollector(self.workflows))
        self.register(EndpointCollector(service))
        self.register(ModelCollector(service))
        self._queue = QueueCollector()
        self.register(self._queue)
        self.register(ScaleOutCollector(service))
        self._service = service
        self.shared: SharedFigures | None = None  # the other processes' figures, if shared

    def __repr__(self) -> str:
        return f"<Metrics collectors={len(self.collectors)}>"

    def register(self, collector: Collector) -> None:
        self.registry.register(collector)
        self.collectors.append(collector)

    async def refresh(self) -> None:
        """Read what can only be read asynchronously (the queue's stats) before a scrape."""
        self._queue.stats = await self._service.queue.stats()
        self._queue.lease_expiries = self._service.queue.lease_expiries

    async def exposition(self) -> bytes:
        """What ``GET /metrics`` answers: this process's figures now, plus the other
        processes' when they share a directory (`SharedFigures`)."""
        await self.refresh()
        if self.shared is None:
            return self.render()
        peers = await asyncio.to_thread(self.shared.peers)
        return self.render(merge_families(self.families(), peers))

    def families(self) -> list[Metric]:
        """This process's figures now, as metric families."""
        return list(self.registry.collect())

    def render(self, families: list[Metric] | None = None) -> bytes:
        """The Prometheus text exposition (content type `METRICS_CONTENT_TYPE`) of
        ``families`` (default: this process's own, now)."""
        if families is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Fixed(families))
        return generate_latest(registry)


class _Fixed:
    """A collector of families already gathered."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


# Gauges that every process reads from shared state (the queue's database) or that say
# "this is so somewhere": merged by taking the largest value, not by adding them up.
_GAUGES_MERGED_BY_MAX = frozenset(
    {
        "surgeflow_queue_ready",
        "surgeflow_queue_leased",
        "surgeflow_queue_dead",
        "surgeflow_queue_oldest_ready_age_seconds",
        "surgeflow_endpoint_ejected",
        "surgeflow_endpoint_latency_ewma_seconds",
        "surgeflow_alerts_firing",
    }
)
# A peer whose file has not been rewritten for this long is gone: its counters and histograms
# still count (totals must not go backwards), its gauges no longer do.
PEER_STALE_S = 5.0


class PeerFigures(msgspec.Struct):
    """What one process published: its metric families and its requests per API key."""

    families: list[tuple[str, str, str, list[tuple[str, dict[str, str], float]]]]
    keys: dict[str, int] = msgspec.field(default_factory=dict)
    written_at: float = 0.0
    pid: int = 0


class SharedFigures:
    """A directory (``server.metrics_dir``) where every process of one deployment publishes
    its figures about once a second, so that ``GET /metrics``, the dashboard and the alerts of
    any one process see them all. This plays the part of prometheus-client's multiprocess
    mode without its cost on the hot path: counters stay plain ints, and a file is written
    once a second instead of on every increment.

    Each process writes its own file (``<host>-<pid>-<random>.json``, atomically by rename).
    The file methods do blocking I/O: call them from a thread.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        token = secrets.token_hex(4)
        self.name = f"{socket.gethostname()}-{os.getpid()}-{token}.json"

    def __repr__(self) -> str:
        return f"<SharedFigures path={str(self.path)!r} name={self.name!r}>"

    def publish(self, families: list[Metric], keys: dict[str, int]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        figures = PeerFigures(
            families=[
                (
                    family.name,
                    family.type,
                    family.documentation,
                    [(sample.name, sample.labels, sample.value) for sample in family.samples],
                )
                for family in families
            ],
            keys=keys,
            written_at=time.time(),
            pid=os.getpid(),
        )
        temporary = self.path / f".{self.name}.tmp"
        temporary.write_bytes(msgspec.json.encode(figures))
        temporary.replace(self.path / self.name)

    def peers(self) -> list[tuple[PeerFigures, bool]]:
        """Every other process's last figures, each with whether that process is alive."""
        found: list[tuple[PeerFigures, bool]] = []
        now = time.time()
        for file in sorted(self.path.glob("*.json")):
            if file.name == self.name:
                continue
            try:
                figures = msgspec.json.decode(file.read_bytes(), type=PeerFigures)
            except (OSError, msgspec.DecodeError):
                continue  # vanished or half-written by an older version: skip this round
            found.append((figures, now - figures.written_at < PEER_STALE_S))
        return found

    def forget(self) -> None:
        """Remove this process's file (on a clean stop its counters go with it: call only
        when the whole deployment's totals may restart, e.g. in tests)."""
        with contextlib.suppress(FileNotFoundError):
            (self.path / self.name).unlink()


def merge_families(own: list[Metric], peers: list[tuple[PeerFigures, bool]]) -> list[Metric]:
    """``own`` families plus every peer's: counters and histograms add up (a dead peer's
    too), gauges add up over live processes, except those in `_GAUGES_MERGED_BY_MAX`."""
    merged: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}

    def add(
        name: str,
        typ: str,
        documentation: str,
        samples: Iterable[tuple[str, dict[str, str], float]],
        alive: bool,
    ) -> None:
        if typ == "gauge" and not alive:
            return
        family = merged.get(name)
        if family is None:
            family = merged[name] = Metric(name, documentation, typ)
            values[name] = {}
        by_max = typ == "gauge" and name in _GAUGES_MERGED_BY_MAX
        table = values[name]
        for sample_name, labels, value in samples:
            key = (sample_name, tuple(sorted(labels.items())))
            before = table.get(key)
            if before is None:
                table[key] = value
            else:
                table[key] = max(before, value) if by_max else before + value

    for family in own:
        add(
            family.name,
            family.type,
            family.documentation,
            ((sample.name, sample.labels, sample.value) for sample in family.samples),
            True,
        )
    for figures, alive in peers:
        for name, typ, documentation, samples in figures.families:
            add(name, typ, documentation, samples, alive)
    for name, family in merged.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
    return list(merged.values())


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


# Durations, seconds: from a cache hit (sub-millisecond) to a long streamed answer. Fine enough
# that a quantile read from the buckets (the dashboard's, the alerts') is off by little.
DURATION_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
    1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0,
)  # fmt: skip


class Histogram:
    """Counts per bucket of `DURATION_BUCKETS` (not cumulative; the last one is +Inf) and
    their sum: bumped with plain ints on the hot path, rendered at scrape time."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(DURATION_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
        self.sum += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative (upper bound, count) pairs, as Prometheus wants them."""
        cumulative, buckets = 0, list[tuple[str, float]]()
        for bound, count in zip(_BUCKET_LABELS, self.counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        return buckets


_BUCKET_LABELS = (*(f"{bound:g}" for bound in DURATION_BUCKETS), "+Inf")


def quantile(counts: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile of per-bucket ``counts`` (as kept by `Histogram`), interpolated
    linearly inside its bucket as Prometheus's histogram_quantile does; None if empty."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    cumulative = 0.0
    for index, count in enumerate(counts):
        if cumulative + count >= rank and count:
            if index == len(DURATION_BUCKETS):  # +Inf: the largest finite bound is all we know
                return DURATION_BUCKETS[-1]
            lower = DURATION_BUCKETS[index - 1] if index else 0.0
            upper = DURATION_BUCKETS[index]
            return lower + (upper - lower) * (rank - cumulative) / count
        cumulative += count
    return DURATION_BUCKETS[-1]


class RequestStats:
    """The gateway's requests, counted on the hot path with plain ints: by route template,
    method and status, a duration histogram per route, how many are in flight, how many
    admission control refused, and how many each API key made (for the traffic-anomaly alert;
    never a metric label)."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.admission_rejections = 0
        self.counts: dict[tuple[str, str, int], int] = {}
        self.durations: dict[str, Histogram] = {}
        self.by_key: dict[str, int] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        self.counts[key] = self.counts.get(key, 0) + 1
        histogram = self.durations.get(route)
        if histogram is None:
            histogram = self.durations[route] = Histogram()
        histogram.observe(seconds)


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
        for route, histogram in sorted(stats.durations.items()):
            durations.add_metric([route], histogram.buckets(), histogram.sum)
        yield durations
        yield GaugeMetricFamily(
            "surgeflow_http_requests_in_flight",
            "Gateway requests being handled now.",
            value=stats.in_flight,
        )
        yield CounterMetricFamily(
            "surgeflow_http_admission_rejections",
            "Requests refused with 503 because server.max_in_flight were in flight.",
            value=stats.admission_rejections,
        )


def step_name(key: str) -> str:
    """The step a checkpoint key names: ``agent#2/act`` → ``act``, ``score[3]`` → ``score``
    (a bounded label: one per step in the code, not one per loop round or item)."""
    return key.rpartition("/")[2].partition("[")[0]


class WorkflowStats:
    """Durable runs and workflow steps, counted where they happen (workers, inline invokes):
    runs submitted and finished by workflow and status, how long runs waited in the queue and
    ran, and each step's attempts by outcome and their durations."""

    def __init__(self) -> None:
        self.submitted: dict[str, int] = {}
        self.finished: dict[tuple[str, str], int] = {}
        self.queue_waits: dict[str, Histogram] = {}
        self.run_durations: dict[str, Histogram] = {}
        self.steps: dict[tuple[str, str, str], int] = {}  # (workflow, step, outcome)
        self.step_durations: dict[tuple[str, str], Histogram] = {}

    def run_submitted(self, workflow: str) -> None:
        self.submitted[workflow] = self.submitted.get(workflow, 0) + 1

    def run_started(self, workflow: str, queued_s: float) -> None:
        _histogram(self.queue_waits, workflow).observe(max(queued_s, 0.0))

    def run_finished(self, workflow: str, status: str, seconds: float | None = None) -> None:
        key = (workflow, status)
        self.finished[key] = self.finished.get(key, 0) + 1
        if seconds is not None:
            _histogram(self.run_durations, workflow).observe(seconds)

    def step_observer(
        self, workflow: str, forward: Callable[[StepEvent], None] | None = None
    ) -> Callable[[StepEvent], None]:
        """An ``on_event`` handler for `Workflow.run` that counts each step event of
        ``workflow`` (then passes it to ``forward``, if given)."""

        def observe(event: StepEvent) -> None:
            outcome = _STEP_OUTCOMES.get(event.type)
            if outcome is not None:
                key = (workflow, step_name(event.step))
                counted = (*key, outcome)
                self.steps[counted] = self.steps.get(counted, 0) + 1
                if event.duration_ms is not None:
                    _histogram(self.step_durations, key).observe(event.duration_ms / 1000)
            if forward is not None:
                forward(event)

        return observe


_STEP_OUTCOMES = {
    "step.finished": "succeeded",
    "step.failed": "failed",
    "step.retrying": "retried",
    "step.cached": "cached",
}


def _histogram(histograms: dict[K, Histogram], key: K) -> Histogram:
    histogram = histograms.get(key)
    if histogram is None:
        histogram = histograms[key] = Histogram()
    return histogram


class WorkflowCollector:
    """`WorkflowStats` at scrape time."""

    def __init__(self, stats: WorkflowStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats
        submitted = CounterMetricFamily(
            "surgeflow_runs_submitted", "Durable runs submitted, by workflow.", labels=["workflow"]
        )
        for workflow, count in sorted(stats.submitted.items()):
            submitted.add_metric([workflow], count)
        yield submitted
        finished = CounterMetricFamily(
            "surgeflow_runs_finished",
            "Durable runs that ended, by workflow and status (succeeded, failed, cancelled, dead).",
            labels=["workflow", "status"],
        )
        for (workflow, status), count in sorted(stats.finished.items()):
            finished.add_metric([workflow, status], count)
        yield finished
        for name, documentation, histograms in (
            (
                "surgeflow_run_queue_wait_seconds",
                "Time from a run's submission to a worker starting it, by workflow.",
                stats.queue_waits,
            ),
            (
                "surgeflow_run_duration_seconds",
                "Time a worker spent on a run that ended (its last attempt), by workflow.",
                stats.run_durations,
            ),
        ):
            family = HistogramMetricFamily(name, documentation, labels=["workflow"])
            for workflow, histogram in sorted(histograms.items()):
                family.add_metric([workflow], histogram.buckets(), histogram.sum)
            yield family
        steps = CounterMetricFamily(
            "surgeflow_steps",
            "Workflow step attempts by workflow, step and outcome"
            " (succeeded, failed, retried, cached).",
            labels=["workflow", "step", "outcome"],
        )
        for (workflow, step, outcome), count in sorted(stats.steps.items()):
            steps.add_metric([workflow, step, outcome], count)
        yield steps
        durations = HistogramMetricFamily(
            "surgeflow_step_duration_seconds",
            "Duration of step attempts that succeeded or failed, by workflow and step.",
            labels=["workflow", "step"],
        )
        for (workflow, step), histogram in sorted(stats.step_durations.items()):
            durations.add_metric([workflow, step], histogram.buckets(), histogram.sum)
        yield durations


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
        # The breaker's state as an enum: one series per state, 1 for the current one.
        states = GaugeMetricFamily(
            "surgeflow_endpoint_state",
            "The endpoint's circuit-breaker state: 1 for the current one of healthy, ejected,"
            " probing (half-open).",
            labels=[*labels, "state"],
        )
        for router in self._service.models.snapshot():
            for endpoint in router["endpoints"]:
                name = [router["model"], endpoint["name"]]
                health, limits = endpoint["health"], endpoint["limits"]
                for state in _BREAKER_STATES:
                    states.add_metric([*name, state], 1.0 if health["state"] == state else 0.0)
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
        yield states


_BREAKER_STATES = tuple(state.value for state in HealthState)


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


class ScaleOutCollector:
    """What keeps runs safe and followers informed across processes: runs queued again by the
    reconciler, stored runs the queue refused, and the run-event notices over Redis."""

    def __init__(self, service: Service) -> None:
        self._service = service

    def collect(self) -> Iterator[Metric]:
        service = self._service
        reconciler = getattr(service, "reconciler", None)
        if reconciler is not None:
            yield CounterMetricFamily(
                "surgeflow_reconciler_requeued",
                "Live runs the reconciler found without a queue job and queued again.",
                reconciler.reenqueued,
            )
            yield CounterMetricFamily(
                "surgeflow_reconciler_failures",
                "Reconcile rounds that failed (the store or the queue did not answer).",
                reconciler.failures,
            )
        yield CounterMetricFamily(
            "surgeflow_enqueue_failures",
            "Runs stored but refused by the queue at submission (the reconciler queues them).",
            getattr(service, "enqueue_failures", 0),
        )
        bus = getattr(service, "event_bus", None)
        if bus is not None:
            notices = CounterMetricFamily(
                "surgeflow_event_notices",
                "Run-event notices over Redis: messages published, run ids received.",
                labels=["direction"],
            )
            notices.add_metric(["published"], bus.published)
            notices.add_metric(["received"], bus.received)
            yield notices
            yield CounterMetricFamily(
                "surgeflow_event_bus_failures",
                "Publishes or subscriptions to Redis that failed (followers fall back to polling).",
                bus.failures,
            )


class QueueCollector:
    """The queue's depth, leased and dead jobs and the age of the oldest ready one, as read by
    the last `Metrics.refresh` (the queue answers asynchronously; scrapes refresh first)."""

    def __init__(self) -> None:
        self.stats: QueueStats | None = None
        self.lease_expiries = 0

    def collect(self) -> Iterator[Metric]:
        stats = self.stats
        if stats is None:
            return
        yield GaugeMetricFamily("surgeflow_queue_ready", "Runs waiting for a worker.", stats.ready)
        yield GaugeMetricFamily("surgeflow_queue_leased", "Runs leased to a worker.", stats.leased)
        yield GaugeMetricFamily(
            "surgeflow_queue_dead", "Runs given up on after max_attempts.", stats.dead
        )
        yield CounterMetricFamily(
            "surgeflow_queue_lease_expiries",
            "Runs leased again because a worker's lease on them expired (it died or stalled).",
            self.lease_expiries,
        )
        yield GaugeMetricFamily(
            "surgeflow_queue_oldest_ready_age_seconds",
            "How long the oldest ready run has waited.",
            stats.oldest_ready_age_s,
        )
