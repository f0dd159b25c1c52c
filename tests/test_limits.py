"""Rate limits: token buckets per API key and for the whole service, in one process and shared
by several gateways through a real, private Redis (which may fail)."""

import asyncio
from pathlib import Path

import aiohttp
import pytest

from surgeflow.config import LimitSettings
from surgeflow.limits import Limiter
from surgeflow.server import running_gateway
from surgeflow.service import Service
from tests.gateway.conftest import API_KEY, TEST_WORKFLOWS, make_service
from tests.routing.clock import FakeClock
from tests.services import RedisServer


async def test_a_key_gets_its_burst_then_waits_for_the_refill() -> None:
    clock = FakeClock()
    limiter = Limiter(LimitSettings(key_rps=2, key_burst=3), clock=clock)
    assert [(await limiter.acquire("a")).allowed for _ in range(4)] == [True, True, True, False]
    refused = await limiter.acquire("a")
    assert refused.scope == "key"
    assert refused.retry_after_s == pytest.approx(0.5)  # one token at 2/s
    assert (await limiter.acquire("b")).allowed  # another key has its own bucket
    clock.advance(0.5)
    assert (await limiter.acquire("a")).allowed
    assert not (await limiter.acquire("a")).allowed
    assert limiter.refused == {"key": 3, "global": 0}


async def test_the_global_bucket_is_shared_by_every_key() -> None:
    clock = FakeClock()
    limiter = Limiter(LimitSettings(key_rps=100, global_rps=1, global_burst=2), clock=clock)
    assert (await limiter.acquire("a")).allowed
    assert (await limiter.acquire("b")).allowed
    refused = await limiter.acquire("c")
    assert not refused.allowed
    assert refused.scope == "global"
    assert refused.retry_after_s == pytest.approx(1.0)
    # A refusal takes no token from the key's bucket either.
    clock.advance(1.0)
    assert (await limiter.acquire("c")).allowed


async def test_the_gateway_answers_429_with_retry_after_per_key(tmp_path: Path) -> None:
    other = "sf-other-key"
    settings_service = make_service(tmp_path, limits=LimitSettings(key_rps=0.5, key_burst=2))
    service = Service(
        settings_service.settings, workflows=TEST_WORKFLOWS, api_keys=[API_KEY, other]
    )
    async with service, running_gateway(service) as url, aiohttp.ClientSession(url) as http:

        async def status(key: str) -> tuple[int, str | None]:
            headers = {"Authorization": f"Bearer {key}"}
            async with http.get("/v1/workflows", headers=headers) as resp:
                return resp.status, resp.headers.get("Retry-After")

        assert [(await status(API_KEY))[0] for _ in range(2)] == [200, 200]
        code, retry_after = await status(API_KEY)
        assert code == 429
        assert retry_after == "2"  # one token at 0.5/s
        assert (await status(other))[0] == 200  # the other key is not held back
        async with http.get("/healthz") as resp:  # public routes are never limited
            assert resp.status == 200
        async with http.get("/metrics") as resp:
            text = await resp.text()
        assert 'surgeflow_rate_limited_total{scope="key"} 1.0' in text


async def test_gateways_sharing_a_redis_enforce_one_limit(redis_server: RedisServer) -> None:
    settings = LimitSettings(key_rps=1, key_burst=5, global_rps=1000, url=redis_server.url)
    one, two = Limiter(settings), Limiter(settings)
    await one.start()
    await two.start()
    try:
        decisions = await asyncio.gather(
            *(limiter.acquire("k") for limiter in (one, two) * 5)  # 10 requests, 2 gateways
        )
        assert sum(d.allowed for d in decisions) == 5  # one burst between them, not two
        refused = [d for d in decisions if not d.allowed]
        assert all(d.scope == "key" and 0 < d.retry_after_s <= 1.0 for d in refused)
        assert one.fallbacks == two.fallbacks == 0
        assert await one.ping()
    finally:
        await one.aclose()
        await two.aclose()


async def test_a_dead_redis_degrades_to_per_process_limits(redis_server: RedisServer) -> None:
    limiter = Limiter(LimitSettings(key_rps=1, key_burst=2, url=redis_server.url, timeout_s=0.2))
    await limiter.start()
    try:
        assert (await limiter.acquire("k")).allowed
        redis_server.stop()
        started = asyncio.get_running_loop().time()
        decisions = [await limiter.acquire("k") for _ in range(3)]
        assert asyncio.get_running_loop().time() - started < 3  # bounded, never hanging
        # This process's own bucket decides: a burst of 2, then a refusal.
        assert [d.allowed for d in decisions] == [True, True, False]
        assert limiter.fallbacks == 3
        assert not await limiter.ping()
    finally:
        await limiter.aclose()
