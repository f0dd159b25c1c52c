"""The little ASGI this gateway needs: read a bounded body, send JSON, send errors that explain."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import msgspec

from surgeflow import errors

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # nginx: do not buffer the stream
]

_encode = msgspec.json.encode


class HTTPError(Exception):
    """An error answer: status, an OpenAI-style error type and a message saying what to do."""

    def __init__(
        self,
        status: int,
        type: str,
        message: str,
        *,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message
        self.headers = headers or []

    def body(self) -> bytes:
        return _encode({"error": {"type": self.type, "message": self.message}})


class Request:
    """One HTTP request: the ASGI scope plus what routing and auth learned about it."""

    __slots__ = ("key_id", "params", "receive", "scope")

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.scope = scope
        self.receive = receive
        self.params: dict[str, str] = {}
        self.key_id: str | None = None

    def header(self, name: bytes) -> bytes | None:
        """The first header called ``name`` (lower case), or ``None``."""
        for key, value in self.scope["headers"]:
            if key == name:
                return value  # type: ignore[no-any-return]
        return None

    def query(self, name: str) -> str | None:
        raw: bytes = self.scope.get("query_string", b"")
        for pair in raw.decode("latin-1").split("&"):
            key, _, value = pair.partition("=")
            if key == name:
                return value
        return None

    async def body(self, max_bytes: int) -> bytes:
        """The whole body, or a 413 as soon as it is known to exceed ``max_bytes``."""
        length = self.header(b"content-length")
        if length is not None and length.isdigit() and int(length) > max_bytes:
            raise _too_large(max_bytes)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > max_bytes:
                    raise _too_large(max_bytes)
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def json(self, max_bytes: int, type: Any = Any) -> Any:
        """Decode and validate the body as ``type`` in one pass."""
        body = await self.body(max_bytes)
        if not body:
            raise HTTPError(400, "invalid_request_error", "the request body is empty; send JSON")
        try:
            return msgspec.json.decode(body, type=type)
        except msgspec.ValidationError as exc:
            raise HTTPError(422, "invalid_request_error", f"invalid request body: {exc}") from None
        except msgspec.DecodeError as exc:
            raise HTTPError(400, "invalid_request_error", f"malformed JSON body: {exc}") from None


class ClientGone(Exception):
    """The client closed the connection before the answer was sent."""


class cancelled_on_disconnect:
    """Cancel the work in the block if the client goes away, and raise `ClientGone` instead.

    Enter it after the body was read: the watcher's ``receive`` then returns only on
    disconnect. Cancelling frees what the work holds (an endpoint slot, an upstream connection)
    at once. The watcher starts only once the work has run ``WATCH_AFTER_S``: most answers come
    sooner, and a task per request would cost them about a tenth of the gateway's throughput.
    """

    WATCH_AFTER_S = 0.05

    __slots__ = ("_gone", "_request", "_task", "_timer", "_watcher")

    def __init__(self, request: Request) -> None:
        self._request = request
        self._gone = False
        self._watcher: asyncio.Task[None] | None = None

    async def __aenter__(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._timer = asyncio.get_running_loop().call_later(self.WATCH_AFTER_S, self._start)

    def _start(self) -> None:
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while (await self._request.receive())["type"] != "http.disconnect":
            pass
        self._gone = True
        self._task.cancel()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        self._timer.cancel()
        if self._watcher is not None:
            self._watcher.cancel()
        if self._gone:
            # Cancelled because the client left (or finished just as it left): say so.
            self._task.uncancel()
            raise ClientGone from None


def _too_large(max_bytes: int) -> HTTPError:
    return HTTPError(
        413, "request_too_large", f"the request body exceeds the limit of {max_bytes} bytes"
    )


async def send_bytes(
    send: Send,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]] = JSON_HEADERS,
) -> None:
    # A length lets the server send one plain body instead of chunked framing.
    length = (b"content-length", str(len(body)).encode())
    await send({"type": "http.response.start", "status": status, "headers": [*headers, length]})
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, payload: Any) -> None:
    await send_bytes(send, status, _encode(payload))


async def send_error(send: Send, error: HTTPError) -> None:
    await send_bytes(send, error.status, error.body(), JSON_HEADERS + error.headers)


def http_error(exc: errors.SurgeflowError) -> HTTPError:
    """Translate a surgeflow error into the answer a client should get."""
    if isinstance(exc, errors.RateLimited):
        return HTTPError(429, "rate_limited", str(exc), headers=_retry_after(exc.retry_after_s))
    if isinstance(exc, errors.Overloaded):
        return HTTPError(503, "overloaded", str(exc), headers=_retry_after(exc.retry_after_s))
    if isinstance(exc, errors.UpstreamError):
        return HTTPError(502, "upstream_error", str(exc))
    if isinstance(exc, errors.UpstreamTimeout):
        return HTTPError(504, "upstream_timeout", str(exc))
    if isinstance(exc, errors.UpstreamUnavailable):
        return HTTPError(503, "upstream_unavailable", str(exc))
    if isinstance(exc, errors.NotFound):
        return HTTPError(404, "not_found", str(exc))
    if isinstance(exc, errors.ValidationError):
        return HTTPError(422, "invalid_request_error", str(exc))
    if isinstance(exc, errors.Conflict):
        return HTTPError(409, "conflict", str(exc))
    if isinstance(exc, errors.AuthError):
        return HTTPError(401, "authentication_error", str(exc))
    if isinstance(exc, errors.StepError):
        return HTTPError(500, "workflow_failed", str(exc))
    return HTTPError(500, "internal_error", f"{type(exc).__name__}: {exc}")


def _retry_after(seconds: float | None) -> list[tuple[bytes, bytes]]:
    # Whole seconds, rounded up: a client that comes back early only meets the same refusal.
    if seconds is None:
        return []
    return [(b"retry-after", str(max(1, math.ceil(seconds))).encode())]


async def lifespan(receive: Receive, send: Send) -> None:
    """Answer the ASGI lifespan protocol; whoever runs the server opens and closes the rest."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
