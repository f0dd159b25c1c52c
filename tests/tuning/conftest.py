import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web

CHAT_REPLY = {
    "id": "chatcmpl-stub",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "stub",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
    ],
}


@dataclass
class Stub:
    """A tiny OpenAI-like chat server on loopback that records what it saw.

    ``delay_s`` is awaited per request (others are served meanwhile); ``stall_at`` makes that
    request (1-based) *block the whole event loop* for ``stall_s`` with ``time.sleep``;
    ``status`` picks each request's status from its number.
    """

    url: str = ""
    delay_s: float = 0.0
    stall_at: int | None = None
    stall_s: float = 1.0
    status: Callable[[int], int] = lambda n: 200
    arrivals: list[float] = field(default_factory=list)
    current: int = 0
    max_concurrent: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.arrivals.append(time.perf_counter())
        number = len(self.arrivals)
        self.current += 1
        self.max_concurrent = max(self.max_concurrent, self.current)
        try:
            await request.read()
            if number == self.stall_at:
                time.sleep(self.stall_s)  # noqa: ASYNC251 - the point: everything in this loop stops
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            status = self.status(number)
            if status != 200:
                return web.json_response({"error": {"type": "x", "message": "no"}}, status=status)
            return web.json_response(CHAT_REPLY)
        finally:
            self.current -= 1


@pytest.fixture
async def stub() -> AsyncIterator[Stub]:
    server = Stub()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", server.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    port = runner.addresses[0][1]
    server.url = f"http://127.0.0.1:{port}/v1"
    try:
        yield server
    finally:
        await runner.cleanup()
