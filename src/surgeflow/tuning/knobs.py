"""What ``surgeflow tune`` changes, what load it tunes for, and what the model makes of both.

A `Candidate` is a deployment: a config and, for durable runs, how many worker processes run
it. A `Knob` is one setting of it: its range, how to set a value, the config snippet that sets
it, and what a value uses (slots, workers, cache entries …). A `Workload` is the load: chat
requests to one model (some repeating a hot prompt the cache can answer), or durable runs of
one workflow. `chat_scenario` and `run_queue` turn a candidate and a workload into what the
queueing model reads.

Every knob is tuned the same way: the smallest value that meets the SLO is the one that uses
least, and a larger value never makes the SLO harder to meet (slots, workers and TTLs only add
capacity; a larger admission limit only refuses less).
"""

from __future__ import annotations

import math
import os
from typing import Any, Literal, Protocol

import msgspec

from surgeflow.config import Settings
from surgeflow.errors import ConfigError
from surgeflow.tuning.scenario import RunQueue, Scenario, ServiceTime, _model_settings

WorkloadKind = Literal["chat", "runs"]

# How often a gateway re-reads the store for a run's events when no in-process notice arrives
# (`surgeflow.gateway.runs`): a run executed by another process ends this much later, at most,
# for a client following its events.
EVENTS_POLL_S = 1.0
MAX_SETTLE_S = 120.0


class Workload(msgspec.Struct, kw_only=True, frozen=True):
    """The load a setting is tuned for.

    ``chat``: requests to ``model``; a share ``hit_ratio`` repeats one of ``prompts`` hot
    prompts at temperature 0 (which the cache may answer), the rest are unique. ``runs``:
    durable runs of ``workflow`` with ``input``, followed to their end through the events
    stream.
    """

    kind: WorkloadKind = "chat"
    model: str = ""
    hit_ratio: float = 0.0
    prompts: int = 1
    workflow: str = ""
    input: dict[str, Any] = msgspec.field(default_factory=dict)

    def describe(self) -> str:
        if self.kind == "runs":
            return f"durable runs of {self.workflow}"
        if self.hit_ratio:
            return (
                f"chat to {self.model}, {self.hit_ratio:.0%} repeating one of {self.prompts:,}"
                " hot prompts"
            )
        return f"chat to {self.model}"


class Candidate(msgspec.Struct, kw_only=True, frozen=True):
    """A deployment: ``settings``, and ``workers`` worker processes next to one gateway process
    (None: the gateway's embedded worker executes the runs)."""

    settings: Settings
    workers: int | None = None


class Knob(Protocol):
    """One setting the tuner can change."""

    name: str
    kind: WorkloadKind  # the load it is tuned under
    lowest: int
    highest: int
    unit: str  # of `resources`

    def current(self, candidate: Candidate, model: str) -> int | None:
        """The value the deployment has now (None: unlimited)."""
        ...

    def apply(self, candidate: Candidate, model: str, value: int) -> Candidate:
        """A copy of ``candidate`` with the knob at ``value``."""
        ...

    def snippet(self, candidate: Candidate, model: str, value: int) -> dict[str, Any]:
        """The part of a config that sets the knob to ``value``."""
        ...

    def resources(self, candidate: Candidate, workload: Workload, rate: float, value: int) -> int:
        """What ``value`` uses, in `unit`."""
        ...

    def advice(self, value: int) -> str:
        """What to do besides the config snippet ("": nothing)."""
        ...

    def settle_s(self, value: int) -> float:
        """How long a deployment started at ``value`` takes to reach its steady state (a
        trial warms up at least this long, up to `MAX_SETTLE_S`)."""
        ...


class _Setting:
    """What knobs share: nothing to do besides the snippet."""

    def advice(self, value: int) -> str:
        return ""

    def settle_s(self, value: int) -> float:
        return 0.0


def _replace_model(settings: Settings, model: str, **changes: Any) -> Settings:
    models = [
        msgspec.structs.replace(m, **changes) if m.name == model else m for m in settings.models
    ]
    return msgspec.structs.replace(settings, models=models)


