"""The ModelBackend protocol: one model endpoint that answers chat requests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from surgeflow.models.types import ChatChunk, ChatRequest, ChatResponse


@runtime_checkable
class ModelBackend(Protocol):
    """One model endpoint. Errors are raised as `surgeflow.errors.ModelError` subclasses."""

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
