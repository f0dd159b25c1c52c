"""The state of a simulated system: calls, endpoints' slot pools, backends, gateway replicas.

Plain classes with ``__slots__``, mutated by `surgeflow.tuning.simulate` on its clock. Each
`_Pool` wraps a real `Endpoint` (in-flight count, peak EWMA), so that the real policies can pick
among them.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from surgeflow.models.types import ChatChunk, ChatRequest, ChatResponse
from surgeflow.routing.base import RouteKey
from surgeflow.routing.budget import RetryBudget
from surgeflow.routing.endpoint import Endpoint
from surgeflow.tuning.scenario import Sampler

NO_LIMIT = 1 << 60  # slots or capacity with no limit


class NoBackend:
    """Endpoints in the simulation call nothing; the policy objects only need the attributes."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def chat(self, request: ChatRequest, *, timeout_s: float | None = None) -> ChatResponse:
        raise NotImplementedError

    def stream(
        self, request: ChatRequest, *, timeout_s: float | None = None
    ) -> AsyncIterator[ChatChunk]:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


class Backend:
    __slots__ = ("busy_s", "capacity", "queue", "served", "serving", "wait_sum", "waits")

    def __init__(self, capacity: int | None) -> None:
        self.capacity = NO_LIMIT if capacity is None else capacity
        self.serving = 0
        self.queue: deque[list[Any]] = deque()
        self.busy_s = 0.0
        self.served = 0
        self.wait_sum = 0.0
        self.waits: list[float] = []


class Pool:
    """One endpoint's `EndpointLimits` (and its `Endpoint`) in one gateway replica's router."""

    __slots__ = (
        "backend",
        "busy_s",
        "endpoint",
        "error_rate",
        "group",
        "holding",
        "max_queue",
        "rejected",
        "sample",
        "served",
        "slots",
        "timeout_s",
        "wait_sum",
        "waiters",
        "waiting",
        "waits",
    )

    def __init__(
        self,
        endpoint: Endpoint,
        group: int,
        slots: int,
        max_queue: int,
        timeout_s: float,
        backend: Backend,
        sample: Sampler,
        error_rate: float,
    ) -> None:
        self.endpoint = endpoint
        self.group = group
        self.slots = slots
        self.holding = 0  # calls holding one of the slots (endpoint.inflight adds the waiters)
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        self.backend = backend
        self.sample = sample
        self.error_rate = error_rate
        self.waiters: deque[list[Any]] = deque()
        self.waiting = 0
        self.busy_s = 0.0
        self.served = 0
        self.rejected = 0
        self.wait_sum = 0.0
        self.waits: list[float] = []


class Gateway:
    __slots__ = (
        "budget",
        "busy_s",
        "by_endpoint",
        "free_at",
        "inflight",
        "policy",
        "pools",
        "visits",
        "wait_sum",
    )

    def __init__(self, pools: list[Pool], policy: Any, budget: RetryBudget) -> None:
        self.pools = pools
        self.by_endpoint = {pool.endpoint: pool for pool in pools}
        self.policy = policy
        self.budget = budget
        self.free_at = 0.0
        self.busy_s = 0.0
        self.wait_sum = 0.0
        self.visits = 0
        self.inflight = 0


class Call:
    __slots__ = (
        "arrived",
        "attempt",
        "deadline",
        "gateway",
        "key",
        "measured",
        "pool",
        "queued_at",
        "started",
        "tried",
    )

    def __init__(self, arrived: float, gateway: Gateway, measured: bool, key: RouteKey) -> None:
        self.arrived = arrived
        self.gateway = gateway
        self.measured = measured
        self.key = key
        self.attempt = 0
        self.deadline = math.inf
        self.pool: Pool | None = None
        self.queued_at = 0.0
        self.started = 0.0
        self.tried: list[Pool] = []


class Clock:
    __slots__ = ("now",)

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now
