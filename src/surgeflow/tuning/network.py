"""The scenario as a network of queueing stations, solved in closed form.

Stations, in the order a request meets them:

- **gateway** (M instances, 1 server each): a replica's event loop. A request visits it once
  on arrival and, if it missed the cache, once more after the model answers; per visit the CPU
  time is a mixture of constants. Waiting by Allen–Cunneen with c = 1 (Kingman; for Poisson
  arrivals exactly Pollaczek–Khinchine).
- **cache**: a pure delay, h·t_h + (1 − h)·t_c; no queue.
- **endpoint slots** (M × S instances, p servers each): one endpoint's `EndpointLimits` in one
  replica's router. A slot is held for the backend's whole response time. Waiting by
  Allen–Cunneen (Erlang C × (c_a² + c_s²)/2); rejections from M/M/c/K blocking (K = p + queue)
  and the Erlang C tail past ``queue_timeout_s``; at ρ ≥ 1 the pool is saturated: it serves p/s
  and rejects the rest.
- **backend** (S instances, ``capacity`` servers each, only when a capacity is set): the model
  server itself, shared by every replica; its queue is bounded only by the deadline.
- **runs** (1 instance, W × K servers): durable runs, apart from the request path.
"""

from __future__ import annotations

import math

import msgspec

from surgeflow.tuning.queueing import (
    allen_cunneen_wait_s,
    erlang_c,
    mixture_moments,
    mmck_blocking,
)
from surgeflow.tuning.scenario import EndpointGroup, Scenario

BUSY = 0.8  # utilisation from which a station is reported busy (waits grow fast beyond it)


class Station(msgspec.Struct, kw_only=True):
    """One station of the network, per instance (there are ``instances`` identical ones)."""

    name: str
    kind: str  # gateway | cache | endpoint | backend | runs
    instances: int
    servers: int | None  # per instance; None: no limit (a pure delay)
    arrival_rps: float  # per instance
    service_ms: float  # mean time a server is held per visit
    service_scv: float
    utilisation: float | None  # ρ = λ·s / c; None for a pure delay
    wait_ms: float | None  # mean wait in queue per visit; None: grows without bound
    response_ms: float | None  # what the station adds to a request it serves: waits + service
    capacity_rps: float | None  # per instance: c / s
    state: str  # ok | busy | saturated (rejects the excess) | unstable (waits grow)
    rejection_ratio: float = 0.0  # share of this station's arrivals refused (approximate)
    formula: str = ""


class Analysis(msgspec.Struct, kw_only=True):
    """The closed-form answer for one rate."""

    rate_rps: float
    stations: list[Station]
    mean_ms: float | None  # a successful request, end to end; None: unbounded
    throughput_rps: float
    rejection_ratio: float
    bottleneck: str
    stable: bool  # no station whose waits grow without bound
    capacity_rps: float  # the rate at which the first station reaches ρ = 1


