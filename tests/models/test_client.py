"""ModelClient: routing by name, round-robin, failover, lifecycle."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from surgeflow.errors import (
    ConfigError,
    Conflict,
    ModelError,
    NotFound,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    ValidationError,
)
from surgeflow.models import (
    ChatChunk,
    ChatRequest,
    ChatResponse,
    ChunkChoice,
    Delta,
    Message,
    ModelClient,
    OpenAIHTTPBackend,
    SimulatedBackend,
)
from surgeflow.routing import NO_KEY

from .conftest import FakeUpstream, collect


def request(model: str = "chat", text: str = "Plan a trip to Lisbon") -> ChatRequest:
    return ChatRequest(model=model, messages=[Message(role="user", content=text)])


def instant(name: str, **options: Any) -> SimulatedBackend:
    return SimulatedBackend(name, ttft_ms=0, tokens_per_s=0, **options)


class ScriptedBackend:
    """Raises ``error`` on every call; a stream may first yield ``chunks_before_error`` chunks."""

    def __init__(self, name: str, error: ModelError, chunks_before_error: int = 0) -> None:
        self.name = name
        self.error = error
        self.chunks_before_error = chunks_before_error
        self.calls = 0
        self.closes = 0

    async def chat(self, request: ChatRequest, *, timeout_s: float | None = None) -> ChatResponse:
        self.calls += 1
        raise self.error

    async def stream(
        self, request: ChatRequest, *, timeout_s: float | None = None
    ) -> AsyncIterator[ChatChunk]:
        self.calls += 1
        for _ in range(self.chunks_before_error):
            yield ChatChunk(
                id="x", model=request.model, choices=[ChunkChoice(0, Delta(content="partial"))]
            )
        raise self.error

    async def aclose(self) -> None:
        self.closes += 1


async def test_round_robin_spreads_calls_evenly() -> None:
    endpoints = [instant(f"sim-{i}") for i in range(3)]
    client = ModelClient({"chat": endpoints})

    for _ in range(30):
        await client.chat(request())

    assert [endpoint.calls for endpoint in endpoints] == [10, 10, 10]


@given(endpoints=st.integers(1, 8), calls=st.integers(0, 200))
def test_pick_never_favours_an_endpoint_by_more_than_one(endpoints: int, calls: int) -> None:
    backends = [instant(f"sim-{i}") for i in range(endpoints)]
    client = ModelClient({"chat": backends})

    router = client.routers["chat"]
    picked = Counter(router.choose(NO_KEY, 0).name for _ in range(calls))

    counts = [picked[backend.name] for backend in backends]
    assert max(counts) - min(counts) <= 1


async def test_failover_to_the_next_endpoint_on_500() -> None:
    broken, healthy = instant("broken", error_rate=1.0), instant("healthy")
    client = ModelClient({"chat": [broken, healthy]})

    replies = [await client.chat(request()) for _ in range(10)]

    assert all(reply.text for reply in replies)
    assert broken.calls == 5
    assert healthy.calls == 10


@pytest.mark.parametrize(
    "error",
    [
        UpstreamTimeout("slow"),
        UpstreamUnavailable("gone"),
        UpstreamError("overloaded", status=503),
    ],
)
async def test_failover_on_transient_errors(error: ModelError) -> None:
    broken, healthy = ScriptedBackend("broken", error), instant("healthy")
    client = ModelClient({"chat": [broken, healthy]})

    await client.chat(request())

    assert (broken.calls, healthy.calls) == (1, 1)


async def test_rate_limited_endpoint_hands_over_to_another() -> None:
    limited, spare = instant("limited", rate_limit_rps=1), instant("spare")
    client = ModelClient({"chat": [limited, spare]})

    for _ in range(4):
        await client.chat(request())

    assert limited.calls == 1  # its second turn was refused with a 429, and retried on spare
    assert spare.calls == 3


async def test_client_errors_are_not_retried() -> None:
    broken, healthy = ScriptedBackend("broken", UpstreamError("bad", status=400)), instant("ok")
    client = ModelClient({"chat": [broken, healthy]})

    with pytest.raises(UpstreamError, match="bad"):
        await client.chat(request())

    assert healthy.calls == 0


async def test_retries_are_bounded_and_prefer_endpoints_not_yet_tried() -> None:
    lone = ScriptedBackend("lone", UpstreamUnavailable("gone"))
    three = [ScriptedBackend(f"b{i}", UpstreamError("down", status=500)) for i in range(3)]
    client = ModelClient({"lone": [lone], "three": three})

    with pytest.raises(UpstreamUnavailable):
        await client.chat(request("lone"))
    with pytest.raises(UpstreamError, match="down"):
        await client.chat(request("three"))

    assert lone.calls == 3  # three attempts in all: with one endpoint, the same one again
    assert [backend.calls for backend in three] == [1, 1, 1]  # each endpoint once


async def test_spent_time_budget_is_not_retried() -> None:
    slow, fast = SimulatedBackend("slow", ttft_ms=2000), instant("fast")
    client = ModelClient({"chat": [slow, fast]})

    with pytest.raises(UpstreamTimeout):
        await client.chat(request(), timeout_s=0.05)

    assert fast.calls == 0


async def test_stream_fails_over_before_the_first_chunk() -> None:
    broken, healthy = ScriptedBackend("broken", UpstreamError("down", status=502)), instant("ok")
    client = ModelClient({"chat": [broken, healthy]})

    chunks = [chunk async for chunk in client.stream(request())]

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == (await healthy.chat(request())).text
    assert broken.calls == 1


async def test_stream_is_not_retried_after_a_chunk() -> None:
    broken = ScriptedBackend("broken", UpstreamError("cut", status=502), chunks_before_error=1)
    healthy = instant("ok")
    client = ModelClient({"chat": [broken, healthy]})
    received: list[ChatChunk] = []

    with pytest.raises(UpstreamError, match="cut"):
        await collect(client.stream(request()), received)

    assert len(received) == 1
    assert healthy.calls == 0


async def test_unknown_model_lists_the_known_ones() -> None:
    client = ModelClient({"chat": [instant("a")], "embed": [instant("b")]})

    with pytest.raises(NotFound, match=r"unknown model 'gpt-9'; known models: chat, embed"):
        await client.chat(request("gpt-9"))
    with pytest.raises(NotFound):
        _ = [chunk async for chunk in client.stream(request("gpt-9"))]


def test_models_and_repr() -> None:
    shared = instant("shared")
    client = ModelClient({"chat": [shared, instant("a")], "code": [shared, instant("b")]})

    assert client.models() == ["chat", "code"]
    # A backend shared by two models is routed (health, limits, latency) separately for each.
    assert repr(client) == "<ModelClient models=2 endpoints=4>"


def test_a_model_without_endpoints_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="'chat' has no endpoints"):
        ModelClient({"chat": []})


async def test_aclose_closes_every_backend_once() -> None:
    shared = ScriptedBackend("shared", UpstreamUnavailable("x"))
    other = ScriptedBackend("other", UpstreamUnavailable("x"))
    client = ModelClient({"chat": [shared, other], "code": [shared]})

    async with client:
        pass
    await client.aclose()

    assert (shared.closes, other.closes) == (1, 1)
    assert repr(client).endswith("closed>")
    with pytest.raises(Conflict):
        await client.chat(request())


async def test_complete_returns_the_text() -> None:
    backend = instant("sim")
    async with ModelClient({"chat": [backend]}) as client:
        text = await client.complete("chat", "Summarise the meeting notes")
        capped = await client.complete(
            "chat",
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
            max_tokens=3,
        )
        with pytest.raises(ValidationError):
            await client.complete("chat", [{"role": "robot", "content": "beep"}])

    assert text == (await instant("x").chat(request("chat", "Summarise the meeting notes"))).text
    assert len(capped.split()) == 3
    assert backend.closed


async def test_failover_between_real_http_endpoints(
    upstream: FakeUpstream, refused_url: str
) -> None:
    dead = OpenAIHTTPBackend("dead", refused_url)
    live = OpenAIHTTPBackend("live", upstream.url)
    async with ModelClient({"chat": [dead, live]}) as client:
        texts = [await client.complete("chat", f"question {i}") for i in range(4)]
        chunks = [chunk async for chunk in client.stream(request())]

    assert all(texts)
    assert chunks
    assert len(upstream.requests) == 5
    assert dead.closed
    assert live.closed


async def test_cancelled_call_leaves_nothing_in_flight() -> None:
    slow = SimulatedBackend("slow", ttft_ms=5000)
    client = ModelClient({"chat": [slow, instant("fast")]})
    task = asyncio.create_task(client.chat(request()))
    await asyncio.sleep(0.01)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert slow.inflight == 0
    assert slow.calls == 1
