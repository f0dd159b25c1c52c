"""Freshness of cached chat answers: TTL per model, stale-while-revalidate, status, tags."""

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from surgeflow.cache import MemoryCache
from surgeflow.cache.keys import chat_cache_key
from surgeflow.config import EndpointSettings, ModelCacheSettings, ModelSettings, load_settings
from surgeflow.errors import ConfigError, UpstreamError, ValidationError
from surgeflow.models import ChatRequest, Message, ModelClient, SimulatedBackend
from surgeflow.routing import RouteKey
from tests.routing.clock import FakeClock


def request(text: str = "What is the refund window?", **params: object) -> ChatRequest:
    params.setdefault("temperature", 0)
    params.setdefault("model", "m")
    return ChatRequest(messages=[Message(role="user", content=text)], **params)  # type: ignore[arg-type]


def settings(name: str, backend: SimulatedBackend, **cache: object) -> ModelSettings:
    return ModelSettings(
        name=name,
        endpoints=[EndpointSettings(name=backend.name, url=f"backend:{backend.name}")],
        policy="round_robin",
        cache=ModelCacheSettings(**cache),  # type: ignore[arg-type]
    )


def client(
    clock: FakeClock,
    cache: MemoryCache,
    backends: dict[str, SimulatedBackend],
    **caching: dict[str, object],
) -> ModelClient:
    """One model per backend; ``caching[name]`` is that model's cache section."""
    return ModelClient(
        {name: [backend] for name, backend in backends.items()},
        settings={name: settings(name, b, **caching.get(name, {})) for name, b in backends.items()},
        cache=cache,
        cache_ttl_s=100.0,
        clock=clock,
    )


def instant(name: str = "sim", **knobs: object) -> SimulatedBackend:
    knobs.setdefault("ttft_ms", 0)
    return SimulatedBackend(name, tokens_per_s=0, **knobs)  # type: ignore[arg-type]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cache(clock: FakeClock) -> MemoryCache:
    return MemoryCache(clock=clock)  # the same fake time for the tier and the envelope


async def eventually(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll: background work (a refresh) has no event to wait on from outside."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def test_each_model_keeps_answers_for_its_own_ttl(
    clock: FakeClock, cache: MemoryCache
) -> None:
    short, default = instant("short"), instant("default")
    backends = {"short": short, "default": default}
    async with client(clock, cache, backends, short={"ttl_s": 10}) as models:
        for model in backends:
            await models.chat(request(model=model))
        clock.advance(11)
        statuses = [(await models.chat_with_status(request(model=m)))[1] for m in backends]
        assert statuses == ["miss", "hit"]  # the global 100 s still holds for "default"
        clock.advance(90)
        assert (await models.chat_with_status(request(model="default")))[1] == "miss"
        assert (short.calls, default.calls) == (2, 2)


async def test_the_status_says_how_the_cache_answered(clock: FakeClock, cache: MemoryCache) -> None:
    backend = instant()
    async with client(clock, cache, {"m": backend}) as models:
        assert (await models.chat_with_status(request()))[1] == "miss"
        assert (await models.chat_with_status(request()))[1] == "hit"
        assert (await models.chat_with_status(request(temperature=0.7)))[1] == "bypass"
        assert (await models.chat_with_status(request(), cache="bypass"))[1] == "bypass"
        assert models.stats() | {"coalesce_leaders": 0} == {
            "hits": 1,
            "stale_served": 0,
            "misses": 1,
            "bypasses": 2,
            "refreshes": 0,
            "refresh_failures": 0,
            "semantic_hits": 0,
            "semantic_errors": 0,
            "coalesce_leaders": 0,
            "coalesced": 0,
        }


async def test_a_model_with_caching_disabled_is_never_cached(
    clock: FakeClock, cache: MemoryCache
) -> None:
    backend = instant()
    async with client(clock, cache, {"m": backend}, m={"enabled": False}) as models:
        for _ in range(3):
            assert (await models.chat_with_status(request()))[1] == "bypass"
        assert backend.calls == 3
        assert len(cache) == 0


