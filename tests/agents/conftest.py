from collections.abc import Sequence
from typing import Any

import pytest


class RecordingModels:
    """A model client that answers with a fixed text and remembers every call."""

    def __init__(self, reply: str = "Here is your answer.") -> None:
        self.reply = reply
        self.calls: list[tuple[str, Any, dict[str, Any]]] = []

    async def complete(self, model: str, prompt: str | Sequence[Any], **params: Any) -> str:
        self.calls.append((model, prompt, params))
        return self.reply

    def prompt_text(self, call: int = -1) -> str:
        _, prompt, _ = self.calls[call]
        if isinstance(prompt, str):
            return prompt
        return "\n".join(message["content"] for message in prompt)


class ForbiddenModels:
    """A model client that fails the test if it is called at all."""

    async def complete(self, model: str, prompt: Any, **params: Any) -> str:
        raise AssertionError(f"model {model!r} was called")


@pytest.fixture
def models() -> RecordingModels:
    return RecordingModels()
