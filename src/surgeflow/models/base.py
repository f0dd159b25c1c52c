"""The ModelBackend protocol: one model endpoint that answers chat requests."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Protocol, runtime_checkable

from surgeflow.models.types import ChatChunk, ChatRequest, ChatResponse


@runtime_checkable
class ModelBackend(Protocol):
    """One model endpoint. Errors are raised as `surgeflow.errors.ModelError` subclasses.

    Optionally also ``stream_batches(request, *, timeout_s)``: the stream's chunks in the
    batches they arrived in (see `stream_batches` below).
    """

    name: str

    async def chat(self, request: ChatRequest, *, timeout_s: float | None = None) -> ChatResponse:
        """Answer ``request`` in one piece."""
        ...

    def stream(
        self, request: ChatRequest, *, timeout_s: float | None = None
    ) -> AsyncIterator[ChatChunk]:
        """Answer ``request`` as a stream of chunks (an async generator)."""
        ...

    async def aclose(self) -> None:
        """Release connections and tasks."""
        ...


def stream_batches(
    backend: ModelBackend, request: ChatRequest, *, timeout_s: float | None = None
) -> AsyncIterator[list[ChatChunk]]:
    """``backend``'s stream as batches: the chunks that arrived together, never an empty one.

    A backend may offer ``stream_batches`` itself (`OpenAIHTTPBackend` batches the events of one
    network read), so that a proxy can forward them in one write, as a byte-level proxy would.
    Any other backend's chunks come one to a batch.
    """
    batches = getattr(backend, "stream_batches", None)
    if batches is not None:
        return batches(request, timeout_s=timeout_s)  # type: ignore[no-any-return]
    return _one_by_one(backend.stream(request, timeout_s=timeout_s))


async def _one_by_one(chunks: AsyncIterator[ChatChunk]) -> AsyncIterator[list[ChatChunk]]:
    try:
        async for chunk in chunks:
            yield [chunk]
    finally:
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()


async def chunks_of(batches: AsyncGenerator[list[ChatChunk], None]) -> AsyncIterator[ChatChunk]:
    """The chunks of ``batches`` one at a time; the batches are closed when this is."""
    try:
        async for batch in batches:
            for chunk in batch:
                yield chunk
    finally:
        await batches.aclose()
