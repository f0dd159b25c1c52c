"""The chat cache through the gateway, against a mock-llm process that counts its calls."""

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from surgeflow.auth import hash_secret, new_key
from surgeflow.cache.keys import chat_cache_key
from surgeflow.config import (
    EndpointSettings,
    ModelCacheSettings,
    ModelSettings,
    Settings,
    StoreSettings,
)
from surgeflow.models import ChatRequest, Message
from surgeflow.server import running_gateway
from surgeflow.service import Service
from tests.mockllm import MockLLM, mock_llm, mock_llm_in_process

pytestmark = pytest.mark.slow


@pytest.fixture
async def upstream() -> AsyncIterator[MockLLM]:
    async with mock_llm(ttft_ms=1000, tokens_per_s=0, latency="constant") as mock:
        yield mock


@pytest.fixture
async def gateway(tmp_path: Path, upstream: MockLLM) -> AsyncIterator[str]:
    settings = Settings(
        store=StoreSettings(url=f"sqlite:///{tmp_path / 'c.db'}"),
        models=[ModelSettings(name="m", endpoints=[EndpointSettings(url=upstream.url)])],
    )
    service = Service(settings, workflows={}, api_keys=["team-a", "team-b"], admin_keys=["root"])
    async with service, running_gateway(service) as url:
        yield url


def body(temperature: float = 0.0) -> dict[str, Any]:
    return {
        "model": "m",
        "temperature": temperature,
        "messages": [{"role": "user", "content": "What is the refund window?"}],
    }


async def test_a_thousand_identical_requests_make_one_upstream_call(
    gateway: str, upstream: MockLLM
) -> None:
    connector = aiohttp.TCPConnector(limit=1000)
    headers = {"Authorization": "Bearer team-a"}
    async with aiohttp.ClientSession(gateway, headers=headers, connector=connector) as http:

        async def ask() -> str:
            async with http.post("/v1/chat/completions", json=body()) as response:
                assert response.status == 200
                answer: str = (await response.json())["choices"][0]["message"]["content"]
                return answer

        answers = await asyncio.gather(*(ask() for _ in range(1000)))
    assert len(set(answers)) == 1
    assert (await upstream.stats())["requests"] == 1


async def test_headers_opt_in_and_out_and_tenants_stay_apart(
    gateway: str, upstream: MockLLM
) -> None:
    async with aiohttp.ClientSession(gateway) as http:

        async def ask(key: str, payload: dict[str, Any], **headers: str) -> None:
            headers["Authorization"] = f"Bearer {key}"
            async with http.post("/v1/chat/completions", json=payload, headers=headers) as r:
                assert r.status == 200

        await ask("team-a", body())
        await ask("team-a", body())  # cached
        await ask("team-b", body())  # another tenant: its own call
        assert (await upstream.stats())["requests"] == 2
        await ask("team-a", body(), **{"Cache-Control": "no-store"})
        assert (await upstream.stats())["requests"] == 3
        await ask("team-a", body(0.7))
        await ask("team-a", body(0.7))  # sampled: not cached by default
        assert (await upstream.stats())["requests"] == 5
        await ask("team-a", body(0.7), **{"X-Surgeflow-Cache": "on"})
        await ask("team-a", body(0.7), **{"X-Surgeflow-Cache": "on"})
        assert (await upstream.stats())["requests"] == 6


async def test_admin_invalidates_one_tenants_answers_and_the_cli_all(
    gateway: str, upstream: MockLLM
) -> None:
    async with aiohttp.ClientSession(gateway) as http:

        async def ask(key: str) -> None:
            headers = {"Authorization": f"Bearer {key}"}
            async with http.post("/v1/chat/completions", json=body(), headers=headers) as r:
                assert r.status == 200

        async def clear(key: str, prefix: str) -> tuple[int, Any]:
            headers = {"Authorization": f"Bearer {key}"}
            params = {"prefix": prefix}
            async with http.delete("/v1/admin/cache", headers=headers, params=params) as r:
                return r.status, await r.json()

        await ask("team-a")
        await ask("team-b")
        assert (await upstream.stats())["requests"] == 2
        assert (await clear("team-a", ""))[0] == 403  # tenants may not clear caches
        tenant = "env-" + hash_secret("team-a")[:8]  # the key id of a bootstrap key
        status, result = await clear("root", f"chat:{tenant}:")
        assert (status, result["deleted"]) == (200, 1)
        await ask("team-a")  # its answer is gone: a new upstream call
        await ask("team-b")  # still cached
        assert (await upstream.stats())["requests"] == 3

    cli = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "surgeflow", "cache", "clear", "--url", gateway, "--key", "root"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output = (await asyncio.wait_for(cli.communicate(), 30))[0].decode()
    assert cli.returncode == 0, output
    assert "deleted 2 cached entries" in output


