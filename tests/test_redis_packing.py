"""Commands packed by hiredis are the bytes redis-py would send, over every kind of URL."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import Connection

from surgeflow._redis import (
    FastConnection,
    FastSSLConnection,
    FastUnixDomainSocketConnection,
    packing_in_c,
)
from tests.services import RedisServer

COMMANDS = [
    ("EVALSHA", "a" * 40, 5, *["surgeflow:queue:{runs}:jobs"] * 5, "", "workers", 1_000_000),
    ("SET", "key", b"\x00\xffbinary", "EX", 30),
    ("SCRIPT LOAD", "return 1"),  # two words in one argument
    ("HSET", "h", "field", 1.5, "π", "ünïcode"),
    ("SET", "key", bytearray(b"view"), memoryview(b"mv")),  # hiredis refuses these: redis-py packs
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: str(c[0]))
def test_the_same_bytes_as_redis_py(command: tuple[object, ...]) -> None:
    ours, theirs = FastConnection(), Connection()
    assert b"".join(ours.pack_command(*command)) == b"".join(theirs.pack_command(*command))


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6379/0", FastConnection),
        ("rediss://127.0.0.1:6380/0", FastSSLConnection),
        ("unix:///run/redis.sock", FastUnixDomainSocketConnection),
    ],
)
def test_every_kind_of_url_packs_in_c(url: str, expected: type) -> None:
    client = packing_in_c(Redis.from_url(url))
    assert client.connection_pool.connection_class is expected


async def test_a_real_server_understands_them(redis_server: RedisServer) -> None:
    client = packing_in_c(Redis.from_url(redis_server.url, decode_responses=True))
    try:
        assert await client.set("k", "välue", ex=30)
        assert await client.get("k") == "välue"
        script = client.register_script("return {KEYS[1], ARGV[1]}")
        assert await script(keys=["k"], args=[2.5]) == ["k", "2.5"]
    finally:
        await client.aclose()
