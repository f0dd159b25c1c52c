"""GET /metrics: the cache's counters, per tier, in Prometheus text, per service."""

from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from surgeflow.cache import MemoryCache
from surgeflow.cache.redis import RedisCache
from surgeflow.cache.tiered import TieredCache
from surgeflow.config import (
    EndpointSettings,
    ModelSettings,
    Settings,
    SimulatedSettings,
    StoreSettings,
)
from surgeflow.server import running_gateway
from surgeflow.service import Service
from tests.gateway.conftest import API_KEY, make_service

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def tier(name: str, tier_name: str = "memory") -> tuple[str, tuple[tuple[str, str], ...]]:
    return (name, (("tier", tier_name),))


async def test_a_scrape_counts_a_miss_and_a_hit(tmp_path: Path) -> None:
    body = {
        "model": "sim-small",
        "temperature": 0,
        "messages": [{"role": "user", "content": "How do refunds work?"}],
    }
    async with make_service(tmp_path) as service, running_gateway(service) as url:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with aiohttp.ClientSession(url, headers=headers) as http:
            for _ in range(2):
                async with http.post("/v1/chat/completions", json=body) as response:
                    assert response.status == 200
        async with aiohttp.ClientSession(url) as http, http.get("/metrics") as response:
            assert response.status == 200  # no key needed
            assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
            samples = parse(await response.text())
    assert samples[tier("surgeflow_cache_misses_total")] == 1
    assert samples[tier("surgeflow_cache_hits_total")] == 1
    assert samples[tier("surgeflow_cache_sets_total")] == 1
    assert samples[tier("surgeflow_cache_entries")] == 1
    assert samples[tier("surgeflow_cache_bytes")] > 100
    assert samples[tier("surgeflow_cache_evictions_total")] == 0
    requests = "surgeflow_cache_requests_total"
    assert samples[(requests, (("status", "hit"),))] == 1
    assert samples[(requests, (("status", "miss"),))] == 1
    assert samples[(requests, (("status", "stale"),))] == 0
    assert samples[("surgeflow_cache_coalesce_leaders_total", ())] == 1
    assert samples[("surgeflow_cache_coalesced_total", ())] == 0
    assert samples[("surgeflow_cache_stale_served_total", ())] == 0


async def test_each_service_has_its_own_figures_and_every_tier_its_label(tmp_path: Path) -> None:
    # A Redis tier on a port nobody listens on: bypassed, and counted as an error.
    tiered = TieredCache(MemoryCache(), RedisCache("redis://127.0.0.1:1/0", timeout_s=0.5))
    settings = Settings(store=StoreSettings(url=f"sqlite:///{tmp_path / 'b.db'}"))
    async with (
        make_service(tmp_path) as one,
        Service(settings, cache=tiered, workflows={}, embedded_worker=False) as two,
    ):
        await one.cache.get("nothing")
        await two.cache.get("nothing")
        samples_one = parse(one.metrics.render().decode())
        samples_two = parse(two.metrics.render().decode())
    assert samples_one[tier("surgeflow_cache_misses_total")] == 1
    assert tier("surgeflow_cache_errors_total", "redis") not in samples_one
    assert samples_two[tier("surgeflow_cache_misses_total")] == 1
    assert samples_two[tier("surgeflow_cache_errors_total", "redis")] == 1
    assert samples_two[tier("surgeflow_cache_hits_total", "redis")] == 0
    assert tier("surgeflow_cache_bytes", "redis") not in samples_two  # memory-only gauges
    assert repr(two.metrics) == "<Metrics collectors=5>"


async def test_requests_are_counted_by_route_template_method_and_status(tmp_path: Path) -> None:
    body = {
        "model": "sim-small",
        "temperature": 0,
        "messages": [{"role": "user", "content": "Where is my order?"}],
    }
    async with make_service(tmp_path) as service, running_gateway(service) as url:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with aiohttp.ClientSession(url, headers=headers) as http:
            for _ in range(3):
                async with http.post("/v1/chat/completions", json=body) as response:
                    assert response.status == 200
            async with http.get("/v1/runs/run_does_not_exist") as response:
                assert response.status == 404
            async with http.get("/v1/nowhere") as response:
                assert response.status == 404
            async with http.get("/metrics") as response:
                samples = parse(await response.text())
    requests = "surgeflow_http_requests_total"
    chat = (("method", "POST"), ("route", "/v1/chat/completions"), ("status", "200"))
    assert samples[(requests, chat)] == 3
    run = (("method", "GET"), ("route", "/v1/runs/{run_id}"), ("status", "404"))
    assert samples[(requests, run)] == 1  # the template, not the id
    nowhere = (("method", "GET"), ("route", "unmatched"), ("status", "404"))
    assert samples[(requests, nowhere)] == 1
    duration = "surgeflow_http_request_duration_seconds"
    assert samples[(f"{duration}_count", (("route", "/v1/chat/completions"),))] == 3
    inf = (("le", "+Inf"), ("route", "/v1/chat/completions"))
    assert samples[(f"{duration}_bucket", inf)] == 3
    assert samples[(f"{duration}_sum", (("route", "/v1/chat/completions"),))] > 0
    assert samples[("surgeflow_http_requests_in_flight", ())] == 1  # the scrape itself
    # Each model endpoint: the default model has two simulated endpoints.
    picks = [
        value
        for (name, labels), value in samples.items()
        if name == "surgeflow_endpoint_picks_total" and ("model", "sim-small") in labels
    ]
    assert len(picks) == 2
    assert sum(picks) == 1  # one miss went upstream; two hits did not
    ejected = [v for (n, _), v in samples.items() if n == "surgeflow_endpoint_ejected"]
    assert ejected == [0.0, 0.0]


async def test_tokens_cost_and_the_queue_are_reported(tmp_path: Path) -> None:
    priced = ModelSettings(
        name="priced",
        endpoints=[EndpointSettings(name="sim", simulated=SimulatedSettings(seed=3))],
        price_per_1k_input=1.0,
        price_per_1k_output=2.0,
    )
    body = {
        "model": "priced",
        "temperature": 0.5,  # not cached: every request goes upstream
        "messages": [{"role": "user", "content": "Summarise the refund policy in one line."}],
    }
    async with (
        make_service(tmp_path, models=[priced]) as service,
        running_gateway(service) as url,
    ):
        headers = {"Authorization": f"Bearer {API_KEY}"}
        usage = {"in": 0, "out": 0}
        async with aiohttp.ClientSession(url, headers=headers) as http:
            for _ in range(2):
                async with http.post("/v1/chat/completions", json=body) as response:
                    answer = await response.json()
                    usage["in"] += answer["usage"]["prompt_tokens"]
                    usage["out"] += answer["usage"]["completion_tokens"]
            run = {"input": {"name": "x"}}
            async with http.post("/v1/workflows/greet/runs", json=run) as response:
                assert response.status in (200, 201, 202)
            async with http.get("/metrics") as response:
                samples = parse(await response.text())
    tokens = "surgeflow_model_tokens_total"
    assert samples[(tokens, (("direction", "in"), ("model", "priced")))] == usage["in"] > 0
    assert samples[(tokens, (("direction", "out"), ("model", "priced")))] == usage["out"] > 0
    cost = samples[("surgeflow_model_cost_estimated_total", (("model", "priced"),))]
    assert cost == pytest.approx((usage["in"] * 1.0 + usage["out"] * 2.0) / 1000)
    for gauge in ("ready", "leased", "dead", "oldest_ready_age_seconds"):
        assert samples[(f"surgeflow_queue_{gauge}", ())] >= 0
