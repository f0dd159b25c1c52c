"""Two tiers: the process's own memory in front of a shared cache."""

from __future__ import annotations

from surgeflow.cache.base import Cache


class TieredCache:
    """Read-through and write-through: a shared hit fills the local tier; a write goes to both."""

    def __init__(self, local: Cache, shared: Cache) -> None:
        self.local = local
        self.shared = shared

    def __repr__(self) -> str:
        return f"<TieredCache local={self.local!r} shared={self.shared!r}>"

    async def get(self, key: str) -> bytes | None:
        value = await self.local.get(key)
        if value is not None:
            return value
        value = await self.shared.get(key)
        if value is not None:
            await self.local.set(key, value)
        return value

    async def set(self, key: str, value: bytes, *, ttl_s: float | None = None) -> None:
        await self.local.set(key, value, ttl_s=ttl_s)
        await self.shared.set(key, value, ttl_s=ttl_s)

    async def delete(self, key: str) -> None:
        await self.local.delete(key)
        await self.shared.delete(key)

    async def clear(self, prefix: str = "") -> int:
        local = await self.local.clear(prefix)
        return max(local, await self.shared.clear(prefix))

    async def aclose(self) -> None:
        await self.local.aclose()
        await self.shared.aclose()
