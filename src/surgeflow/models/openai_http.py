"""An OpenAI-compatible HTTP endpoint (vLLM, Ollama, llama.cpp, OpenAI) over one pooled session."""

from __future__ import annotations

import asyncio
import email.utils
import enum
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

import aiohttp
import msgspec

from surgeflow.errors import (
    ModelError,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from surgeflow.models.base import chunks_of
from surgeflow.models.types import ChatChunk, ChatRequest, ChatResponse, ModelList

if TYPE_CHECKING:
    from surgeflow.tracing import Tracer

# Below the 5 s idle timeout of uvicorn (vLLM) and similar servers, so the pool drops an idle
# connection before the server does instead of reusing one the server is closing.
_KEEPALIVE_S = 4.0
_DNS_CACHE_S = 300
_MAX_MESSAGE_CHARS = 500
# A server that keeps the body open after [DONE] costs the caller at most this long.
_DRAIN_S = 1.0


class _ErrorDetail(msgspec.Struct):
    message: str = ""


class _ErrorBody(msgspec.Struct):
    """``{"error": {"message": ...}}`` (OpenAI, vLLM) or ``{"error": "..."}`` (Ollama)."""

    error: _ErrorDetail | str


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


_response_decoder = msgspec.json.Decoder(ChatResponse)
_chunk_decoder = msgspec.json.Decoder(ChatChunk)
_error_decoder = msgspec.json.Decoder(_ErrorBody)
_encoder = msgspec.json.Encoder()


class OpenAIHTTPBackend:
    """An OpenAI-compatible ``/chat/completions`` endpoint at ``base_url`` (``http://host:port/v1``).

    One keep-alive ``aiohttp.ClientSession`` is created in the running loop on first use and
    reused by every call. A ``session`` passed in is used as is and left open by ``aclose``: its
    owner closes it. ``model`` rewrites the request's model name when the upstream serves the
    model under another name. ``timeout_s`` on a call bounds the whole call, stream included.
    With a ``tracer``, each chat call carries the current span's ``traceparent``.
    """

    def __init__(
        self,
        name: str,
        base_url: str,
        *,
        api_key: str | None = None,
        model: str | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
        max_connections: int = 256,
        session: aiohttp.ClientSession | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.max_connections = max_connections
        self._chat_url = f"{self.base_url}/chat/completions"
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeout = aiohttp.ClientTimeout(
            sock_connect=connect_timeout_s, sock_read=read_timeout_s
        )
        self._tracer = tracer
        self._session = session
        self._owns_session = session is None
        self._state = _State.OPEN if session is not None else _State.UNOPENED
        self.inflight = 0

    def __repr__(self) -> str:
        return (
            f"<OpenAIHTTPBackend name={self.name} url={self.base_url} "
            f"state={self._state.value} inflight={self.inflight}>"
        )

    @property
    def closed(self) -> bool:
        return self._state is _State.CLOSED

    async def chat(self, request: ChatRequest, *, timeout_s: float | None = None) -> ChatResponse:
        """Answer ``request`` in one piece."""
        session = self._open_session()
        body = self._encode(request, stream=False)
        sent = self._headers if self._tracer is None else self._tracer.inject(self._headers)
        self.inflight += 1
        try:
            with self._translate_errors(timeout_s):
                async with session.post(
                    self._chat_url,
                    data=body,
                    headers=sent,
                    timeout=self._call_timeout(timeout_s),
                ) as response:
                    payload = await response.read()
                    status, headers = response.status, response.headers
        finally:
            self.inflight -= 1
        if status >= 400:
            raise self._status_error(status, payload, headers)
        try:
            return _response_decoder.decode(payload)
        except msgspec.DecodeError as exc:
            raise UpstreamError(
                f"{self.name}: malformed chat completion: {exc}", status=502
            ) from exc

    def stream(
        self, request: ChatRequest, *, timeout_s: float | None = None
    ) -> AsyncIterator[ChatChunk]:
        """Answer ``request`` as the chunks of its server-sent event stream."""
        return chunks_of(self.stream_batches(request, timeout_s=timeout_s))

    async def stream_batches(
        self, request: ChatRequest, *, timeout_s: float | None = None
    ) -> AsyncGenerator[list[ChatChunk], None]:
        """`stream`, the chunks of one network read together (see `models.base.stream_batches`)."""
        session = self._open_session()
        body = self._encode(request, stream=True)
        sent = self._headers if self._tracer is None else self._tracer.inject(self._headers)
        self.inflight += 1
        try:
            with self._translate_errors(timeout_s):
                async with session.post(
                    self._chat_url,
                    data=body,
                    headers=sent,
                    timeout=self._call_timeout(timeout_s),
                ) as response:
                    if response.status >= 400:
                        payload = await response.read()
                        raise self._status_error(response.status, payload, response.headers)
                    async for batch in self._events(response):
                        yield batch
        finally:
            self.inflight -= 1

    async def list_models(self, *, timeout_s: float | None = None) -> list[str]:
        """The model ids the endpoint serves (``GET /models``)."""
        payload = await self._get_models(timeout_s)
        try:
            return [info.id for info in msgspec.json.decode(payload, type=ModelList).data]
        except msgspec.DecodeError as exc:
            raise UpstreamError(f"{self.name}: malformed model list: {exc}", status=502) from exc

    async def ping(self, *, timeout_s: float) -> None:
        """Return if ``GET /models`` answers with a success status; raise as a call would.

        The body is read but not parsed: a health check asks whether the server is up, and
        servers differ in what they list.
        """
        await self._get_models(timeout_s)

    async def _get_models(self, timeout_s: float | None) -> bytes:
        """The body of ``GET /models``, or the surgeflow error its failure translates to."""
        session = self._open_session()
        with self._translate_errors(timeout_s):
            async with session.get(
                f"{self.base_url}/models",
                headers=self._headers,
                timeout=self._call_timeout(timeout_s),
            ) as response:
                payload = await response.read()
                status, headers = response.status, response.headers
        if status >= 400:
            raise self._status_error(status, payload, headers)
        return payload

    async def aclose(self) -> None:
        """Close the pooled connections (an injected session is left to its owner)."""
        session, owned = self._session, self._owns_session
        self._state, self._session = _State.CLOSED, None
        if session is not None and owned:
            await session.close()

    def _open_session(self) -> aiohttp.ClientSession:
        if self._session is not None:
            return self._session
        if self._state is _State.CLOSED:
            raise UpstreamUnavailable(f"{self.name}: backend is closed")
        connector = aiohttp.TCPConnector(
            limit=self.max_connections,
            ttl_dns_cache=_DNS_CACHE_S,
            keepalive_timeout=_KEEPALIVE_S,
        )
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        self._state = _State.OPEN
        return self._session

    def _encode(self, request: ChatRequest, *, stream: bool) -> bytes:
        model = self.model or request.model
        if request.stream is not stream or request.model != model:
            request = msgspec.structs.replace(request, stream=stream, model=model)
        return _encoder.encode(request)

    def _call_timeout(self, timeout_s: float | None) -> aiohttp.ClientTimeout:
        if timeout_s is None:
            return self._timeout
        if timeout_s <= 0:
            # aiohttp reads a total of 0 as "no limit"; a spent budget must fail, not wait forever.
            raise UpstreamTimeout(f"{self.name}: no time left for the call ({timeout_s:g} s)")
        return aiohttp.ClientTimeout(
            total=timeout_s, sock_connect=self.connect_timeout_s, sock_read=self.read_timeout_s
        )

    @contextmanager
    def _translate_errors(self, timeout_s: float | None) -> Iterator[None]:
        """Turn aiohttp and socket errors into surgeflow's."""
        try:
            yield
        except ModelError:
            raise
        # aiohttp's timeouts subclass both TimeoutError and ClientConnectionError: test them first.
        except TimeoutError as exc:
            if isinstance(exc, aiohttp.ConnectionTimeoutError):
                limit = f"connect timeout {self.connect_timeout_s:g} s"
            elif isinstance(exc, aiohttp.SocketTimeoutError) or timeout_s is None:
                limit = f"read timeout {self.read_timeout_s:g} s"
            else:
                limit = f"call timeout {timeout_s:g} s"
            raise UpstreamTimeout(f"{self.name}: no answer within the {limit}") from exc
        except aiohttp.ClientConnectionError as exc:
            raise UpstreamUnavailable(f"{self.name}: cannot reach {self.base_url}: {exc}") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"{self.name}: broken response: {exc!r}", status=502) from exc

    def _status_error(
        self, status: int, payload: bytes, headers: Mapping[str, str]
    ) -> UpstreamError:
        detail = (
            _error_detail(payload)
            or payload[:_MAX_MESSAGE_CHARS].decode("utf-8", "replace").strip()
            or f"HTTP {status}"
        )
        message = f"{self.name}: upstream answered {status}: {detail}"
        if status == 429:
            return RateLimited(message, retry_after_s=_retry_after_s(headers.get("Retry-After")))
        return UpstreamError(message, status=status)

    async def _events(self, response: aiohttp.ClientResponse) -> AsyncIterator[list[ChatChunk]]:
        """Decode the SSE body as it arrives, a batch per read that completes an event; lines and
        events may split anywhere across reads."""
        pending = b""
        data: list[bytes] = []
        async for piece in response.content.iter_any():
            *lines, pending = (pending + piece).split(b"\n")
            batch: list[ChatChunk] = []
            failure: UpstreamError | None = None
            done = False
            for raw in lines:
                line = raw.rstrip(b"\r")
                if line:
                    field, _, value = line.partition(b":")
                    # Comments (": ping"), event:, id: and retry: lines carry nothing we use.
                    if field == b"data":
                        data.append(value[1:] if value.startswith(b" ") else value)
                    continue
                if not data:
                    continue
                event, data = b"\n".join(data), []
                if event == b"[DONE]":
                    done = True
                    break
                try:
                    batch.append(self._decode_chunk(event))
                except UpstreamError as exc:
                    failure = exc  # after the chunks that came before it
                    break
            if batch:
                yield batch
            if failure is not None:
                raise failure
            if done:
                await _drain(response)
                return
        # A body that ends without [DONE] or without the last blank line has still ended.
        if pending.startswith(b"data:"):
            data.append(pending[5:].lstrip(b" ").rstrip(b"\r"))
        if data and (event := b"\n".join(data)) != b"[DONE]":
            yield [self._decode_chunk(event)]

    def _decode_chunk(self, event: bytes) -> ChatChunk:
        try:
            return _chunk_decoder.decode(event)
        except msgspec.DecodeError as exc:
            # vLLM and others report a failure mid-stream as an error object in place of a chunk.
            message = _error_detail(event)
            if message is not None:
                raise UpstreamError(f"{self.name}: upstream failed mid-stream: {message}") from exc
            raise UpstreamError(
                f"{self.name}: malformed stream chunk: {exc}: {event[:200]!r}", status=502
            ) from exc


async def _drain(response: aiohttp.ClientResponse) -> None:
    """Read what follows [DONE] (the body's end) so the connection goes back to the pool."""
    try:
        async with asyncio.timeout(_DRAIN_S):
            async for _ in response.content.iter_any():
                pass
    except (aiohttp.ClientError, TimeoutError):
        # The answer is complete: a connection that fails or lingers now is closed, not reused.
        return


def _error_detail(payload: bytes) -> str | None:
    """The message of an ``{"error": ...}`` body, or None when ``payload`` is not one."""
    try:
        error = _error_decoder.decode(payload).error
    except msgspec.DecodeError:
        return None
    message = error if isinstance(error, str) else error.message
    return message[:_MAX_MESSAGE_CHARS]


def _retry_after_s(value: str | None) -> float | None:
    """``Retry-After`` as seconds: a number, or an HTTP date relative to now."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
