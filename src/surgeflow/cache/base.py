"""The Cache protocol (bytes by key, with a time to live and tags) and the entry envelope.

Every tier stores opaque bytes. What surgeflow stores in them is an *entry*: a fixed binary header
(when it was stored, on the wall clock, its TTL, its stale-while-revalidate window, its tags) in
front of the value, so that every tier and every process judges an entry's freshness the same way
(docs/decisions/0006-cache-freshness.md). A tier keeps an entry for ``ttl_s + stale_s``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import NamedTuple, Protocol

DEFAULT_TTL_S = 600.0

# magic + version, stored_at (wall clock, s), ttl_s, stale_s, length of the comma-joined tags.
# 0xf5 never starts valid UTF-8, so no JSON value is ever mistaken for an entry.
_MAGIC = b"\xf5sf1"
_HEADER = struct.Struct("<4sdddH")
_NO_TAGS: tuple[str, ...] = ()


class Cache(Protocol):
    """A key-value cache of encoded answers. A miss is ``None``; failures are misses, not errors."""

    async def get(self, key: str) -> bytes | None: ...

    async def set(
        self, key: str, value: bytes, *, ttl_s: float | None = None, tags: Sequence[str] = ()
    ) -> None:
        """Store ``value`` for ``ttl_s`` (the cache's default for None), findable by ``tags``."""
        ...

    async def delete(self, key: str) -> bool:
        """Delete one entry; whether there was one."""
        ...

    async def clear(self, prefix: str = "") -> int:
        """Delete every entry whose key starts with ``prefix`` (all of them for ""); how many."""
        ...

    async def invalidate_tag(self, tag: str) -> int:
        """Delete every entry stored with ``tag``; how many."""
        ...

    async def aclose(self) -> None: ...


class Entry(NamedTuple):
    """A stored answer and when it was stored: fresh for ``ttl_s``, then stale for ``stale_s``."""

    stored_at: float
    ttl_s: float
    stale_s: float
    tags: tuple[str, ...]
    value: bytes

    def expires_at(self) -> float:
        """When the entry stops being fresh (wall clock)."""
        return self.stored_at + self.ttl_s

    def dies_at(self) -> float:
        """When the entry may no longer be served at all, stale or not (wall clock)."""
        return self.stored_at + self.ttl_s + self.stale_s


def pack_entry(
    value: bytes,
    *,
    stored_at: float,
    ttl_s: float,
    stale_s: float = 0.0,
    tags: Sequence[str] = (),
) -> bytes:
    """The envelope of ``value``; ``tags`` must already be valid (see `keys.parse_tags`)."""
    joined = ",".join(tags).encode("ascii")
    return _HEADER.pack(_MAGIC, stored_at, ttl_s, stale_s, len(joined)) + joined + value


def unpack_entry(raw: bytes) -> Entry | None:
    """The entry in ``raw``, or None when ``raw`` is not one (foreign, truncated or corrupt)."""
    try:
        magic, stored_at, ttl_s, stale_s, tags_len = _unpack_header(raw)
    except struct.error:
        return None
    if magic != _MAGIC:
        return None
    tags = _NO_TAGS
    if tags_len:
        joined = raw[_HEADER_SIZE : _HEADER_SIZE + tags_len]
        if len(joined) != tags_len or not joined.isascii():
            return None
        tags = tuple(joined.decode("ascii").split(","))
    # tuple.__new__ skips the NamedTuple constructor's Python frame: this is on every cache hit.
    return _new_entry(Entry, (stored_at, ttl_s, stale_s, tags, raw[_HEADER_SIZE + tags_len :]))


def fresh_value(raw: bytes, now: float) -> bytes | None:
    """The value in ``raw`` if it is an entry still fresh at ``now``, else None.

    The cache-hit fast path: None means "look closer" (stale, too old, or not an entry at all;
    `unpack_entry` tells which).
    """
    try:
        magic, stored_at, ttl_s, _, tags_len = _unpack_header(raw)
    except struct.error:
        return None
    if magic != _MAGIC or now - stored_at >= ttl_s:
        return None
    return raw[_HEADER_SIZE + tags_len :]


_unpack_header = _HEADER.unpack_from
_HEADER_SIZE = _HEADER.size
_new_entry = tuple.__new__


def default_ttl_s(cache: object) -> float:
    """The TTL a cache gives entries stored without one (its ``ttl_s`` when it has one)."""
    ttl_s = getattr(cache, "ttl_s", None)
    return float(ttl_s) if isinstance(ttl_s, int | float) else DEFAULT_TTL_S
