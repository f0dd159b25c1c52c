"""Read a surgeflow gateway's ``GET /metrics`` before and after a bench run; keep the deltas a
capacity model needs (cache hits, endpoint calls and latency, queue wait, run and gateway time).

Best effort: a server without ``/metrics``, or whose metrics are not surgeflow's, gives ``None``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from surgeflow.tuning.results import EndpointFigures, ServerFigures, SumCount

log = logging.getLogger("surgeflow.tuning")

# (sample name, labels) → value
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

_WANTED = (
    "surgeflow_cache_requests_total",
    "surgeflow_endpoint_successes_total",
    "surgeflow_endpoint_failures_total",
    "surgeflow_endpoint_latency_ewma_seconds",
    "surgeflow_run_queue_wait_seconds_sum",
    "surgeflow_run_queue_wait_seconds_count",
    "surgeflow_run_duration_seconds_sum",
    "surgeflow_run_duration_seconds_count",
    "surgeflow_http_request_duration_seconds_sum",
    "surgeflow_http_request_duration_seconds_count",
)
SCRAPE_TIMEOUT_S = 5.0


async def scrape(http: aiohttp.ClientSession, root: str) -> Samples | None:
    """The surgeflow samples at ``root/metrics``, or ``None`` when there are none to read."""
    try:
        async with asyncio.timeout(SCRAPE_TIMEOUT_S), http.get(f"{root}/metrics") as response:
            if response.status != 200:
                return None
            text = await response.text()
        samples: Samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in _WANTED:
                    samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    except (aiohttp.ClientError, TimeoutError, ValueError, UnicodeDecodeError) as exc:
        log.debug("no metrics at %s: %s", root, exc)
        return None
    return samples or None


def figures(before: Samples | None, after: Samples | None) -> ServerFigures | None:
    """What changed between two scrapes (gauges: their value after)."""
    if before is None or after is None:
        return None

    def delta(key: tuple[str, tuple[tuple[str, str], ...]]) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    cache: dict[str, float] = {}
    endpoints: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    sums: dict[str, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for key, value in after.items():
        name, labels = key
        label = dict(labels)
        if name == "surgeflow_cache_requests_total":
            cache[label.get("status", "")] = delta(key)
        elif name.startswith("surgeflow_endpoint_"):
            where = (label.get("model", ""), label.get("endpoint", ""))
            field = name.removeprefix("surgeflow_endpoint_").removesuffix("_total")
            endpoints[where][field] = value if field == "latency_ewma_seconds" else delta(key)
        else:
            base, _, part = name.rpartition("_")  # …_seconds_sum / …_seconds_count
            by = label.get("workflow") or label.get("route", "")
            sums[base][by][part] = delta(key)

    def sum_counts(base: str) -> dict[str, SumCount]:
        return {
            by: SumCount(count=parts.get("count", 0.0), sum_s=parts.get("sum", 0.0))
            for by, parts in sorted(sums.get(base, {}).items())
        }

    return ServerFigures(
        cache_requests=cache,
        endpoints=[
            EndpointFigures(
                model=model,
                endpoint=endpoint,
                successes=values.get("successes", 0.0),
                failures=values.get("failures", 0.0),
                latency_ewma_s=values.get("latency_ewma_seconds"),
            )
            for (model, endpoint), values in sorted(endpoints.items())
        ],
        queue_wait=sum_counts("surgeflow_run_queue_wait_seconds"),
        run_duration=sum_counts("surgeflow_run_duration_seconds"),
        http_requests=sum_counts("surgeflow_http_request_duration_seconds"),
    )
