"""The chat cache through the gateway, against a mock-llm process that counts its calls."""

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from surgeflow.auth import hash_secret
from surgeflow.config import EndpointSettings, ModelSettings, Settings, StoreSettings
from surgeflow.server import running_gateway
from surgeflow.service import Service
from tests.mockllm import MockLLM, mock_llm

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
