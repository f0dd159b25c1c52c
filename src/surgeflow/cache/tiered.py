"""Two tiers: the process's own memory in front of a shared cache."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from surgeflow.cache.base import Cache, default_ttl_s, unpack_entry

if TYPE_CHECKING:
    from surgeflow.cache.redis import Invalidation, InvalidationOp

log = logging.getLogger("surgeflow.cache")


@runtime_checkable
class Announcing(Protocol):
    """A shared tier that carries invalidations between processes (`RedisCache` does)."""

    async def announce(self, invalidation: Invalidation) -> None: ...

    def invalidations(self) -> AsyncIterator[Invalidation | None]: ...


class TieredCache:
    """Read-through and write-through: a shared hit fills the local tier; a write goes to both.

    A local copy keeps the entry's tags and lives only while the entry is fresh (read from its
    envelope): a stale entry is always read from the shared tier, where another process may
    already have stored its refreshed answer.

    Invalidation (by key, prefix or tag) reaches this process's local tier and the shared tier,
    and, when the shared tier announces it (Redis pub/sub), every other process's local tier:
    `start` subscribes. A process that loses the subscription cannot know what it missed, so
    when it subscribes again it drops its whole local tier.
    """

    def __init__(
        self,
        local: Cache,
        shared: Cache,
        *,
        clock: Callable[[], float] = time.time,
        retry_s: float = 0.5,
    ) -> None:
        self.local = local
        self.shared = shared
        self._clock = clock
        self._retry_s = retry_s
        self._origin = uuid.uuid4().hex
        self._listener: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()
        self.local_hits = 0
        self.shared_hits = 0
        self.misses = 0
        self.invalidations_received = 0
        self.subscriptions_lost = 0

    def __repr__(self) -> str:
        return f"<TieredCache local={self.local!r} shared={self.shared!r}>"

    @property
    def ttl_s(self) -> float:
        """The TTL of entries stored without one: the local tier's."""
        return default_ttl_s(self.local)

    @property
    def tiers(self) -> tuple[Cache, Cache]:
        """The tiers, nearest first (for metrics: each has its own counters)."""
        return (self.local, self.shared)

    def stats(self) -> dict[str, int | float]:
        return {
            "local_hits": self.local_hits,
            "shared_hits": self.shared_hits,
            "misses": self.misses,
            "invalidations_received": self.invalidations_received,
            "subscriptions_lost": self.subscriptions_lost,
        }

    async def start(self) -> None:
        """Listen for other processes' invalidations (when the shared tier announces them)."""
        if isinstance(self.shared, Announcing) and self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name="cache-invalidations")

    async def get(self, key: str) -> bytes | None:
        value = await self.local.get(key)
        if value is not None:
            self.local_hits += 1
            return value
        value = await self.shared.get(key)
        if value is None:
            self.misses += 1
            return None
        self.shared_hits += 1
        entry = unpack_entry(value)
        if entry is None:
            await self.local.set(key, value)  # not an envelope: the local tier's own TTL
        elif (fresh_s := entry.expires_at() - self._clock()) > 0:
            await self.local.set(key, value, ttl_s=fresh_s, tags=entry.tags)
        return value

    async def set(
        self, key: str, value: bytes, *, ttl_s: float | None = None, tags: Sequence[str] = ()
    ) -> None:
        entry = unpack_entry(value)
        local_ttl_s = ttl_s if entry is None else entry.expires_at() - self._clock()
        if local_ttl_s is None or local_ttl_s > 0:
            await self.local.set(key, value, ttl_s=local_ttl_s, tags=tags)
        else:
            await self.local.delete(key)
        await self.shared.set(key, value, ttl_s=ttl_s, tags=tags)

    async def delete(self, key: str) -> bool:
        local = await self.local.delete(key)
        deleted = await self.shared.delete(key) or local
        await self._announce("key", key)
        return deleted

    async def clear(self, prefix: str = "") -> int:
        local = await self.local.clear(prefix)
        deleted = max(local, await self.shared.clear(prefix))
        await self._announce("prefix", prefix)
        return deleted

    async def invalidate_tag(self, tag: str) -> int:
        local = await self.local.invalidate_tag(tag)
        deleted = max(local, await self.shared.invalidate_tag(tag))
        await self._announce("tag", tag)
        return deleted

    async def aclose(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
            self._listener = None
        await self.local.aclose()
        await self.shared.aclose()

    async def _announce(self, op: InvalidationOp, arg: str) -> None:
        if isinstance(self.shared, Announcing):
            from surgeflow.cache.redis import Invalidation

            await self.shared.announce(Invalidation(self._origin, op, arg))

    async def _listen(self) -> None:
        assert isinstance(self.shared, Announcing)
        while True:
            try:
                async for invalidation in self.shared.invalidations():
                    if invalidation is None:
                        # Subscribed. What was announced before is unknown: drop local copies.
                        await self.local.clear()
                        self.subscribed.set()
                    elif invalidation.origin != self._origin:
                        self.invalidations_received += 1
                        await self._apply(invalidation)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "cache invalidation subscription lost (%s: %s); retrying in %g s",
                    type(exc).__name__,
                    exc,
                    self._retry_s,
                )
            if self.subscribed.is_set():
                self.subscriptions_lost += 1
            self.subscribed.clear()
            await asyncio.sleep(self._retry_s)

    async def _apply(self, invalidation: Invalidation) -> None:
        if invalidation.op == "key":
            await self.local.delete(invalidation.arg)
        elif invalidation.op == "prefix":
            await self.local.clear(invalidation.arg)
        else:
            await self.local.invalidate_tag(invalidation.arg)
