"""The Cache protocol: bytes by key, with a time to live."""

from __future__ import annotations

from typing import Protocol


class Cache(Protocol):
    """A key-value cache of encoded answers. A miss is ``None``; failures are misses, not errors."""

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, *, ttl_s: float | None = None) -> None: ...

    async def delete(self, key: str) -> None: ...

    async def clear(self, prefix: str = "") -> int:
        """Delete every entry whose key starts with ``prefix`` (all of them for ""); how many."""
        ...

    async def aclose(self) -> None: ...
