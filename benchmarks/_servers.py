"""The processes `gateway_proxy.py` starts: ``python benchmarks/_servers.py ROLE --port N ...``.

- ``upstream``: the cheapest OpenAI-compatible server we can write (uvloop + httptools on a raw
  asyncio protocol) answering a fixed chat completion, or a fixed SSE stream when asked to stream;
- ``bare``: the baseline, a raw ASGI pass-through proxy on uvicorn + httptools + uvloop with one
  pooled ``aiohttp.ClientSession``: no auth, no validation, no routing;
- ``gateway``: surgeflow's gateway through its own server code, auth on, one model whose only
  endpoint is the upstream;
- ``pyload``: a closed-loop aiohttp load generator, used only when ``wrk`` is missing.

``redis_server()`` is not a role: it runs a private ``redis-server`` for ``cache_hit.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import os
import random
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import httptools
import uvloop
from _common import child_process, free_port

MODEL = "bench"
REPLY = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1700000000,
    "model": MODEL,
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 9, "completion_tokens": 9, "total_tokens": 18},
}
TOKENS = ["Hello", "!", " How", " can", " I", " help", " you", " today", "?"]


def _chunk(delta: dict[str, str], finish: str | None = None) -> bytes:
    chunk = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


def _response(content_type: bytes, body: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n"
    return head % (content_type, len(body)) + body


PLAIN = _response(b"application/json", json.dumps(REPLY, separators=(",", ":")).encode())
STREAM = _response(
    b"text/event-stream",
    _chunk({"role": "assistant"})
    + b"".join(_chunk({"content": t}) for t in TOKENS)
    + _chunk({}, "stop")
    + b"data: [DONE]\n\n",
)


class Upstream(asyncio.Protocol):
    """HTTP/1.1 keep-alive; answers every request with a canned response once its body is in."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.body = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        assert self.transport is not None
        streamed = b'"stream":true' in self.body
        self.body = b""
        self.transport.write(STREAM if streamed else PLAIN)
        if not self.parser.should_keep_alive():
            self.transport.close()


async def serve_upstream(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Upstream, "127.0.0.1", port, backlog=1024)
    async with server:
        await _until_terminated()


class BareProxy:
    """Forwards the body to the upstream and its answer back, streaming when the upstream does."""

    def __init__(self, upstream: str) -> None:
        self.url = upstream.rstrip("/") + "/v1/chat/completions"
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        assert self.session is not None
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = {"Content-Type": "application/json"}
        async with self.session.post(self.url, data=body, headers=headers) as response:
            content_type = response.headers.get("Content-Type", "application/json").encode()
            start = {"type": "http.response.start", "status": response.status}
            start["headers"] = [(b"content-type", content_type)]
            await send(start)
            if not content_type.startswith(b"text/event-stream"):
                await send({"type": "http.response.body", "body": await response.read()})
                return
            async for piece in response.content.iter_any():
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b""})

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                connector = aiohttp.TCPConnector(limit=256)
                self.session = aiohttp.ClientSession(connector=connector)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.session is not None:
                    await self.session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def serve_bare(port: int, upstream: str) -> None:
    import uvicorn

    uvicorn.run(
        BareProxy(upstream),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        server_header=False,
    )


async def serve_gateway(
    port: int, upstream: str, api_key: str, admin_key: str = "", observability: str = "default"
) -> None:
    """``observability``: "default" as before (metrics on, logging not started), "on" (metrics,
    the monitor and alert rules, JSON logs with an access line per request, written to
    /dev/null by the writer thread), "traced" (all of "on", plus OpenTelemetry spans for every
    request, made and dropped: exporter none), "metrics" (metrics, monitor and alerts; no logs),
    "logs" (JSON logs with access lines; no metrics) or "off" (no request metrics, no monitor,
    no alerts, no access log)."""
    metrics = observability in ("default", "on", "traced", "metrics")
    access = observability in ("default", "on", "traced", "logs")
    from surgeflow.config import (
        AlertSettings,
        EndpointSettings,
        LogSettings,
        ModelSettings,
        ServerSettings,
        Settings,
        StoreSettings,
        TracingSettings,
    )
    from surgeflow.server import running_gateway
    from surgeflow.service import Service

    with tempfile.TemporaryDirectory(prefix="surgeflow-bench-") as tmp:
        settings = Settings(
            models=[ModelSettings(MODEL, [EndpointSettings(url=upstream.rstrip("/") + "/v1")])],
            store=StoreSettings(url=f"sqlite:///{Path(tmp) / 'gateway.db'}"),
            workflows=[],
            server=ServerSettings(metrics=metrics),
            log=LogSettings(access=access),
            alerts=AlertSettings(enabled=metrics),
            tracing=TracingSettings(enabled=observability == "traced", exporter="none"),
        )
        assert settings.auth.enabled
        admin_keys = [admin_key] if admin_key else None
        service = Service(
            settings,
            workflows={},
            api_keys=[api_key],
            admin_keys=admin_keys,
            embedded_worker=False,
        )
        async with service, running_gateway(service, "127.0.0.1", port) as url:
            print(f"gateway on {url}", flush=True)
            await _until_terminated()


def hot_prompt(index: int) -> str:
    """The ``index``-th of the prompts ``cache_gateway.py`` warms into the cache."""
    return f"Hot question {index}: what is the refund window for order {index}?"


def fresh_prompt(nonce: str, client: int, count: int) -> str:
    """A prompt no one has sent before: ``nonce`` is new for every load run."""
    return f"Fresh question {nonce}-{client}-{count}: what is the refund window for order {count}?"