async def test_a_stale_answer_is_served_while_one_refresh_replaces_it(
    clock: FakeClock, cache: MemoryCache
) -> None:
    backend = instant(ttft_ms=50)
    async with client(clock, cache, {"m": backend}, m={"ttl_s": 10, "stale_s": 30}) as models:
        first = await models.chat(request())
        clock.advance(15)
        answers = await asyncio.gather(*(models.chat_with_status(request()) for _ in range(20)))
        assert {status for _, status in answers} == {"stale"}
        assert all(answer == first for answer, _ in answers)  # served at once, not waited for
        await eventually(lambda: models.stats()["refreshes"] == 1 and backend.calls == 2)
        await eventually(lambda: "refreshing=0" in repr(models))
        fresh, status = await models.chat_with_status(request())
        assert status == "hit"
        assert fresh.id != first.id  # the refreshed answer
        assert backend.calls == 2  # twenty stale hits, exactly one refresh
        assert models.stats()["stale_served"] == 20


async def test_a_refresh_and_a_miss_of_the_same_entry_share_one_call(
    clock: FakeClock, cache: MemoryCache
) -> None:
    backend = instant(ttft_ms=1000)
    async with client(clock, cache, {"m": backend}, m={"ttl_s": 10, "stale_s": 30}) as models:
        await models.chat(request())
        clock.advance(15)
        assert (await models.chat_with_status(request()))[1] == "stale"
        await eventually(lambda: backend.inflight == 1)  # the refresh is under way
        clock.advance(30)  # past the stale window: the next request misses ...
        answer, status = await models.chat_with_status(request())
        assert status == "miss"
        assert backend.calls == 2  # ... and waits for the refresh instead of calling again
        assert models.stats()["coalesced"] == 1
        assert (await models.chat(request())) == answer


async def test_a_failed_refresh_keeps_the_stale_answer_until_its_window_ends(
    clock: FakeClock, cache: MemoryCache, caplog: pytest.LogCaptureFixture
) -> None:
    backend = instant()
    async with client(clock, cache, {"m": backend}, m={"ttl_s": 10, "stale_s": 30}) as models:
        first = await models.chat(request())
        backend.configure(error_rate=1.0)
        clock.advance(15)
        with caplog.at_level(logging.WARNING, logger="surgeflow.models"):
            assert await models.chat_with_status(request()) == (first, "stale")
            await eventually(lambda: models.stats()["refresh_failures"] == 1)
        assert "refreshing a stale cached answer of model 'm' failed" in caplog.text
        clock.advance(20)  # 35 s old: still within ttl + stale
        assert await models.chat_with_status(request()) == (first, "stale")
        await eventually(lambda: models.stats()["refresh_failures"] == 2)
        clock.advance(6)  # 41 s old: no longer served, the upstream's error is the answer
        with pytest.raises(UpstreamError):
            await models.chat(request())


async def test_closing_the_client_cancels_a_refresh_in_flight(
    clock: FakeClock, cache: MemoryCache
) -> None:
    backend = instant(ttft_ms=60_000)
    models = client(clock, cache, {"m": backend}, m={"ttl_s": 10, "stale_s": 30})
    async with models:
        backend.configure(ttft_ms=0)
        await models.chat(request())
        backend.configure(ttft_ms=60_000)
        clock.advance(15)
        assert (await models.chat_with_status(request()))[1] == "stale"
        await eventually(lambda: backend.inflight == 1)
        assert "refreshing=1" in repr(models)
    assert "refreshing=0" in repr(models)
    await eventually(lambda: backend.inflight == 0)  # the upstream call was cancelled too
    assert models.stats()["refresh_failures"] == 0  # cancelled, not failed


async def test_an_entry_past_its_stale_window_is_never_served(
    clock: FakeClock, cache: MemoryCache
) -> None:
    backend = instant()
    async with client(clock, cache, {"m": backend}, m={"ttl_s": 10, "stale_s": 5}) as models:
        first = await models.chat(request())
        cache_key = chat_cache_key(request(), scope=None)
        assert cache_key is not None
        # Another tier could still hold it (a slower clock, say): the envelope decides.
        raw = await cache.get(cache_key)
        assert raw is not None
        clock.advance(16)
        await cache.set(cache_key, raw)
        answer, status = await models.chat_with_status(request())
        assert status == "miss"
        assert answer.id != first.id


