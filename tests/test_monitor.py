"""The monitor's samples and points, and figures shared by several processes."""

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import msgspec
import pytest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric

from surgeflow.config import ServerSettings, load_settings
from surgeflow.metrics import PEER_STALE_S, PeerFigures, SharedFigures, merge_families
from surgeflow.server import running_gateway
from surgeflow.service import Service
from tests.gateway.conftest import API_KEY, make_service
from tests.test_metrics import parse

CHAT = {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}], "temperature": 1}


def families(requests: float, in_flight: float, ready: float) -> list[Metric]:
    counter = CounterMetricFamily("surgeflow_http_requests", "r", labels=["route"])
    counter.add_metric(["/v1/chat/completions"], requests)
    histogram = HistogramMetricFamily(
        "surgeflow_http_request_duration_seconds", "d", labels=["route"]
    )
    histogram.add_metric(["/v1/chat/completions"], [("0.1", requests), ("+Inf", requests)], 1.0)
    return [
        counter,
        histogram,
        GaugeMetricFamily("surgeflow_http_requests_in_flight", "f", value=in_flight),
        GaugeMetricFamily("surgeflow_queue_ready", "q", value=ready),
    ]


def peer(metrics: list[Metric], *, written_at: float) -> PeerFigures:
    return PeerFigures(
        families=[
            (f.name, f.type, f.documentation, [(s.name, s.labels, s.value) for s in f.samples])
            for f in metrics
        ],
        keys={"key_a": 3},
        written_at=written_at,
    )


def values(metrics: list[Metric]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in metrics for s in f.samples}


def test_counters_and_histograms_add_up_and_shared_gauges_take_the_largest() -> None:
    now = time.time()
    merged = values(
        merge_families(
            families(10, in_flight=2, ready=7),
            [(peer(families(5, in_flight=3, ready=7), written_at=now), True)],
        )
    )
    route = (("route", "/v1/chat/completions"),)
    assert merged[("surgeflow_http_requests_total", route)] == 15
    assert merged[("surgeflow_http_request_duration_seconds_count", route)] == 15
    assert merged[("surgeflow_http_request_duration_seconds_sum", route)] == 2.0
    assert merged[("surgeflow_http_requests_in_flight", ())] == 5  # each process's own: add
    assert merged[("surgeflow_queue_ready", ())] == 7  # one queue, read by both: not 14


def test_a_dead_peer_still_counts_but_its_gauges_do_not() -> None:
    long_ago = time.time() - 10 * PEER_STALE_S
    merged = values(
        merge_families(
            families(10, in_flight=2, ready=7),
            [(peer(families(5, in_flight=3, ready=9), written_at=long_ago), False)],
        )
    )
    assert merged[("surgeflow_http_requests_total", (("route", "/v1/chat/completions"),))] == 15
    assert merged[("surgeflow_http_requests_in_flight", ())] == 2
    assert merged[("surgeflow_queue_ready", ())] == 7


def test_a_process_publishes_atomically_and_reads_only_the_others(tmp_path: Path) -> None:
    one, two = SharedFigures(tmp_path), SharedFigures(tmp_path)
    one.publish(families(1, 0, 0), {"key_a": 1})
    two.publish(families(2, 0, 0), {})
    (tmp_path / "garbage.json").write_text("{half a file")  # skipped, not fatal
    [(figures, alive)] = one.peers()
    assert alive
    assert figures.pid == os.getpid()
    assert msgspec.json.decode((tmp_path / one.name).read_bytes())["keys"] == {"key_a": 1}
    assert not list(tmp_path.glob(".*.tmp"))
    two.forget()
    assert one.peers() == []


async def test_the_monitor_turns_traffic_into_points(tmp_path: Path) -> None:
    async with make_service(tmp_path) as service, running_gateway(service) as url:
        await service.monitor.aclose()  # ticked by hand below
        await service.monitor.tick()
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with aiohttp.ClientSession(url, headers=headers) as http:

            async def chat() -> int:
                async with http.post("/v1/chat/completions", json=CHAT) as response:
                    return response.status

            assert await asyncio.gather(*(chat() for _ in range(20))) == [200] * 20
            async with http.get("/metrics") as response:  # not traffic: left out
                assert response.status == 200
        await asyncio.sleep(0.2)
        await service.monitor.tick()
        point = service.monitor.points[-1]
        latest = service.monitor.latest
    assert latest is not None
    assert latest.requests == {"/v1/chat/completions": 20}
    assert latest.keys != {}  # counted per key, never as a metric label
    assert point.rps > 0
    assert point.error_ratio == 0
    assert point.p50_ms is not None
    assert point.p99_ms is not None
    assert 0 < point.p50_ms <= point.p99_ms < 5000


