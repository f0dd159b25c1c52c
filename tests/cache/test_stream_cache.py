"""Streamed answers share cache entries with plain ones: stored when a stream ends, replayed on a
hit; through ModelClient, then through the gateway with the unmodified ``openai`` client."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest

from surgeflow.cache import MemoryCache
from surgeflow.config import EndpointSettings, ModelSettings, Settings, StoreSettings
from surgeflow.errors import UpstreamError
from surgeflow.models import ChatRequest, Message, ModelClient, SimulatedBackend
from surgeflow.models.types import ChatChunk
from surgeflow.server import running_gateway
from surgeflow.service import Service
from tests.mockllm import MockLLM, mock_llm_in_process

QUESTION = "Tell me about shipping times"


def request(**params: Any) -> ChatRequest:
    params.setdefault("temperature", 0)
    return ChatRequest(model="m", messages=[Message(role="user", content=QUESTION)], **params)


def text_of(chunks: list[ChatChunk]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


class BreaksMidStream(SimulatedBackend):
    """Streams two chunks, then fails."""

    async def stream(  # type: ignore[override]
        self, request: ChatRequest, *, timeout_s: float | None = None
    ) -> AsyncIterator[ChatChunk]:
        count = 0
        async for chunk in super().stream(request, timeout_s=timeout_s):
            if count == 2:
                raise UpstreamError("the upstream went away mid-stream", status=502)
            count += 1
            yield chunk


def instant(backend_type: type[SimulatedBackend] = SimulatedBackend, **knobs: Any) -> Any:
    knobs.setdefault("ttft_ms", 0)
    knobs.setdefault("tokens_per_s", 0)
    return backend_type("sim", **knobs)


async def test_a_streamed_miss_is_stored_and_answers_a_plain_request() -> None:
    backend = instant()
    async with ModelClient({"m": [backend]}, cache=MemoryCache()) as models:
        batches, status = await models.stream_with_status(request(stream=True))
        streamed = [chunk async for batch in batches for chunk in batch]
        assert status == "miss"
        answer, status = await models.chat_with_status(request())
        assert status == "hit"
        assert answer.text == text_of(streamed)
        assert backend.calls == 1


async def test_a_plain_answer_is_replayed_to_a_stream() -> None:
    backend = instant()
    async with ModelClient({"m": [backend]}, cache=MemoryCache()) as models:
        answer = await models.chat(request())
        batches, status = await models.stream_with_status(
            request(stream=True, stream_options={"include_usage": True})
        )
        [replayed] = [batch async for batch in batches]  # a stored answer is there at once
        assert status == "hit"
        assert text_of(replayed) == answer.text
        assert replayed[-1].usage == answer.usage
        assert [c.choices[0].finish_reason for c in replayed[:2]] == [None, "stop"]
        streamed = [chunk async for chunk in models.stream(request(stream=True))]  # also cached
        assert text_of(streamed) == answer.text
        assert backend.calls == 1


async def test_a_stream_left_early_is_not_stored() -> None:
    backend = instant()
    async with ModelClient({"m": [backend]}, cache=MemoryCache()) as models:
        batches, _ = await models.stream_with_status(request(stream=True))
        await anext(batches)
        await anext(batches)
        await batches.aclose()
        assert (await models.chat_with_status(request()))[1] == "miss"
        assert backend.calls == 2


async def test_a_stream_that_fails_midway_is_not_stored() -> None:
    backend = instant(BreaksMidStream)
    async with ModelClient({"m": [backend]}, cache=MemoryCache()) as models:
        batches, _ = await models.stream_with_status(request(stream=True))
        with pytest.raises(UpstreamError, match="mid-stream"):
            async for _ in batches:
                pass
        assert (await models.chat_with_status(request()))[1] == "miss"


async def test_a_cancelled_stream_is_not_stored() -> None:
    backend = instant(tokens_per_s=20)  # a few seconds of tokens
    async with ModelClient({"m": [backend]}, cache=MemoryCache()) as models:
        first = asyncio.Event()

        async def read() -> None:
            async for _ in models.stream(request(stream=True)):
                first.set()

        reader = asyncio.create_task(read())
        await first.wait()
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        backend.configure(tokens_per_s=0)
        assert (await models.chat_with_status(request()))[1] == "miss"
        assert backend.inflight == 0


# Through the gateway, counted at a mock-llm upstream.

API_KEY = "sf-stream-test"


@pytest.fixture
async def upstream() -> AsyncIterator[MockLLM]:
    async with mock_llm_in_process(ttft_ms=0, tokens_per_s=0) as mock:
        yield mock


@pytest.fixture
async def gateway(tmp_path: Path, upstream: MockLLM) -> AsyncIterator[str]:
    settings = Settings(
        store=StoreSettings(url=f"sqlite:///{tmp_path / 's.db'}"),
        models=[ModelSettings(name="m", endpoints=[EndpointSettings(url=upstream.url)])],
    )
    service = Service(settings, workflows={}, api_keys=[API_KEY])
    async with service, running_gateway(service) as url:
        yield url


async def ask_streamed(client: openai.AsyncOpenAI, **options: Any) -> tuple[str, str, Any]:
    """The streamed answer's text, its X-Surgeflow-Cache header and its usage (if any)."""
    options.setdefault("temperature", 0)
    raw = await client.chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": QUESTION}], stream=True, **options
    )
    stream = raw.parse()
    pieces: list[str] = []
    usage = None
    async for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
        usage = chunk.usage or usage
    return "".join(pieces), raw.headers["x-surgeflow-cache"], usage


async def test_streamed_and_plain_requests_share_one_upstream_call(
    gateway: str, upstream: MockLLM
) -> None:
    async with openai.AsyncOpenAI(
        base_url=f"{gateway}/v1", api_key=API_KEY, max_retries=0
    ) as client:
        text, status, _ = await ask_streamed(client)
        assert status == "miss"
        assert (await upstream.stats())["requests"] == 1
        again, status, _ = await ask_streamed(client, stream_options={"include_usage": True})
        assert (again, status) == (text, "hit")
        raw = await client.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": QUESTION}], temperature=0
        )
        assert raw.headers["x-surgeflow-cache"] == "hit"
        assert raw.parse().choices[0].message.content == text
        assert (await upstream.stats())["requests"] == 1  # three answers, one upstream call


async def test_a_plain_answer_with_usage_is_replayed_to_a_streaming_openai_client(
    gateway: str, upstream: MockLLM
) -> None:
    async with openai.AsyncOpenAI(
        base_url=f"{gateway}/v1", api_key=API_KEY, max_retries=0
    ) as client:
        whole = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": QUESTION}], temperature=0
        )
        text, status, usage = await ask_streamed(client, stream_options={"include_usage": True})
        assert (text, status) == (whole.choices[0].message.content, "hit")
        assert usage is not None
        assert usage.total_tokens == whole.usage.total_tokens  # type: ignore[union-attr]
        sampled, status, _ = await ask_streamed(client, temperature=0.9)
        assert status == "bypass"
        assert sampled
        assert (await upstream.stats())["requests"] == 2
