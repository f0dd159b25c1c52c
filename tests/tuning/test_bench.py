"""``surgeflow bench`` against real servers on loopback: a stub chat server that records what it
saw, and the surgeflow gateway itself."""

import asyncio
import itertools
import statistics
import time
from pathlib import Path

import pytest

from surgeflow.errors import ConfigError
from surgeflow.server import running_gateway
from surgeflow.tuning.bench import Bench, run_bench
from surgeflow.tuning.results import LoadSettings
from surgeflow.tuning.targets import TargetSettings, check_url
from tests.gateway.conftest import API_KEY, make_service

from .conftest import Stub


def chat(url: str) -> TargetSettings:
    return TargetSettings(kind="chat", url=url, model="stub")


async def test_constant_open_loop_sends_rate_times_duration_at_even_gaps(stub: Stub) -> None:
    result = await run_bench(chat(stub.url), LoadSettings(rate_rps=50, duration_s=2.0))
    assert len(stub.arrivals) == pytest.approx(100, abs=1)
    assert result.counts.sent == len(stub.arrivals)
    assert result.counts.ok == result.counts.sent
    assert result.counts.dropped == 0
    assert result.offered_rps == pytest.approx(50, abs=1)
    assert result.achieved_rps == pytest.approx(50, abs=1)
    gaps = [b - a for a, b in itertools.pairwise(stub.arrivals)]
    assert statistics.median(gaps) == pytest.approx(0.020, abs=0.002)
    assert stub.arrivals[-1] - stub.arrivals[0] == pytest.approx(1.98, abs=0.05)
    assert [s.offered for s in result.timeline[:2]] == [50, 50]


async def test_poisson_open_loop_sends_at_the_mean_rate(stub: Stub) -> None:
    load = LoadSettings(rate_rps=200, arrival="poisson", duration_s=2.0, seed=3)
    result = await run_bench(chat(stub.url), load)
    assert result.counts.sent == pytest.approx(400, rel=0.15)
    assert result.counts.ok == result.counts.sent


async def test_open_loop_is_not_limited_by_a_connection_pool(stub: Stub) -> None:
    stub.delay_s = 1.5
    bench = Bench(chat(stub.url), LoadSettings(rate_rps=600, duration_s=1.0, timeout_s=5))
    result = await bench.run()
    # Every request went out when due, on its own connection: ~600 were at the server at once.
    assert stub.max_concurrent >= 590
    assert bench.max_in_flight_seen >= 590
    assert result.counts.ok == result.counts.sent == pytest.approx(600, abs=1)
    assert result.latency.p50_ms == pytest.approx(1500, rel=0.1)


async def test_beyond_max_in_flight_requests_are_dropped_and_counted(stub: Stub) -> None:
    stub.delay_s = 1.0
    load = LoadSettings(rate_rps=100, duration_s=1.0, max_in_flight=10, timeout_s=5)
    result = await run_bench(chat(stub.url), load)
    assert result.counts.sent == 10
    assert result.counts.dropped == 90
    assert result.counts.offered == 100
    assert result.counts.ok == 10
    assert len(stub.arrivals) == 10
    assert result.timeline[0].dropped == 90


async def test_closed_loop_keeps_exactly_n_in_flight(stub: Stub) -> None:
    stub.delay_s = 0.05
    load = LoadSettings(mode="closed", concurrency=4, duration_s=1.5)
    result = await run_bench(chat(stub.url), load)
    assert stub.max_concurrent == 4
    # Second 0 is closed by the ticker (4 in flight) or by the first reply after it, counted
    # when its user has not sent the next request yet (3): whichever comes first.
    assert result.timeline[0].in_flight in (3, 4)
    # ~1.5 s / 50 ms per request × 4 users
    assert result.counts.ok == pytest.approx(120, rel=0.15)
    # A closed loop has no schedule: a request is meant to go when the last one returned.
    assert result.latency.p50_ms == result.service_latency.p50_ms


async def test_closed_loop_think_time_spaces_each_users_requests(stub: Stub) -> None:
    load = LoadSettings(mode="closed", concurrency=2, think_ms=100, duration_s=1.0)
    result = await run_bench(chat(stub.url), load)
    assert result.counts.ok == pytest.approx(20, abs=3)