class MaxConcurrency(_Setting):
    """``max_concurrency`` of every endpoint of the model: the slots per endpoint."""

    name = "max_concurrency"
    kind: WorkloadKind = "chat"
    lowest = 1
    highest = 1024
    unit = "slots in total"

    def current(self, candidate: Candidate, model: str) -> int | None:
        return min(e.max_concurrency for e in _model_settings(candidate.settings, model).endpoints)

    def apply(self, candidate: Candidate, model: str, value: int) -> Candidate:
        chosen = _model_settings(candidate.settings, model)
        endpoints = [msgspec.structs.replace(e, max_concurrency=value) for e in chosen.endpoints]
        settings = _replace_model(candidate.settings, chosen.name, endpoints=endpoints)
        return msgspec.structs.replace(candidate, settings=settings)

    def snippet(self, candidate: Candidate, model: str, value: int) -> dict[str, Any]:
        chosen = _model_settings(candidate.settings, model)
        endpoints = [
            {"name": e.name or f"{chosen.name}-{i}", "max_concurrency": value}
            for i, e in enumerate(chosen.endpoints)
        ]
        return {"models": [{"name": chosen.name, "endpoints": endpoints}]}

    def resources(self, candidate: Candidate, workload: Workload, rate: float, value: int) -> int:
        return value * len(_model_settings(candidate.settings, workload.model).endpoints)


class MaxInFlight(_Setting):
    """``server.max_in_flight``: requests a gateway process holds at once before it answers 503.

    The smallest value that meets the SLO is the tightest admission limit that still serves
    the rate: load beyond it is refused at once instead of queueing into everyone's latency.
    """

    name = "max_in_flight"
    kind: WorkloadKind = "chat"
    lowest = 1
    highest = 65_536
    unit = "requests in flight at most"

    def current(self, candidate: Candidate, model: str) -> int | None:
        return candidate.settings.server.max_in_flight

    def apply(self, candidate: Candidate, model: str, value: int) -> Candidate:
        settings = candidate.settings
        server = msgspec.structs.replace(settings.server, max_in_flight=value)
        return msgspec.structs.replace(
            candidate, settings=msgspec.structs.replace(settings, server=server)
        )

    def snippet(self, candidate: Candidate, model: str, value: int) -> dict[str, Any]:
        return {"server": {"max_in_flight": value}}

    def resources(self, candidate: Candidate, workload: Workload, rate: float, value: int) -> int:
        return value


class CacheTTL(_Setting):
    """The model's ``cache.ttl_s``: how long an answer is served from the cache.

    A longer TTL answers more repeats (see `expected_hit_ratio`) and keeps more entries; the
    resource is the expected number of entries the workload keeps in the cache.
    """

    name = "cache_ttl_s"
    kind: WorkloadKind = "chat"
    lowest = 1
    highest = 86_400
    unit = "cache entries (expected)"

    def current(self, candidate: Candidate, model: str) -> int | None:
        return math.ceil(cache_ttl_s(candidate.settings, model))

    def apply(self, candidate: Candidate, model: str, value: int) -> Candidate:
        chosen = _model_settings(candidate.settings, model)
        cache = msgspec.structs.replace(chosen.cache, ttl_s=float(value))
        settings = _replace_model(candidate.settings, chosen.name, cache=cache)
        return msgspec.structs.replace(candidate, settings=settings)

    def snippet(self, candidate: Candidate, model: str, value: int) -> dict[str, Any]:
        name = _model_settings(candidate.settings, model).name
        return {"models": [{"name": name, "cache": {"ttl_s": value}}]}

    def settle_s(self, value: int) -> float:
        # A cold cache has no entries to expire: its first TTL answers more than later ones.
        return float(value)

    def resources(self, candidate: Candidate, workload: Workload, rate: float, value: int) -> int:
        chosen = _model_settings(candidate.settings, workload.model)
        per_prompt = rate * workload.hit_ratio / workload.prompts
        held = per_prompt * (value + chosen.cache.stale_s)
        return math.ceil(workload.prompts * held / (1 + held))


class WorkerConcurrency(_Setting):
    """``worker.concurrency``: the runs each worker executes at once (its slots)."""

    name = "worker_concurrency"
    kind: WorkloadKind = "runs"
    lowest = 1
    highest = 4096
    unit = "run slots in total"

    def current(self, candidate: Candidate, model: str) -> int | None:
        return candidate.settings.worker.concurrency

    def apply(self, candidate: Candidate, model: str, value: int) -> Candidate:
        settings = candidate.settings
        worker = msgspec.structs.replace(settings.worker, concurrency=value)
        return msgspec.structs.replace(
            candidate, settings=msgspec.structs.replace(settings, worker=worker)
        )

    def snippet(self, candidate: Candidate, model: str, value: int) -> dict[str, Any]:
        return {"worker": {"concurrency": value}}

    def resources(self, candidate: Candidate, workload: Workload, rate: float, value: int) -> int:
        return value * (candidate.workers or 1)


