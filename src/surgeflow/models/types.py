"""OpenAI-compatible chat types, decoded and encoded with msgspec (one decode, one encode)."""

from __future__ import annotations

from typing import Any, Literal

import msgspec


class Message(msgspec.Struct, omit_defaults=True):
    """One chat message. ``content`` is a string or a list of content parts (passed through)."""

    role: Literal["system", "user", "assistant", "tool", "developer", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class ChatRequest(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=False):
    """A ``POST /v1/chat/completions`` body. Unknown fields are accepted and ignored."""

    model: str
    messages: list[Message]
    stream: bool = False
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    n: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    user: str | None = None
    stream_options: dict[str, Any] | None = None


class Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class Choice(msgspec.Struct):
    index: int
    message: Message
    finish_reason: str | None = "stop"


class ChatResponse(msgspec.Struct, forbid_unknown_fields=False):
    """A chat completion, as OpenAI returns it."""

    id: str
    model: str
    choices: list[Choice]
    created: int = 0
    object: str = "chat.completion"
    usage: Usage | None = None

    @property
    def text(self) -> str:
        """The first choice's text content ('' when there is none)."""
        content = self.choices[0].message.content if self.choices else None
        return content if isinstance(content, str) else ""


class Delta(msgspec.Struct, omit_defaults=True):
    role: str | None = None
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class ChunkChoice(msgspec.Struct):
    index: int
    delta: Delta
    finish_reason: str | None = None


class ChatChunk(msgspec.Struct, forbid_unknown_fields=False):
    """One streamed chunk (``object: chat.completion.chunk``)."""

    id: str
    model: str
    choices: list[ChunkChoice]
    created: int = 0
    object: str = "chat.completion.chunk"
    usage: Usage | None = None


class ModelInfo(msgspec.Struct):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "surgeflow"


class ModelList(msgspec.Struct):
    data: list[ModelInfo]
    object: str = "list"
