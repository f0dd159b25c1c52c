"""The shared cache tier in Redis; when Redis is down or slow it is bypassed, never waited on."""

from __future__ import annotations

import asyncio
import logging
import time

from redis import asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger("surgeflow.cache")

KEY_PREFIX = "surgeflow:cache:"


class RedisCache:
    """A `Cache` over Redis, shared by every gateway and worker.

    Each operation is bounded by ``timeout_s``. An operation that fails or times out counts as a
    miss (or a skipped write), so requests still succeed while Redis is away; a warning is logged
    at most every ``warn_every_s``, and ``errors`` counts every bypass.
    """

    def __init__(
        self,
        url: str,
        *,
        ttl_s: float = 600.0,
        timeout_s: float = 0.05,
        max_value_bytes: int = 1024 * 1024,
        warn_every_s: float = 30.0,
    ) -> None:
        self.url = url
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.max_value_bytes = max_value_bytes
        self._warn_every_s = warn_every_s
        self._warned_at = -float("inf")
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self.hits = 0
        self.misses = 0
        self.errors = 0

    def __repr__(self) -> str:
        return f"<RedisCache {self.url} hits={self.hits} misses={self.misses} errors={self.errors}>"

    async def get(self, key: str) -> bytes | None:
        try:
            async with asyncio.timeout(self.timeout_s):
                value = await self._redis.get(KEY_PREFIX + key)
        except (RedisError, OSError, TimeoutError) as exc:
            self._bypassed("get", exc)
            return None
        if value is None or len(value) > self.max_value_bytes:
            self.misses += 1
            return None  # an oversized entry is not served
        self.hits += 1
        return value if isinstance(value, bytes) else value.encode()

    async def set(self, key: str, value: bytes, *, ttl_s: float | None = None) -> None:
        if len(value) > self.max_value_bytes:
            return
        ttl_ms = max(1, int((ttl_s or self.ttl_s) * 1000))
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._redis.set(KEY_PREFIX + key, value, px=ttl_ms)
        except (RedisError, OSError, TimeoutError) as exc:
            self._bypassed("set", exc)

    async def delete(self, key: str) -> None:
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._redis.delete(KEY_PREFIX + key)
        except (RedisError, OSError, TimeoutError) as exc:
            self._bypassed("delete", exc)

    async def clear(self, prefix: str = "") -> int:
        """Delete matching keys with SCAN + DEL in batches (no KEYS: it would block Redis)."""
        deleted = 0
        pattern = KEY_PREFIX + _glob_escape(prefix) + "*"
        try:
            batch: list[bytes] = []
            async for key in self._redis.scan_iter(match=pattern, count=500):
                batch.append(key)
                if len(batch) >= 500:
                    deleted += await self._redis.delete(*batch)
                    batch = []
            if batch:
                deleted += await self._redis.delete(*batch)
        except (RedisError, OSError) as exc:
            self._bypassed("clear", exc)
        return deleted

    async def aclose(self) -> None:
        await self._redis.aclose()

    def _bypassed(self, operation: str, exc: BaseException) -> None:
        self.errors += 1
        now = time.monotonic()
        if now - self._warned_at >= self._warn_every_s:
            self._warned_at = now
            log.warning(
                "Redis cache %s failed (%s: %s); bypassing the shared tier",
                operation,
                type(exc).__name__,
                exc,
            )


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
