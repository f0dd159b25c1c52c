"""The monitor: samples the service's figures every second into a ring buffer, for the live
dashboard (`GET /dashboard`) and the alert rules, which need figures over sliding windows.

A sample is read from the same metric families that ``GET /metrics`` renders, merged with the
other processes' when they share a directory (``server.metrics_dir``), so the dashboard and the
alerts of any one process see the whole deployment. The Prometheus exposition stays the
interface; the monitor is its in-process reader.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from surgeflow.metrics import (
    DURATION_BUCKETS,
    PeerFigures,
    SharedFigures,
    merge_families,
    quantile,
)

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from surgeflow.metrics import Metrics

log = logging.getLogger("surgeflow.monitor")

# Routes that are not traffic: the figures' own readers and the probes. The dashboard's rates,
# latencies and error ratios, and the alerts on them, leave these out.
UNWATCHED_ROUTES = frozenset(
    {
        "/metrics",
        "/healthz",
        "/readyz",
        "/openapi.json",
        "/dashboard",
        "/dashboard/data",
        "unmatched",
    }
)
_NO_BUCKETS = (0,) * (len(DURATION_BUCKETS) + 1)


@dataclasses.dataclass(slots=True)
class EndpointFigures:
    model: str
    endpoint: str
    ejected: bool
    in_flight: float
    waiting: float
    latency_ms: float
    successes: float
    failures: float


@dataclasses.dataclass(slots=True)
class Sample:
    """The deployment's cumulative figures at time ``t`` (Unix seconds)."""

    t: float
    requests: dict[str, float]  # per route template (API routes only)
    errors: dict[str, float]  # 5xx answers per route template
    durations: dict[str, list[float]]  # per route: requests per duration bucket (not cumulative)
    cache_hits: float  # answered from the cache: hit, stale or semantic
    cache_lookups: float  # hits plus misses (bypasses were never lookups)
    in_flight: float
    queue_ready: float
    queue_leased: float
    queue_dead: float
    queue_age_s: float
    tokens_in: float
    tokens_out: float
    cost: float
    endpoints: list[EndpointFigures]
    keys: dict[str, int]  # requests per API key


@dataclasses.dataclass(slots=True)
class Delta:
    """What happened between two samples."""

    seconds: float
    requests: float
    errors: float
    durations: list[float]
    cache_hits: float
    cache_lookups: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def error_ratio(self) -> float | None:
        return self.errors / self.requests if self.requests > 0 else None

    @property
    def hit_ratio(self) -> float | None:
        return self.cache_hits / self.cache_lookups if self.cache_lookups > 0 else None

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile of request durations, in seconds."""
        return quantile(self.durations, q)


def sample_from(families: Iterable[Metric], keys: dict[str, int], t: float) -> Sample:
    """Read a `Sample` out of metric families (as `Metrics.families` or the merged ones)."""
    sample = Sample(t, {}, {}, {}, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, [], dict(keys))
    endpoints: dict[tuple[str, str], EndpointFigures] = {}
    for family in families:
        name = family.name
        if name == "surgeflow_http_requests":
            for s in family.samples:
                route = s.labels["route"]
                if route in UNWATCHED_ROUTES:
                    continue
                sample.requests[route] = sample.requests.get(route, 0.0) + s.value
                if s.labels["status"].startswith("5"):
                    sample.errors[route] = sample.errors.get(route, 0.0) + s.value
        elif name == "surgeflow_http_request_duration_seconds":
            _read_buckets(family, sample.durations)
        elif name == "surgeflow_cache_requests":
            for s in family.samples:
                status = s.labels["status"]
                if status in ("hit", "stale", "semantic"):
                    sample.cache_hits += s.value
                    sample.cache_lookups += s.value
                elif status == "miss":
                    sample.cache_lookups += s.value
        elif name == "surgeflow_http_requests_in_flight":
            sample.in_flight = _scalar(family)
        elif name == "surgeflow_queue_ready":
            sample.queue_ready = _scalar(family)
        elif name == "surgeflow_queue_leased":
            sample.queue_leased = _scalar(family)
        elif name == "surgeflow_queue_dead":
            sample.queue_dead = _scalar(family)
        elif name == "surgeflow_queue_oldest_ready_age_seconds":
            sample.queue_age_s = _scalar(family)
        elif name == "surgeflow_model_tokens":
            for s in family.samples:
                if s.labels["direction"] == "in":
                    sample.tokens_in += s.value
                else:
                    sample.tokens_out += s.value
        elif name == "surgeflow_model_cost_estimated":
            sample.cost = sum(s.value for s in family.samples)
        elif name.startswith("surgeflow_endpoint_"):
            _read_endpoint(family, endpoints)
    sample.endpoints = list(endpoints.values())
    return sample


def _scalar(family: Metric) -> float:
    return sum(s.value for s in family.samples)


def _read_buckets(family: Metric, into: dict[str, list[float]]) -> None:
    """Per-route bucket counts (not cumulative) from a histogram family's ``_bucket`` samples."""
    cumulative: dict[str, dict[float, float]] = {}
    for s in family.samples:
        if s.name.endswith("_bucket") and s.labels["route"] not in UNWATCHED_ROUTES:
            bound = float(s.labels["le"])
            cumulative.setdefault(s.labels["route"], {})[bound] = s.value
    for route, by_bound in cumulative.items():
        counts, before = [], 0.0
        for bound in (*DURATION_BUCKETS, float("inf")):
            total = by_bound.get(bound, before)
            counts.append(total - before)
            before = total
        into[route] = counts


