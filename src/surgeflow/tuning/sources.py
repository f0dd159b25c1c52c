"""Live figures for `surgeflow plan`: two scrapes of a gateway's /metrics, or a bench result.

Both give an `Observed`: the request rate, the cache hit ratio, each endpoint's latency (its
peak EWMA: it follows rises at once and falls slowly, so it reads high) and, from a bench
result, what the load measured (throughput, percentiles, errors) to set the prediction against.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from surgeflow.config import Settings
from surgeflow.errors import ConfigError, SurgeflowError
from surgeflow.tuning.scenario import Scenario, ServiceTime

CHAT_ROUTE = "/v1/chat/completions"
_HIT_STATUSES = ("hit", "stale", "semantic")


class Observed(msgspec.Struct, kw_only=True):
    """What a live system or a bench run showed; None where it said nothing."""

    source: str
    model: str | None = None
    arrivals: str | None = None  # poisson | constant (a bench run's schedule)
    offered_rps: float | None = None
    achieved_rps: float | None = None
    hit_ratio: float | None = None  # answered from the cache / all chat requests
    error_ratio: float | None = None
    mean_ms: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    gateway_mean_ms: float | None = None  # the gateway's own view of a chat request
    endpoint_latency_ms: dict[str, float] = msgspec.field(default_factory=dict)
    max_tokens: int | None = None

    @property
    def rate_rps(self) -> float | None:
        return self.offered_rps if self.offered_rps is not None else self.achieved_rps


def observed_from_server(
    server: Mapping[str, Any], *, window_s: float, model: str | None = None, source: str = ""
) -> Observed:
    """Read the figures a bench result keeps under ``server`` (or two scrapes' deltas).

    Expected fields: ``cache_requests`` (count by X-Surgeflow-Cache status), ``endpoints``
    (each ``model``, ``endpoint``, ``latency_ewma_s``), ``http_requests`` (by route template:
    ``count``, ``sum_s``). Missing ones are skipped.
    """
    statuses = {k: float(v) for k, v in (server.get("cache_requests") or {}).items()}
    total = sum(statuses.values())
    hits = sum(statuses.get(s, 0.0) for s in _HIT_STATUSES)
    chat = (server.get("http_requests") or {}).get(CHAT_ROUTE) or {}
    count = float(chat.get("count") or 0.0)
    latencies: dict[str, float] = {}
    for endpoint in server.get("endpoints") or []:
        if model is not None and endpoint.get("model") != model:
            continue
        ewma = endpoint.get("latency_ewma_s")
        if ewma:
            latencies[str(endpoint.get("endpoint"))] = float(ewma) * 1000
    return Observed(
        source=source,
        model=model,
        offered_rps=count / window_s if count and window_s > 0 else None,
        hit_ratio=hits / total if total else None,
        gateway_mean_ms=float(chat.get("sum_s") or 0.0) / count * 1000 if count else None,
        endpoint_latency_ms=latencies,
    )


def observed_from_bench(data: Mapping[str, Any], *, source: str = "bench") -> Observed:
    """Read a bench result (as plain data): ``offered_rps``, ``achieved_rps``, ``error_ratio``,
    ``latency`` (``mean_ms``, ``p50_ms``, ``p90_ms``, ``p99_ms``), ``load.arrival``,
    ``target.model``, ``target.max_tokens``, ``window`` (``start_s``, ``end_s``),
    ``cache_statuses`` and ``server`` (see `observed_from_server`)."""
    target = data.get("target") or {}
    model = target.get("model")
    window = data.get("window") or {}
    window_s = float(window.get("end_s", 0.0)) - float(window.get("start_s", 0.0))
    server = data.get("server")
    observed = (
        observed_from_server(server, window_s=window_s, model=model, source=source)
        if server
        else Observed(source=source, model=model)
    )
    if observed.hit_ratio is None and data.get("cache_statuses"):
        statuses = data["cache_statuses"]
        total = sum(statuses.values())
        hits = sum(statuses.get(s, 0) for s in _HIT_STATUSES)
        observed.hit_ratio = hits / total if total else None
    latency = data.get("latency") or {}
    observed.model = model
    observed.arrivals = (data.get("load") or {}).get("arrival")
    observed.offered_rps = _number(data.get("offered_rps")) or observed.offered_rps
    observed.achieved_rps = _number(data.get("achieved_rps"))
    observed.error_ratio = _number(data.get("error_ratio"))
    observed.mean_ms = _number(latency.get("mean_ms"))
    observed.p50_ms = _number(latency.get("p50_ms"))
    observed.p90_ms = _number(latency.get("p90_ms"))
    observed.p99_ms = _number(latency.get("p99_ms"))
    observed.max_tokens = target.get("max_tokens")
    return observed


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def load_bench(path: str | Path) -> Observed:
    """A ``surgeflow bench --output`` file, read with the bench's own loader."""
    from surgeflow.tuning.results import load_result

    try:
        result = load_result(path)
    except SurgeflowError as exc:
        raise ConfigError(str(exc)) from None
    return observed_from_bench(msgspec.to_builtins(result), source=f"bench {path}")


async def read_metrics(url: str, *, interval_s: float = 3.0, model: str | None = None) -> Observed:
    """Scrape ``url`` (a gateway's /metrics, or its root) twice, ``interval_s`` apart."""
    import aiohttp

    from surgeflow.tuning.scrape import figures, scrape

    root = url.rstrip("/").removesuffix("/metrics")
    async with aiohttp.ClientSession() as http:
        before = await scrape(http, root)
        started = time.monotonic()
        if before is None:
            raise ConfigError(f"no surgeflow metrics at {root}/metrics")
        await asyncio.sleep(interval_s)
        after = await scrape(http, root)
        window_s = time.monotonic() - started
    server = figures(before, after)
    if server is None:
        raise ConfigError(f"{root}/metrics stopped answering between two scrapes")
    return observed_from_server(
        msgspec.to_builtins(server), window_s=window_s, model=model, source=f"metrics {root}"
    )


def scenario_from_observed(
    observed: Observed,
    *,
    settings: Settings | None = None,
    base: Scenario | None = None,
    model: str | None = None,
    service_scv: float = 1.0,
) -> Scenario:
    """``base`` (or the system ``settings`` describe) at the observed rate and hit ratio.

    Endpoints whose service time the config does not know (HTTP endpoints) take their
    observed latency, as a gamma distribution with squared coefficient of variation
    ``service_scv``; simulated endpoints keep their latency model.
    """
    measured = {
        name: ServiceTime.distribution(ms, "gamma", service_scv)
        for name, ms in observed.endpoint_latency_ms.items()
    }
    rate = observed.rate_rps
    if base is None:
        tokens = (16, 64)
        if observed.max_tokens:
            tokens = (min(16, observed.max_tokens), min(64, observed.max_tokens))
        base = Scenario.from_settings(
            settings or Settings(),
            model=model or observed.model,
            service=measured,
            reply_tokens=tokens,
        )
    changes: dict[str, Any] = {"name": f"{base.name}, {observed.source}"}
    if rate:
        changes["rate"] = rate
    if observed.hit_ratio is not None:
        changes["cache"] = msgspec.structs.replace(base.cache, hit_ratio=observed.hit_ratio)
    if observed.arrivals in ("poisson", "constant"):
        changes["arrivals"] = observed.arrivals
    return msgspec.structs.replace(base, **changes)
