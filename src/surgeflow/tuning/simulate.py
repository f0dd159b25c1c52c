"""A discrete-event simulation of what surgeflow does with a stream of chat requests.

Per request: the load balancer in front picks a gateway replica; the replica's event loop spends
CPU on it (one FIFO server per replica); a cache hit is answered there. A miss goes to that
replica's router, which does what `ModelRouter` does: keep the endpoints whose `EndpointLimits`
have room (a free slot or a free place in the queue; none: 503 at once), let the real policy
object pick one (`surgeflow.routing.make_policy`, fed live in-flight counts and a peak EWMA of
call latency on the simulated clock), hold a slot for the call or wait for one in FIFO order for
at most ``queue_timeout_s``, retry a timed-out wait or an upstream error on another endpoint
after the same backoff and within the same `RetryBudget` and deadline, and finish with the rest
of the replica's CPU work. Slots are per replica, as in surgeflow; a backend ``capacity`` is
shared by all of them. Durable runs are simulated apart, as a FIFO pool of worker slots.

Seeded, and bounded by a number of requests, so two runs with the same inputs agree exactly.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from array import array
from typing import Any

import msgspec

from surgeflow.routing.base import RouteKey
from surgeflow.routing.budget import RetryBudget, backoff_s
from surgeflow.routing.endpoint import Endpoint, PeakEWMA
from surgeflow.routing.policies import make_policy
from surgeflow.tuning.runsim import RunStats, quantile, simulate_runs
from surgeflow.tuning.scenario import Sampler, Scenario
from surgeflow.tuning.simparts import NO_LIMIT, Backend, Call, Clock, Gateway, NoBackend, Pool

__all__ = ["SimResult", "StationStats", "quantile", "simulate", "simulate_runs"]

# More gateway replicas than this are simulated as a proportional slice of the system.
MAX_SIMULATED_GATEWAYS = 128
# ... and so are more (gateway, endpoint) slot pools than this.
MAX_SIMULATED_POOLS = 20_000

_ROUTE, _END, _TIMEOUT, _DEADLINE, _DONE = range(5)
_WAITING, _HOLDING, _GONE = range(3)


class StationStats(msgspec.Struct, kw_only=True):
    """What one simulated station did, over the whole run."""

    name: str
    kind: str  # gateway | endpoint | backend | runs
    servers: int | None  # per instance (None: no limit)
    instances: int  # simulated instances of this station
    utilisation: float | None  # work arrived / (servers × time): ρ, past 1 if overloaded
    mean_busy: float  # mean busy servers per instance
    mean_wait_ms: float  # mean wait before service, over the calls that were served
    p99_wait_ms: float
    served: int
    rejected: int = 0


class SimResult(msgspec.Struct, kw_only=True):
    """What the simulation measured, after the warm-up share of the requests."""

    requests: int  # measured requests (after warm-up)
    succeeded: int
    rejected: int  # refused with 503: admission, no endpoint with room, queue timeout
    failed: int  # upstream errors and deadline timeouts
    throughput_rps: float  # successes completed per second over the measured window
    offered_rps: float  # arrivals per second over the same window
    duration_s: float
    mean_ms: float | None
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    retries: int
    reasons: dict[str, int]
    stations: list[StationStats]
    runs: RunStats | None = None
    seed: int = 0
    slice_note: str | None = None

    @property
    def error_ratio(self) -> float:
        return (self.rejected + self.failed) / self.requests if self.requests else 0.0


def simulate(
    scenario: Scenario,
    *,
    requests: int = 200_000,
    seed: int = 1,
    warmup: float = 0.1,
) -> SimResult:
    """Simulate ``requests`` chat requests at ``scenario.rate``; the first ``warmup`` share
    warms the system up and is not measured."""
    if requests < 10:
        raise ValueError("simulate at least 10 requests")
    return _Simulation(scenario, requests, seed, warmup).run()


class _Simulation:
    def __init__(self, scenario: Scenario, requests: int, seed: int, warmup: float) -> None:
        self.scenario = scenario
        self.requests = requests
        self.seed = seed
        self.warmup_count = int(requests * warmup)
        self.clock = Clock()
        self.rng_arrivals = random.Random(f"arrivals:{seed}")
        self.rng_cache = random.Random(f"cache:{seed}")
        self.rng_service = random.Random(f"service:{seed}")
        self.rng_misc = random.Random(f"misc:{seed}")
        self.heap: list[tuple[float, int, int, Any]] = []
        self.seq = itertools.count()
        self.latencies = array("d")
        self.completions = array("d")
        self.reasons: dict[str, int] = {}
        self.rejected = 0
        self.failed = 0
        self.retries = 0
        self.slice_note: str | None = None
        self._build()

    # -- building ----------------------------------------------------------------------------

    def _build(self) -> None:
        scenario = self.scenario
        model = scenario.model
        gateways, counts, slot_scale = _slice(scenario)
        real = scenario.gateway.replicas
        if gateways < real:
            shares = ", ".join(
                f"{new} of {group.count} {group.name}"
                for new, group in zip(counts, model.endpoints, strict=True)
            )
            self.slice_note = f"simulated a slice: {gateways} of {real} gateway replicas" + (
                f", {shares} endpoints"
                if list(counts) != [g.count for g in model.endpoints]
                else ""
            )
        backends: list[tuple[int, str, Backend, Sampler, float]] = []
        for index, (group, count) in enumerate(zip(model.endpoints, counts, strict=True)):
            for replica in range(count):
                name = group.name if count == 1 else f"{group.name}-{replica + 1}"
                sample = group.service.sampler(self.rng_service)
                backends.append((index, name, Backend(group.capacity), sample, group.error_rate))
        self.gateways: list[Gateway] = []
        for g in range(gateways):
            pools = []
            for index, name, backend, sample, error_rate in backends:
                group = model.endpoints[index]
                slots = (
                    NO_LIMIT
                    if group.max_concurrency is None
                    else math.ceil(group.max_concurrency * slot_scale[index])
                )
                endpoint = Endpoint(
                    NoBackend(name),
                    weight=group.weight,
                    name=name,
                    latency=PeakEWMA(clock=self.clock),
                )
                pools.append(
                    Pool(
                        endpoint,
                        index,
                        slots,
                        math.ceil(group.max_queue * slot_scale[index]),
                        group.queue_timeout_s,
                        backend,
                        sample,
                        error_rate,
                    )
                )
            policy = make_policy(model.policy, seed=self.seed * 1000 + g)
            budget = RetryBudget(model.retry, clock=self.clock, rng=self.rng_misc.random)
            self.gateways.append(Gateway(pools, policy, budget))
        self.keys = [
            RouteKey(client_ip=f"k{i}", key_id=f"k{i}", user=f"k{i}", prompt_prefix=f"k{i}")
            for i in range(model.hash_keys)
        ]

    def _interarrival(self) -> Any:
        """Per replica: the time to its next request, given how the balancer splits them."""
        scenario = self.scenario
        rate, replicas = scenario.rate, scenario.gateway.replicas
        rng = self.rng_arrivals
        if scenario.arrivals == "poisson":
            if scenario.gateway.split == "random" or replicas == 1:
                per_replica = rate / replicas
                return lambda: rng.expovariate(per_replica)
            return lambda: rng.gammavariate(replicas, 1.0 / rate)
        tick = 1.0 / rate
        if scenario.gateway.split == "round_robin" or replicas == 1:
            period = replicas * tick
            return lambda: period
        log_stay = math.log1p(-1.0 / replicas)
        return lambda: tick * (1 + math.floor(math.log(1.0 - rng.random()) / log_stay))

    # -- running -----------------------------------------------------------------------------

    def run(self) -> SimResult:
        scenario = self.scenario
        gateway = scenario.gateway
        cache = scenario.cache
        hit_ratio = cache.hit_ratio
        hit_s = cache.hit_ms / 1000
        miss_s = cache.miss_ms / 1000
        cpu_hit = gateway.cpu_hit_ms / 1000
        cpu_after = gateway.cpu_miss_ms / 1000 * gateway.miss_cpu_after
        cpu_before = gateway.cpu_miss_ms / 1000 - cpu_after
        max_in_flight = gateway.max_in_flight
        deadline_s = scenario.model.deadline_s
        cache_random = self.rng_cache.random
        keys = self.keys
        # Only consistent_hash looks at the key: other policies need no draw.
        key_random = self.rng_misc.random if scenario.model.policy == "consistent_hash" else None
        hash_keys = len(keys)
        heap = self.heap
        push = heapq.heappush
        pop = heapq.heappop
        seq = self.seq
        clock = self.clock
        next_gap = self._interarrival()

        arrivals: list[tuple[float, int]] = []
        for g in range(len(self.gateways)):
            first = (
                g * (1.0 / scenario.rate)
                if scenario.arrivals == "constant" and gateway.split == "round_robin"
                else next_gap()
            )
            arrivals.append((first, g))
        heapq.heapify(arrivals)
        arrived = 0
        total = self.requests
        self.window_start = 0.0
        self.window_end = 0.0
        gateways = self.gateways

        while True:
            if arrived < total and (not heap or arrivals[0][0] <= heap[0][0]):
                now, g = arrivals[0]
                heapq.heapreplace(arrivals, (now + next_gap(), g))
                clock.now = now
                measured = arrived >= self.warmup_count
                if arrived == self.warmup_count:
                    self.window_start = now
                arrived += 1
                if arrived == total:
                    self.window_end = now
                gw = gateways[g]
                key = keys[int(key_random() * hash_keys)] if key_random else keys[0]
                call = Call(now, gw, measured, key)
                if max_in_flight is not None:
                    if gw.inflight >= max_in_flight:
                        self._fail(call, now, "admission", rejected=True)
                        continue
                    gw.inflight += 1
                start = gw.free_at if gw.free_at > now else now
                gw.wait_sum += start - now
                gw.visits += 1
                if cache_random() < hit_ratio:
                    done = start + cpu_hit
                    gw.free_at = done
                    gw.busy_s += cpu_hit
                    finish = done + hit_s
                    self._succeed(call, finish)
                else:
                    done = start + cpu_before
                    gw.free_at = done
                    gw.busy_s += cpu_before
                    push(heap, (done + miss_s, next(seq), _ROUTE, call))
                continue
            if not heap:
                break
            now, _, kind, item = pop(heap)
            clock.now = now
            if kind == _ROUTE:
                self._route(item, now, deadline_s)
            elif kind == _END:
                call, ok = item
                pool = call.pool
                if ok:
                    pool.endpoint.latency.observe(now - call.started)
                self._release(pool, call, now)
                if ok and not cpu_after:
                    self._succeed(call, now)
                elif ok:
                    gw = call.gateway
                    start = gw.free_at if gw.free_at > now else now
                    gw.wait_sum += start - now
                    gw.visits += 1
                    done = start + cpu_after
                    gw.free_at = done
                    gw.busy_s += cpu_after
                    self._succeed(call, done)
                else:
                    self._retry_or_fail(
                        call, now, "deadline" if now >= call.deadline else "upstream_error"
                    )
            elif kind == _TIMEOUT:
                waiter = item
                if waiter[1] == _WAITING:
                    waiter[1] = _GONE
                    call = waiter[0]
                    pool = call.pool
                    pool.waiting -= 1
                    pool.endpoint.inflight -= 1
                    pool.rejected += 1
                    self._retry_or_fail(call, now, "queue_timeout")
            elif kind == _DEADLINE:
                waiter = item
                if waiter[1] == _WAITING:
                    waiter[1] = _GONE
                    call = waiter[0]
                    backend = call.pool.backend
                    backend.queue.remove(waiter)
                    self._release(call.pool, call, now, served=False)
                    self._retry_or_fail(call, now, "deadline")
            else:  # _DONE
                item.inflight -= 1
        return self._result()

    # -- one call's steps --------------------------------------------------------------------

    def _route(self, call: Call, now: float, deadline_s: float) -> None:
        gw = call.gateway
        if call.attempt == 0:
            call.deadline = now + deadline_s
            gw.budget.on_request()
        call.attempt += 1
        admitted = [p for p in gw.pools if p.holding < p.slots or p.waiting < p.max_queue]
        if not admitted:
            self._fail(call, now, "overloaded", rejected=True)
            return
        tried = call.tried
        fresh = [p for p in admitted if p not in tried] if tried else admitted
        if not fresh:
            fresh = admitted
        if len(fresh) == 1:
            pool = fresh[0]
        else:
            pool = gw.by_endpoint[gw.policy.pick([p.endpoint for p in fresh], call.key)]
        endpoint = pool.endpoint
        endpoint.picks += 1
        tried.append(pool)
        call.pool = pool
        if now >= call.deadline:
            self._retry_or_fail(call, now, "deadline")
            return
        # The call counts against its endpoint from now, waiting or running, as the router's do.
        endpoint.inflight += 1
        if pool.holding < pool.slots and not pool.waiting:
            self._start(call, pool, now, now)
            return
        waiter = [call, _WAITING]
        pool.waiters.append(waiter)
        pool.waiting += 1
        call.queued_at = now
        heapq.heappush(self.heap, (now + pool.timeout_s, next(self.seq), _TIMEOUT, waiter))

    def _start(self, call: Call, pool: Pool, now: float, queued_at: float) -> None:
        """The call holds a slot from ``now``; it reaches the backend (or its queue)."""
        pool.holding += 1
        pool.served += 1
        wait = now - queued_at
        pool.wait_sum += wait
        if call.measured:
            pool.waits.append(wait)
        call.started = now
        backend = pool.backend
        if backend.serving < backend.capacity and not backend.queue:
            self._serve(call, pool, now, now)
            return
        waiter = [call, _WAITING, now]
        backend.queue.append(waiter)
        heapq.heappush(self.heap, (call.deadline, next(self.seq), _DEADLINE, waiter))

    def _serve(self, call: Call, pool: Pool, now: float, queued_at: float) -> None:
        backend = pool.backend
        backend.serving += 1
        backend.served += 1
        wait = now - queued_at
        backend.wait_sum += wait
        if call.measured:
            backend.waits.append(wait)
        service = pool.sample()
        ok = not (pool.error_rate and self.rng_misc.random() < pool.error_rate)
        end = now + service
        if end > call.deadline:
            end, ok = call.deadline, False
        backend.busy_s += end - now
        heapq.heappush(self.heap, (end, next(self.seq), _END, (call, ok)))

    def _release(self, pool: Pool, call: Call, now: float, *, served: bool = True) -> None:
        """The call leaves its slot (and its backend, if it was being served there)."""
        pool.endpoint.inflight -= 1
        pool.holding -= 1
        pool.busy_s += now - call.started
        if served:
            backend = pool.backend
            backend.serving -= 1
            while backend.queue and backend.serving < backend.capacity:
                waiter = backend.queue.popleft()
                if waiter[1] == _WAITING:
                    waiter[1] = _HOLDING
                    waiting_call = waiter[0]
                    self._serve(waiting_call, waiting_call.pool, now, waiter[2])
        # The slot goes straight to the first live waiter, as EndpointLimits._release does.
        while pool.waiters:
            waiter = pool.waiters.popleft()
            if waiter[1] == _WAITING:
                waiter[1] = _HOLDING
                pool.waiting -= 1
                waiting_call = waiter[0]
                self._start(waiting_call, pool, now, waiting_call.queued_at)
                break

    def _retry_or_fail(self, call: Call, now: float, reason: str) -> None:
        """What `ModelRouter._before_retry` decides: another endpoint after a backoff, or fail."""
        retry = self.scenario.model.retry
        if call.attempt < retry.attempts:
            delay = backoff_s(
                call.attempt, retry.backoff_s, retry.max_backoff_s, rng=self.rng_misc.random
            )
            if now + delay < call.deadline and call.gateway.budget.try_retry():
                self.retries += 1
                heapq.heappush(self.heap, (now + delay, next(self.seq), _ROUTE, call))
                return
        self._fail(call, now, reason, rejected=reason in ("overloaded", "queue_timeout"))

    def _fail(self, call: Call, now: float, reason: str, *, rejected: bool) -> None:
        if call.measured:
            self.reasons[reason] = self.reasons.get(reason, 0) + 1
            if rejected:
                self.rejected += 1
            else:
                self.failed += 1
        if self.scenario.gateway.max_in_flight is not None and reason != "admission":
            heapq.heappush(self.heap, (now, next(self.seq), _DONE, call.gateway))

    def _succeed(self, call: Call, done: float) -> None:
        self.completions.append(done)
        if call.measured:
            self.latencies.append(done - call.arrived)
        if self.scenario.gateway.max_in_flight is not None:
            heapq.heappush(self.heap, (done, next(self.seq), _DONE, call.gateway))

    # -- results -----------------------------------------------------------------------------

    def _result(self) -> SimResult:
        start, end = self.window_start, self.window_end
        span = max(end - start, 1e-12)
        measured = self.requests - self.warmup_count
        in_window = sum(1 for t in self.completions if start <= t <= end)
        ordered = sorted(self.latencies)
        # A slice stands for the whole system: its rates scale up by the replicas it stands for.
        scale = self.scenario.gateway.replicas / len(self.gateways)
        return SimResult(
            requests=measured,
            succeeded=len(ordered),
            rejected=self.rejected,
            failed=self.failed,
            throughput_rps=in_window / span * scale,
            offered_rps=measured / span * scale,
            duration_s=span,
            mean_ms=_ms(sum(ordered) / len(ordered)) if ordered else None,
            p50_ms=_ms(quantile(ordered, 0.50)) if ordered else None,
            p90_ms=_ms(quantile(ordered, 0.90)) if ordered else None,
            p99_ms=_ms(quantile(ordered, 0.99)) if ordered else None,
            max_ms=_ms(ordered[-1]) if ordered else None,
            retries=self.retries,
            reasons=dict(sorted(self.reasons.items())),
            # Work brought by the arrivals up to the last one, over that time: an estimate of
            # ρ = λ·s / c that goes past 1 when a station cannot keep up.
            stations=self._stations(max(end, 1e-12)),
            runs=(
                None
                if self.scenario.runs is None or self.scenario.runs.rate <= 0
                else simulate_runs(
                    self.scenario.runs, count=min(self.requests, 50_000), seed=self.seed
                )
            ),
            seed=self.seed,
            slice_note=self.slice_note,
        )

    def _stations(self, horizon: float) -> list[StationStats]:
        gateways = self.gateways
        visits = sum(g.visits for g in gateways)
        stations = [
            StationStats(
                name="gateway",
                kind="gateway",
                servers=1,
                instances=len(gateways),
                utilisation=sum(g.busy_s for g in gateways) / (horizon * len(gateways)),
                mean_busy=sum(g.busy_s for g in gateways) / (horizon * len(gateways)),
                mean_wait_ms=_ms(sum(g.wait_sum for g in gateways) / visits) if visits else 0.0,
                p99_wait_ms=0.0,
                served=visits,
            )
        ]
        model = self.scenario.model
        for index, group in enumerate(model.endpoints):
            pools = [p for g in gateways for p in g.pools if p.group == index]
            served = sum(p.served for p in pools)
            busy = sum(p.busy_s for p in pools) / (horizon * len(pools))
            waits = sorted(w for p in pools for w in p.waits)
            slots = pools[0].slots
            stations.append(
                StationStats(
                    name=f"{group.name} slots",
                    kind="endpoint",
                    servers=None if slots >= NO_LIMIT else slots,
                    instances=len(pools),
                    utilisation=None if slots >= NO_LIMIT else busy / slots,
                    mean_busy=busy,
                    mean_wait_ms=_ms(sum(p.wait_sum for p in pools) / served) if served else 0.0,
                    p99_wait_ms=_ms(quantile(waits, 0.99)) if waits else 0.0,
                    served=served,
                    rejected=sum(p.rejected for p in pools),
                )
            )
            if group.capacity is not None:
                backends = list({id(p.backend): p.backend for p in pools}.values())
                bserved = sum(b.served for b in backends)
                bbusy = sum(b.busy_s for b in backends) / (horizon * len(backends))
                bwaits = sorted(w for b in backends for w in b.waits)
                stations.append(
                    StationStats(
                        name=f"{group.name} backend",
                        kind="backend",
                        servers=group.capacity,
                        instances=len(backends),
                        utilisation=bbusy / group.capacity,
                        mean_busy=bbusy,
                        mean_wait_ms=_ms(sum(b.wait_sum for b in backends) / bserved)
                        if bserved
                        else 0.0,
                        p99_wait_ms=_ms(quantile(bwaits, 0.99)) if bwaits else 0.0,
                        served=bserved,
                    )
                )
        return stations


def _slice(scenario: Scenario) -> tuple[int, list[int], list[float]]:
    """How many gateway replicas and endpoints of each group to simulate, and by how much to
    scale each group's per-replica slots and queue so that every station keeps its load.

    Without a shared backend capacity, replicas are independent given their own arrivals, so a
    few of them stand for all exactly. With one, the slice keeps endpoints per replica, so each
    simulated replica's router sees fewer endpoints, each with proportionally more slots.
    """
    groups = scenario.model.endpoints
    counts = [g.count for g in groups]
    replicas = scenario.gateway.replicas
    endpoints = sum(counts)
    limit = max(1, min(MAX_SIMULATED_GATEWAYS, MAX_SIMULATED_POOLS // endpoints))
    if replicas <= limit:
        return replicas, counts, [1.0] * len(groups)
    if all(g.capacity is None for g in groups):
        return limit, counts, [1.0] * len(groups)
    best: tuple[float, int, list[int]] | None = None
    for simulated in range(1, MAX_SIMULATED_GATEWAYS + 1):
        share = simulated / replicas
        new = [max(1, round(c * share)) for c in counts]
        error = max(abs(n - c * share) / (c * share) for n, c in zip(new, counts, strict=True))
        if best is None or error <= best[0] + 1e-12:
            best = (error, simulated, new)
    assert best is not None
    _, simulated, new = best
    return simulated, new, [c / n for c, n in zip(counts, new, strict=True)]


def _ms(seconds: float) -> float:
    return seconds * 1000
