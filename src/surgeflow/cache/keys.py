"""What a cached chat answer is keyed on, and which requests may be cached at all."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from surgeflow.models.types import ChatRequest

_encode = msgspec.json.encode

MAX_TAGS = 8
_TAG = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def chat_cache_key(request: ChatRequest, *, scope: str | None, opt_in: bool = False) -> str | None:
    """A stable key for ``request`` within ``scope`` (a tenant), or None when it must not be cached.

    Only deterministic requests are cached: temperature 0, or an explicit ``opt_in``. Everything
    that can change the answer is in the key (model, messages, tools, sampling parameters); the
    scope keeps one tenant from ever reading another's answer. Whether the answer is streamed is
    not: a streamed and a plain request share one entry.
    """
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


def validate_tags(tags: Iterable[str]) -> tuple[str, ...]:
    """``tags`` without duplicates, or ValueError saying which is wrong.

    At most `MAX_TAGS`, each 1 to 64 of ``A-Z a-z 0-9 . _ : -``.
    """
    unique = tuple(dict.fromkeys(tags))
    if len(unique) > MAX_TAGS:
        raise ValueError(f"at most {MAX_TAGS} cache tags are allowed, got {len(unique)}")
    for tag in unique:
        if not isinstance(tag, str) or _TAG.fullmatch(tag) is None:
            raise ValueError(
                f"invalid cache tag {tag!r}: use 1 to 64 of the characters A-Z a-z 0-9 . _ : -"
            )
    return unique


def parse_tags(header: str) -> tuple[str, ...]:
    """The tags of an ``X-Surgeflow-Cache-Tags: faq,pricing-v2`` header (ValueError if invalid)."""
    return validate_tags(part.strip() for part in header.split(","))
