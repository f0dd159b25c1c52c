"""MemoryCache: bounded in bytes under any workload, LRU eviction, TTL expiry."""

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from surgeflow.cache import MemoryCache


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


operations = st.lists(
    st.one_of(
        st.tuples(st.just("set"), st.integers(0, 20), st.binary(max_size=300)),
        st.tuples(st.just("get"), st.integers(0, 20), st.just(b"")),
        st.tuples(st.just("delete"), st.integers(0, 20), st.just(b"")),
        st.tuples(st.just("tick"), st.integers(0, 5), st.just(b"")),
    ),
    max_size=200,
)


@settings(max_examples=150, deadline=None)
@given(max_bytes=st.integers(1, 2000), ops=operations)
def test_the_byte_bound_always_holds_and_hits_are_what_was_stored(
    max_bytes: int, ops: list[tuple[str, int, bytes]]
) -> None:
    async def run() -> None:
        clock = Clock()
        cache = MemoryCache(max_bytes=max_bytes, ttl_s=3.0, clock=clock)
        stored: dict[str, tuple[float, bytes]] = {}
        for op, key_n, value in ops:
            key = f"k{key_n}"
            if op == "set":
                await cache.set(key, value)
                stored[key] = (clock.now + 3.0, value)
            elif op == "get":
                got = await cache.get(key)
                if got is not None:  # a hit is the last value stored and not yet expired
                    expires_at, expected = stored[key]
                    assert got == expected
                    assert clock.now < expires_at
            elif op == "delete":
                await cache.delete(key)
                stored.pop(key, None)
            else:
                clock.now += key_n
            assert cache.size_bytes <= max_bytes
            assert cache.size_bytes == sum(len(v) for _, v in cache._entries.values())

    asyncio.run(run())


async def test_least_recently_used_is_evicted_first() -> None:
    cache = MemoryCache(max_bytes=30)
    for key in ("a", "b", "c"):
        await cache.set(key, b"x" * 10)
    assert await cache.get("a") == b"x" * 10  # a is now the most recent
    await cache.set("d", b"y" * 10)
    assert await cache.get("b") is None
    assert await cache.get("a") is not None
    assert cache.evictions == 1


async def test_entries_expire_after_their_ttl() -> None:
    clock = Clock()
    cache = MemoryCache(ttl_s=10, clock=clock)
    await cache.set("short", b"1", ttl_s=1)
    await cache.set("long", b"2")
    clock.now = 1.0
    assert await cache.get("short") is None
    assert await cache.get("long") == b"2"
    clock.now = 10.0
    assert await cache.get("long") is None
    assert len(cache) == 0


async def test_a_value_larger_than_the_cache_is_not_kept() -> None:
    cache = MemoryCache(max_bytes=10)
    await cache.set("small", b"12345")
    await cache.set("huge", b"x" * 11)
    assert await cache.get("huge") is None
    assert await cache.get("small") == b"12345"  # and it evicted nothing for it


async def test_clear_by_prefix_or_all() -> None:
    cache = MemoryCache()
    for key in ("chat:a:m:1", "chat:a:m:2", "chat:b:m:1", "step:wf:s:1"):
        await cache.set(key, b"v")
    assert await cache.clear("chat:a:") == 2
    assert await cache.get("chat:b:m:1") == b"v"
    assert await cache.clear() == 2
    assert len(cache) == 0
    assert cache.size_bytes == 0
