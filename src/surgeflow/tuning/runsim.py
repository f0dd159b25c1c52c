"""Durable runs, simulated apart from requests: a FIFO pool of worker slots."""

from __future__ import annotations

import heapq
import math
import random
from array import array
from typing import Any

import msgspec

from surgeflow.tuning.scenario import RunQueue


class RunStats(msgspec.Struct, kw_only=True):
    """Durable runs: submission to finish."""

    runs: int
    mean_s: float
    p50_s: float
    p99_s: float
    mean_wait_s: float
    utilisation: float


def simulate_runs(
    runs: RunQueue, *, count: int = 50_000, seed: int = 1, warmup: float = 0.1
) -> RunStats:
    """Durable runs as a FIFO pool of ``workers × concurrency`` slots fed by Poisson arrivals.

    A run that finds a slot free waits for the worker's next poll (uniform over
    ``poll_interval_s``); one that finds all busy starts when a slot frees, since a worker that
    finishes a run leases the next at once. Its end reaches a follower uniformly within
    ``events_poll_s``. Service and overhead are stretched by the CPU's load (`RunQueue.stretch`).
    """
    if runs.rate <= 0:
        raise ValueError("runs.rate must be > 0 to simulate runs")
    stretch = runs.stretch
    if math.isinf(stretch):
        raise ValueError(
            f"the CPU is saturated (ρ = {runs.cpu_utilisation:.3g}): nothing to simulate"
        )
    rng = random.Random(f"runs:{seed}")
    draw = runs.service.sampler(random.Random(f"runs-service:{seed}"))
    overhead = runs.overhead_ms / 1000 * stretch

    def sample() -> float:
        return draw() * stretch

    servers = runs.workers * runs.concurrency
    free = [0.0] * servers  # when each slot frees, as a heap
    rate, poll, follow = runs.rate, runs.poll_interval_s, runs.events_poll_s
    skip = int(count * warmup)
    responses = array("d")
    wait_sum = 0.0
    busy = 0.0
    now = 0.0
    for i in range(count):
        now += rng.expovariate(rate)
        earliest = free[0]
        start = now + rng.random() * poll if earliest <= now else earliest
        service = sample()
        heapq.heapreplace(free, start + service)
        busy += service
        if i >= skip:
            late = rng.random() * follow if follow else 0.0
            responses.append(start + service - now + late + overhead)
            wait_sum += start - now
    ordered = sorted(responses)
    return RunStats(
        runs=len(ordered),
        mean_s=sum(ordered) / len(ordered),
        p50_s=quantile(ordered, 0.5),
        p99_s=quantile(ordered, 0.99),
        mean_wait_s=wait_sum / len(ordered),
        utilisation=busy / (servers * max(now, max(free))),
    )


def quantile(ordered: Any, q: float) -> float:
    """The ``q``-quantile of sorted values (nearest rank)."""
    if not ordered:
        raise ValueError("no values")
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return float(ordered[index])
