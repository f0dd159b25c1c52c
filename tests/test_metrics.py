"""GET /metrics: the cache's counters, per tier, in Prometheus text, per service."""

import asyncio
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
    ServerSettings,
    Settings,
    SimulatedSettings,
    StoreSettings,
)
from surgeflow.metrics import DURATION_BUCKETS, Histogram, quantile, step_name
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
    states = {
        dict(labels)["state"]: value
        for (name, labels), value in samples.items()
        if name == "surgeflow_endpoint_state" and ("endpoint", "sim-a") in labels
    }
    assert states == {"healthy": 1.0, "ejected": 0.0, "probing": 0.0}


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


async def wait_for_run(http: aiohttp.ClientSession, run_id: str) -> dict[str, object]:
    for _ in range(400):
        async with http.get(f"/v1/runs/{run_id}") as response:
            run: dict[str, object] = await response.json()
        if run["status"] in ("succeeded", "failed", "dead", "cancelled"):
            return run
        await asyncio.sleep(0.01)
    raise AssertionError(f"run {run_id} did not finish: {run}")


async def test_runs_and_steps_are_counted_by_workflow_status_and_outcome(tmp_path: Path) -> None:
    async with make_service(tmp_path) as service, running_gateway(service) as url:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with aiohttp.ClientSession(url, headers=headers) as http:
            ids = []
            runs: list[tuple[str, dict[str, str]]] = [
                ("greet", {"name": "a"}),
                ("greet", {"name": "b"}),
                ("explode", {}),
            ]
            for workflow, payload in runs:
                async with http.post(
                    f"/v1/workflows/{workflow}/runs", json={"input": payload}
                ) as r:
                    ids.append((await r.json())["id"])
            statuses = [(await wait_for_run(http, run_id))["status"] for run_id in ids]
            async with http.post("/v1/workflows/greet/invoke", json={"input": {"name": "c"}}) as r:
                assert r.status == 200
            async with http.get("/metrics") as response:
                samples = parse(await response.text())
    assert statuses == ["succeeded", "succeeded", "failed"]
    assert samples[("surgeflow_runs_submitted_total", (("workflow", "greet"),))] == 2
    assert samples[("surgeflow_runs_submitted_total", (("workflow", "explode"),))] == 1
    finished = "surgeflow_runs_finished_total"
    assert samples[(finished, (("status", "succeeded"), ("workflow", "greet")))] == 2
    assert samples[(finished, (("status", "failed"), ("workflow", "explode")))] == 1
    wait = "surgeflow_run_queue_wait_seconds_count"
    assert samples[(wait, (("workflow", "greet"),))] == 2
    assert samples[("surgeflow_run_duration_seconds_count", (("workflow", "greet"),))] == 2
    steps = "surgeflow_steps_total"
    # Two durable runs and one inline invoke ran the greet step.
    greet = (("outcome", "succeeded"), ("step", "greet"), ("workflow", "greet"))
    assert samples[(steps, greet)] == 3
    assert samples[(steps, (("outcome", "failed"), ("step", "explode"), ("workflow", "explode")))]
    step_count = "surgeflow_step_duration_seconds_count"
    assert samples[(step_count, (("step", "greet"), ("workflow", "greet")))] == 3


async def test_admission_control_refuses_beyond_max_in_flight(tmp_path: Path) -> None:
    server = ServerSettings(invoke_timeout_s=5.0, max_in_flight=2)
    async with make_service(tmp_path, server=server) as service, running_gateway(service) as url:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with aiohttp.ClientSession(url, headers=headers) as http:

            async def nap() -> int:
                payload = {"input": {"seconds": 0.5}}
                async with http.post("/v1/workflows/nap/invoke", json=payload) as response:
                    return response.status

            sleepers = [asyncio.create_task(nap()) for _ in range(2)]
            await asyncio.sleep(0.2)  # both are in flight now
            async with http.post("/v1/workflows/nap/invoke", json={"input": {}}) as response:
                refused = (response.status, response.headers.get("Retry-After"))
                error = (await response.json())["error"]["type"]
            async with http.get("/metrics") as response:  # public routes are always admitted
                samples = parse(await response.text())
            assert await asyncio.gather(*sleepers) == [200, 200]
            async with http.post("/v1/workflows/greet/invoke", json={"input": {"name": "x"}}) as r:
                assert r.status == 200  # the slots are free again
    assert refused == (503, "1")
    assert error == "overloaded"
    assert samples[("surgeflow_http_admission_rejections_total", ())] == 1


def test_quantiles_interpolate_inside_the_bucket_like_histogram_quantile() -> None:
    histogram = Histogram()
    assert quantile(histogram.counts, 0.99) is None
    for _ in range(100):
        histogram.observe(0.15)  # bucket (0.1, 0.15]
    assert quantile(histogram.counts, 0.5) == pytest.approx(0.125)
    assert quantile(histogram.counts, 1.0) == pytest.approx(0.15)
    histogram.observe(1000.0)  # beyond the last bound: the last bound is all we know
    assert quantile(histogram.counts, 1.0) == DURATION_BUCKETS[-1]
    assert histogram.count == 101
    assert histogram.buckets()[-1] == ("+Inf", 101)


def test_step_labels_name_the_step_never_the_round_or_the_item() -> None:
    assert step_name("draft") == "draft"
    assert step_name("score[3]") == "score"
    assert step_name("agent#2/act") == "act"
    assert step_name("outer#0/inner[7]") == "inner"