async def test_two_services_sharing_a_directory_report_each_others_traffic(
    tmp_path: Path,
) -> None:
    shared = str(tmp_path / "figures")
    server = ServerSettings(metrics_dir=shared)
    one_dir, two_dir = tmp_path / "one", tmp_path / "two"
    one_dir.mkdir()
    two_dir.mkdir()
    async with (
        make_service(one_dir, server=server) as one,
        make_service(two_dir, server=server) as two,
        running_gateway(one) as one_url,
        running_gateway(two) as two_url,
    ):
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            for url, count in ((one_url, 3), (two_url, 5)):
                for _ in range(count):
                    async with http.post(f"{url}/v1/chat/completions", json=CHAT) as response:
                        assert response.status == 200
            await two.monitor.tick()  # publishes two's figures now
            async with http.get(f"{one_url}/metrics") as response:
                samples = parse(await response.text())
    chat = (("method", "POST"), ("route", "/v1/chat/completions"), ("status", "200"))
    assert samples[("surgeflow_http_requests_total", chat)] == 8


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def two_gateways(tmp_path: Path) -> Iterator[list[str]]:
    """Two `surgeflow serve` processes on one store and one metrics directory (their output in
    ``gateway-<port>.log``, for the failure message if one does not come up)."""
    ports = [_free_port()]
    while len(ports) < 2:
        if (port := _free_port()) not in ports:
            ports.append(port)
    env = {
        **os.environ,
        "SURGEFLOW_STORE__URL": f"sqlite:///{tmp_path / 'shared.db'}",
        "SURGEFLOW_SERVER__METRICS_DIR": str(tmp_path / "figures"),
        "SURGEFLOW_API_KEYS": API_KEY,
        "SURGEFLOW_LOG__ACCESS": "false",
    }
    logs = [(tmp_path / f"gateway-{port}.log").open("wb") for port in ports]
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "surgeflow", "serve", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        for port, log in zip(ports, logs, strict=True)
    ]
    try:
        yield [f"http://127.0.0.1:{port}" for port in ports]
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=15)
        for log in logs:
            log.close()


async def test_metrics_of_two_gateway_processes_add_up_on_either(
    two_gateways: list[str], tmp_path: Path
) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        for url in two_gateways:  # wait until both answer (a loaded machine starts them slowly)
            for _ in range(600):
                try:
                    async with http.get(f"{url}/healthz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
            else:
                log = tmp_path / f"gateway-{url.rsplit(':', 1)[1]}.log"
                pytest.fail(f"{url} did not come up in 30 s:\n{log.read_text(errors='replace')}")
        for url, count in zip(two_gateways, (4, 6), strict=True):
            for _ in range(count):
                async with http.post(f"{url}/v1/chat/completions", json=CHAT) as response:
                    assert response.status == 200
        await asyncio.sleep(2.5)  # each process publishes its figures every second
        totals = []
        for url in two_gateways:
            async with http.get(f"{url}/metrics") as response:
                samples = parse(await response.text())
            chat = (("method", "POST"), ("route", "/v1/chat/completions"), ("status", "200"))
            totals.append(samples[("surgeflow_http_requests_total", chat)])
            async with http.get(f"{url}/dashboard/data") as response:
                data = await response.json()
            assert data["totals"]["requests"] == 10
    assert totals == [10, 10]


@pytest.fixture
def worker_process(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A `surgeflow worker` process; the settings a gateway needs to share its store and
    its metrics directory."""
    shared = {
        "SURGEFLOW_STORE__URL": f"sqlite:///{tmp_path / 'shared.db'}",
        "SURGEFLOW_SERVER__METRICS_DIR": str(tmp_path / "figures"),
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "surgeflow", "worker"],
        cwd=tmp_path,
        env={**os.environ, **shared, "SURGEFLOW_WORKER__POLL_INTERVAL_S": "0.05"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield shared
    finally:
        worker.terminate()
        worker.wait(timeout=15)


async def test_runs_a_worker_process_finished_show_on_the_gateway(
    worker_process: dict[str, str],
) -> None:
    """The gateway runs no worker; a `surgeflow worker` process runs the runs, and the
    gateway's /metrics counts them through the shared directory."""
    settings = load_settings(env={**worker_process, "SURGEFLOW_WORKER__EMBEDDED": "false"})
    async with (
        Service(settings, api_keys=[API_KEY]) as service,
        running_gateway(service) as url,
    ):
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with aiohttp.ClientSession(url, headers=headers) as http:
            run = {"input": {"user_id": "u01", "limit": 3}}
            async with http.post("/v1/workflows/recommendation/runs", json=run) as response:
                run_id = (await response.json())["id"]
            finished = "surgeflow_runs_finished_total"
            labels = (("status", "succeeded"), ("workflow", "recommendation"))
            samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
            for _ in range(300):  # the run, then the worker's next publication
                await asyncio.sleep(0.05)
                async with http.get("/metrics") as response:
                    samples = parse(await response.text())
                if samples.get((finished, labels)):
                    break
            async with http.get(f"/v1/runs/{run_id}") as response:
                status = (await response.json())["status"]
    assert status == "succeeded"
    assert samples[(finished, labels)] == 1
    steps = [
        value
        for (name, labels_), value in samples.items()
        if name == "surgeflow_steps_total" and ("workflow", "recommendation") in labels_
    ]
    assert sum(steps) >= 5  # its steps, counted in the worker process