def analyze(scenario: Scenario, rate: float | None = None) -> Analysis:
    """Every station's utilisation, waiting and response time at ``rate`` (default: the
    scenario's), and what they add up to for one request."""
    if rate is not None:
        scenario = scenario.with_rate(rate)
    lam = scenario.rate
    h = scenario.cache.hit_ratio
    gateway = _gateway(scenario)
    stations = [gateway]
    cache = scenario.cache
    cache_ms = h * cache.hit_ms + (1 - h) * cache.miss_ms
    stations.append(
        Station(
            name="cache",
            kind="cache",
            instances=1,
            servers=None,
            arrival_rps=lam,
            service_ms=cache_ms,
            service_scv=0.0,
            utilisation=None,
            wait_ms=0.0,
            response_ms=cache_ms,
            capacity_rps=None,
            state="ok",
            formula="delay",
        )
    )
    # Stations are solved at the offered rate, so each one's ρ says what it would face; the
    # throughput then follows the flow: the gateway passes at most what its CPU can do.
    admitted = min(lam, _gateway_capacity(scenario))
    passed = admitted / lam if lam else 0.0
    misses = lam * (1 - h)
    model_ms = 0.0
    served_misses = 0.0
    for group, share in zip(scenario.model.endpoints, _shares(scenario), strict=True):
        backend = _backend(scenario, group, misses * share) if group.capacity else None
        if backend is not None:
            stations.append(backend)
        pool = _pool(scenario, group, share, misses * share, backend)
        if group.max_concurrency is not None:
            stations.append(pool)  # with no limit, a pool is no station, only a delay
        served = misses * share * group.count * passed * (1 - pool.rejection_ratio)
        if backend is not None and backend.state == "unstable":
            served = min(served, (backend.capacity_rps or 0.0) * backend.instances)
        served_misses += served
        if pool.response_ms is None or pool.wait_ms is None:
            model_ms = math.inf
        else:
            model_ms += share * group.count * pool.response_ms
    if scenario.runs is not None and scenario.runs.rate > 0:
        stations.append(_runs(scenario))
    throughput = admitted * h + served_misses
    rejected = max(0.0, misses * passed - served_misses) if backend_bounded(scenario) else 0.0
    path = [s for s in stations if s.kind != "runs"]
    stable = all(s.state != "unstable" for s in path)
    mean_ms: float | None = None
    if stable and gateway.response_ms is not None and not math.isinf(model_ms):
        mean_ms = gateway.response_ms + cache_ms + (1 - h) * model_ms
    loaded = [s for s in path if s.utilisation is not None]
    bottleneck = max(loaded, key=lambda s: s.utilisation or 0.0).name if loaded else "none"
    return Analysis(
        rate_rps=lam,
        stations=stations,
        mean_ms=mean_ms,
        throughput_rps=throughput,
        rejection_ratio=rejected / lam if lam else 0.0,
        bottleneck=bottleneck,
        stable=stable,
        capacity_rps=_capacity_rps(scenario, loaded),
    )


def backend_bounded(scenario: Scenario) -> bool:
    """Whether calls the model tier cannot take are refused (slot limits with a bounded queue)
    rather than left waiting (a backend capacity with no limit in front of it)."""
    return all(g.max_concurrency is not None for g in scenario.model.endpoints)


def _capacity_rps(scenario: Scenario, loaded: list[Station]) -> float:
    """Utilisation grows in proportion to the rate, so each station saturates at rate / ρ."""
    limits = [scenario.rate / s.utilisation for s in loaded if s.utilisation]
    return min(limits) if limits else math.inf


def _state(rho: float, *, bounded: bool) -> str:
    if rho >= 1:
        return "saturated" if bounded else "unstable"
    return "busy" if rho >= BUSY else "ok"


def _arrival_scv(scenario: Scenario) -> float:
    """c_a² of one gateway replica's arrivals, given the balancer's split."""
    replicas = scenario.gateway.replicas
    poisson = scenario.arrivals == "poisson"
    if scenario.gateway.split == "round_robin":
        return 1.0 / replicas if poisson else 0.0
    return 1.0 if poisson else 1.0 - 1.0 / replicas


def _gateway_capacity(scenario: Scenario) -> float:
    gw, h = scenario.gateway, scenario.cache.hit_ratio
    cpu_s = (h * gw.cpu_hit_ms + (1 - h) * gw.cpu_miss_ms) / 1000
    return math.inf if cpu_s <= 0 else gw.replicas / cpu_s


