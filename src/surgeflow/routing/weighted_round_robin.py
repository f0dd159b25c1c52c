"""Smooth weighted round robin, exactly as nginx does it."""

from __future__ import annotations

import math
from collections.abc import Sequence

from surgeflow.routing.base import RouteKey
from surgeflow.routing.endpoint import Endpoint


class WeightedRoundRobin:
    """Each endpoint gets ``weight`` of every ``sum(weights)`` picks, spread out, not in a burst.

    Each pick adds every candidate's weight to its current weight, takes the candidate with the
    highest (the first on a tie) and takes the total weight off it: weights 5, 1, 1 give
    ``a a b a c a a``. Over any ``sum(weights)`` consecutive picks of a fixed set the shares are
    exact. Over shorter windows nginx is smooth, not perfect: an endpoint stays under two picks
    off its share, not one (weights 2, 1, 1, 1 give ``a b c d a``: no ``a`` in ``b c d``), and
    can repeat at the turn of a cycle (weights 1, 1, 1, 2 give ``d a b c d d a b c d``).

    Current weights are kept by endpoint name (one int per name ever seen). An endpoint that
    leaves the candidates keeps its current weight, frozen, until it is back, as nginx does for a
    peer that is down: the current weights of all the endpoints then always sum to zero and stay
    within about a cycle's total, so a comeback is a pick or so early or late, never a burst.
    O(n) per pick, as in nginx.
    """

    name = "weighted_round_robin"

    def __init__(self) -> None:
        self._current: dict[str, int] = {}

    def pick(self, candidates: Sequence[Endpoint], key: RouteKey) -> Endpoint:
        current = self._current
        total = 0
        best = candidates[0]
        best_current = -math.inf
        for endpoint in candidates:
            value = current.get(endpoint.name, 0) + endpoint.weight
            current[endpoint.name] = value
            total += endpoint.weight
            if value > best_current:
                best, best_current = endpoint, value
        current[best.name] -= total
        return best

    def __repr__(self) -> str:
        weights = " ".join(f"{name}:{value:+d}" for name, value in self._current.items())
        return f"<WeightedRoundRobin current={weights or '-'}>"
