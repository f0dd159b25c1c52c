"""Random choice: a candidate drawn at random, in proportion to its weight."""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Sequence

from surgeflow.routing.base import RouteKey
from surgeflow.routing.endpoint import Endpoint


class RandomChoice:
    """A candidate drawn at random: uniformly, or in proportion to ``weight`` when ``weighted``."""

    name = "random"

    def __init__(self, *, weighted: bool = True, seed: int | None = None) -> None:
        self.weighted = weighted
        self._seed = seed
        self._rng = random.Random(seed)

    def pick(self, candidates: Sequence[Endpoint], key: RouteKey) -> Endpoint:
        if self.weighted:
            weights = [endpoint.weight for endpoint in candidates]
            # Equal weights are the common case, and a plain choice is several times cheaper.
            if min(weights) != max(weights):
                # What random.choices(cum_weights=...) does, without its µs of setup per call.
                cumulative = list(itertools.accumulate(weights))
                drawn = self._rng.random() * cumulative[-1]
                return candidates[bisect.bisect(cumulative, drawn, 0, len(cumulative) - 1)]
        return self._rng.choice(candidates)

    def __repr__(self) -> str:
        return f"<RandomChoice weighted={self.weighted} seed={self._seed}>"
