"""Power of two choices by peak-EWMA cost: the cheaper of two candidates drawn at random."""

from __future__ import annotations

import random
from collections.abc import Sequence

from surgeflow.routing.base import RouteKey
from surgeflow.routing.endpoint import Endpoint


class P2CEwma:
    """Of two distinct candidates drawn at random, the one with the lower `Endpoint.cost`.

    Comparing two, not all, keeps a slow or stale endpoint from being avoided by every router at
    once and then stampeded when it looks good again; the worst candidate is never picked.
    """

    name = "p2c_ewma"

    def __init__(self, *, seed: int | None = None) -> None:
        self._seed = seed
        self._rng = random.Random(seed)
        self._picks = 0

    def pick(self, candidates: Sequence[Endpoint], key: RouteKey) -> Endpoint:
        count = len(candidates)
        if count == 1:
            return candidates[0]
        self._picks += 1
        first = self._rng.randrange(count)
        second = self._rng.randrange(count - 1)
        if second >= first:  # draw from the others, so the two are distinct
            second += 1
        a, b = candidates[first], candidates[second]
        return b if b.cost < a.cost else a

    def __repr__(self) -> str:
        return f"<P2CEwma seed={self._seed} picks={self._picks}>"
