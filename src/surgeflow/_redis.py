"""redis-py's asyncio connections, packing commands in C (hiredis) as its sync client does.

redis-py's asyncio `Connection.pack_command` is Python: about 9 µs for one of the queue's
EVALSHA calls (15 arguments), against 1.2 µs for `hiredis.pack_command`, which gives the same
bytes. A worker packs one or two such commands per run, and a gateway with shared limits one per
request. Every Redis client surgeflow makes goes through `packing_in_c`.
"""

from __future__ import annotations

from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)


class _HiredisPacking:
    """``pack_command`` by hiredis; arguments redis-py would encode differently (bytearray,
    memoryview, bool and the like) take redis-py's own path."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str):  # 'SCRIPT LOAD' and the like: one argument per word
            args = (*args[0].encode().split(), *args[1:])
        elif b" " in args[0]:
            args = (*args[0].split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError:
            packed: list[bytes] = super().pack_command(*args)  # type: ignore[misc]
            return packed


class FastConnection(_HiredisPacking, Connection):
    pass


class FastSSLConnection(_HiredisPacking, SSLConnection):
    pass


class FastUnixDomainSocketConnection(_HiredisPacking, UnixDomainSocketConnection):
    pass


_FAST: dict[type[AbstractConnection], type[AbstractConnection]] = {
    Connection: FastConnection,
    SSLConnection: FastSSLConnection,
    UnixDomainSocketConnection: FastUnixDomainSocketConnection,
}


def packing_in_c(client: Redis) -> Redis:
    """``client``, its pool making connections that pack commands with hiredis (call it before
    the first command; a connection class of another kind is left as it is)."""
    pool = client.connection_pool
    pool.connection_class = _FAST.get(pool.connection_class, pool.connection_class)
    return client