# Against an instant in-process upstream: status headers, tags and invalidation.


@pytest.fixture
async def quick_upstream() -> AsyncIterator[MockLLM]:
    async with mock_llm_in_process(ttft_ms=0, tokens_per_s=0) as mock:
        yield mock


@pytest.fixture
async def quick_url(tmp_path: Path, quick_upstream: MockLLM) -> AsyncIterator[str]:
    endpoint = EndpointSettings(url=quick_upstream.url)
    settings = Settings(
        store=StoreSettings(url=f"sqlite:///{tmp_path / 'q.db'}"),
        models=[
            ModelSettings(name="m", endpoints=[endpoint]),
            # Fresh for 0.5 s, then served stale for a minute while it is refreshed.
            ModelSettings(
                name="swr", endpoints=[endpoint], cache=ModelCacheSettings(ttl_s=0.5, stale_s=60)
            ),
            ModelSettings(
                name="off", endpoints=[endpoint], cache=ModelCacheSettings(enabled=False)
            ),
        ],
    )
    service = Service(settings, workflows={}, api_keys=["team-a"], admin_keys=["root"])
    async with service, running_gateway(service) as url:
        yield url


@pytest.fixture
async def quick(quick_url: str) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(quick_url) as http:
        yield http


async def chat(
    http: aiohttp.ClientSession,
    text: str = "What is the refund window?",
    *,
    model: str = "m",
    temperature: float = 0.0,
    **headers: str,
) -> tuple[int, str | None, Any]:
    """Status, X-Surgeflow-Cache and body of one chat completion as team-a."""
    payload = {
        "model": model,
        "temperature": temperature,
        "messages": [{"role": "user", "content": text}],
    }
    headers["Authorization"] = "Bearer team-a"
    async with http.post("/v1/chat/completions", json=payload, headers=headers) as response:
        return response.status, response.headers.get("X-Surgeflow-Cache"), await response.json()


async def admin_clear(http: aiohttp.ClientSession, **params: str) -> tuple[int, Any]:
    headers = {"Authorization": "Bearer root"}
    async with http.delete("/v1/admin/cache", params=params, headers=headers) as response:
        return response.status, await response.json()


async def test_the_cache_status_header_says_how_each_answer_was_made(
    quick: aiohttp.ClientSession, quick_upstream: MockLLM
) -> None:
    assert (await chat(quick))[1] == "miss"
    assert (await chat(quick))[1] == "hit"
    assert (await chat(quick, **{"Cache-Control": "no-store"}))[1] == "bypass"
    assert (await chat(quick, temperature=0.7))[1] == "bypass"
    assert (await chat(quick, model="off"))[1] == "bypass"
    assert (await upstream_requests(quick_upstream)) == 4

    _, status, first = await chat(quick, model="swr")
    assert status == "miss"
    await asyncio.sleep(0.6)  # past the 0.5 s TTL, well inside the stale window
    _, status, stale = await chat(quick, model="swr")
    assert (status, stale) == ("stale", first)
    for _ in range(500):  # the refresh runs in the background; stale until it has stored
        _, status, fresh = await chat(quick, model="swr")
        if status == "hit":
            break
        assert status == "stale"
        await asyncio.sleep(0.01)
    assert status == "hit"
    assert fresh["id"] != first["id"]  # the refreshed answer


async def upstream_requests(upstream: MockLLM) -> int:
    requests: int = (await upstream.stats())["requests"]
    return requests


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("faq,,pricing", "invalid cache tag ''"),
        ("faq,no spaces", "invalid cache tag 'no spaces'"),
        (",".join(f"t{i}" for i in range(9)), "at most 8 cache tags"),
        ("x" * 65, "1 to 64"),
    ],
)
async def test_bad_cache_tags_are_refused_saying_why(
    quick: aiohttp.ClientSession, header: str, message: str
) -> None:
    status, _, body = await chat(quick, **{"X-Surgeflow-Cache-Tags": header})
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"
    assert "X-Surgeflow-Cache-Tags" in body["error"]["message"]
    assert message in body["error"]["message"]