def _gateway(scenario: Scenario) -> Station:
    gw, h = scenario.gateway, scenario.cache.hit_ratio
    per_replica = scenario.rate / gw.replicas
    after = gw.cpu_miss_ms * gw.miss_cpu_after
    before = gw.cpu_miss_ms - after
    parts = [(h, gw.cpu_hit_ms, 0.0), (1 - h, before, 0.0)]
    if after > 0:
        parts.append((1 - h, after, 0.0))
    visits = sum(p for p, _, _ in parts)  # per request: 1, or 2 for a miss with work after
    service_ms, scv = mixture_moments(parts)
    cpu_ms = h * gw.cpu_hit_ms + (1 - h) * gw.cpu_miss_ms
    rho = per_replica * cpu_ms / 1000
    # Second visits come back after a random model time: count them as Poisson.
    ca2 = (_arrival_scv(scenario) + (visits - 1)) / visits
    wait_s = (
        allen_cunneen_wait_s(per_replica * visits, service_ms / 1000, 1, ca2=ca2, cs2=scv)
        if service_ms > 0
        else 0.0
    )
    unstable = math.isinf(wait_s)
    return Station(
        name="gateway",
        kind="gateway",
        instances=gw.replicas,
        servers=1,
        arrival_rps=per_replica,
        service_ms=cpu_ms,
        service_scv=scv,
        utilisation=rho,
        wait_ms=None if unstable else wait_s * 1000,  # per visit
        response_ms=None if unstable else visits * wait_s * 1000 + cpu_ms,  # per request
        capacity_rps=1000 / cpu_ms if cpu_ms > 0 else None,
        state=_state(rho, bounded=False),
        formula="G/G/1 Kingman (M/G/1: Pollaczek–Khinchine)",
    )


def _shares(scenario: Scenario) -> list[float]:
    """Each group's share of the misses, per endpoint of the group."""
    groups = scenario.model.endpoints
    if scenario.model.policy == "round_robin":  # ignores weights
        total = sum(g.count for g in groups)
        return [1.0 / total for _ in groups]
    total = sum(g.count * g.weight for g in groups)
    return [g.weight / total for g in groups]


def _pool_arrival_scv(scenario: Scenario, share: float) -> float:
    """c_a² of one endpoint's calls from one router: each n-th call (round robin) is Erlang-n."""
    if scenario.model.policy in ("round_robin", "weighted_round_robin"):
        return share
    return 1.0


def _backend(scenario: Scenario, group: EndpointGroup, rate: float) -> Station:
    """One endpoint's model server with ``capacity`` calls at once; ``rate`` from all replicas.

    With slot limits in front, at most M × max_concurrency calls reach it at once: past ρ = 1
    its queue is then full, not growing, and the pools refuse the excess.
    """
    capacity = group.capacity or 1
    service_s, scv = group.service.mean_s, group.service.scv_value
    rho = rate * service_s / capacity
    wait_s = allen_cunneen_wait_s(rate, service_s, capacity, ca2=1.0, cs2=scv) if rate else 0.0
    state = _state(rho, bounded=False)
    formula = "Allen–Cunneen M/G/c"
    if group.max_concurrency is not None:
        bound = scenario.gateway.replicas * group.max_concurrency  # calls that can be there
        full_wait_s = max(0, bound - capacity) * service_s / capacity
        if rho >= 1:
            wait_s, state = full_wait_s, "saturated"
            formula = "saturated: a full queue of M × max_concurrency calls"
        else:
            wait_s = min(wait_s, full_wait_s)
    unstable = math.isinf(wait_s)
    return Station(
        name=f"{group.name} backend",
        kind="backend",
        instances=group.count,
        servers=capacity,
        arrival_rps=rate,
        service_ms=service_s * 1000,
        service_scv=scv,
        utilisation=rho,
        wait_ms=None if unstable else wait_s * 1000,
        response_ms=None if unstable else (wait_s + service_s) * 1000,
        capacity_rps=capacity / service_s if service_s else None,
        state=state,
        formula=formula,
    )


