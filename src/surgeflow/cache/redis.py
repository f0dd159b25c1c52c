"""The shared cache tier in Redis; when Redis is down or slow it is bypassed, never waited on."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Literal, cast

import msgspec
from redis import asyncio as aioredis
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeout

from surgeflow._redis import packing_in_c
from surgeflow.cache.base import DEFAULT_TTL_S

log = logging.getLogger("surgeflow.cache")

# Every Redis key this tier touches is named here.
KEY_PREFIX = "surgeflow:cache:"  # + cache key: the entry
TAG_PREFIX = "surgeflow:cache-tag:"  # + tag: sorted set of entry names, scored by expiry (ms)
INVALIDATIONS = "surgeflow:cache:invalidations"  # pub/sub channel: what each process invalidated

InvalidationOp = Literal["key", "prefix", "tag"]


class Invalidation(msgspec.Struct, frozen=True):
    """A message on the invalidation channel: drop ``key``, keys under ``prefix``, or ``tag``."""

    origin: str  # the publishing process's id, so it skips its own messages
    op: InvalidationOp
    arg: str


_encode_invalidation = msgspec.json.encode
_decode_invalidation = msgspec.json.Decoder(Invalidation).decode

_BATCH = 500

# Store an entry and index it under its tags in one atomic round trip. Each tag's sorted set
# scores members by when they expire, so expired members are pruned on every write (a busy tag
# does not grow without bound), and the set lives at least as long as its longest entry.
# KEYS: the entry, then its tag sets. ARGV: value, ttl (ms), now (ms, wall clock).
_SET_TAGGED = """
local ttl = tonumber(ARGV[2])
local expires = tonumber(ARGV[3]) + ttl
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
for i = 2, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', ARGV[3])
  redis.call('ZADD', KEYS[i], expires, KEYS[1])
  if redis.call('PTTL', KEYS[i]) < ttl then
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
end
return 1
"""

_Failure = (RedisError, OSError, TimeoutError)


class RedisCache:
    """A `Cache` over Redis, shared by every gateway and worker.

    Each operation is bounded by ``timeout_s``. An operation that fails or times out counts as a
    miss (or a skipped write), so requests still succeed while Redis is away; a warning is logged
    at most every ``warn_every_s``. ``errors`` counts every bypass, ``timeouts`` those that timed
    out.
    """

    tier = "redis"

    def __init__(
        self,
        url: str,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        timeout_s: float = 0.05,
        max_value_bytes: int = 1024 * 1024,
        warn_every_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.max_value_bytes = max_value_bytes
        self._warn_every_s = warn_every_s
        self._warned_at = -float("inf")
        self._clock = clock
        self._redis = packing_in_c(
            aioredis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        )
        self._set_tagged = self._redis.register_script(_SET_TAGGED)
        self.hits = 0
        self.misses = 0
        self.sets = 0
        self.errors = 0
        self.timeouts = 0

    def __repr__(self) -> str:
        return f"<RedisCache {self.url} hits={self.hits} misses={self.misses} errors={self.errors}>"

    def stats(self) -> dict[str, int | float]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "sets": self.sets,
            "errors": self.errors,
            "timeouts": self.timeouts,
        }

    async def get(self, key: str) -> bytes | None:
        try:
            async with asyncio.timeout(self.timeout_s):
                value = await self._redis.get(KEY_PREFIX + key)
        except _Failure as exc:
            self._bypassed("get", exc)
            return None
        if value is None or len(value) > self.max_value_bytes:
            self.misses += 1
            return None  # an oversized entry is not served
        self.hits += 1
        return value if isinstance(value, bytes) else value.encode()

    async def set(
        self, key: str, value: bytes, *, ttl_s: float | None = None, tags: Sequence[str] = ()
    ) -> None:
        if len(value) > self.max_value_bytes:
            return
        ttl_ms = max(1, int((ttl_s or self.ttl_s) * 1000))
        name = KEY_PREFIX + key
        try:
            async with asyncio.timeout(self.timeout_s):
                if tags:
                    tag_names = [TAG_PREFIX + tag for tag in dict.fromkeys(tags)]
                    now_ms = int(self._clock() * 1000)
                    await self._set_tagged(keys=[name, *tag_names], args=[value, ttl_ms, now_ms])
                else:
                    await self._redis.set(name, value, px=ttl_ms)
        except _Failure as exc:
            self._bypassed("set", exc)
            return
        self.sets += 1

    async def delete(self, key: str) -> bool:
        try:
            async with asyncio.timeout(self.timeout_s):
                deleted: int = await self._redis.delete(KEY_PREFIX + key)
        except _Failure as exc:
            self._bypassed("delete", exc)
            return False
        return deleted > 0

    async def clear(self, prefix: str = "") -> int:
        """Delete matching keys with SCAN + DEL in batches (no KEYS: it would block Redis).

        Clearing everything also drops the tag index.
        """
        deleted = 0
        try:
            deleted = await self._delete_matching(KEY_PREFIX + _glob_escape(prefix) + "*")
            if not prefix:
                await self._delete_matching(TAG_PREFIX + "*")
        except _Failure as exc:
            self._bypassed("clear", exc)
        return deleted

    async def invalidate_tag(self, tag: str) -> int:
        """Pop the tag's entries in batches and delete them; how many still existed.

        Popping is atomic, so an entry tagged while this runs is either popped and deleted, or
        stays indexed for the next invalidation; none is left tagged but unfindable.
        """
        deleted = 0
        tag_name = TAG_PREFIX + tag
        try:
            while True:
                async with asyncio.timeout(self.timeout_s):
                    popped = await self._redis.zpopmin(tag_name, _BATCH)
                    if not popped:
                        break
                    pairs = cast("list[tuple[bytes, float]]", popped)  # (name, expiry)
                    deleted += await self._redis.delete(*[name for name, _ in pairs])
        except _Failure as exc:
            self._bypassed("invalidate_tag", exc)
        return deleted

    async def announce(self, invalidation: Invalidation) -> None:
        """Tell every process that shares this Redis what was invalidated (best effort)."""
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._redis.publish(INVALIDATIONS, _encode_invalidation(invalidation))
        except _Failure as exc:
            self._bypassed("announce", exc)

    async def invalidations(self) -> AsyncIterator[Invalidation | None]:
        """The invalidations every process announces, from now on: first ``None`` once
        subscribed, then each message. Raises when the connection fails; iterate again to
        resubscribe. Uses its own connection, with no read timeout (it waits for messages) but a
        health check every 5 s, so a dead server is noticed."""
        client = aioredis.Redis.from_url(
            self.url, socket_connect_timeout=self.timeout_s * 20, health_check_interval=5
        )
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(INVALIDATIONS)
            yield None
            while True:
                message = await pubsub.get_message(timeout=5.0)
                if message is None:
                    continue
                try:
                    yield _decode_invalidation(message["data"])
                except msgspec.DecodeError:
                    log.warning("ignoring a malformed cache invalidation: %r", message["data"])
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            await client.aclose()

    async def aclose(self) -> None:
        await self._redis.aclose()

    async def _delete_matching(self, pattern: str) -> int:
        deleted = 0
        batch: list[bytes] = []
        async for key in self._redis.scan_iter(match=pattern, count=_BATCH):
            batch.append(key)
            if len(batch) >= _BATCH:
                deleted += await self._redis.delete(*batch)
                batch = []
        if batch:
            deleted += await self._redis.delete(*batch)
        return deleted

    def _bypassed(self, operation: str, exc: BaseException) -> None:
        self.errors += 1
        if isinstance(exc, TimeoutError | RedisTimeout):
            self.timeouts += 1
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