async def test_admin_invalidates_by_tag_and_by_exact_key(
    quick: aiohttp.ClientSession, quick_upstream: MockLLM
) -> None:
    await chat(quick, "faq one", **{"X-Surgeflow-Cache-Tags": "faq"})
    await chat(quick, "faq two", **{"X-Surgeflow-Cache-Tags": "faq, pricing-v2"})
    await chat(quick, "untagged")
    assert await admin_clear(quick, tag="faq") == (
        200,
        {"object": "cache.cleared", "tag": "faq", "deleted": 2},
    )
    statuses = [(await chat(quick, text))[1] for text in ("faq one", "faq two", "untagged")]
    assert statuses == ["miss", "miss", "hit"]

    tenant = "env-" + hash_secret("team-a")[:8]
    # 0.0, not 0: JSON numbers arrive as floats, and the key encodes the value as it is.
    request = ChatRequest(
        model="m", temperature=0.0, messages=[Message(role="user", content="untagged")]
    )
    key = chat_cache_key(request, scope=tenant)
    assert key is not None
    assert (await admin_clear(quick, key=key))[1]["deleted"] == 1
    assert (await admin_clear(quick, key=key))[1]["deleted"] == 0
    assert (await chat(quick, "untagged"))[1] == "miss"
    assert await upstream_requests(quick_upstream) == 6


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"key": "chat:x", "tag": "faq"}, "exactly one of ?key=, ?tag= or ?prefix="),
        ({"tag": "no spaces"}, "invalid cache tag"),
    ],
)
async def test_admin_cache_selectors_are_checked(
    quick: aiohttp.ClientSession, params: dict[str, str], message: str
) -> None:
    status, body = await admin_clear(quick, **params)
    assert status == 400
    assert message in body["error"]["message"]


async def test_the_cli_clears_by_tag_and_by_cache_key(
    quick: aiohttp.ClientSession, quick_url: str
) -> None:
    url = quick_url
    await chat(quick, "faq one", **{"X-Surgeflow-Cache-Tags": "faq"})
    await chat(quick, "other")

    async def cli(*args: str) -> tuple[int | None, str]:
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "surgeflow", "cache", "clear", "--url", url, "--key", "root"),
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output = (await asyncio.wait_for(process.communicate(), 30))[0].decode()
        return process.returncode, output

    code, output = await cli("--tag", "faq")
    assert (code, "deleted 1 cached entries" in output) == (0, True), output
    tenant = "env-" + hash_secret("team-a")[:8]
    request = ChatRequest(
        model="m", temperature=0.0, messages=[Message(role="user", content="other")]
    )
    code, output = await cli("--cache-key", chat_cache_key(request, scope=tenant) or "")
    assert (code, "deleted 1 cached entries" in output) == (0, True), output
    code, output = await cli("--tag", "faq", "--prefix", "chat:")
    assert code == 2
    assert "at most one of --prefix, --tag and --cache-key" in output


async def test_a_key_created_with_no_cache_never_uses_the_cache(
    tmp_path: Path, upstream: MockLLM
) -> None:
    settings = Settings(
        store=StoreSettings(url=f"sqlite:///{tmp_path / 'k.db'}"),
        models=[ModelSettings(name="m", endpoints=[EndpointSettings(url=upstream.url)])],
    )
    service = Service(settings, workflows={})
    no_cache_secret, no_cache = new_key("compliance", cache=False)
    cached_secret, cached = new_key("everyone-else")
    async with service:
        await service.store.add_api_key(no_cache)
        await service.store.add_api_key(cached)
        await service.keys.refresh()
        assert not service.keys.caches(no_cache.id)
        assert service.keys.caches(cached.id)
        async with running_gateway(service) as url, aiohttp.ClientSession(url) as http:

            async def status(secret: str) -> str:
                headers = {"Authorization": f"Bearer {secret}"}
                async with http.post("/v1/chat/completions", json=body(), headers=headers) as r:
                    assert r.status == 200
                    return r.headers["X-Surgeflow-Cache"]

            assert [await status(no_cache_secret) for _ in range(2)] == ["bypass", "bypass"]
            assert [await status(cached_secret) for _ in range(2)] == ["miss", "hit"]
    assert (await upstream.stats())["requests"] == 3
