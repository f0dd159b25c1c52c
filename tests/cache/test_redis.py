"""The Redis tier against a real, private redis-server: shared hits, TTL, and degradation."""

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from surgeflow.cache import MemoryCache
from surgeflow.cache.redis import RedisCache
from surgeflow.cache.tiered import TieredCache


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A redis-server of the test's own on a free loopback port, which the test may stop."""

    def __init__(self, directory: Path) -> None:
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._directory = directory
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            message = "redis-server is not installed (apt-get install redis-server)"
            if os.environ.get("SURGEFLOW_REQUIRE_SERVICES") == "1":
                pytest.fail(message)
            pytest.skip(message)
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        command += ["--appendonly", "no", "--dir", str(self._directory)]
        self._process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(timeout=10)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


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