_ENDPOINT_FIELDS = {
    "surgeflow_endpoint_ejected": "ejected",
    "surgeflow_endpoint_in_flight": "in_flight",
    "surgeflow_endpoint_waiting": "waiting",
    "surgeflow_endpoint_latency_ewma_seconds": "latency_ms",
    "surgeflow_endpoint_successes": "successes",
    "surgeflow_endpoint_failures": "failures",
}


def _read_endpoint(family: Metric, endpoints: dict[tuple[str, str], EndpointFigures]) -> None:
    field = _ENDPOINT_FIELDS.get(family.name)
    if field is None:
        return
    for s in family.samples:
        key = (s.labels["model"], s.labels["endpoint"])
        figures = endpoints.get(key)
        if figures is None:
            figures = endpoints[key] = EndpointFigures(*key, False, 0, 0, 0, 0, 0)
        if field == "ejected":
            figures.ejected = s.value > 0
        elif field == "latency_ms":
            figures.latency_ms = s.value * 1000
        else:
            setattr(figures, field, s.value)


def delta(later: Sample, earlier: Sample, route: str | None = None) -> Delta:
    """The traffic between two samples: all API routes, or one ``route`` template."""
    routes = list(later.requests) if route is None else [route]
    durations = [0.0] * (len(DURATION_BUCKETS) + 1)
    requests = errors = 0.0
    for name in routes:
        requests += later.requests.get(name, 0.0) - earlier.requests.get(name, 0.0)
        errors += later.errors.get(name, 0.0) - earlier.errors.get(name, 0.0)
        now, before = (
            later.durations.get(name, _NO_BUCKETS),
            earlier.durations.get(name, _NO_BUCKETS),
        )
        for index, (count, previous) in enumerate(zip(now, before, strict=True)):
            durations[index] += count - previous
    return Delta(
        seconds=later.t - earlier.t,
        requests=max(requests, 0.0),  # a peer's file that vanished can make totals go back
        errors=max(errors, 0.0),
        durations=[max(count, 0.0) for count in durations],
        cache_hits=max(later.cache_hits - earlier.cache_hits, 0.0),
        cache_lookups=max(later.cache_lookups - earlier.cache_lookups, 0.0),
    )


