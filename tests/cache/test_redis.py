"""The Redis tier against a real, private redis-server: shared hits, TTL, and degradation."""

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from surgeflow.cache import MemoryCache
from surgeflow.cache.base import pack_entry
from surgeflow.cache.redis import KEY_PREFIX, TAG_PREFIX, RedisCache
from surgeflow.cache.tiered import TieredCache
from surgeflow.config import EndpointSettings, ModelCacheSettings, ModelSettings
from surgeflow.models import ChatRequest, Message, ModelClient, SimulatedBackend
from tests.routing.clock import FakeClock
from tests.services import RedisServer


@pytest.fixture
async def shared(redis_server: RedisServer) -> AsyncIterator[RedisCache]:
    cache = RedisCache(redis_server.url, timeout_s=0.2)
    try:
        yield cache
    finally:
        await cache.aclose()


async def test_values_round_trip_and_expire(shared: RedisCache) -> None:
    await shared.set("a", b"answer", ttl_s=0.2)
    assert await shared.get("a") == b"answer"
    await asyncio.sleep(0.3)
    assert await shared.get("a") is None
    await shared.set("b", b"x")
    await shared.delete("b")
    assert await shared.get("b") is None


async def test_two_gateways_share_the_tier(redis_server: RedisServer) -> None:
    one = TieredCache(MemoryCache(), RedisCache(redis_server.url))
    two = TieredCache(MemoryCache(), RedisCache(redis_server.url))
    try:
        await one.set("k", b"from gateway one")
        assert await two.get("k") == b"from gateway one"  # a shared hit
        assert await two.local.get("k") == b"from gateway one"  # now also local
    finally:
        await one.aclose()
        await two.aclose()


async def test_oversized_entries_are_not_served(redis_server: RedisServer) -> None:
    small = RedisCache(redis_server.url, max_value_bytes=10)
    big = RedisCache(redis_server.url)
    try:
        await big.set("huge", b"x" * 100)
        assert await small.get("huge") is None
    finally:
        await small.aclose()
        await big.aclose()


