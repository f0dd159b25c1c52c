"""One model endpoint as the router sees it: the backend, its live load, latency and health."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from surgeflow.models.base import ModelBackend
    from surgeflow.routing.health import EndpointHealth
    from surgeflow.routing.limits import EndpointLimits


class PeakEWMA:
    """Latency as a peak-sensitive moving average (as Finagle and Linkerd balance by).

    A sample above the average replaces it at once, so an endpoint that slows down is avoided at
    once; samples below pull it down exponentially with time constant ``decay_s``, so recovery is
    believed gradually. Before any sample the value is ``initial_s``.
    """

    __slots__ = ("_at", "_clock", "decay_s", "value")

    def __init__(
        self,
        *,
        decay_s: float = 10.0,
        initial_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.decay_s = decay_s
        self.value = initial_s
        self._clock = clock
        self._at = clock()

    def observe(self, latency_s: float) -> None:
        now = self._clock()
        if latency_s > self.value:
            self.value = latency_s
        else:
            weight = math.exp(-(now - self._at) / self.decay_s)
            self.value = self.value * weight + latency_s * (1 - weight)
        self._at = now

    def __repr__(self) -> str:
        return f"<PeakEWMA {self.value * 1000:.1f} ms>"


class Endpoint:
    """A backend plus what routing needs to know about it right now.

    ``inflight`` counts the router's calls in progress on it; ``latency`` is their peak EWMA in
    seconds; ``weight`` is its configured share. Health and limits are attached by the router.
    """

    __slots__ = ("backend", "health", "inflight", "latency", "limits", "name", "picks", "weight")

    def __init__(
        self,
        backend: ModelBackend,
        *,
        weight: int = 1,
        name: str | None = None,
        latency: PeakEWMA | None = None,
    ) -> None:
        if weight < 1:
            raise ValueError("weight must be >= 1")
        self.backend = backend
        self.name = name or backend.name
        self.weight = weight
        self.inflight = 0
        self.picks = 0
        self.latency = latency or PeakEWMA()
        self.health: EndpointHealth | None = None
        self.limits: EndpointLimits | None = None

    @property
    def cost(self) -> float:
        """What power-of-two-choices compares: latency × (in-flight + 1), per unit of weight.

        An endpoint with no latency sample yet costs as if it answered in 1 ms, so a new
        endpoint is tried, but not flooded.
        """
        return max(self.latency.value, 0.001) * (self.inflight + 1) / self.weight

    def __repr__(self) -> str:
        return (
            f"<Endpoint {self.name} weight={self.weight} inflight={self.inflight} "
            f"ewma={self.latency.value * 1000:.1f}ms>"
        )
