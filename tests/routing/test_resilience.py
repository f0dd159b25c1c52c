"""The router against real mock-llm processes: failing, hanging and rate-limited endpoints."""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import pytest

from surgeflow.config import (
    BreakerSettings,
    EndpointSettings,
    HedgeSettings,
    ModelSettings,
    RetrySettings,
    Settings,
    StoreSettings,
)
from surgeflow.errors import UpstreamError
from surgeflow.models.client import ModelClient
from surgeflow.models.openai_http import OpenAIHTTPBackend
from surgeflow.models.types import ChatRequest, Message
from surgeflow.routing.health import HealthState
from surgeflow.server import running_gateway
from surgeflow.service import Service, build_model_client
from tests.mockllm import MockLLM, mock_llm

pytestmark = pytest.mark.slow

FAST = {"ttft_ms": 5, "tokens_per_s": 0, "latency": "constant"}


def request(n: int = 0) -> ChatRequest:
    return ChatRequest(model="m", messages=[Message(role="user", content=f"question {n}")])


def model_settings(mocks: Sequence[MockLLM], **overrides: Any) -> ModelSettings:
    endpoints = [EndpointSettings(url=m.url, name=f"ep{i}") for i, m in enumerate(mocks)]
    return ModelSettings(name="m", endpoints=endpoints, **overrides)


def client_for(mocks: Sequence[MockLLM], **overrides: Any) -> ModelClient:
    settings = model_settings(mocks, **overrides)
    backends = [OpenAIHTTPBackend(f"ep{i}", m.url) for i, m in enumerate(mocks)]
    return ModelClient({"m": backends}, settings={"m": settings})


@contextlib.asynccontextmanager
async def mocks(*knobs: dict[str, Any]) -> AsyncIterator[list[MockLLM]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(mock_llm(**k)) for k in knobs]  # type: ignore[misc]


async def test_an_endpoint_returning_500s_is_ejected_and_clients_see_no_error() -> None:
    async with mocks({**FAST, "error_rate": 1.0}, FAST) as (broken, healthy):
        async with client_for(
            [broken, healthy], policy="round_robin", health=BreakerSettings(consecutive_failures=3)
        ) as client:
            for n in range(60):
                answer = await client.chat(request(n), timeout_s=5)
                assert answer.choices[0].message.content
            router = client.routers["m"]
            assert router.endpoints[0].health is not None
            assert router.endpoints[0].health.state is not HealthState.HEALTHY
        broken_stats = await broken.stats()
        assert broken_stats["requests"] <= 4  # three strikes, then out (plus a probe at most)
        assert (await healthy.stats())["requests"] >= 57


async def test_a_hanging_endpoint_is_timed_out_and_retried_elsewhere() -> None:
    async with mocks({**FAST, "hang_rate": 1.0}, FAST) as (hanging, healthy):
        retry = RetrySettings(attempts=2, attempt_timeout_s=0.3, backoff_s=0.001)
        async with client_for([hanging, healthy], policy="round_robin", retry=retry) as client:
            started = time.monotonic()
            answers = await asyncio.gather(
                *(client.chat(request(n), timeout_s=5) for n in range(6))
            )
            assert all(a.choices for a in answers)
            assert time.monotonic() - started < 4  # a hang would cost 5 s per call
        assert (await hanging.stats())["requests"] >= 1


async def test_a_429_storm_is_absorbed_by_cooling_the_endpoint_down() -> None:
    storm = {**FAST, "rate_429": 1.0, "retry_after_s": 30}
    async with mocks(storm, FAST) as (limited, healthy):
        async with client_for([limited, healthy], policy="round_robin") as client:
            for n in range(40):
                await client.chat(request(n), timeout_s=5)
            limits = client.routers["m"].endpoints[0].limits
            assert limits is not None
            assert not limits.available(0)  # cooling down for the Retry-After it was given
        assert (await limited.stats())["requests"] == 1  # one 429, then left alone
        assert (await healthy.stats())["requests"] == 40


