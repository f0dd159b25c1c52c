"""OpenAI-compatible routes: ``POST /v1/chat/completions`` (plain or streamed), ``/v1/models``."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING

import msgspec

from surgeflow import errors
from surgeflow.cache.keys import parse_tags
from surgeflow.gateway.http import (
    JSON_HEADERS,
    SSE_HEADERS,
    HTTPError,
    Request,
    Send,
    cancelled_on_disconnect,
    http_error,
    send_bytes,
    send_error,
)
from surgeflow.models.client import CacheMode, CacheStatus
from surgeflow.models.types import ChatChunk, ChatRequest, ModelInfo, ModelList
from surgeflow.routing.base import RouteKey

if TYPE_CHECKING:
    from surgeflow.service import Service

_encode = msgspec.json.encode
_DONE = b"data: [DONE]\n\n"
_PREFIX_CHARS = 256
# How the cache answered, told to the client: X-Surgeflow-Cache: hit | stale | miss | bypass.
CACHE_STATUS_HEADER = b"x-surgeflow-cache"
_STATUSES: tuple[CacheStatus, ...] = ("hit", "stale", "semantic", "miss", "bypass")
_JSON_HEADERS = {s: [*JSON_HEADERS, (CACHE_STATUS_HEADER, s.encode())] for s in _STATUSES}
_SSE_HEADERS = {s: [*SSE_HEADERS, (CACHE_STATUS_HEADER, s.encode())] for s in _STATUSES}


async def completions(service: Service, request: Request, send: Send) -> None:
    chat_request: ChatRequest = await request.json(
        service.settings.server.max_body_bytes, ChatRequest
    )
    if not chat_request.messages:
        raise errors.ValidationError("'messages' must hold at least one message")
    timeout_s = service.settings.server.upstream_timeout_s
    key = _route_key(request, chat_request)
    mode = _cache_mode(request)
    if request.key_id is not None and not service.keys.caches(request.key_id):
        mode = "bypass"  # the key was created with --no-cache
    tags = _cache_tags(request)
    if not chat_request.stream:
        async with cancelled_on_disconnect(request):
            response, status = await service.models.chat_with_status(
                chat_request, key=key, timeout_s=timeout_s, cache=mode, tags=tags
            )
        await send_bytes(send, 200, _encode(response), _JSON_HEADERS[status])
        return
    async with cancelled_on_disconnect(request):
        batches, status = await service.models.stream_with_status(
            chat_request, key=key, timeout_s=timeout_s, cache=mode, tags=tags
        )
        await _stream(batches, _SSE_HEADERS[status], send)


def _cache_mode(request: Request) -> CacheMode:
    """``Cache-Control: no-store`` (or ``no-cache``) skips the cache; ``X-Surgeflow-Cache: on``
    caches a request even when it samples (temperature above 0)."""
    control = request.header(b"cache-control")
    if control is not None and (b"no-store" in control or b"no-cache" in control):
        return "bypass"
    if request.header(CACHE_STATUS_HEADER) == b"on":
        return "opt_in"
    return "auto"


def _cache_tags(request: Request) -> tuple[str, ...]:
    """``X-Surgeflow-Cache-Tags: faq,pricing-v2``: what an answer stored now can be invalidated
    by (``DELETE /v1/admin/cache?tag=faq``)."""
    header = request.header(b"x-surgeflow-cache-tags")
    if header is None:
        return ()
    try:
        return parse_tags(header.decode("latin-1"))
    except ValueError as exc:
        raise HTTPError(
            400, "invalid_request_error", f"bad X-Surgeflow-Cache-Tags header: {exc}"
        ) from None


def _route_key(request: Request, chat_request: ChatRequest) -> RouteKey:
    """What hash-based routing may key on: client, API key, user, and the prompt's start."""
    client = request.scope.get("client")
    first = chat_request.messages[0].content
    return RouteKey(
        client_ip=client[0] if client else None,
        key_id=request.key_id,
        user=chat_request.user,
        # The shared start of a conversation is what a replica's KV cache can reuse.
        prompt_prefix=first[:_PREFIX_CHARS] if isinstance(first, str) else None,
    )


async def _stream(
    batches: AsyncGenerator[list[ChatChunk], None], headers: list[tuple[bytes, bytes]], send: Send
) -> None:
    """Send each batch of chunks (those that arrived together) as one write of SSE events."""
    started = False
    try:
        async for batch in batches:
            if not started:
                # Headers wait for the first chunk, so an upstream that fails before answering
                # gets a proper error status rather than a broken stream.
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                started = True
            events: list[bytes] = []
            for chunk in batch:
                events += (b"data: ", _encode(chunk), b"\n\n")
            await send({"type": "http.response.body", "body": b"".join(events), "more_body": True})
    except errors.SurgeflowError as exc:
        if not started:
            await send_error(send, http_error(exc))
            return
        error = http_error(exc)
        await send({"type": "http.response.body", "body": b"data: " + error.body() + b"\n\n"})
        return
    finally:
        await batches.aclose()
    if not started:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": _DONE})


async def models(service: Service, request: Request, send: Send) -> None:
    created = int(service.started_at or time.time())
    listing = ModelList(
        data=[ModelInfo(id=name, created=created) for name in service.models.models()]
    )
    await send_bytes(send, 200, _encode(listing))
