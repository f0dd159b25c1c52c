"""The exact chat cache in ModelClient: what is cached, per tenant, and coalescing of misses."""

import asyncio

import pytest

from surgeflow.cache import MemoryCache
from surgeflow.cache.coalesce import Coalescer
from surgeflow.cache.keys import chat_cache_key
from surgeflow.errors import UpstreamError
from surgeflow.models import ChatRequest, Message, ModelClient, SimulatedBackend
from surgeflow.routing import RouteKey


def request(text: str = "What is the refund window?", **params: object) -> ChatRequest:
    return ChatRequest(model="m", messages=[Message(role="user", content=text)], **params)  # type: ignore[arg-type]


def client(backend: SimulatedBackend, cache: MemoryCache) -> ModelClient:
    return ModelClient({"m": [backend]}, cache=cache)


def test_only_deterministic_requests_have_a_key() -> None:
    assert chat_cache_key(request(temperature=0), scope="a") is not None
    assert chat_cache_key(request(temperature=0.7), scope="a") is None
    assert chat_cache_key(request(), scope="a") is None  # no temperature: the model's default
    assert chat_cache_key(request(), scope="a", opt_in=True) is not None
    assert chat_cache_key(request(temperature=0, n=2), scope="a") is None


def test_streamed_and_plain_requests_share_a_key() -> None:
    plain = chat_cache_key(request(temperature=0), scope="a")
    assert plain is not None
    assert chat_cache_key(request(temperature=0, stream=True), scope="a") == plain
    options = {"include_usage": True}
    assert chat_cache_key(request(temperature=0, stream_options=options), scope="a") == plain


def test_the_key_covers_what_changes_the_answer() -> None:
    base = chat_cache_key(request(temperature=0), scope="a")
    assert base == chat_cache_key(request(temperature=0), scope="a")
    assert base != chat_cache_key(request(temperature=0), scope="b")
    assert base != chat_cache_key(request("Another question", temperature=0), scope="a")
    assert base != chat_cache_key(request(temperature=0, max_tokens=5), scope="a")
    assert base != chat_cache_key(request(temperature=0, seed=1), scope="a")


async def test_a_repeated_deterministic_request_is_answered_from_the_cache() -> None:
    backend = SimulatedBackend("sim", ttft_ms=0, tokens_per_s=0)
    async with client(backend, MemoryCache()) as models:
        tenant = RouteKey(key_id="team-a")
        first = await models.chat(request(temperature=0), key=tenant)
        second = await models.chat(request(temperature=0), key=tenant)
        assert second == first
        assert backend.calls == 1
        await models.chat(request(temperature=0.5), key=tenant)
        await models.chat(request(temperature=0.5), key=tenant)
        assert backend.calls == 3  # sampled answers are never cached


async def test_tenants_never_share_cached_answers() -> None:
    backend = SimulatedBackend("sim", ttft_ms=0, tokens_per_s=0)
    async with client(backend, MemoryCache()) as models:
        await models.chat(request(temperature=0), key=RouteKey(key_id="team-a"))
        await models.chat(request(temperature=0), key=RouteKey(key_id="team-b"))
        assert backend.calls == 2


async def test_a_corrupt_entry_is_dropped_not_served() -> None:
    backend = SimulatedBackend("sim", ttft_ms=0, tokens_per_s=0)
    cache = MemoryCache()
    async with client(backend, cache) as models:
        key = chat_cache_key(request(temperature=0), scope=None)
        assert key is not None
        await cache.set(key, b"{not json")
        answer = await models.chat(request(temperature=0))
        assert answer.choices[0].message.content
        assert backend.calls == 1
        assert await cache.get(key) != b"{not json"


async def test_identical_concurrent_misses_make_one_upstream_call() -> None:
    backend = SimulatedBackend("sim", ttft_ms=50, tokens_per_s=0)
    async with client(backend, MemoryCache()) as models:
        answers = await asyncio.gather(*(models.chat(request(temperature=0)) for _ in range(20)))
        assert backend.calls == 1
        assert len({a.choices[0].message.content for a in answers}) == 1


async def test_every_waiter_gets_the_error_of_the_shared_call() -> None:
    backend = SimulatedBackend("sim", ttft_ms=30, tokens_per_s=0, error_rate=1.0)
    async with client(backend, MemoryCache()) as models:
        results = await asyncio.gather(
            *(models.chat(request(temperature=0)) for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, UpstreamError) for r in results)


async def test_a_cancelled_leader_does_not_strand_its_followers() -> None:
    coalescer: Coalescer[str] = Coalescer()
    started = asyncio.Event()

    async def slow_call() -> str:
        started.set()
        await asyncio.sleep(0.05)
        return "answer"

    leader = asyncio.create_task(coalescer.run("k", slow_call))
    await started.wait()
    follower = asyncio.create_task(coalescer.run("k", slow_call))
    await asyncio.sleep(0)
    leader.cancel()
    assert await follower == "answer"
    with pytest.raises(asyncio.CancelledError):
        await leader
    assert coalescer.calls == 1


async def test_the_shared_call_is_cancelled_when_nobody_waits_any_more() -> None:
    coalescer: Coalescer[str] = Coalescer()
    cancelled = asyncio.Event()

    async def hangs() -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    waiters = [asyncio.create_task(coalescer.run("k", hangs)) for _ in range(3)]
    await asyncio.sleep(0.01)
    for waiter in waiters:
        waiter.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    await asyncio.wait_for(cancelled.wait(), 1)
    assert repr(coalescer) == "<Coalescer in_flight=0 calls=1 coalesced=2>"
