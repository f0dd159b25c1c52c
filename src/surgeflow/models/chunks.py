"""Streamed answers and whole ones: assemble chunks into a `ChatResponse`, replay one as chunks."""

from __future__ import annotations

from typing import Any

from surgeflow.models.types import (
    ChatChunk,
    ChatResponse,
    Choice,
    ChunkChoice,
    Delta,
    Message,
    Usage,
)


class _Parts:
    __slots__ = ("content", "finish_reason", "role", "tool_calls")

    def __init__(self) -> None:
        self.role = "assistant"
        self.content: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None


class ChunkAssembler:
    """Collects a stream's chunks; `response` is the answer they make once every choice finished.

    Content is concatenated; tool calls are merged by their ``index`` as OpenAI streams them (the
    id, type and name arrive once, the arguments in pieces).
    """

    __slots__ = ("_choices", "created", "id", "model", "usage")

    def __init__(self) -> None:
        self.id = ""
        self.model = ""
        self.created = 0
        self.usage: Usage | None = None
        self._choices: dict[int, _Parts] = {}

    def add(self, chunk: ChatChunk) -> None:
        self.id = chunk.id
        self.model = chunk.model
        self.created = chunk.created
        if chunk.usage is not None:
            self.usage = chunk.usage
        for choice in chunk.choices:
            parts = self._choices.get(choice.index)
            if parts is None:
                parts = self._choices[choice.index] = _Parts()
            delta = choice.delta
            if delta.role:
                parts.role = delta.role
            if delta.content:
                parts.content.append(delta.content)
            if delta.tool_calls:
                _merge_tool_calls(parts.tool_calls, delta.tool_calls)
            if choice.finish_reason is not None:
                parts.finish_reason = choice.finish_reason

    def response(self) -> ChatResponse | None:
        """The whole answer, or None when the stream did not finish (no ``finish_reason``)."""
        if not self._choices or any(p.finish_reason is None for p in self._choices.values()):
            return None
        choices = []
        for index in sorted(self._choices):
            parts = self._choices[index]
            tool_calls = [parts.tool_calls[i] for i in sorted(parts.tool_calls)] or None
            content = "".join(parts.content) if parts.content or tool_calls is None else None
            message = Message(role=parts.role, content=content, tool_calls=tool_calls)  # type: ignore[arg-type]
            choices.append(Choice(index=index, message=message, finish_reason=parts.finish_reason))
        return ChatResponse(
            id=self.id, model=self.model, choices=choices, created=self.created, usage=self.usage
        )


def _merge_tool_calls(calls: dict[int, dict[str, Any]], deltas: list[dict[str, Any]]) -> None:
    for delta in deltas:
        index = delta.get("index", 0)
        call = calls.get(index)
        if call is None:
            call = calls[index] = {"id": "", "type": "function", "function": {}}
        if delta.get("id"):
            call["id"] = delta["id"]
        if delta.get("type"):
            call["type"] = delta["type"]
        function = call["function"]
        for field, piece in (delta.get("function") or {}).items():
            if isinstance(piece, str):
                function[field] = function.get(field, "") + piece


def replay_chunks(response: ChatResponse, *, include_usage: bool = False) -> list[ChatChunk]:
    """``response`` as a stream: one chunk with each choice's whole message, then one with the
    finish reasons, then (when asked for, as ``stream_options.include_usage`` does) the usage."""

    def chunk(choices: list[ChunkChoice], usage: Usage | None = None) -> ChatChunk:
        return ChatChunk(
            id=response.id,
            model=response.model,
            created=response.created,
            choices=choices,
            usage=usage,
        )

    content: list[ChunkChoice] = []
    finish: list[ChunkChoice] = []
    for choice in response.choices:
        message = choice.message
        text = message.content if isinstance(message.content, str) else None
        tool_calls = (
            [{"index": i, **call} for i, call in enumerate(message.tool_calls)]
            if message.tool_calls
            else None
        )
        delta = Delta(role=message.role, content=text, tool_calls=tool_calls)
        content.append(ChunkChoice(index=choice.index, delta=delta))
        finish.append(
            ChunkChoice(index=choice.index, delta=Delta(), finish_reason=choice.finish_reason)
        )
    chunks = [chunk(content), chunk(finish)]
    if include_usage and response.usage is not None:
        chunks.append(chunk([], response.usage))
    return chunks