PROMPT_MARK = b"__PROMPT__"


@dataclasses.dataclass
class HotMix:
    """pyload's bodies for ``cache_gateway.py``: a hot prompt with probability ``rate``, else a
    fresh one; ``PROMPT_MARK`` in the body template is replaced by the prompt."""

    rate: float
    prompts: int
    nonce: str
    sent: dict[str, int] = dataclasses.field(default_factory=lambda: {"hot": 0, "fresh": 0})
    # What the gateway's X-Surgeflow-Cache header said: hit, miss, other, nothing (no header).
    said: dict[str, int] = dataclasses.field(
        default_factory=lambda: {"hit": 0, "miss": 0, "other": 0, "nothing": 0}
    )

    def body(
        self, template: bytes, rng: random.Random, client: int, counter: Iterator[int]
    ) -> bytes:
        if rng.random() < self.rate:
            self.sent["hot"] += 1
            prompt = hot_prompt(rng.randrange(self.prompts))
        else:
            self.sent["fresh"] += 1
            prompt = fresh_prompt(self.nonce, client, next(counter))
        return template.replace(PROMPT_MARK, prompt.encode())

    def heard(self, header: str | None) -> None:
        kind = "nothing" if header is None else header if header in ("hit", "miss") else "other"
        self.said[kind] += 1


async def pyload(
    url: str,
    body: bytes,
    api_key: str,
    connections: int,
    duration_s: float,
    mix: HotMix | None = None,
) -> None:
    """Closed loop: ``connections`` clients, each sending its next request when one returns."""
    latencies_us: list[float] = []
    errors = {"status": 0, "connect": 0}
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"}
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        deadline = started + duration_s

        async def client(index: int) -> None:
            rng, counter = random.Random(index), itertools.count()
            while (begin := time.perf_counter()) < deadline:
                data = body if mix is None else mix.body(body, rng, index, counter)
                try:
                    async with session.post(url, data=data, headers=headers) as response:
                        await response.read()
                        if mix is not None:
                            mix.heard(response.headers.get("x-surgeflow-cache"))
                        errors["status"] += response.status != 200
                except aiohttp.ClientError:
                    errors["connect"] += 1
                latencies_us.append((time.perf_counter() - begin) * 1e6)

        await asyncio.gather(*(client(i) for i in range(connections)))
        elapsed_us = (time.perf_counter() - started) * 1e6
    latencies_us.sort()

    def pct(q: float) -> float:
        return latencies_us[min(len(latencies_us) - 1, int(q * len(latencies_us)))]

    stats: dict[str, float] = {"requests": len(latencies_us), "duration_us": elapsed_us, **errors}
    if mix is not None:
        stats.update(hot_sent=mix.sent["hot"], fresh_sent=mix.sent["fresh"])
        stats.update({f"said_{kind}": count for kind, count in mix.said.items()})
    stats.update(p50_us=pct(0.5), p90_us=pct(0.9), p99_us=pct(0.99), max_us=latencies_us[-1])
    print("LOAD_JSON " + json.dumps(stats), flush=True)


@contextlib.contextmanager
def redis_server(cpu: int | None = None) -> Iterator[str]:
    """A private ``redis-server`` on a free loopback port, no persistence, in a temp dir; its URL.

    ``cpu``: pinned to that CPU (with ``taskset``). Stopped when the block ends, error or not.
    Raises `RuntimeError` when it is not installed.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not on PATH (apt-get install redis-server)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as tmp:
        command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        command += ["--appendonly", "no", "--dir", tmp]
        if cpu is not None:
            command = ["taskset", "-c", str(cpu), *command]
        with child_process("redis-server", command, port=port):
            yield f"redis://127.0.0.1:{port}/0"


async def _until_terminated() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=["upstream", "bare", "gateway", "pyload"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upstream", default="", help="base URL of the upstream")
    parser.add_argument("--api-key", default="")
    parser.add_argument("--url", default="", help="pyload: the URL to load")
    parser.add_argument("--body", default="{}", help="pyload: the request body")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--admin-key", default="", help="gateway: an admin key too")
    parser.add_argument(
        "--observability",
        choices=["default", "on", "traced", "metrics", "logs", "off"],
        default="default",
        help="gateway",
    )
    parser.add_argument("--hot-rate", type=float, default=-1.0, help="pyload: see HotMix")
    parser.add_argument("--hot-prompts", type=int, default=100, help="pyload: see HotMix")
    parser.add_argument("--nonce", default="", help="pyload: see HotMix")
    args = parser.parse_args()
    if args.role == "upstream":
        uvloop.run(serve_upstream(args.port))
    elif args.role == "bare":
        serve_bare(args.port, args.upstream)
    elif args.role == "gateway":
        if args.observability in ("on", "traced", "logs"):
            from surgeflow.logs import Logging

            devnull = open(os.devnull, "w")  # noqa: SIM115 - open for the process's life
            Logging(level="info", format="json", stream=devnull).start()
        uvloop.run(
            serve_gateway(
                args.port, args.upstream, args.api_key, args.admin_key, args.observability
            )
        )
    else:
        mix = None if args.hot_rate < 0 else HotMix(args.hot_rate, args.hot_prompts, args.nonce)
        body = args.body.encode()
        uvloop.run(pyload(args.url, body, args.api_key, args.connections, args.duration_s, mix))


if __name__ == "__main__":
    main()