@dataclasses.dataclass(slots=True)
class Point:
    """One interval of the dashboard's charts."""

    t: float
    rps: float
    error_ratio: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    cache_hit_ratio: float | None
    in_flight: float
    queue_ready: float
    queue_age_s: float


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def point_between(later: Sample, earlier: Sample) -> Point:
    change = delta(later, earlier)
    return Point(
        t=later.t,
        rps=round(change.rate, 3),
        error_ratio=change.error_ratio,
        p50_ms=_ms(change.quantile(0.50)),
        p95_ms=_ms(change.quantile(0.95)),
        p99_ms=_ms(change.quantile(0.99)),
        cache_hit_ratio=change.hit_ratio,
        in_flight=later.in_flight,
        queue_ready=later.queue_ready,
        queue_age_s=round(later.queue_age_s, 3),
    )


class Monitor:
    """Takes a `Sample` every ``interval_s`` and keeps ``keep_s`` seconds of them; derives one
    chart `Point` per interval; publishes this process's figures to `SharedFigures` and reads
    the others'; then calls each of ``listeners`` (the alert rules) with itself.
    """

    def __init__(
        self,
        metrics: Metrics,
        *,
        interval_s: float = 1.0,
        keep_s: float = 3600.0,
        shared: SharedFigures | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.metrics = metrics
        self.interval_s = interval_s
        self.shared = shared
        size = max(int(keep_s / interval_s) + 1, 2)
        self.samples: deque[Sample] = deque(maxlen=size)
        self.points: deque[Point] = deque(maxlen=size)
        self.listeners: list[Callable[[Monitor], Any]] = []
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self.started_at = clock()

    def __repr__(self) -> str:
        return f"<Monitor interval_s={self.interval_s} samples={len(self.samples)}>"

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="monitor")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # a bad round must not end the monitoring
                log.exception("monitor round failed")
            await asyncio.sleep(self.interval_s)

    async def tick(self) -> Sample:
        """Take one sample now (publish, merge, derive), then run the listeners."""
        await self.metrics.refresh()
        families = self.metrics.families()
        keys = dict(self.metrics.requests.by_key)
        if self.shared is not None:
            shared = self.shared
            peers = await asyncio.to_thread(_exchange, shared, families, keys)
            families = merge_families(families, peers)
            for figures, _ in peers:
                for key, count in figures.keys.items():
                    keys[key] = keys.get(key, 0) + count
        sample = sample_from(families, keys, self._clock())
        self.add(sample)
        for listener in self.listeners:
            result = listener(self)
            if asyncio.iscoroutine(result):
                await result
        return sample

    def add(self, sample: Sample) -> None:
        """Append a sample taken elsewhere (the tick, or a test)."""
        if self.samples:
            self.points.append(point_between(sample, self.samples[-1]))
        self.samples.append(sample)

    @property
    def latest(self) -> Sample | None:
        return self.samples[-1] if self.samples else None

    def at(self, t: float) -> Sample | None:
        """The newest sample taken at or before ``t``; the oldest one if all are later."""
        if not self.samples:
            return None
        times = [sample.t for sample in self.samples]
        index = bisect.bisect_right(times, t) - 1
        return self.samples[max(index, 0)]

    def window(self, seconds: float, route: str | None = None) -> Delta | None:
        """The traffic over the last ``seconds`` (or as much of it as has been sampled)."""
        latest = self.latest
        earlier = None if latest is None else self.at(latest.t - seconds)
        if latest is None or earlier is None or earlier is latest:
            return None
        return delta(latest, earlier, route)

    def between(self, start: float, end: float, route: str | None = None) -> Delta | None:
        """The traffic from ``start`` to ``end`` (Unix seconds), as sampled."""
        later, earlier = self.at(end), self.at(start)
        if later is None or earlier is None or later.t <= earlier.t:
            return None
        return delta(later, earlier, route)


def _exchange(
    shared: SharedFigures, families: list[Metric], keys: dict[str, int]
) -> list[tuple[PeerFigures, bool]]:
    shared.publish(families, keys)
    return shared.peers()