class Workers(_Setting):
    """How many ``surgeflow worker`` processes execute the runs, each with
    ``worker.concurrency`` slots. Trials start them as real processes beside the gateway."""

    name = "workers"
    kind: WorkloadKind = "runs"
    lowest = 1
    highest = 64
    unit = "worker processes"

    def current(self, candidate: Candidate, model: str) -> int | None:
        return candidate.workers or 1

    def apply(self, candidate: Candidate, model: str, value: int) -> Candidate:
        return msgspec.structs.replace(candidate, workers=value)

    def snippet(self, candidate: Candidate, model: str, value: int) -> dict[str, Any]:
        return {"worker": {"embedded": False}}

    def advice(self, value: int) -> str:
        return (
            f"run {value} `surgeflow worker` process{'es' if value > 1 else ''} beside the gateway"
        )

    def resources(self, candidate: Candidate, workload: Workload, rate: float, value: int) -> int:
        return value


KNOBS: dict[str, Knob] = {
    knob.name: knob
    for knob in (MaxConcurrency(), MaxInFlight(), CacheTTL(), WorkerConcurrency(), Workers())
}


def knob_named(name: str) -> Knob:
    try:
        return KNOBS[name]
    except KeyError:
        raise ConfigError(f"no knob {name!r}; the knobs are {', '.join(KNOBS)}") from None


# -- what the model reads ------------------------------------------------------------------------


def cache_ttl_s(settings: Settings, model: str) -> float:
    """The TTL of ``model``'s answers: its own, or the global one."""
    own = _model_settings(settings, model).cache.ttl_s
    return settings.cache.ttl_s if own is None else own


def expected_hit_ratio(
    hit_ratio: float, prompts: int, rate: float, ttl_s: float, stale_s: float = 0.0
) -> float:
    """The share of requests the cache answers when a share ``hit_ratio`` of ``rate`` req/s
    repeats one of ``prompts`` hot prompts (uniformly, Poisson) and entries live ``ttl_s``.

    Each hot prompt arrives at λ = rate·hit_ratio/prompts. A miss stores the answer; the
    requests in the next ``ttl_s`` are hits (λ·ttl_s of them on average); the first after that
    is served stale if it comes within ``stale_s`` (probability 1 − e^(−λ·stale_s)) and starts
    the next cycle without a miss, otherwise it is a miss. So of λ·ttl_s + 1 requests a cycle,
    e^(−λ·stale_s) miss: a renewal argument, exact for Poisson arrivals at steady state (it
    leaves out coalescing, which only adds answers without a model call).
    """
    if hit_ratio <= 0 or rate <= 0:
        return 0.0
    per_prompt = rate * hit_ratio / prompts
    missed = math.exp(-per_prompt * stale_s) / (1 + per_prompt * ttl_s)
    return hit_ratio * (1 - missed)


def chat_scenario(candidate: Candidate, workload: Workload, rate: float) -> Scenario:
    """The model of ``candidate`` under chat ``workload`` at ``rate`` req/s."""
    settings = candidate.settings
    cache = _model_settings(settings, workload.model).cache
    hits = 0.0
    if cache.enabled and workload.hit_ratio > 0:
        hits = expected_hit_ratio(
            workload.hit_ratio,
            workload.prompts,
            rate,
            cache_ttl_s(settings, workload.model),
            cache.stale_s,
        )
    return Scenario.from_settings(settings, model=workload.model, rate=rate, hit_ratio=hits)


def run_queue(
    candidate: Candidate,
    rate: float,
    service: ServiceTime,
    *,
    overhead_ms: float = 0.0,
    cpu_ms: float = 0.0,
    cores: int | None = None,
) -> RunQueue:
    """The model of ``candidate``'s workers under ``rate`` runs/s, each holding a slot for
    ``service``, taking ``overhead_ms`` besides and costing ``cpu_ms`` of CPU.

    Separate worker processes poll the queue when idle and report through the store, which a
    gateway re-reads every `EVENTS_POLL_S`; the embedded worker is woken, and wakes its
    gateway's followers, at once. The embedded worker shares one event loop with its gateway;
    separate workers add one CPU server each, up to the ``cores`` left beside the gateway (one
    is kept for it).
    """
    worker = candidate.settings.worker
    separate = candidate.workers is not None
    cpus = 1
    if candidate.workers is not None:
        spare = (cores if cores is not None else os.cpu_count() or 1) - 1
        cpus = max(1, min(candidate.workers, spare))
    return RunQueue(
        rate=rate,
        service=service,
        workers=candidate.workers or 1,
        concurrency=worker.concurrency,
        poll_interval_s=worker.poll_interval_s if separate else 0.0,
        events_poll_s=EVENTS_POLL_S if separate else 0.0,
        overhead_ms=overhead_ms,
        cpu_ms=cpu_ms,
        cpu_servers=cpus,
    )
