"""Streamed chat through the gateway: one write per batch of chunks that arrived together."""

from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import openai
import pytest

from surgeflow.config import (
    EndpointSettings,
    ModelCacheSettings,
    ModelSettings,
    Settings,
    StoreSettings,
)
from surgeflow.errors import UpstreamError
from surgeflow.gateway.chat import _stream
from surgeflow.models import ChatChunk
from surgeflow.models.types import ChunkChoice, Delta
from surgeflow.server import running_gateway
from surgeflow.service import Service
from tests.mockllm import mock_llm_in_process

KEY = "sf-stream"
HEADERS = [(b"content-type", b"text/event-stream")]
NO_CACHE = ModelCacheSettings(enabled=False)  # every stream goes to the upstream


def chunk(text: str) -> ChatChunk:
    return ChatChunk(id="c", model="m", choices=[ChunkChoice(0, Delta(content=text))])


async def batches_of(
    *batches: list[ChatChunk], then: Exception | None = None
) -> AsyncGenerator[list[ChatChunk], None]:
    for batch in batches:
        yield batch
    if then is not None:
        raise then


def event_texts(body: bytes) -> list[str]:
    events = [e.removeprefix(b"data: ") for e in body.split(b"\n\n") if e]
    return [msgspec.json.decode(e, type=ChatChunk).choices[0].delta.content or "" for e in events]


async def sent_by(batches: AsyncGenerator[list[ChatChunk], None]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        messages.append(message)

    await _stream(batches, HEADERS, send)
    return messages


async def test_each_batch_is_one_write() -> None:
    messages = await sent_by(batches_of([chunk("a"), chunk("b"), chunk("c")], [chunk("d")]))

    start, first, second, done = messages
    assert start["type"] == "http.response.start"
    assert start["status"] == 200
    assert event_texts(first["body"]) == ["a", "b", "c"]
    assert event_texts(second["body"]) == ["d"]
    assert first["more_body"]
    assert second["more_body"]
    assert done["body"] == b"data: [DONE]\n\n"
    assert not done.get("more_body", False)


async def test_a_failure_after_a_batch_ends_the_stream_with_an_error_event() -> None:
    failure = UpstreamError("m: upstream failed mid-stream: engine died")
    messages = await sent_by(batches_of([chunk("a"), chunk("b")], then=failure))

    start, first, error = messages
    assert start["status"] == 200
    assert event_texts(first["body"]) == ["a", "b"]
    assert b"engine died" in error["body"]
    assert not error.get("more_body", False)


async def test_a_failure_before_any_chunk_gets_an_error_status() -> None:
    messages = await sent_by(batches_of(then=UpstreamError("m: upstream answered 500", status=500)))

    assert messages[0]["type"] == "http.response.start"
    assert messages[0]["status"] == 502


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[str]:
    async with mock_llm_in_process(ttft_ms=0, tokens_per_s=0) as upstream:
        endpoint = EndpointSettings(url=upstream.url)
        settings = Settings(
            store=StoreSettings(url=f"sqlite:///{tmp_path / 's.db'}"),
            models=[
                ModelSettings(
                    name="m", endpoints=[endpoint], cache=ModelCacheSettings(enabled=False)
                )
            ],
        )
        service = Service(settings, workflows={}, api_keys=[KEY])
        async with service, running_gateway(service) as url:
            yield url


@pytest.mark.parametrize("include_usage", [False, True])
async def test_the_openai_package_reads_a_stream_from_an_http_upstream(
    gateway: str, include_usage: bool
) -> None:
    messages: Any = [{"role": "user", "content": "How long does delivery take?"}]
    async with openai.AsyncOpenAI(base_url=f"{gateway}/v1", api_key=KEY, max_retries=0) as client:
        whole = await client.chat.completions.create(model="m", messages=messages)
        stream = await client.chat.completions.create(
            model="m",
            messages=messages,
            stream=True,
            stream_options={"include_usage": include_usage},
        )
        chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert (chunks[-1].usage is not None) is include_usage
