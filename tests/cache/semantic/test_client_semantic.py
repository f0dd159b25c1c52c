"""The semantic cache inside ModelClient and the gateway: what it serves, to whom, and when not."""

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from surgeflow.cache import MemoryCache
from surgeflow.cache.semantic import OnnxEmbedder, SemanticCache
from surgeflow.config import (
    EndpointSettings,
    ModelCacheSettings,
    ModelSettings,
    SemanticSettings,
    SimulatedSettings,
)
from surgeflow.errors import ConfigError
from surgeflow.models import ChatRequest, Message, ModelClient, SimulatedBackend
from surgeflow.routing import RouteKey
from surgeflow.server import running_gateway
from tests.gateway.conftest import API_KEY, make_service

TENANT = RouteKey(key_id="team-a")


@pytest.fixture(scope="module")
def embedder() -> OnnxEmbedder:
    embedder = OnnxEmbedder()
    embedder.load()
    return embedder


@pytest.fixture
async def semantic(embedder: OnnxEmbedder) -> AsyncIterator[SemanticCache]:
    cache = SemanticCache(embedder)
    yield cache
    await cache.aclose()


def settings(*, semantic: bool = True, threshold: float = 0.7) -> ModelSettings:
    return ModelSettings(
        name="m",
        endpoints=[EndpointSettings(name="sim", url="backend:sim")],
        policy="round_robin",
        cache=ModelCacheSettings(semantic=SemanticSettings(enabled=semantic, threshold=threshold)),
    )


def ask(text: str, *, system: str | None = None) -> ChatRequest:
    messages = [Message(role="user", content=text)]
    if system is not None:
        messages.insert(0, Message(role="system", content=system))
    return ChatRequest(model="m", messages=messages, temperature=0)


@pytest.fixture
def backend() -> SimulatedBackend:
    return SimulatedBackend("sim", ttft_ms=0, tokens_per_s=0)


@pytest.fixture
async def models(
    backend: SimulatedBackend, semantic: SemanticCache
) -> AsyncIterator[tuple[ModelClient, MemoryCache]]:
    cache = MemoryCache()
    client = ModelClient(
        {"m": [backend]}, settings={"m": settings()}, cache=cache, semantic=semantic
    )
    async with client:
        yield client, cache


async def test_a_paraphrase_is_answered_with_the_earlier_answer(
    models: tuple[ModelClient, MemoryCache], backend: SimulatedBackend
) -> None:
    client, _ = models
    first, status = await client.chat_with_status(ask("How do I reset my password?"), key=TENANT)
    assert status == "miss"
    second, status = await client.chat_with_status(
        ask("hey, how can I reset my password please?"), key=TENANT
    )
    assert status == "semantic"
    assert second == first
    assert backend.calls == 1
    assert client.stats()["semantic_hits"] == 1


@pytest.mark.parametrize(
    ("cached", "asked"),
    [
        ("Convert 100 USD to EUR", "Convert 150 USD to EUR"),
        ("Convert 100 USD to EUR", "Convert 100 EUR to USD"),
        ("Can I return shoes without a receipt?", "Can I return shoes with a receipt?"),
        ("What is the capital of Austria?", "What is the capital of Australia?"),
    ],
)
async def test_a_look_alike_is_not_served(
    models: tuple[ModelClient, MemoryCache], backend: SimulatedBackend, cached: str, asked: str
) -> None:
    client, _ = models
    await client.chat(ask(cached), key=TENANT)
    _, status = await client.chat_with_status(ask(asked), key=TENANT)
    assert status == "miss"
    assert backend.calls == 2


async def test_another_tenant_or_conversation_never_shares_an_answer(
    models: tuple[ModelClient, MemoryCache], backend: SimulatedBackend
) -> None:
    client, _ = models
    await client.chat(ask("How do I reset my password?"), key=TENANT)
    paraphrase = "how can I reset my password please?"
    _, status = await client.chat_with_status(ask(paraphrase), key=RouteKey(key_id="team-b"))
    assert status == "miss"
    _, status = await client.chat_with_status(
        ask(paraphrase, system="You answer in French."), key=TENANT
    )
    assert status == "miss"
    assert backend.calls == 3


async def test_an_invalidated_answer_is_not_served_by_meaning_either(
    models: tuple[ModelClient, MemoryCache], backend: SimulatedBackend, semantic: SemanticCache
) -> None:
    client, cache = models
    await client.chat(ask("How do I reset my password?"), key=TENANT)
    assert len(semantic) == 1
    assert await cache.clear("chat:team-a:") == 1
    _, status = await client.chat_with_status(ask("how can I reset my password?"), key=TENANT)
    assert status == "miss"
    assert backend.calls == 2
    # The entry that pointed to the deleted answer is gone; the new prompt has its own.
    assert len(semantic) == 1


async def test_requests_it_cannot_judge_skip_it(
    models: tuple[ModelClient, MemoryCache], semantic: SemanticCache
) -> None:
    client, _ = models
    parts = [{"type": "text", "text": "What is in this picture?"}]
    await client.chat(
        ChatRequest(model="m", messages=[Message(role="user", content=parts)], temperature=0)
    )
    await client.chat(
        ChatRequest(
            model="m",
            messages=[
                Message(role="user", content="hi"),
                Message(role="assistant", content="hello"),
            ],
            temperature=0,
        )
    )
    assert semantic.lookups == 0


async def test_enabling_it_without_a_semantic_cache_is_a_config_error(
    backend: SimulatedBackend,
) -> None:
    with pytest.raises(ConfigError, match=r"cache\.semantic"):
        ModelClient({"m": [backend]}, settings={"m": settings()}, cache=MemoryCache())


async def test_the_gateway_says_semantic_and_counts_it(tmp_path: Path) -> None:
    model = ModelSettings(
        name="sim-small",
        endpoints=[EndpointSettings(name="sim-a", simulated=SimulatedSettings(seed=1))],
        cache=ModelCacheSettings(semantic=SemanticSettings(enabled=True)),
    )
    async with make_service(tmp_path, models=[model]) as service, running_gateway(service) as url:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        statuses = []
        async with aiohttp.ClientSession(url, headers=headers) as http:
            for text in ("How long does shipping take?", "How long does shipping usually take?"):
                body = {
                    "model": "sim-small",
                    "temperature": 0,
                    "messages": [{"role": "user", "content": text}],
                }
                async with http.post("/v1/chat/completions", json=body) as response:
                    assert response.status == 200
                    statuses.append(response.headers["X-Surgeflow-Cache"])
                    msgspec.json.decode(await response.read())
            async with http.get("/metrics") as response:
                text = await response.text()
    assert statuses == ["miss", "semantic"]
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("surgeflow_semantic_lookups_total", ())] == 2
    assert samples[("surgeflow_semantic_entries", ())] == 1
    assert samples[("surgeflow_cache_requests_total", (("status", "semantic"),))] == 1
    assert samples[("surgeflow_semantic_hit_similarity_count", ())] == 1
