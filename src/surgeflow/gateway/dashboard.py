"""The live dashboard: ``GET /dashboard`` serves one self-contained page (its script and styles
inline, nothing from a CDN), which polls ``GET /dashboard/data`` every second.

The data is the monitor's: one point per second of throughput, latency percentiles, error and
cache hit ratios, queue depth and age; the endpoints' health; the alerts that are pending or
firing. Like ``/metrics`` it needs no key: keep the port private, or turn it off with
``server.dashboard: false``.
"""

from __future__ import annotations

import functools
import importlib.resources
import time
from typing import TYPE_CHECKING, Any

from surgeflow.gateway.http import Request, Send, send_bytes, send_json

if TYPE_CHECKING:
    from surgeflow.service import Service

_PAGE_HEADERS = [
    (b"content-type", b"text/html; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    # The page loads nothing from elsewhere and talks only to this origin.
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline';"
        b" connect-src 'self'; img-src 'self' data:",
    ),
]
# Points in one answer: five minutes at the default interval.
MAX_POINTS = 300


@functools.cache
def _page() -> bytes:
    return (
        importlib.resources.files("surgeflow.gateway") / "static" / "dashboard.html"
    ).read_bytes()


async def page(service: Service, request: Request, send: Send) -> None:
    await send_bytes(send, 200, _page(), _PAGE_HEADERS)


async def data(service: Service, request: Request, send: Send) -> None:
    await send_json(send, 200, snapshot(service))


def snapshot(service: Service, points: int = MAX_POINTS) -> dict[str, Any]:
    """The dashboard's JSON: series (oldest first), totals, endpoints and alerts."""
    monitor = service.monitor
    recent = list(monitor.points)[-points:]
    latest = monitor.latest
    series: dict[str, list[Any]] = {
        "t": [round(point.t, 3) for point in recent],
        "rps": [point.rps for point in recent],
        "error_ratio": [point.error_ratio for point in recent],
        "p50_ms": [point.p50_ms for point in recent],
        "p95_ms": [point.p95_ms for point in recent],
        "p99_ms": [point.p99_ms for point in recent],
        "cache_hit_ratio": [point.cache_hit_ratio for point in recent],
        "in_flight": [point.in_flight for point in recent],
        "queue_ready": [point.queue_ready for point in recent],
        "queue_oldest_age_s": [point.queue_age_s for point in recent],
    }
    totals: dict[str, Any] = {}
    endpoints: list[dict[str, Any]] = []
    if latest is not None:
        totals = {
            "requests": sum(latest.requests.values()),
            "errors": sum(latest.errors.values()),
            "cache_hits": latest.cache_hits,
            "cache_lookups": latest.cache_lookups,
            "tokens_in": latest.tokens_in,
            "tokens_out": latest.tokens_out,
            "cost": round(latest.cost, 6),
            "queue_ready": latest.queue_ready,
            "queue_leased": latest.queue_leased,
            "queue_dead": latest.queue_dead,
        }
        endpoints = [
            {
                "model": e.model,
                "endpoint": e.endpoint,
                "state": "ejected" if e.ejected else "healthy",
                "in_flight": e.in_flight,
                "waiting": e.waiting,
                "latency_ms": round(e.latency_ms, 3),
                "successes": e.successes,
                "failures": e.failures,
            }
            for e in latest.endpoints
        ]
    alerts = service.alerts
    return {
        "now": time.time(),
        "interval_s": monitor.interval_s,
        "uptime_s": None if service.started_at is None else time.time() - service.started_at,
        "series": series,
        "totals": totals,
        "endpoints": endpoints,
        "alerts": [] if alerts is None else [a.describe() for a in alerts.active.values()],
        "rules": 0 if alerts is None else len(alerts.rules),
    }
