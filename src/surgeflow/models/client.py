"""ModelClient: resolve a model name to its endpoints and call one, failing over once."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import msgspec

from surgeflow.errors import (
    ConfigError,
    Conflict,
    ModelError,
    NotFound,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    ValidationError,
)
from surgeflow.models.base import ModelBackend
from surgeflow.models.types import ChatChunk, ChatRequest, ChatResponse, Message


def _retryable(exc: ModelError) -> bool:
    """Worth another endpoint: it failed for reasons of its own, not because of the request."""
    if isinstance(exc, RateLimited | UpstreamTimeout | UpstreamUnavailable):
        return True
    return isinstance(exc, UpstreamError) and exc.status >= 500


class ModelClient:
    """Calls a model by name on one of its endpoints, round-robin.

    A call that fails with a 5xx, a timeout, an unreachable endpoint or a 429 is tried once more on
    another endpoint of the same model, if it has one; a stream is retried only before its first
    chunk. ``timeout_s`` bounds the whole call, retry included.
    """

    def __init__(self, routes: Mapping[str, Sequence[ModelBackend]]) -> None:
        for model, endpoints in routes.items():
            if not endpoints:
                raise ConfigError(f"model {model!r} has no endpoints")
        self._routes = {model: tuple(endpoints) for model, endpoints in routes.items()}
        self._turns = {model: itertools.count() for model in self._routes}
        self._closed = False

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<ModelClient models={len(self._routes)} endpoints={len(self._backends())}{state}>"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def models(self) -> list[str]:
        """The model names this client serves."""
        return list(self._routes)

    async def chat(self, request: ChatRequest, *, timeout_s: float | None = None) -> ChatResponse:
        """Answer ``request`` on one of its model's endpoints."""
        backend = self._pick(request.model)
        deadline = None if timeout_s is None else asyncio.get_running_loop().time() + timeout_s
        try:
            return await backend.chat(request, timeout_s=timeout_s)
        except ModelError as exc:
            fallback = self._failover(request.model, backend, exc, deadline)
            if fallback is None:
                raise
            other, remaining_s = fallback
        return await other.chat(request, timeout_s=remaining_s)

    async def stream(
        self, request: ChatRequest, *, timeout_s: float | None = None
    ) -> AsyncIterator[ChatChunk]:
        """Answer ``request`` as chunks from one of its model's endpoints."""
        backend = self._pick(request.model)
        deadline = None if timeout_s is None else asyncio.get_running_loop().time() + timeout_s
        chunks = backend.stream(request, timeout_s=timeout_s)
        try:
            try:
                first = await anext(chunks)
            except StopAsyncIteration:
                return
            except ModelError as exc:
                fallback = self._failover(request.model, backend, exc, deadline)
                if fallback is None:
                    raise
                other, remaining_s = fallback
                await _aclose(chunks)
                chunks = other.stream(request, timeout_s=remaining_s)
                try:
                    first = await anext(chunks)
                except StopAsyncIteration:
                    return
            yield first
            async for chunk in chunks:
                yield chunk
        finally:
            await _aclose(chunks)

    async def complete(
        self,
        model: str,
        prompt: str | Sequence[Message | Mapping[str, Any]],
        *,
        timeout_s: float | None = None,
        **params: Any,
    ) -> str:
        """The reply text to ``prompt`` (a user message, or a list of messages).

        ``params`` are `ChatRequest` fields (``temperature=0.2``, ``max_tokens=64`` …).
        """
        if isinstance(prompt, str):
            messages = [Message(role="user", content=prompt)]
        else:
            try:
                messages = [
                    m if isinstance(m, Message) else msgspec.convert(m, Message) for m in prompt
                ]
            except msgspec.ValidationError as exc:
                raise ValidationError(f"invalid message for model {model!r}: {exc}") from exc
        request = ChatRequest(model=model, messages=messages, **params)
        response = await self.chat(request, timeout_s=timeout_s)
        return response.text

    async def aclose(self) -> None:
        """Close every backend once, even when one of them fails to close."""
        if self._closed:
            return
        self._closed = True
        results = await asyncio.gather(
            *(backend.aclose() for backend in self._backends()), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    def _backends(self) -> list[ModelBackend]:
        """Every distinct backend; one may serve several models."""
        unique = {id(b): b for endpoints in self._routes.values() for b in endpoints}
        return list(unique.values())

    def _pick(self, model: str, exclude: ModelBackend | None = None) -> ModelBackend:
        """The endpoint for the next call to ``model``: not ``exclude``, unless it is the only one.

        The selection policy lives here alone so a load-balancing policy can replace it.
        """
        if self._closed:
            raise Conflict("ModelClient is closed")
        endpoints = self._routes.get(model)
        if endpoints is None:
            known = ", ".join(sorted(self._routes)) or "none"
            raise NotFound(f"unknown model {model!r}; known models: {known}")
        if exclude is None:
            return endpoints[next(self._turns[model]) % len(endpoints)]
        # A retry takes the endpoint after the failed one and leaves the rotation of first picks
        # alone; advancing it would hand a failing endpoint every call's first attempt.
        at = next((i for i, b in enumerate(endpoints) if b is exclude), -1)
        for step in range(1, len(endpoints) + 1):
            backend = endpoints[(at + step) % len(endpoints)]
            if backend is not exclude:
                return backend
        return exclude

    def _failover(
        self, model: str, failed: ModelBackend, exc: ModelError, deadline: float | None
    ) -> tuple[ModelBackend, float | None] | None:
        """Another endpoint and the time left for it, or None when the error should stand."""
        if not _retryable(exc) or len(self._routes[model]) < 2:
            return None
        remaining_s = None
        if deadline is not None:
            remaining_s = deadline - asyncio.get_running_loop().time()
            if remaining_s <= 0:
                return None
        other = self._pick(model, exclude=failed)
        return None if other is failed else (other, remaining_s)


async def _aclose(chunks: AsyncIterator[ChatChunk]) -> None:
    if isinstance(chunks, AsyncGenerator):
        await chunks.aclose()
