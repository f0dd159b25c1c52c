"""OpenAIHTTPBackend against a real OpenAI-compatible server on loopback."""

from __future__ import annotations

import asyncio
import email.utils
import time
from typing import Any

import aiohttp
import pytest

from surgeflow.errors import RateLimited, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from surgeflow.models import (
    ChatChunk,
    ChatRequest,
    Message,
    ModelBackend,
    OpenAIHTTPBackend,
    SimulatedBackend,
    openai_http,
)

from .conftest import FakeUpstream, collect


def request(text: str = "How do I size a connection pool?", **fields: Any) -> ChatRequest:
    return ChatRequest(model="fake-7b", messages=[Message(role="user", content=text)], **fields)


def text_of(chunks: list[ChatChunk]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


async def expected_text(req: ChatRequest) -> str:
    return (await SimulatedBackend("x", ttft_ms=0, tokens_per_s=0).chat(req)).text


async def test_is_a_model_backend(backend: OpenAIHTTPBackend) -> None:
    assert isinstance(backend, ModelBackend)


async def test_chat_round_trip(backend: OpenAIHTTPBackend, upstream: FakeUpstream) -> None:
    req = request(stream=True)  # the backend decides the wire's stream flag, not the caller

    reply = await backend.chat(req)

    assert reply.text == await expected_text(req)
    assert reply.usage is not None
    assert reply.usage.completion_tokens == len(reply.text.split())
    assert upstream.requests[0].get("stream", False) is False  # omitted: the default
    assert upstream.requests[0]["model"] == "fake-7b"
    assert "Authorization" not in upstream.headers[0]
    assert backend.inflight == 0


async def test_api_key_and_model_rename(upstream: FakeUpstream) -> None:
    http = OpenAIHTTPBackend("vllm", upstream.url + "/", api_key="sk-test", model="org/served")
    try:
        await http.chat(request())
    finally:
        await http.aclose()

    assert upstream.headers[0]["Authorization"] == "Bearer sk-test"
    assert upstream.requests[0]["model"] == "org/served"


async def test_aclose_before_first_use_opens_nothing(upstream: FakeUpstream) -> None:
    http = OpenAIHTTPBackend("fake", upstream.url)
    await http.aclose()

    assert http.closed
    assert upstream.connections == 0


@pytest.mark.parametrize("piece_bytes", [1, 7, 13, 100_000])
async def test_stream_reassembles_from_split_writes(
    backend: OpenAIHTTPBackend, upstream: FakeUpstream, piece_bytes: int
) -> None:
    upstream.piece_bytes = piece_bytes
    req = request(stream_options={"include_usage": True})

    chunks = [chunk async for chunk in backend.stream(req)]

    assert text_of(chunks) == await expected_text(req)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(text_of(chunks).split())
    assert upstream.requests[0]["stream"] is True
    assert backend.inflight == 0


async def test_stream_accepts_crlf_and_a_missing_done(
    backend: OpenAIHTTPBackend, upstream: FakeUpstream
) -> None:
    upstream.line_end = b"\r\n"
    upstream.behaviour = "stream_no_done"
    req = request()

    chunks = [chunk async for chunk in backend.stream(req)]

    assert text_of(chunks) == await expected_text(req)


async def test_stream_ends_at_done_when_the_body_lingers(
    backend: OpenAIHTTPBackend, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(openai_http, "_DRAIN_S", 0.05)
    upstream.behaviour = "stream_linger"
    req = request()
    started = time.perf_counter()

    chunks = [chunk async for chunk in backend.stream(req)]

    assert text_of(chunks) == await expected_text(req)
    assert time.perf_counter() - started < 1.0


async def test_streams_reuse_one_connection(
    backend: OpenAIHTTPBackend, upstream: FakeUpstream
) -> None:
    for i in range(5):
        _ = [chunk async for chunk in backend.stream(request(f"question {i}"))]
        await backend.chat(request(f"question {i}"))

    assert upstream.connections == 1


async def test_concurrent_calls_share_a_small_pool(upstream: FakeUpstream) -> None:
    http = OpenAIHTTPBackend("fake", upstream.url, max_connections=8)
    try:
        replies = await asyncio.gather(*(http.chat(request(f"q{i}")) for i in range(200)))
    finally:
        await http.aclose()

    assert len({reply.text for reply in replies}) > 100
    assert 1 <= upstream.connections <= 8


@pytest.mark.parametrize("status", [500, 503, 400])
async def test_error_status_keeps_status_and_body(
    backend: OpenAIHTTPBackend, upstream: FakeUpstream, status: int
) -> None:
    upstream.behaviour, upstream.status = "status", status

    with pytest.raises(UpstreamError) as caught:
        await backend.chat(request())

    assert caught.value.status == status
    assert "upstream exploded" in str(caught.value)


async def test_error_body_message_is_surfaced(
    backend: OpenAIHTTPBackend, upstream: FakeUpstream
) -> None:
    upstream.behaviour, upstream.status = "error_body", 503
    with pytest.raises(UpstreamError, match="model is overloaded") as caught:
        await backend.chat(request())
    assert caught.value.status == 503

    upstream.behaviour, upstream.status = "error_text", 404
    with pytest.raises(UpstreamError, match="model 'x' not found") as caught:
        await backend.chat(request())
    assert caught.value.status == 404


async def test_stream_error_status_before_the_first_chunk(
    backend: OpenAIHTTPBackend, upstream: FakeUpstream
) -> None:
    upstream.behaviour, upstream.status = "error_body", 502

    with pytest.raises(UpstreamError, match="overloaded") as caught:
        _ = [chunk async for chunk in backend.stream(request())]

    assert caught.value.status == 502


@pytest.mark.parametrize(
    ("retry_after", "expected_s"),
    [("1.5", 1.5), ("7", 7.0), (None, None), ("soon", None)],
)
async def test_429_is_rate_limited_with_retry_after(
    backend: OpenAIHTTPBackend,
    upstream: FakeUpstream,
    retry_after: str | None,
    expected_s: float | None,
) -> None:
    upstream.behaviour, upstream.retry_after = "rate_limit", retry_after

    with pytest.raises(RateLimited, match="too many requests") as caught:
        await backend.chat(request())

    assert caught.value.status == 429
    assert caught.value.retry_after_s == expected_s


async def test_429_retry_after_as_http_date(
    backend: OpenAIHTTPBackend, upstream: FakeUpstream
) -> None:
    upstream.behaviour = "rate_limit"
    upstream.retry_after = email.utils.formatdate(time.time() + 30, usegmt=True)

    with pytest.raises(RateLimited) as caught:
        await backend.chat(request())

    assert caught.value.retry_after_s is not None
    assert 25 < caught.value.retry_after_s <= 31


async def test_read_timeout(upstream: FakeUpstream) -> None:
    upstream.behaviour = "hang"
    http = OpenAIHTTPBackend("fake", upstream.url, read_timeout_s=0.2)
    started = time.perf_counter()
    try:
        with pytest.raises(UpstreamTimeout, match=r"read timeout 0\.2 s"):
            await http.chat(request())
    finally:
        await http.aclose()
    assert time.perf_counter() - started < 1.5
    assert http.inflight == 0


async def test_call_timeout_overrides_read_timeout(
    backend: OpenAIHTTPBackend, upstream: FakeUpstream
) -> None:
    upstream.behaviour = "hang"
    started = time.perf_counter()

    with pytest.raises(UpstreamTimeout, match=r"call timeout 0\.2 s"):
        await backend.chat(request(), timeout_s=0.2)

    assert time.perf_counter() - started < 1.5


async def test_spent_budget_fails_at_once(
    backend: OpenAIHTTPBackend, upstream: FakeUpstream
) -> None:
    upstream.behaviour = "hang"

    with pytest.raises(UpstreamTimeout, match="no time left"):
        await backend.chat(request(), timeout_s=0)

    assert upstream.requests == []


async def test_stream_that_stalls_times_out_after_its_first_chunks(
    upstream: FakeUpstream,
) -> None:
    upstream.behaviour = "stream_hang"
    http = OpenAIHTTPBackend("fake", upstream.url, read_timeout_s=0.2)
    received: list[ChatChunk] = []
    try:
        with pytest.raises(UpstreamTimeout):
            await collect(http.stream(request()), received)
    finally:
        await http.aclose()

    assert len(received) == 2


async def test_malformed_json_is_an_upstream_error(
    backend: OpenAIHTTPBackend, upstream: FakeUpstream
) -> None:
    upstream.behaviour = "malformed"

    with pytest.raises(UpstreamError, match="malformed") as caught:
        await backend.chat(request())

    assert caught.value.status == 502


async def test_malformed_stream_chunk_is_an_upstream_error(
    backend: OpenAIHTTPBackend, upstream: FakeUpstream
) -> None:
    upstream.behaviour = "stream_garbage"

    with pytest.raises(UpstreamError, match="malformed stream chunk"):
        _ = [chunk async for chunk in backend.stream(request())]


async def test_error_object_mid_stream(backend: OpenAIHTTPBackend, upstream: FakeUpstream) -> None:
    upstream.behaviour = "stream_error"
    received: list[ChatChunk] = []

    with pytest.raises(UpstreamError, match="engine died"):
        await collect(backend.stream(request()), received)

    assert len(received) == 2


async def test_connection_refused_is_unavailable(refused_url: str) -> None:
    http = OpenAIHTTPBackend("gone", refused_url, connect_timeout_s=1.0)
    try:
        with pytest.raises(UpstreamUnavailable, match="cannot reach"):
            await http.chat(request())
        with pytest.raises(UpstreamUnavailable):
            _ = [chunk async for chunk in http.stream(request())]
    finally:
        await http.aclose()


async def test_dropped_connection_is_unavailable(
    backend: OpenAIHTTPBackend, upstream: FakeUpstream
) -> None:
    upstream.behaviour = "drop"

    with pytest.raises(UpstreamUnavailable):
        await backend.chat(request())


async def test_cancelled_call_leaves_nothing_in_flight(
    backend: OpenAIHTTPBackend, upstream: FakeUpstream
) -> None:
    upstream.behaviour = "hang"
    task = asyncio.create_task(backend.chat(request()))
    await upstream.arrived.wait()

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert backend.inflight == 0
    upstream.behaviour = "ok"
    assert (await backend.chat(request())).text


async def test_list_models(backend: OpenAIHTTPBackend) -> None:
    assert await backend.list_models() == ["fake-7b"]


async def test_closed_backend_refuses_calls(backend: OpenAIHTTPBackend) -> None:
    await backend.chat(request())
    await backend.aclose()

    assert backend.closed
    assert "state=closed" in repr(backend)
    with pytest.raises(UpstreamUnavailable, match="closed"):
        await backend.chat(request())


async def test_injected_session_is_left_open(upstream: FakeUpstream) -> None:
    async with aiohttp.ClientSession() as session:
        http = OpenAIHTTPBackend("fake", upstream.url, session=session)
        await http.chat(request())
        await http.aclose()

        assert not session.closed


async def test_abandoned_stream_releases_its_connection(
    backend: OpenAIHTTPBackend, upstream: FakeUpstream
) -> None:
    chunks = backend.stream(request())
    async for _ in chunks:
        break
    await chunks.aclose()

    assert backend.inflight == 0
    assert (await backend.chat(request())).text


async def test_stream_batches_hold_the_events_of_one_read(
    backend: OpenAIHTTPBackend, upstream: FakeUpstream
) -> None:
    upstream.piece_bytes = 1 << 20  # the whole body in one write
    req = request(stream_options={"include_usage": True})

    batches = [batch async for batch in backend.stream_batches(req)]

    assert len(batches) == 1  # a proxy forwards it in one write, as a byte-level proxy would
    assert text_of(batches[0]) == await expected_text(req)
    one_by_one = [chunk async for chunk in backend.stream(req)]
    assert [c.choices for c in batches[0]] == [c.choices for c in one_by_one]


async def test_stream_batches_follow_the_reads(
    backend: OpenAIHTTPBackend, upstream: FakeUpstream
) -> None:
    upstream.piece_bytes = 7  # events split across many reads: each batch as soon as it is whole
    req = request()

    batches = [batch async for batch in backend.stream_batches(req)]

    assert len(batches) > 3
    assert all(batches)  # never an empty batch
    assert text_of([chunk for batch in batches for chunk in batch]) == await expected_text(req)


async def test_error_object_mid_read_comes_after_the_chunks_before_it(
    backend: OpenAIHTTPBackend, upstream: FakeUpstream
) -> None:
    upstream.behaviour = "stream_error"
    upstream.piece_bytes = 1 << 20  # the chunks and the error in one read
    received: list[ChatChunk] = []

    with pytest.raises(UpstreamError, match="engine died"):
        await collect(backend.stream(request()), received)

    assert len(received) == 2
