"""A real OpenAI-compatible upstream on loopback, with switchable misbehaviour."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
from aiohttp import web

from surgeflow.models import ChatChunk, ChatRequest, OpenAIHTTPBackend, SimulatedBackend


@dataclass
class FakeUpstream:
    """What the fake server does next; tests set ``behaviour`` and read what it saw.

    behaviour: ok | status | error_body | error_text | rate_limit | hang | malformed | drop
    | stream_hang (some chunks, then silence) | stream_error (an error object mid-stream)
    | stream_garbage | stream_no_done | stream_linger (the body stays open after [DONE])
    """

    url: str = ""
    behaviour: str = "ok"
    status: int = 500
    retry_after: str | None = "1.5"
    piece_bytes: int = 7
    line_end: bytes = b"\n"
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    peers: set[Any] = field(default_factory=set)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    # Zero-latency replies: what the HTTP backend returns must match the simulated one exactly.
    model: SimulatedBackend = field(
        default_factory=lambda: SimulatedBackend("fake", ttft_ms=0, tokens_per_s=0)
    )

    @property
    def connections(self) -> int:
        """Distinct TCP connections seen (one client port per connection)."""
        return len(self.peers)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        body = await request.read()
        self.requests.append(msgspec.json.decode(body))
        self.headers.append(dict(request.headers))
        self.arrived.set()
        behaviour = self.behaviour
        if behaviour == "hang":
            await self.release.wait()
            return web.Response(status=204)
        if behaviour == "drop":
            assert request.transport is not None
            request.transport.close()
            await self.release.wait()
            return web.Response(status=204)
        if behaviour == "status":
            return web.Response(status=self.status, text="upstream exploded")
        if behaviour == "error_body":
            error = {"message": "model is overloaded", "type": "server_error", "code": None}
            return web.json_response({"error": error}, status=self.status)
        if behaviour == "error_text":
            return web.json_response({"error": "model 'x' not found"}, status=self.status)
        if behaviour == "rate_limit":
            headers = {} if self.retry_after is None else {"Retry-After": self.retry_after}
            error = {"message": "too many requests", "type": "rate_limited"}
            return web.json_response({"error": error}, status=429, headers=headers)
        if behaviour == "malformed":
            return web.Response(body=b'{"id": "x", "choices": [', content_type="application/json")
        chat_request = msgspec.json.decode(body, type=ChatRequest)
        if chat_request.stream:
            return await self._stream(request, chat_request)
        reply = await self.model.chat(chat_request)
        return web.Response(body=msgspec.json.encode(reply), content_type="application/json")

    async def _stream(self, request: web.Request, chat_request: ChatRequest) -> web.StreamResponse:
        end = self.line_end
        events = [b": keep-alive" + end + end]
        events += [
            b"event: chunk" + end + b"data: " + msgspec.json.encode(chunk) + end + end
            async for chunk in self.model.stream(chat_request)
        ]
        if self.behaviour == "stream_error":
            events.insert(
                3, b'data: {"error": {"message": "engine died", "code": 500}}' + end + end
            )
        if self.behaviour == "stream_garbage":
            events.insert(3, b"data: {not json" + end + end)
        if self.behaviour != "stream_no_done":
            events.append(b"data: [DONE]" + end + end)
        body = b"".join(events)

        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if self.behaviour == "stream_hang":
            await response.write(b"".join(events[:3]))
            await self.release.wait()
            return response
        if self.behaviour == "stream_linger":
            await response.write(body)
            await self.release.wait()
            return response
        # Odd-sized pieces, each its own write, so lines and events arrive split across reads.
        for start in range(0, len(body), self.piece_bytes):
            await response.write(body[start : start + self.piece_bytes])
            await asyncio.sleep(0)
        await response.write_eof()
        return response

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fake-7b", "object": "model"}]})


async def collect(chunks: AsyncIterator[ChatChunk], into: list[ChatChunk]) -> None:
    """Append every chunk to ``into``: unlike a comprehension, keeps those before an error."""
    async for chunk in chunks:
        into.append(chunk)


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.chat)
    app.router.add_get("/v1/models", fake.models)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    fake.url = f"http://{host}:{port}/v1"
    try:
        yield fake
    finally:
        fake.release.set()
        await runner.cleanup()


@pytest.fixture
async def backend(upstream: FakeUpstream) -> AsyncIterator[OpenAIHTTPBackend]:
    http = OpenAIHTTPBackend("fake", upstream.url, read_timeout_s=5.0)
    try:
        yield http
    finally:
        await http.aclose()


@pytest.fixture
def refused_url() -> str:
    """A loopback URL where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"
