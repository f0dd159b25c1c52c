"""GET /dashboard and /dashboard/data over HTTP, without a browser (see test_dashboard_browser)."""

import re
from pathlib import Path

import aiohttp

from surgeflow.config import ServerSettings
from surgeflow.server import running_gateway
from tests.gateway.conftest import API_KEY, make_service

CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline';"
    " connect-src 'self'; img-src 'self' data:"
)
SERIES = {
    "t",
    "rps",
    "error_ratio",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "cache_hit_ratio",
    "in_flight",
    "queue_ready",
    "queue_oldest_age_s",
}
TOTALS = {
    "requests",
    "errors",
    "cache_hits",
    "cache_lookups",
    "tokens_in",
    "tokens_out",
    "cost",
    "queue_ready",
    "queue_leased",
    "queue_dead",
}
ENDPOINT = {
    "model",
    "endpoint",
    "state",
    "in_flight",
    "waiting",
    "latency_ms",
    "successes",
    "failures",
}


async def test_the_page_is_one_self_contained_file_under_a_strict_policy(tmp_path: Path) -> None:
    async with (
        make_service(tmp_path) as service,
        running_gateway(service) as url,
        aiohttp.ClientSession(url) as http,  # no key: the page is public, like /metrics
        http.get("/dashboard") as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/html; charset=utf-8"
        assert response.headers["Content-Security-Policy"] == CSP
        body = await response.text()
    assert len(body.encode()) < 30 * 1024
    assert "http://" not in body
    assert "https://" not in body
    assert not re.search(r"\bsrc\s*=", body)  # no script, image or frame from elsewhere
    assert all(href.startswith("data:") for href in re.findall(r'href="([^"]*)"', body))
    assert "fetch(" in body
    assert "/data" in body
    for element in ('id="rps"', 'id="p99"', 'id="requests-total"', 'id="updated-at"'):
        assert element in body
    assert 'id="alerts"' in body
    assert 'aria-live="polite"' in body


async def test_the_data_has_the_documented_shape_and_leaves_its_own_polls_out(
    tmp_path: Path,
) -> None:
    body = {
        "model": "sim-small",
        "temperature": 0,
        "max_tokens": 8,
        "messages": [{"role": "user", "content": "How do refunds work?"}],
    }
    async with make_service(tmp_path) as service, running_gateway(service) as url:
        await service.monitor.tick()
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with aiohttp.ClientSession(url, headers=headers) as http:
            for _ in range(3):
                async with http.post("/v1/chat/completions", json=body) as response:
                    assert response.status == 200
        await service.monitor.tick()
        answers = []
        async with aiohttp.ClientSession(url) as http:
            for _ in range(3):  # the dashboard's own polls are not traffic
                async with http.get("/dashboard/data") as response:
                    assert response.status == 200
                    assert response.headers["Content-Type"].startswith("application/json")
                    answers.append(await response.json())
                await service.monitor.tick()
    data = answers[-1]
    assert set(data) == {
        "now",
        "interval_s",
        "uptime_s",
        "series",
        "totals",
        "endpoints",
        "alerts",
        "rules",
    }
    assert set(data["series"]) == SERIES
    lengths = {len(values) for values in data["series"].values()}
    assert len(lengths) == 1
    assert lengths.pop() >= 2
    assert set(data["totals"]) == TOTALS
    assert data["totals"]["requests"] == 3
    assert data["totals"]["cache_lookups"] == 3
    assert data["totals"]["cache_hits"] == 2
    assert sum(data["series"]["rps"]) > 0
    endpoints = {(e["model"], e["endpoint"]): e for e in data["endpoints"]}
    assert set(endpoints) == {("sim-small", "sim-a"), ("sim-small", "sim-b")}
    assert all(set(e) == ENDPOINT and e["state"] == "healthy" for e in endpoints.values())
    assert sum(e["successes"] for e in endpoints.values()) == 1  # the other two were hits
    assert data["alerts"] == []
    assert data["rules"] == 6
    assert data["interval_s"] == 1.0
    assert data["uptime_s"] > 0


async def test_turning_the_dashboard_off_removes_both_routes(tmp_path: Path) -> None:
    server = ServerSettings(dashboard=False)
    async with (
        make_service(tmp_path, server=server) as service,
        running_gateway(service) as url,
        aiohttp.ClientSession(url) as http,
    ):
        for path in ("/dashboard", "/dashboard/data"):
            async with http.get(path) as response:
                assert response.status == 404, path
        async with http.get("/metrics") as response:
            assert response.status == 200  # only the dashboard is off