def _pool(
    scenario: Scenario,
    group: EndpointGroup,
    share: float,
    rate: float,
    backend: Station | None,
) -> Station:
    """One endpoint's slots in one replica's router; it gets ``share`` of the router's calls,
    and ``rate`` is all replicas' calls to the endpoint."""
    replicas = scenario.gateway.replicas
    per_pool = rate / replicas
    if backend is not None and backend.response_ms is not None:
        hold_s = backend.response_ms / 1000
    else:
        hold_s = group.service.mean_s
    scv = group.service.scv_value
    slots = group.max_concurrency
    utilisation: float | None = None if slots is None else 0.0
    wait_s, rejected = 0.0, 0.0
    capacity = None if slots is None or hold_s <= 0 else slots / hold_s
    state, formula = "ok", "delay" if slots is None else "idle"
    if slots is not None and per_pool > 0 and hold_s > 0:
        load = per_pool * hold_s
        utilisation = load / slots
        timeout_s = group.queue_timeout_s
        if utilisation >= 1:
            # Saturated: it serves c/s and refuses the rest; who is served waited until a slot
            # freed, at most the timeout (or as long as a full queue takes to drain).
            wait_s = min(timeout_s, group.max_queue * hold_s / slots)
            rejected = 1 - 1 / utilisation
            state, formula = "saturated", "saturated: serves c/s, refuses the rest"
        else:
            ca2 = _pool_arrival_scv(scenario, share)
            factor = (ca2 + scv) / 2
            wait_s = allen_cunneen_wait_s(per_pool, hold_s, slots, ca2=ca2, cs2=scv)
            blocked = mmck_blocking(slots, load, slots + group.max_queue)
            spare = slots / hold_s - per_pool
            late = erlang_c(slots, load) * math.exp(-spare * timeout_s / max(factor, 1e-9))
            rejected = min(1.0, blocked + (1 - blocked) * late)
            state, formula = _state(utilisation, bounded=True), "Allen–Cunneen M/G/c (Erlang C)"
    return Station(
        name=f"{group.name} slots",
        kind="endpoint",
        instances=replicas * group.count,
        servers=slots,
        arrival_rps=per_pool,
        service_ms=hold_s * 1000,
        service_scv=scv,
        utilisation=utilisation,
        wait_ms=wait_s * 1000,
        response_ms=(wait_s + hold_s) * 1000,
        capacity_rps=capacity,
        state=state,
        rejection_ratio=rejected,
        formula=formula,
    )


def _runs(scenario: Scenario) -> Station:
    runs = scenario.runs
    assert runs is not None
    servers = runs.workers * runs.concurrency
    stretch = runs.stretch  # the CPU's load stretches every run (∞: saturated)
    alone_s, scv = runs.service.mean_s, runs.service.scv_value
    service_s = alone_s * stretch if not math.isinf(stretch) else alone_s
    rho = max(runs.rate * service_s / servers, runs.cpu_utilisation)
    capacities = [servers / alone_s] if alone_s else []
    if runs.cpu_ms:
        capacities.append(runs.cpu_servers * 1000 / runs.cpu_ms)
    wait_s = (
        math.inf
        if math.isinf(stretch)
        else allen_cunneen_wait_s(runs.rate, service_s, servers, ca2=1.0, cs2=scv)
    )
    if not math.isinf(wait_s) and runs.poll_interval_s:
        # A run that finds a worker idle waits for its next poll: half an interval on average.
        wait_s += (1 - erlang_c(servers, runs.rate * service_s)) * runs.poll_interval_s / 2
    if not math.isinf(wait_s):
        wait_s += runs.events_poll_s / 2  # a follower in another process learns of the end late
        wait_s += runs.overhead_ms / 1000 * stretch
    unstable = math.isinf(wait_s)
    return Station(
        name="runs",
        kind="runs",
        instances=1,
        servers=servers,
        arrival_rps=runs.rate,
        service_ms=service_s * 1000,
        service_scv=scv,
        utilisation=rho,
        wait_ms=None if unstable else wait_s * 1000,
        response_ms=None if unstable else (wait_s + service_s) * 1000,
        capacity_rps=min(capacities) if capacities else None,
        state=_state(rho, bounded=False),
        formula="Allen–Cunneen M/G/c, CPU as processor sharing",
    )