async def test_answers_are_invalidated_by_their_tags(clock: FakeClock, cache: MemoryCache) -> None:
    backend = instant()
    async with client(clock, cache, {"m": backend}) as models:
        await models.chat(request("faq question"), tags=("faq",))
        await models.chat(request("pricing question"), tags=("pricing-v2", "faq"))
        await models.chat(request("other question"), tags=("other",))
        assert await cache.invalidate_tag("faq") == 2
        statuses = [
            (await models.chat_with_status(request(q)))[1]
            for q in ("faq question", "pricing question", "other question")
        ]
        assert statuses == ["miss", "miss", "hit"]
        with pytest.raises(ValidationError, match="invalid cache tag 'no spaces'"):
            await models.chat(request(), tags=("no spaces",))


async def test_a_refreshed_entry_keeps_its_tags(clock: FakeClock, cache: MemoryCache) -> None:
    backend = instant()
    async with client(clock, cache, {"m": backend}, m={"ttl_s": 10, "stale_s": 30}) as models:
        await models.chat(request(), tags=("faq",))
        clock.advance(15)
        assert (await models.chat_with_status(request()))[1] == "stale"  # no tags this time
        await eventually(lambda: backend.calls == 2 and "refreshing=0" in repr(models))
        assert (await models.chat_with_status(request()))[1] == "hit"
        assert await cache.invalidate_tag("faq") == 1
        assert (await models.chat_with_status(request()))[1] == "miss"


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("{ttl_s: -5}", r"> 0.0 - at `\$.models\[0\].cache.ttl_s`"),
        ("{ttl_s: 0}", r"> 0.0 - at `\$.models\[0\].cache.ttl_s`"),
        ("{stale_s: -1}", r">= 0.0 - at `\$.models\[0\].cache.stale_s`"),
        ("{ttl: 5}", r"unknown field `ttl` - at `\$.models\[0\].cache`"),
        ("{enabled: maybe}", r"\$.models\[0\].cache.enabled"),
    ],
)
def test_a_bad_model_cache_section_is_a_config_error_naming_the_field(
    tmp_path: Path, section: str, message: str
) -> None:
    config = tmp_path / "surgeflow.yaml"
    config.write_text(
        f"models: [{{name: m, endpoints: [{{url: 'http://x/v1'}}], cache: {section}}}]"
    )
    with pytest.raises(ConfigError, match=message):
        load_settings(config, env={})


def test_a_model_cache_section_is_read_from_yaml_and_environment(tmp_path: Path) -> None:
    config = tmp_path / "surgeflow.yaml"
    config.write_text(
        "models: [{name: m, endpoints: [{url: 'http://x/v1'}], cache: {ttl_s: 30, stale_s: 300}}]"
    )
    settings = load_settings(config, env={"SURGEFLOW_CACHE__TTL_S": "120"})
    assert settings.models[0].cache == ModelCacheSettings(ttl_s=30, stale_s=300, enabled=True)
    assert settings.cache.ttl_s == 120


def test_cache_settings_built_in_python_are_checked_too(cache: MemoryCache) -> None:
    backend = instant()
    with pytest.raises(ConfigError, match=r"model 'm': cache.ttl_s must be > 0.*ttl_s=-1"):
        ModelClient({"m": [backend]}, settings={"m": settings("m", backend, ttl_s=-1)}, cache=cache)


async def test_a_model_may_cache_sampling_requests_too(
    clock: FakeClock, cache: MemoryCache
) -> None:
    sampled, plain = instant("sampled"), instant("plain")
    backends = {"sampled": sampled, "plain": plain}
    async with client(clock, cache, backends, sampled={"sampled": True}) as models:
        for model in backends:
            for _ in range(2):
                await models.chat(request(model=model, temperature=0.8))
        assert (sampled.calls, plain.calls) == (1, 2)


async def test_a_shared_model_answers_every_key_from_one_entry(
    clock: FakeClock, cache: MemoryCache
) -> None:
    shared, own = instant("shared"), instant("own")
    backends = {"shared": shared, "own": own}
    async with client(clock, cache, backends, shared={"scope": "shared"}) as models:
        for model in backends:
            for tenant in ("team-a", "team-b"):
                await models.chat(request(model=model), key=RouteKey(key_id=tenant))
        assert (shared.calls, own.calls) == (1, 2)
    assert await cache.clear("chat:shared:") == 1
