"""The Policy protocol and what a policy may look at: endpoints and the request's routing key."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import msgspec

if TYPE_CHECKING:
    from surgeflow.routing.endpoint import Endpoint


class RouteKey(msgspec.Struct, frozen=True):
    """Who is asking and about what: the inputs of hash-based policies. Any may be unknown."""

    client_ip: str | None = None
    key_id: str | None = None
    user: str | None = None
    prompt_prefix: str | None = None


NO_KEY = RouteKey()


class Policy(Protocol):
    """Chooses one endpoint out of the candidates the router found available.

    ``candidates`` is never empty, holds distinct endpoints, and may change from one call to the
    next as endpoints are ejected and come back. ``pick`` is synchronous and does no I/O: it is on
    every request's path.
    """

    name: str

    def pick(self, candidates: Sequence[Endpoint], key: RouteKey) -> Endpoint: ...
