"""MemoryCache: bounded in bytes under any workload, LRU eviction, TTL expiry, tags, counters."""

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from surgeflow.cache import MemoryCache
from surgeflow.cache.memory import ENTRY_OVERHEAD, entry_cost


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
        st.tuples(st.just("invalidate"), st.integers(0, 3), st.just(b"")),
    ),
    max_size=200,
)
TAG_SETS = [(), ("a",), ("a", "b"), ("b", "c"), ("c",)]


def tags_of(key: str) -> tuple[str, ...]:
    """Each key always carries the same tags, so the test can tell which an entry has."""
    return TAG_SETS[int(key[1:]) % len(TAG_SETS)]


@settings(max_examples=150, deadline=None)
@given(max_bytes=st.integers(1, 4000), ops=operations)
def test_the_byte_bound_and_the_tag_index_always_hold(
    max_bytes: int, ops: list[tuple[str, int, bytes]]
) -> None:
    async def run() -> None:
        clock = Clock()
        cache = MemoryCache(max_bytes=max_bytes, ttl_s=3.0, clock=clock)
        stored: dict[str, tuple[float, bytes]] = {}
        for op, key_n, value in ops:
            key = f"k{key_n}"
            if op == "set":
                await cache.set(key, value, tags=tags_of(key))
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
            elif op == "invalidate":
                tag = "abcd"[key_n]
                await cache.invalidate_tag(tag)
                for name in [name for name in stored if tag in tags_of(name)]:
                    del stored[name]
                    assert await cache.get(name) is None
            else:
                clock.now += key_n
            assert cache.size_bytes <= max_bytes
            assert cache.size_bytes == sum(entry_cost(k, v) for k, (_, v) in cache._entries.items())
            # The tag index names exactly the live entries that carry each tag.
            indexed = {(tag, k) for tag, keys in cache._tags.items() for k in keys}
            expected = {(tag, k) for k in cache._entries for tag in tags_of(k)}
            assert indexed == expected

    asyncio.run(run())


async def test_least_recently_used_is_evicted_first() -> None:
    cache = MemoryCache(max_bytes=3 * entry_cost("a", b"x" * 10))
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


def test_an_entry_costs_its_key_value_and_overhead() -> None:
    assert entry_cost("key", b"value") == 3 + 5 + ENTRY_OVERHEAD


async def test_a_value_larger_than_the_cache_is_not_kept() -> None:
    cache = MemoryCache(max_bytes=entry_cost("small", b"12345") + 5)
    await cache.set("small", b"12345")
    await cache.set("huge", b"x" * 20)
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


async def test_invalidating_a_tag_deletes_its_entries_and_only_those() -> None:
    cache = MemoryCache()
    await cache.set("faq-1", b"1", tags=("faq",))
    await cache.set("faq-2", b"2", tags=("faq", "pricing-v2"))
    await cache.set("other", b"3", tags=("pricing-v2",))
    await cache.set("plain", b"4")
    assert await cache.invalidate_tag("faq") == 2
    assert await cache.get("faq-1") is None
    assert await cache.get("faq-2") is None
    assert await cache.get("other") == b"3"
    assert await cache.invalidate_tag("faq") == 0
    assert await cache.invalidate_tag("pricing-v2") == 1  # faq-2 left the index with its entry
    assert await cache.get("plain") == b"4"
    assert repr(cache).startswith(f"<MemoryCache entries=1 bytes={entry_cost('plain', b'4')}/")
    assert "tags=0" in repr(cache)


async def test_an_entry_stored_again_carries_only_its_new_tags() -> None:
    cache = MemoryCache()
    await cache.set("k", b"old", tags=("v1",))
    await cache.set("k", b"new", tags=("v2",))
    assert await cache.invalidate_tag("v1") == 0
    assert await cache.get("k") == b"new"
    assert await cache.invalidate_tag("v2") == 1


async def test_expired_entries_do_not_count_as_invalidated() -> None:
    clock = Clock()
    cache = MemoryCache(ttl_s=1, clock=clock)
    await cache.set("k", b"v", tags=("t",))
    clock.now = 2.0
    assert await cache.invalidate_tag("t") == 0
    assert len(cache) == 0


async def test_delete_says_whether_there_was_an_entry() -> None:
    cache = MemoryCache()
    await cache.set("k", b"v")
    assert await cache.delete("k") is True
    assert await cache.delete("k") is False


async def test_stats_count_what_happened() -> None:
    clock = Clock()
    cache = MemoryCache(max_bytes=2 * entry_cost("a", b"x" * 10), ttl_s=5, clock=clock)
    await cache.set("a", b"x" * 10)
    await cache.set("b", b"y" * 10)
    await cache.get("a")  # hit
    await cache.get("zzz")  # miss
    await cache.set("c", b"z" * 10)  # evicts b, the least recently used
    clock.now = 6.0
    await cache.get("a")  # expired: a miss and an expiration
    assert cache.stats() == {
        "hits": 1,
        "misses": 2,
        "sets": 3,
        "evictions": 1,
        "expirations": 1,
        "bytes": entry_cost("c", b"z" * 10),
        "entries": 1,
    }