async def test_a_stall_shows_in_latency_but_not_in_service_latency(stub: Stub) -> None:
    """Coordinated omission. The 100th request blocks the event loop for 1 s; the load generator
    shares it, so nothing is sent during the stall. A generator that measured from the actual
    send would report a few ms for the ~200 requests that were due then; measured from the
    intended send time, they waited up to 1 s, and p90 and p99 say so."""
    stub.stall_at = 100
    result = await run_bench(chat(stub.url), LoadSettings(rate_rps=200, duration_s=3.0))
    assert result.counts.ok == pytest.approx(600, abs=1)
    assert result.latency.p99_ms is not None
    assert result.service_latency.p99_ms is not None
    assert result.latency.p99_ms >= 900
    assert result.latency.p90_ms is not None
    assert result.latency.p90_ms >= 500  # ~200 of 600 requests were held up by the stall
    # Once sent, they were served in a few ms (more on a busy machine: ~200 went out at once);
    # only the requests already at the server when it stalled took ~1 s.
    assert result.service_latency.p50_ms is not None
    assert result.service_latency.p50_ms < 20
    assert result.service_latency.p99_ms < result.latency.p99_ms / 3
    assert result.service_latency.max_ms == pytest.approx(1000, rel=0.1)
    # The generator still sent all the requests the stall held up, right after it.
    assert len(stub.arrivals) == pytest.approx(600, abs=1)


async def test_errors_are_counted_by_kind_not_raised(stub: Stub) -> None:
    stub.status = lambda n: 503 if n % 3 == 0 else 429 if n % 5 == 0 else 200
    result = await run_bench(chat(stub.url), LoadSettings(rate_rps=100, duration_s=0.6))
    assert result.counts.sent == 60
    assert result.counts.errors == {"status_503": 20, "status_429": 8}
    assert result.counts.ok == 32
    assert result.error_ratio == pytest.approx(28 / 60)
    assert result.latency.count == 32  # latency is of the ok responses


async def test_timeouts_are_counted(stub: Stub) -> None:
    stub.delay_s = 2.0
    load = LoadSettings(rate_rps=20, duration_s=0.5, timeout_s=0.2)
    started = time.perf_counter()
    result = await run_bench(chat(stub.url), load)
    assert result.counts.errors == {"timeout": 10}
    assert time.perf_counter() - started < 1.5


async def test_connection_errors_are_counted() -> None:
    load = LoadSettings(rate_rps=20, duration_s=0.5)
    result = await run_bench(chat("http://127.0.0.1:9"), load)  # nobody listens on discard
    assert result.counts.errors == {"connection": 10}
    assert result.server is None


async def test_warmup_is_left_out_of_the_results(stub: Stub) -> None:
    result = await run_bench(chat(stub.url), LoadSettings(rate_rps=50, warmup_s=1, duration_s=1))
    assert result.warmup_sent == 50
    assert result.counts.sent == 50
    assert result.latency.count == 50
    assert result.window.start_s == 1.0
    assert result.window.duration_s == pytest.approx(1.0)
    assert len(stub.arrivals) == 100


async def test_a_request_cap_ends_the_run_early(stub: Stub) -> None:
    started = time.perf_counter()
    result = await run_bench(chat(stub.url), LoadSettings(rate_rps=100, duration_s=5, requests=30))
    assert time.perf_counter() - started < 1.5
    assert result.counts.sent == 30
    assert result.window.end_s == pytest.approx(0.3, abs=0.05)
    assert result.achieved_rps == pytest.approx(100, rel=0.15)


async def test_stop_ends_the_load_and_still_gives_a_result(stub: Stub) -> None:
    bench = Bench(chat(stub.url), LoadSettings(rate_rps=100, duration_s=10))
    running = asyncio.create_task(bench.run())
    await asyncio.sleep(0.5)
    bench.stop()
    result = await asyncio.wait_for(running, 2.0)
    # Stopped after ~0.5 s of its 10 (less if the machine was slow to start it), and every
    # request due until then was sent.
    assert 0.2 < result.window.end_s <= 0.6
    assert result.counts.sent == pytest.approx(100 * result.window.end_s, abs=5)
    assert bench.in_flight == 0


async def test_cancelling_a_run_leaves_nothing_running(stub: Stub) -> None:
    stub.delay_s = 5.0
    bench = Bench(chat(stub.url), LoadSettings(rate_rps=100, duration_s=10, timeout_s=10))
    running = asyncio.create_task(bench.run())
    await asyncio.sleep(0.3)
    assert bench.in_flight > 0
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert bench.in_flight == 0
    left = [
        task
        for task in asyncio.all_tasks()
        if getattr(task.get_coro(), "__qualname__", "").startswith("Bench.")
    ]
    assert left == []
    assert "state=done" in repr(bench)


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8000", "http://127.3.4.5/v1", "http://[::1]:8000", "http://localhost:1"],
)
def test_loopback_urls_are_accepted(url: str) -> None:
    assert check_url(url).startswith("http")
    assert not check_url(url).endswith("/v1")


