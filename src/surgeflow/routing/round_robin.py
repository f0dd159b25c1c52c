"""Round robin: each candidate in turn, regardless of weight or load."""

from __future__ import annotations

from collections.abc import Sequence

from surgeflow.routing.base import RouteKey
from surgeflow.routing.endpoint import Endpoint


class RoundRobin:
    """Each candidate in turn; when the candidates change, the turn carries on over the new ones."""

    name = "round_robin"

    def __init__(self) -> None:
        self._turn = 0

    def pick(self, candidates: Sequence[Endpoint], key: RouteKey) -> Endpoint:
        endpoint = candidates[self._turn % len(candidates)]
        self._turn += 1
        return endpoint

    def __repr__(self) -> str:
        return f"<RoundRobin turn={self._turn}>"
