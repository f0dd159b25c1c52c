"""What a cached chat answer is keyed on, and which requests may be cached at all."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from surgeflow.models.types import ChatRequest

_encode = msgspec.json.encode


def chat_cache_key(request: ChatRequest, *, scope: str | None, opt_in: bool = False) -> str | None:
    """A stable key for ``request`` within ``scope`` (a tenant), or None when it must not be cached.

    Only deterministic requests are cached: temperature 0, or an explicit ``opt_in``. Everything
    that can change the answer is in the key (model, messages, tools, sampling parameters); the
    scope keeps one tenant from ever reading another's answer.
    """
    if request.stream:
        return None
    if not opt_in and request.temperature != 0:
        return None
    if request.n not in (None, 1):
        return None
    basis = (
        scope,
        request.model,
        request.messages,
        request.tools,
        request.tool_choice,
        request.response_format,
        request.temperature,
        request.top_p,
        request.max_tokens,
        request.max_completion_tokens,
        request.stop,
        request.seed,
        request.presence_penalty,
        request.frequency_penalty,
    )
    # Tenant and model stay readable so that `clear` can drop one tenant's or one model's answers.
    return f"chat:{scope or '-'}:{request.model}:{hashlib.sha256(_encode(basis)).hexdigest()}"
