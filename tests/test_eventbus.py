"""Run-event notices across processes over a real, private Redis: a follower on one gateway
hears of events another process wrote at once, and a Redis restart loses nothing but time."""

import asyncio
import re
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from surgeflow.config import EventSettings, Settings, StoreSettings, WorkerSettings
from surgeflow.eventbus import RedisEventBus
from surgeflow.events import EventHub
from surgeflow.server import running_gateway
from surgeflow.service import Service
from tests.gateway.conftest import API_KEY, TEST_WORKFLOWS
from tests.services import RedisServer


async def wait_until(condition: object, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


@pytest.fixture
async def buses(redis_server: RedisServer) -> AsyncIterator[tuple[RedisEventBus, RedisEventBus]]:
    one, two = (
        RedisEventBus(redis_server.url, EventHub()),
        RedisEventBus(redis_server.url, EventHub()),
    )
    await one.start()
    await two.start()
    await wait_until(lambda: one.connected and two.connected)
    try:
        yield one, two
    finally:
        await one.aclose()
        await two.aclose()


async def test_a_notice_wakes_followers_in_the_other_process(
    buses: tuple[RedisEventBus, RedisEventBus],
) -> None:
    one, two = buses
    here = one.hub.subscribe("run_1")
    there = two.hub.subscribe("run_1")
    elsewhere = two.hub.subscribe("run_2")
    one.hub.notify("run_1")
    assert here.done()  # at once, locally
    await asyncio.wait_for(there, 2)
    assert not elsewhere.done()  # only that run's followers
    await wait_until(lambda: two.received == 1)
    assert one.received == 0  # its own notice is not delivered back to it


async def test_a_redis_restart_loses_nothing_but_time(
    redis_server: RedisServer, buses: tuple[RedisEventBus, RedisEventBus]
) -> None:
    one, two = buses
    redis_server.stop()
    one.hub.notify("lost")  # best effort: nobody hears it, nothing fails
    await wait_until(lambda: not two.connected, timeout_s=15)
    redis_server.start()
    await wait_until(lambda: one.connected and two.connected, timeout_s=15)
    there = two.hub.subscribe("run_3")
    one.hub.notify("run_3")
    await asyncio.wait_for(there, 3)
    assert one.failures + two.failures >= 1


def settings(tmp_path: Path, redis_url: str | None) -> Settings:
    return Settings(
        store=StoreSettings(url=f"sqlite:///{tmp_path / 'events.db'}"),
        worker=WorkerSettings(poll_interval_s=0.02),
        events=EventSettings(url=redis_url),
    )


async def follow_latencies(
    tmp_path: Path, redis_url: str | None, runs: int
) -> tuple[list[float], str]:
    """Seconds from submitting a run on a gateway to its terminal event reaching a follower
    there, while a worker with its own event hub (another process, as far as events go)
    executes it; and the gateway's metrics afterwards."""
    config = settings(tmp_path, redis_url)
    gateway = Service(config, workflows=TEST_WORKFLOWS, api_keys=[API_KEY], embedded_worker=False)
    worker = Service(config, workflows=TEST_WORKFLOWS, embedded_worker=True)
    latencies = []
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with (
        gateway,
        worker,
        running_gateway(gateway) as url,
        aiohttp.ClientSession(url, headers=headers) as http,
    ):
        if gateway.event_bus is not None:
            await wait_until(lambda: gateway.event_bus is not None and gateway.event_bus.connected)
        for i in range(runs):
            started = time.monotonic()
            body = {"input": {"name": f"n{i}"}}
            async with http.post("/v1/workflows/greet/runs", json=body) as resp:
                run_id = (await resp.json())["id"]
            async with http.get(f"/v1/runs/{run_id}/events") as resp:
                text = await resp.text()
            assert "event: run.succeeded" in text
            latencies.append(time.monotonic() - started)
        async with http.get("/metrics") as resp:
            metrics = await resp.text()
    return latencies, metrics


async def test_a_follower_on_one_gateway_hears_another_process_at_once(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    with_bus, metrics = await follow_latencies(tmp_path, redis_server.url, runs=8)
    # Without notices the follower re-reads the store every second: ~1 s each here.
    assert statistics.median(with_bus) < 0.3, with_bus
    received = re.search(r'surgeflow_event_notices_total\{direction="received"\} (\S+)', metrics)
    assert received is not None
    assert float(received.group(1)) >= 8  # at least each run's end, heard from the worker
