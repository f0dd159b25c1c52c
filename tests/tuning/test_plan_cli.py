"""``surgeflow plan`` as a user runs it, and its live inputs: /metrics and bench results."""

import json
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from aiohttp import web
from typer.testing import CliRunner

from surgeflow.cli import app
from surgeflow.config import Settings
from surgeflow.tuning.sources import (
    observed_from_bench,
    read_metrics,
    scenario_from_observed,
)

runner = CliRunner()
FEW = "4000"  # requests per simulation


def test_plan_with_no_input_plans_the_embedded_default() -> None:
    result = runner.invoke(app, ["plan", "--rate", "100", "--requests", FEW])
    assert result.exit_code == 0, result.output
    assert "sim-small" in result.output
    assert "sim-a slots" in result.output
    assert "bottleneck" in result.output


def test_plan_a_scenario_file_with_an_slo_writes_json(tmp_path: Path) -> None:
    scenario = tmp_path / "small.yaml"
    scenario.write_text(
        "rate: 260\n"
        "model:\n"
        "  policy: least_connections\n"
        "  endpoints:\n"  # capacity 4 slots / 20 ms = 200 calls/s
        "    - name: e\n"
        "      max_concurrency: 4\n"
        "      max_queue: 8\n"
        "      service: {mean_ms: 20, dist: constant}\n"
        "slo: {p99_ms: 100}\n"
    )
    out = tmp_path / "plan.json"
    result = runner.invoke(app, ["plan", str(scenario), "--requests", "8000", "--json", str(out)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "missed at 260.0 req/s" in text
    assert "largest rate that meets it" in text
    assert "cheapest: max_concurrency per endpoint: 4 →" in text
    document = json.loads(out.read_text())
    assert document["prediction"]["rate_rps"] == 260
    assert document["slo"]["p99_ms"] == 100
    assert 150 < document["max_rate"]["rate_rps"] < 200
    best = document["cheapest_change"]["best"]
    assert best["prediction"]["p99_ms"] <= 100
    assert best["prediction"]["error_ratio"] <= 0.01


def test_plan_from_a_config(tmp_path: Path) -> None:
    config = tmp_path / "surgeflow.yaml"
    config.write_text(
        "models:\n"
        "  - name: chat\n"
        "    policy: round_robin\n"
        "    endpoints:\n"
        "      - {simulated: {ttft_ms: 20, tokens_per_s: 0}, max_concurrency: 4}\n"
    )
    result = runner.invoke(
        app,
        ["plan", "--config", str(config), "--model", "chat", "--rate", "150", "--requests", FEW],
    )
    assert result.exit_code == 0, result.output
    assert "4 slots" in result.output
    assert "round_robin" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["no/such.yaml"], "cannot read scenario"),
        (["--rate", "-3"], "--rate must be > 0"),
        (["--model", "nope"], "no model 'nope'"),
        (["--hit-ratio", "1.5"], "between 0 and 1"),
        (["--bench", "pyproject.toml"], "not JSON"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["plan", *args, "--requests", FEW])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert result.output.strip().startswith("error:")


def test_a_scenario_with_an_unknown_field_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {endpoints: [{service: {mean_ms: 5}}]}\nrate: 10\ngatway: {}\n")
    result = runner.invoke(app, ["plan", str(bad)])
    assert result.exit_code == 2
    assert "gatway" in result.output


def test_plot_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "curve.png"
    result = runner.invoke(
        app,
        ["plan", "--rate", "500", "--slo-p99-ms", "400", "--requests", FEW, "--plot", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- live inputs -------------------------------------------------------------------------------


def _metrics_text(requests: int, hits: int, gateway_s: float) -> str:
    return (
        "# HELP surgeflow_cache_requests Chat requests by how the cache answered them.\n"
        "# TYPE surgeflow_cache_requests counter\n"
        f'surgeflow_cache_requests_total{{status="hit"}} {hits}\n'
        f'surgeflow_cache_requests_total{{status="miss"}} {requests - hits}\n'
        "# HELP surgeflow_http_request_duration_seconds Time per request.\n"
        "# TYPE surgeflow_http_request_duration_seconds histogram\n"
        'surgeflow_http_request_duration_seconds_bucket{route="/v1/chat/completions",le="+Inf"} '
        f"{requests}\n"
        'surgeflow_http_request_duration_seconds_count{route="/v1/chat/completions"} '
        f"{requests}\n"
        'surgeflow_http_request_duration_seconds_sum{route="/v1/chat/completions"} '
        f"{gateway_s}\n"
        "# HELP surgeflow_endpoint_latency_ewma_seconds The endpoint's peak-EWMA latency.\n"
        "# TYPE surgeflow_endpoint_latency_ewma_seconds gauge\n"
        'surgeflow_endpoint_latency_ewma_seconds{model="sim-small",endpoint="sim-a"} 0.21\n'
        'surgeflow_endpoint_latency_ewma_seconds{model="sim-small",endpoint="sim-b"} 0.19\n'
    )


@pytest.fixture
async def metrics_url() -> AsyncIterator[str]:
    """A /metrics that has counted 40 more chat requests (10 of them hits) at every scrape."""
    scrapes = 0

    async def handle(request: web.Request) -> web.Response:
        nonlocal scrapes
        scrapes += 1
        return web.Response(text=_metrics_text(40 * scrapes, 10 * scrapes, 8.0 * scrapes))

    application = web.Application()
    application.router.add_get("/metrics", handle)
    web_runner = web.AppRunner(application)
    await web_runner.setup()
    site = web.TCPSite(web_runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/metrics"
    await web_runner.cleanup()


async def test_read_metrics_takes_two_scrapes(metrics_url: str) -> None:
    observed = await read_metrics(metrics_url, interval_s=0.4, model="sim-small")
    assert observed.offered_rps == pytest.approx(40 / 0.4, rel=0.25)
    assert observed.hit_ratio == pytest.approx(0.25)
    assert observed.gateway_mean_ms == pytest.approx(200.0)
    assert observed.endpoint_latency_ms == pytest.approx({"sim-a": 210.0, "sim-b": 190.0})
    scenario = scenario_from_observed(observed, settings=Settings())
    assert scenario.cache.hit_ratio == pytest.approx(0.25)
    assert scenario.rate == observed.offered_rps
    # Simulated endpoints keep their own latency model.
    assert scenario.model.endpoints[0].service.ttft_ms == 60


async def test_read_metrics_of_nothing_is_a_config_error() -> None:
    from surgeflow.errors import ConfigError

    with pytest.raises(ConfigError, match="no surgeflow metrics"):
        await read_metrics("http://127.0.0.1:9/metrics", interval_s=0.01)


def test_a_bench_result_gives_the_load_and_the_measurements() -> None:
    result = {
        "offered_rps": 120.0,
        "achieved_rps": 118.5,
        "error_ratio": 0.002,
        "latency": {"mean_ms": 210.0, "p50_ms": 200.0, "p90_ms": 260.0, "p99_ms": 320.0},
        "load": {"arrival": "poisson"},
        "target": {"model": "chat", "max_tokens": 32},
        "window": {"start_s": 2.0, "end_s": 12.0},
        "cache_statuses": {"hit": 300, "miss": 900},
        "server": {
            "cache_requests": {"hit": 300.0, "miss": 880.0, "bypass": 20.0},
            "endpoints": [
                {"model": "chat", "endpoint": "chat-0", "latency_ewma_s": 0.4},
                {"model": "other", "endpoint": "x", "latency_ewma_s": 9.0},
            ],
            "http_requests": {"/v1/chat/completions": {"count": 1200.0, "sum_s": 240.0}},
        },
    }
    observed = observed_from_bench(result)
    assert (observed.offered_rps, observed.achieved_rps, observed.p99_ms) == (120.0, 118.5, 320.0)
    assert observed.hit_ratio == pytest.approx(300 / 1200)  # bypassed requests call the model
    assert observed.endpoint_latency_ms == {"chat-0": 400.0}
    assert observed.arrivals == "poisson"
    # The config has one HTTP endpoint, whose latency it cannot know.
    scenario = scenario_from_observed(observed, settings=_http_settings())
    (group,) = scenario.model.endpoints
    assert group.service.mean_s == pytest.approx(0.4)  # measured, since the config cannot say
    assert scenario.rate == 120.0
    assert scenario.arrivals == "poisson"


def _http_settings() -> Settings:
    return msgspec.convert(
        {"models": [{"name": "chat", "endpoints": [{"url": "http://10.0.0.9/v1"}]}]}, Settings
    )