async def test_a_dead_redis_is_bypassed_within_its_timeout(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    cache = TieredCache(MemoryCache(), RedisCache(redis_server.url, timeout_s=0.1))
    try:
        await cache.set("k", b"v")
        redis_server.stop()
        started = time.monotonic()
        assert await cache.shared.get("k") is None  # down: a miss, not an error
        await cache.set("other", b"w")  # the write to Redis is skipped
        assert await cache.get("other") == b"w"  # the local tier still works
        assert time.monotonic() - started < 2.0  # not a connect timeout of seconds
        assert isinstance(cache.shared, RedisCache)
        assert cache.shared.errors >= 2
        assert "bypassing the shared tier" in caplog.text
    finally:
        await cache.aclose()


async def test_a_redis_cache_url_gives_memory_in_front_of_redis(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    from surgeflow.config import CacheSettings, Settings, StoreSettings
    from surgeflow.service import Service

    settings = Settings(
        store=StoreSettings(url=f"sqlite:///{tmp_path / 's.db'}"),
        cache=CacheSettings(url=redis_server.url),
    )
    service = Service(settings, workflows={}, embedded_worker=False, api_keys=[])
    async with service:
        assert isinstance(service.cache, TieredCache)
        await service.cache.set("k", b"v")
        other = RedisCache(redis_server.url)
        try:
            assert await other.get("k") == b"v"
        finally:
            await other.aclose()


async def test_clear_by_prefix_escapes_glob_characters(shared: RedisCache) -> None:
    for key in ("chat:a:m:1", "chat:a:m:2", "chat:b:m:1", "chat:[x]*:m:1"):
        await shared.set(key, b"v")
    assert await shared.clear("chat:[x]*:") == 1  # the brackets and star are literal
    assert await shared.clear("chat:a:") == 2
    assert await shared.get("chat:b:m:1") == b"v"
    assert await shared.clear() == 1


async def test_tags_index_entries_in_redis_and_invalidate_them(shared: RedisCache) -> None:
    await shared.set("faq-1", b"1", tags=("faq",))
    await shared.set("faq-2", b"2", tags=("faq", "pricing-v2"))
    await shared.set("other", b"3", tags=("pricing-v2",))
    await shared.set("plain", b"4")
    assert await shared.invalidate_tag("faq") == 2
    assert await shared.get("faq-1") is None
    assert await shared.get("faq-2") is None
    assert await shared.get("other") == b"3"
    assert await shared.invalidate_tag("faq") == 0
    assert await shared.invalidate_tag("pricing-v2") == 1  # faq-2 was already gone
    assert await shared.get("plain") == b"4"
    assert await shared.delete("plain") is True
    assert await shared.delete("plain") is False


async def test_a_tag_lives_as_long_as_its_longest_entry_and_forgets_expired_ones(
    shared: RedisCache,
) -> None:
    raw = shared._redis
    await shared.set("long", b"1", ttl_s=60, tags=("t",))
    await shared.set("short", b"2", ttl_s=0.2, tags=("t",))
    tag_ttl_ms = await raw.pttl(TAG_PREFIX + "t")
    assert 50_000 < tag_ttl_ms <= 60_000  # the short entry did not shorten it
    await asyncio.sleep(0.3)
    await shared.set("later", b"3", ttl_s=60, tags=("t",))  # a write prunes expired members
    members = await raw.zrange(TAG_PREFIX + "t", 0, -1)
    assert sorted(members) == [f"{KEY_PREFIX}later".encode(), f"{KEY_PREFIX}long".encode()]
    assert await shared.invalidate_tag("t") == 2
    assert await raw.exists(TAG_PREFIX + "t") == 0


async def test_clearing_everything_drops_the_tag_index_too(shared: RedisCache) -> None:
    await shared.set("a", b"1", tags=("t",))
    await shared.set("b", b"2")
    assert await shared.clear() == 2  # entries, not index sets
    assert await shared._redis.exists(TAG_PREFIX + "t") == 0


async def test_a_local_copy_keeps_the_entrys_tags_and_remaining_life(
    redis_server: RedisServer,
) -> None:
    clock = FakeClock()
    local = MemoryCache(clock=clock)
    one = TieredCache(MemoryCache(), RedisCache(redis_server.url))
    two = TieredCache(local, RedisCache(redis_server.url))
    try:
        entry = pack_entry(b"answer", stored_at=time.time() - 50, ttl_s=60, tags=("faq",))
        await one.set("k", entry, ttl_s=60, tags=("faq",))
        assert await two.get("k") == entry  # a shared hit fills the local tier ...
        clock.advance(9)
        assert await local.get("k") == entry
        clock.advance(2)  # ... for the ~10 s the entry had left, not the tier's default
        assert await local.get("k") is None
        assert await two.get("k") == entry
        assert await two.invalidate_tag("faq") == 1  # both tiers: the local copy had the tag
        assert await two.get("k") is None
        assert await local.get("k") is None
        assert two.stats() == {
            "local_hits": 0,
            "shared_hits": 2,
            "misses": 1,
            "invalidations_received": 0,
            "subscriptions_lost": 0,
        }
    finally:
        await one.aclose()
        await two.aclose()


async def test_redis_counters_separate_timeouts_from_other_errors(
    redis_server: RedisServer,
) -> None:
    cache = RedisCache(redis_server.url, timeout_s=0.2)
    try:
        await cache.set("k", b"v", tags=("t",))
        await cache.get("k")
        await cache.get("missing")
        redis_server.pause()  # alive but not answering: a timeout
        try:
            assert await cache.get("k") is None
        finally:
            redis_server.resume()
        redis_server.stop()  # gone: refused at once, an error but no timeout
        assert await cache.get("k") is None
        assert cache.stats() == {"hits": 1, "misses": 1, "sets": 1, "errors": 2, "timeouts": 1}
    finally:
        await cache.aclose()


async def test_two_gateways_agree_on_an_answers_age_and_share_its_refresh(
    redis_server: RedisServer,
) -> None:
    clock = FakeClock()  # the wall clock of both "processes", and their memory tiers' clock
    settings = ModelSettings(
        name="m",
        endpoints=[EndpointSettings(name="sim", url="backend:sim")],
        cache=ModelCacheSettings(ttl_s=10, stale_s=30),
    )
    request = ChatRequest(model="m", temperature=0, messages=[Message(role="user", content="hi")])
    backends = [SimulatedBackend(name, ttft_ms=0, tokens_per_s=0) for name in ("a", "b")]
    # A client does not own its cache (the service does): the test closes them.
    caches = [
        TieredCache(MemoryCache(clock=clock), RedisCache(redis_server.url), clock=clock)
        for _ in backends
    ]
    a, b = (
        ModelClient({"m": [backend]}, settings={"m": settings}, cache=cache, clock=clock)
        for backend, cache in zip(backends, caches, strict=True)
    )
    try:
        first = await a.chat(request)
        assert await b.chat_with_status(request) == (first, "hit")  # from Redis, then local
        clock.advance(15)
        # Stale now: b's local copy is gone (it lived while fresh), Redis serves the stale
        # entry and b refreshes it for everyone.
        assert await b.chat_with_status(request) == (first, "stale")
        for _ in range(1000):
            if "refreshing=0" in repr(b):
                break
            await asyncio.sleep(0.005)
        refreshed, status = await a.chat_with_status(request)
        assert status == "hit"  # a finds b's refreshed answer in Redis: no refresh of its own
        assert refreshed.id != first.id
        assert [backend.calls for backend in backends] == [1, 1]
    finally:
        for client in (a, b):
            await client.aclose()
        for cache in caches:
            await cache.aclose()


async def _until(condition: Callable[[], Awaitable[bool]], within_s: float = 5.0) -> None:
    deadline = time.monotonic() + within_s
    while not await condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_an_invalidation_reaches_every_gateways_local_copy(
    redis_server: RedisServer,
) -> None:
    one = TieredCache(MemoryCache(), RedisCache(redis_server.url, timeout_s=0.2))
    two = TieredCache(MemoryCache(), RedisCache(redis_server.url, timeout_s=0.2))
    try:
        await one.start()
        await two.start()
        await asyncio.wait_for(one.subscribed.wait(), 5)
        await asyncio.wait_for(two.subscribed.wait(), 5)

        def entry(value: bytes, tags: tuple[str, ...] = ()) -> bytes:
            return pack_entry(value, stored_at=time.time(), ttl_s=60, tags=tags)

        await one.set("chat:a:m:1", entry(b"v1", ("faq",)), tags=("faq",))
        await one.set("chat:a:m:2", entry(b"v2"))
        await one.set("chat:b:m:1", v3 := entry(b"v3"))
        for key in ("chat:a:m:1", "chat:a:m:2", "chat:b:m:1"):
            assert await two.get(key) is not None  # now in two's memory as well

        async def gone_from_twos_memory(key: str) -> bool:
            return await two.local.get(key) is None

        await one.invalidate_tag("faq")
        await _until(lambda: gone_from_twos_memory("chat:a:m:1"))
        await one.clear("chat:a:")
        await _until(lambda: gone_from_twos_memory("chat:a:m:2"))
        assert await two.local.get("chat:b:m:1") == v3  # another prefix: kept
        await one.delete("chat:b:m:1")
        await _until(lambda: gone_from_twos_memory("chat:b:m:1"))
        assert two.stats()["invalidations_received"] == 3
        assert one.stats()["invalidations_received"] == 0  # its own messages are skipped
    finally:
        await one.aclose()
        await two.aclose()


async def test_after_losing_the_subscription_a_gateway_drops_its_local_copies(
    tmp_path: Path,
) -> None:
    server = RedisServer(tmp_path)
    server.start()
    cache = TieredCache(MemoryCache(), RedisCache(server.url, timeout_s=0.2), retry_s=0.1)
    try:
        await cache.start()
        await asyncio.wait_for(cache.subscribed.wait(), 5)
        await cache.set("k", b"v")
        assert await cache.local.get("k") == b"v"
        port = server.port
        server.stop()  # invalidations announced now would be missed
        await _until(lambda: _is_clear(cache.subscribed))
        assert await cache.local.get("k") == b"v"  # still served while Redis is away
        restarted = RedisServer(tmp_path)
        restarted.port, restarted.url = port, server.url
        restarted.start()
        try:
            await asyncio.wait_for(cache.subscribed.wait(), 10)
            assert await cache.local.get("k") is None
            assert cache.stats()["subscriptions_lost"] == 1
        finally:
            restarted.stop()
    finally:
        await cache.aclose()
        server.stop()


async def _is_clear(event: asyncio.Event) -> bool:
    return not event.is_set()
