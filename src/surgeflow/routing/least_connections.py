"""Least connections: the candidate with the fewest calls in flight per unit of weight."""

from __future__ import annotations

import math
from collections.abc import Sequence

from surgeflow.routing.base import RouteKey
from surgeflow.routing.endpoint import Endpoint


class LeastConnections:
    """The lowest ``inflight / weight``; ties are taken in turn.

    Ties are the rule when traffic is light (every endpoint idle), so taking the first one would
    send every call to the same endpoint; taking the tied ones in turn spreads them instead.
    """

    name = "least_connections"

    def __init__(self) -> None:
        self._turn = 0

    def pick(self, candidates: Sequence[Endpoint], key: RouteKey) -> Endpoint:
        lowest = math.inf
        tied: list[Endpoint] = []
        for endpoint in candidates:
            load = endpoint.inflight / endpoint.weight
            if load < lowest:
                lowest = load
                tied = [endpoint]
            elif load == lowest:
                tied.append(endpoint)
        self._turn += 1
        return tied[self._turn % len(tied)]

    def __repr__(self) -> str:
        return f"<LeastConnections turn={self._turn}>"