@pytest.mark.parametrize("url", ["http://example.com/v1", "http://10.0.0.5:8000", "ftp://x"])
def test_other_hosts_are_refused_unless_named(url: str) -> None:
    with pytest.raises(ConfigError, match=r"--allow-remote|http\(s\) URL"):
        Bench(chat(url), LoadSettings(rate_rps=1, duration_s=1))


def test_a_named_remote_host_is_allowed() -> None:
    url = "https://api.example.com/v1"
    with pytest.raises(ConfigError, match="someone else's server"):
        check_url(url)
    assert check_url(url, ["API.example.com"]) == "https://api.example.com"


@pytest.mark.parametrize(
    ("load", "message"),
    [
        (LoadSettings(rate_rps=0), "> 0"),
        (LoadSettings(rate_rps=10, ramp_rps=(1, 2)), "exactly one"),
        (LoadSettings(rate_rps=10, duration_s=7200), "3600"),
        (LoadSettings(mode="closed", concurrency=0), "concurrency"),
        (LoadSettings(rate_rps=10, timeout_s=0), "timeout"),
    ],
)
def test_bad_load_settings_are_refused(load: LoadSettings, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Bench(chat("http://127.0.0.1:1"), load)


# Against the surgeflow gateway itself.


async def test_runs_target_waits_for_the_terminal_event(tmp_path: Path) -> None:
    async with make_service(tmp_path) as service, running_gateway(service) as url:
        naps = TargetSettings(kind="runs", url=url, workflow="nap", input={"seconds": 0.3})
        load = LoadSettings(rate_rps=10, duration_s=0.5, timeout_s=5)
        result = await run_bench(naps, load, api_key=API_KEY)
        failing = TargetSettings(kind="runs", url=url, workflow="explode")
        failed = await run_bench(failing, load, api_key=API_KEY)
    assert result.counts.ok == 5
    assert result.latency.min_ms is not None
    assert result.latency.min_ms >= 300  # submit → run.succeeded, not just the 202
    assert failed.counts.errors == {"run.failed": 5}
    assert result.server is not None
    assert result.server.run_duration["nap"].count == 5
    assert result.server.queue_wait["nap"].count == 5


async def test_invoke_target_and_unauthorized_requests(tmp_path: Path) -> None:
    async with make_service(tmp_path) as service, running_gateway(service) as url:
        greet = TargetSettings(kind="invoke", url=url, workflow="greet", input={"name": "x"})
        load = LoadSettings(rate_rps=20, duration_s=0.5)
        result = await run_bench(greet, load, api_key=API_KEY)
        unauthorized = await run_bench(greet, load, api_key="sf-wrong")
    assert result.counts.ok == 10
    assert unauthorized.counts.errors == {"status_401": 10}
    assert result.server is not None
    route = result.server.http_requests["/v1/workflows/{name}/invoke"]
    assert route.count == 10
    assert route.mean_s is not None


async def test_chat_hit_ratio_reaches_the_gateway_cache(tmp_path: Path) -> None:
    async with make_service(tmp_path) as service, running_gateway(service) as url:
        target = TargetSettings(kind="chat", url=f"{url}/v1", model="sim-small", hit_ratio=0.5)
        load = LoadSettings(rate_rps=40, duration_s=1.0, warmup_s=0.5, seed=1)
        result = await run_bench(target, load, api_key=API_KEY)
    assert result.counts.ok == 40
    statuses = result.cache_statuses
    assert statuses.get("hit", 0) > 5
    assert statuses.get("bypass", 0) > 5  # the unique prompts sample: no cache
    server = result.server
    assert server is not None
    assert server.cache_requests["hit"] >= statuses["hit"]  # the warm-up's hits too
    assert server.cache_hit_ratio is not None
    assert server.cache_hit_ratio > 0.5
    assert {e.model for e in server.endpoints} == {"sim-small"}
    assert sum(e.successes for e in server.endpoints) > 0
    assert all(e.latency_ewma_s is not None for e in server.endpoints)


async def test_chat_prompts_are_cycled_at_temperature_zero(tmp_path: Path) -> None:
    async with make_service(tmp_path) as service, running_gateway(service) as url:
        target = TargetSettings(kind="chat", url=url, model="sim-small", prompts=3)
        result = await run_bench(target, LoadSettings(rate_rps=30, duration_s=1.0), api_key=API_KEY)
    # The first three requests are misses; the rest hit (or coalesce onto a miss in flight).
    assert result.cache_statuses.get("miss", 0) >= 3
    assert result.cache_statuses.get("hit", 0) >= 20
    assert "bypass" not in result.cache_statuses