async def test_a_model_that_cannot_answer_falls_back_to_another() -> None:
    async with mocks({**FAST, "error_rate": 1.0}, FAST) as (broken, backup):
        primary = ModelSettings(
            name="m",
            endpoints=[EndpointSettings(url=broken.url)],
            fallbacks=["backup"],
            retry=RetrySettings(attempts=1),
        )
        secondary = ModelSettings(name="backup", endpoints=[EndpointSettings(url=backup.url)])
        client = ModelClient(
            {
                "m": [OpenAIHTTPBackend("b", broken.url)],
                "backup": [OpenAIHTTPBackend("k", backup.url)],
            },
            settings={"m": primary, "backup": secondary},
        )
        async with client:
            answer = await client.chat(request(), timeout_s=5)
            assert answer.model in ("backup", "mock")
            assert (await backup.stats())["requests"] == 1
            without = ModelClient(
                {"m": [OpenAIHTTPBackend("b2", broken.url)]},
                settings={"m": model_settings([broken], retry=RetrySettings(attempts=1))},
            )
            async with without:
                with pytest.raises(UpstreamError):
                    await without.chat(request(), timeout_s=5)


async def test_hedging_answers_from_the_fast_endpoint_when_the_first_is_slow() -> None:
    async with mocks({**FAST, "ttft_ms": 2000}, FAST) as (slow, fast):
        hedge = HedgeSettings(enabled=True, after_s=0.05)
        async with client_for([slow, fast], policy="round_robin", hedge=hedge) as client:
            started = time.monotonic()
            for n in range(4):
                await client.chat(request(n), timeout_s=10)
            assert time.monotonic() - started < 4  # unhedged: 4 x 2 s
            router = client.routers["m"]
            assert router.hedges >= 1
            assert router.hedge_wins >= 1
            assert all(e.inflight == 0 for e in router.endpoints)


async def test_a_cancelled_client_request_releases_its_slot(tmp_path: Any) -> None:
    async with mock_llm(ttft_ms=3000, tokens_per_s=0, latency="constant") as slow:
        settings = Settings(
            store=StoreSettings(url=f"sqlite:///{tmp_path / 'g.db'}"),
            models=[model_settings([slow], policy="least_connections")],
        )
        service = Service(settings, models=build_model_client(settings), api_keys=["k"])
        async with service, running_gateway(service) as url:
            endpoint = service.models.routers["m"].endpoints[0]
            body = {"model": "m", "messages": [{"role": "user", "content": "wait"}]}
            async with aiohttp.ClientSession(headers={"Authorization": "Bearer k"}) as http:
                call = asyncio.ensure_future(http.post(f"{url}/v1/chat/completions", json=body))
                for _ in range(100):
                    if endpoint.inflight:
                        break
                    await asyncio.sleep(0.01)
                assert endpoint.inflight == 1
                call.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await call
            for _ in range(200):
                if endpoint.inflight == 0 and (await slow.stats())["inflight"] == 0:
                    break
                await asyncio.sleep(0.01)
            assert endpoint.inflight == 0
            assert endpoint.limits is not None
            assert endpoint.limits.inflight == 0
            assert (await slow.stats())["inflight"] == 0  # the upstream call was cancelled too


async def test_admin_endpoints_need_an_admin_key(tmp_path: Any) -> None:
    settings = Settings(store=StoreSettings(url=f"sqlite:///{tmp_path / 'a.db'}"))
    service = Service(settings, api_keys=["user"], admin_keys=["root"])
    async with service, running_gateway(service) as url, aiohttp.ClientSession(url) as http:
        async with http.get("/v1/admin/endpoints", headers={"Authorization": "Bearer user"}) as r:
            assert r.status == 403
        async with http.get("/v1/admin/endpoints", headers={"Authorization": "Bearer root"}) as r:
            listing = await r.json()
        assert r.status == 200
        (model,) = listing["data"]
        assert model["model"] == "sim-small"
        assert model["policy"] == "p2c_ewma"
        assert [e["name"] for e in model["endpoints"]] == ["sim-a", "sim-b"]
        assert model["endpoints"][0]["health"]["state"] == "healthy"
