"""An in-process cache: TTL plus LRU eviction, bounded in bytes."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class MemoryCache:
    """Least-recently-used entries are evicted once the values exceed ``max_bytes``."""

    def __init__(
        self,
        *,
        max_bytes: int = 64 * 1024 * 1024,
        ttl_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be > 0")
        self.max_bytes = max_bytes
        self._clock = clock
        self.ttl_s = ttl_s
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        expires_at, value = entry
        if expires_at <= self._clock():
            self._remove(key)
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return value

    async def set(self, key: str, value: bytes, *, ttl_s: float | None = None) -> None:
        if len(value) > self.max_bytes:
            return  # larger than the whole cache: caching it would evict everything for nothing
        self._remove(key)
        self._entries[key] = (self._clock() + (ttl_s or self.ttl_s), value)
        self._bytes += len(value)
        while self._bytes > self.max_bytes:
            oldest = next(iter(self._entries))
            self._remove(oldest)
            self.evictions += 1

    async def delete(self, key: str) -> None:
        self._remove(key)

    async def clear(self, prefix: str = "") -> int:
        doomed = [key for key in self._entries if key.startswith(prefix)]
        for key in doomed:
            self._remove(key)
        return len(doomed)

    def _remove(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= len(entry[1])

    async def aclose(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def __repr__(self) -> str:
        return (
            f"<MemoryCache entries={len(self._entries)} bytes={self._bytes}/{self.max_bytes} "
            f"hits={self.hits} misses={self.misses}>"
        )
