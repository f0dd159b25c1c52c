"""``surgeflow mock-llm``: an OpenAI-compatible model server on `SimulatedBackend`, with knobs."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any

import msgspec

from surgeflow import errors
from surgeflow.gateway.http import (
    SSE_HEADERS,
    ClientGone,
    HTTPError,
    Message,
    Receive,
    Request,
    Scope,
    Send,
    cancelled_on_disconnect,
    lifespan,
    send_bytes,
    send_error,
    send_json,
)
from surgeflow.models.simulated import KNOB_NAMES, SimulatedBackend
from surgeflow.models.types import ChatRequest, ModelInfo, ModelList
from surgeflow.server import running_app

log = logging.getLogger("surgeflow.mockllm")

Handler = Callable[[Request, Send], Awaitable[None]]

SERVER_KNOBS = frozenset({"unhealthy"})
MAX_BODY_BYTES = 8 * 1024 * 1024
# A call still running this long after SIGTERM is as good as hung: the mock cuts it with a 503.
DRAIN_S = 1.0

_encode = msgspec.json.encode
_DONE = b"data: [DONE]\n\n"
_BEARER = b"bearer "
_CHAT = "POST /v1/chat/completions"
_OTHER = "other"


class MockLLM:
    """The ASGI app of ``surgeflow mock-llm``: OpenAI's chat and models routes over one backend.

    Chat answers any model name (the gateway forwards its clients' names); ``models`` is what
    ``GET /v1/models`` lists. Also ``GET /healthz`` (503 while the ``unhealthy`` knob is set),
    ``GET|POST /admin/config`` (the knobs; POST changes some) and ``GET /admin/stats``. With
    ``api_key`` the ``/v1`` routes require ``Authorization: Bearer <api_key>``; health and admin
    routes never do.
    """

    def __init__(
        self,
        backend: SimulatedBackend,
        *,
        models: Sequence[str] = ("mock",),
        api_key: str | None = None,
    ) -> None:
        if not models:
            raise errors.ConfigError("mock-llm needs at least one model name")
        self.backend = backend
        self.models = tuple(models)
        self.api_key = api_key
        self.unhealthy = False
        self.started_at = int(time.time())
        handlers: dict[tuple[str, str], Handler] = {
            ("POST", "/v1/chat/completions"): self._chat,
            ("GET", "/v1/models"): self._models,
            ("GET", "/healthz"): self._healthz,
            ("GET", "/admin/config"): self._get_config,
            ("POST", "/admin/config"): self._post_config,
            ("GET", "/admin/stats"): self._get_stats,
        }
        self._routes = {
            (method, path): (handler, f"{method} {path}")
            for (method, path), handler in handlers.items()
        }
        self._paths = {path for _, path in handlers}
        # Counted per route, "METHOD /path" or "other"; admin routes are not counted, so that
        # reading the stats does not change them.
        self._requests: Counter[str] = Counter()
        self._inflight: Counter[str] = Counter()
        self._client_gone: Counter[str] = Counter()
        self._statuses: dict[str, Counter[int]] = {}
        self._calls: set[asyncio.Task[Any]] = set()
        self._cutting = False

    def __repr__(self) -> str:
        health = " unhealthy" if self.unhealthy else ""
        return (
            f"<MockLLM models={','.join(self.models)} requests={self._requests.total()} "
            f"inflight={self._inflight.total()}{health} backend={self.backend!r}>"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await lifespan(receive, send)
            return
        method: str = scope["method"]
        path: str = scope["path"]
        handler, route = self._routes.get((method, path), (None, _OTHER))
        counted = not path.startswith("/admin/")
        sent = _ResponseTracker(send)
        if counted:
            self._requests[route] += 1
            self._inflight[route] += 1
        try:
            if handler is None:
                raise self._no_route(method, path)
            await handler(Request(scope, receive), sent)
        except HTTPError as exc:
            if not sent.started:
                await send_error(sent, exc)
        except ClientGone:
            if counted:
                self._client_gone[route] += 1
        except Exception:
            log.exception("unhandled error on %s %s", method, path)
            if not sent.started:
                await send_error(
                    sent, HTTPError(500, "internal_error", "mock-llm failed; the error was logged")
                )
        finally:
            if counted:
                self._inflight[route] -= 1
                if sent.status:
                    self._statuses.setdefault(route, Counter())[sent.status] += 1

    def configure(self, **knobs: Any) -> dict[str, Any]:
        """Change server and backend knobs at once, or none if one is bad; returns them all.

        Raises `surgeflow.errors.ConfigError` saying which knob is wrong.
        """
        unknown = sorted(set(knobs) - KNOB_NAMES - SERVER_KNOBS)
        if unknown:
            raise errors.ConfigError(
                f"unknown knob {unknown[0]!r}; the knobs are "
                + ", ".join(sorted(KNOB_NAMES | SERVER_KNOBS))
            )
        unhealthy = knobs.pop("unhealthy", self.unhealthy)
        if not isinstance(unhealthy, bool):
            raise errors.ConfigError(f"unhealthy must be true or false, not {unhealthy!r}")
        self.backend.configure(**knobs)
        self.unhealthy = unhealthy
        return self.config()

    def config(self) -> dict[str, Any]:
        """Every knob and its value."""
        return {**msgspec.structs.asdict(self.backend.knobs), "unhealthy": self.unhealthy}

    def stats(self) -> dict[str, Any]:
        """What was served and what failures were injected.

        ``requests`` and ``inflight`` count chat completions, so health probes and model listings
        do not blur them; ``routes`` counts every route but the admin ones, by status.
        """
        backend = self.backend
        routes = {
            route: {
                "requests": count,
                "inflight": self._inflight[route],
                "client_gone": self._client_gone[route],
                "statuses": {str(status): n for status, n in self._statuses.get(route, {}).items()},
            }
            for route, count in self._requests.items()
        }
        return {
            "requests": self._requests[_CHAT],
            "inflight": self._inflight[_CHAT],
            "routes": routes,
            "injected": {
                "errors": backend.errors_injected,
                "rate_limited": backend.rate_limited,
                "hangs": backend.hangs_injected,
            },
            "backend": {"calls": backend.calls, "inflight": backend.inflight},
        }

    async def cut_calls_after(self, delay_s: float) -> None:
        """After ``delay_s``, end the model calls still under way with a 503.

        Hung calls never end by themselves, so without this a server could not stop cleanly.
        """
        await asyncio.sleep(delay_s)
        self._cutting = True
        for task in list(self._calls):
            task.cancel()

    @contextlib.contextmanager
    def _cuttable(self) -> Iterator[None]:
        """Turn the cancellation `cut_calls_after` sends into an `UpstreamUnavailable`."""
        task = asyncio.current_task()
        assert task is not None
        self._calls.add(task)
        try:
            yield
        except asyncio.CancelledError:
            if not self._cutting:
                raise
            task.uncancel()
            raise errors.UpstreamUnavailable(
                "mock-llm is shutting down; retry on another replica"
            ) from None
        finally:
            self._calls.discard(task)

    async def _chat(self, request: Request, send: Send) -> None:
        self._authorize(request)
        chat_request: ChatRequest = await request.json(MAX_BODY_BYTES, ChatRequest)
        if not chat_request.messages:
            raise HTTPError(
                422, "invalid_request_error", "'messages' must hold at least one message"
            )
        # Watching for the client to leave costs a task per request; an answer that cannot
        # wait (no latency, no hangs) is sent before the client could leave anyway.
        watch = cancelled_on_disconnect(request) if self.backend.may_wait else _NOT_WATCHED
        async with watch:
            if chat_request.stream:
                await self._stream(chat_request, send)
                return
            try:
                with self._cuttable():
                    response = await self.backend.chat(chat_request)
            except errors.ModelError as exc:
                raise _model_error(exc) from None
        await send_bytes(send, 200, _encode(response))

    async def _stream(self, chat_request: ChatRequest, send: Send) -> None:
        chunks = self.backend.stream(chat_request)
        started = False
        try:
            with self._cuttable():
                async for chunk in chunks:
                    if not started:
                        # Headers wait for the first chunk, so a call that fails or is rate-limited
                        # before answering gets its own status, as from a real server.
                        start = {
                            "type": "http.response.start",
                            "status": 200,
                            "headers": SSE_HEADERS,
                        }
                        await send(start)
                        started = True
                    body = b"data: " + _encode(chunk) + b"\n\n"
                    await send({"type": "http.response.body", "body": body, "more_body": True})
        except errors.ModelError as exc:
            error = _model_error(exc)
            if not started:
                raise error from None
            body = b"data: " + error.body() + b"\n\n"
            await send({"type": "http.response.body", "body": body})
            return
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]
        await send({"type": "http.response.body", "body": _DONE})

    async def _models(self, request: Request, send: Send) -> None:
        self._authorize(request)
        listing = ModelList(
            data=[
                ModelInfo(id=name, created=self.started_at, owned_by="surgeflow-mock")
                for name in self.models
            ]
        )
        await send_bytes(send, 200, _encode(listing))

    async def _healthz(self, request: Request, send: Send) -> None:
        if self.unhealthy:
            raise HTTPError(
                503,
                "unhealthy",
                "marked unhealthy by the 'unhealthy' knob; "
                'POST /admin/config {"unhealthy": false} to recover',
            )
        await send_json(send, 200, {"status": "ok"})

    async def _get_config(self, request: Request, send: Send) -> None:
        await send_json(send, 200, self.config())

    async def _post_config(self, request: Request, send: Send) -> None:
        knobs: dict[str, Any] = await request.json(MAX_BODY_BYTES, dict[str, Any])
        try:
            config = self.configure(**knobs)
        except errors.ConfigError as exc:
            raise HTTPError(400, "invalid_knob", str(exc)) from None
        log.info("knobs changed: %s", knobs)
        await send_json(send, 200, config)

    async def _get_stats(self, request: Request, send: Send) -> None:
        await send_json(send, 200, self.stats())

    def _authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        header = request.header(b"authorization")
        if header is None or header[:7].lower() != _BEARER:
            raise HTTPError(
                401, "authentication_error", "missing API key: send 'Authorization: Bearer <key>'"
            )
        if not hmac.compare_digest(header[7:].strip(), self.api_key.encode()):
            raise HTTPError(401, "authentication_error", "wrong API key")

    def _no_route(self, method: str, path: str) -> HTTPError:
        if path in self._paths:
            allowed = sorted(m for m, p in self._routes if p == path)
            return HTTPError(
                405,
                "method_not_allowed",
                f"{method} is not allowed on {path}; try {' or '.join(allowed)}",
                headers=[(b"allow", ", ".join(allowed).encode())],
            )
        routes = ", ".join(f"{m} {p}" for m, p in self._routes)
        return HTTPError(404, "not_found", f"no route {method} {path}; the routes are {routes}")


class _ResponseTracker:
    """Wraps ``send`` to know the response's status once it has started."""

    __slots__ = ("_send", "started", "status")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False
        self.status = 0

    async def __call__(self, message: Message) -> None:
        if not self.started:
            self.started = True
            self.status = message.get("status", 0)
        await self._send(message)


_NOT_WATCHED = contextlib.nullcontext()


def _model_error(exc: errors.ModelError) -> HTTPError:
    """The answer an OpenAI-compatible server gives for a failed call (not the gateway's 502)."""
    if isinstance(exc, errors.RateLimited):
        retry_after_s = exc.retry_after_s or 0.0
        headers = [
            # Decimal seconds: exact for sub-second waits; surgeflow's client and the openai
            # package both parse them. retry-after-ms is OpenAI's own header for the same.
            (b"retry-after", _seconds(retry_after_s).encode()),
            (b"retry-after-ms", str(round(retry_after_s * 1000)).encode()),
        ]
        return HTTPError(429, "rate_limit_exceeded", str(exc), headers=headers)
    if isinstance(exc, errors.UpstreamError):
        return HTTPError(exc.status, "server_error", str(exc))
    if isinstance(exc, errors.UpstreamTimeout):
        return HTTPError(504, "timeout", str(exc))
    return HTTPError(503, "unavailable", str(exc))


def _seconds(value_s: float) -> str:
    """``1.0`` as ``1``, ``0.25`` as ``0.25``: no exponent, at most millisecond precision."""
    return f"{value_s:.3f}".rstrip("0").rstrip(".")


@contextlib.asynccontextmanager
async def running_mock(app: MockLLM, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve ``app`` in the background; yields its URL. On exit, calls get `DRAIN_S` to finish."""
    # uvicorn's own limit is a backstop: by then the cut calls have answered.
    async with running_app(app, host, port, graceful_timeout_s=math.ceil(DRAIN_S) + 2) as url:
        try:
            yield url
        finally:
            # Leaving the block stops accepting and waits for the requests under way.
            cutter = asyncio.get_running_loop().create_task(app.cut_calls_after(DRAIN_S))
    cutter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await cutter


async def serve_forever(app: MockLLM, host: str, port: int) -> None:
    """Serve ``app`` until SIGINT or SIGTERM; prints the URL on one line once it listens."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with running_mock(app, host, port) as url:
        names = ", ".join(repr(name) for name in app.models)
        noun = "model" if len(app.models) == 1 else "models"
        # Tests read this line to learn the port; keep its shape.
        print(f"surgeflow mock-llm serving {noun} {names} on {url}", flush=True)
        await stop.wait()
