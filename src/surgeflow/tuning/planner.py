"""Predictions for a scenario, the largest rate that meets an SLO, and the cheapest change that
makes a failing SLO pass.

`predict` joins the closed forms (`network.analyze`: utilisation, mean waits, the bottleneck)
with the discrete-event simulation (`simulate.simulate`: percentiles, rejections, throughput).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import msgspec

from surgeflow.tuning.network import Analysis, Station, analyze
from surgeflow.tuning.scenario import SLO, Costs, Scenario
from surgeflow.tuning.simulate import SimResult, simulate

DEFAULT_REQUESTS = 200_000  # per prediction
SEARCH_REQUESTS = 40_000  # per probe of a search (max_rate, cheapest_change)


class Prediction(msgspec.Struct, kw_only=True):
    """What the model says happens at ``rate_rps``. Latencies in ms, for successful requests."""

    scenario: str
    rate_rps: float
    stable: bool  # False: some station's queue grows without bound at this rate
    bottleneck: str  # the station with the highest utilisation
    capacity_rps: float  # the rate at which the bottleneck reaches ρ = 1
    throughput_rps: float
    mean_ms: float | None
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    rejection_ratio: float  # refused with 503 (admission, no room, queue timeout)
    error_ratio: float  # refused or failed
    analytic_mean_ms: float | None
    analytic_throughput_rps: float
    analytic_rejection_ratio: float
    stations: list[Station]
    simulated: SimResult | None
    notes: list[str]
    run_p99_s: float | None = None

    def to_json(self) -> bytes:
        return msgspec.json.format(msgspec.json.encode(self), indent=2)


def predict(
    scenario: Scenario,
    rate: float | None = None,
    *,
    requests: int = DEFAULT_REQUESTS,
    seed: int = 1,
    simulated: bool = True,
) -> Prediction:
    """The closed forms and (unless ``simulated`` is False) the simulation at ``rate``."""
    if rate is not None:
        scenario = scenario.with_rate(rate)
    analysis = analyze(scenario)
    sim = simulate(scenario, requests=requests, seed=seed) if simulated else None
    notes = _notes(scenario, analysis, sim)
    if sim is not None:
        return Prediction(
            scenario=scenario.name,
            rate_rps=scenario.rate,
            stable=analysis.stable,
            bottleneck=analysis.bottleneck,
            capacity_rps=analysis.capacity_rps,
            throughput_rps=sim.throughput_rps,
            mean_ms=sim.mean_ms,
            p50_ms=sim.p50_ms,
            p90_ms=sim.p90_ms,
            p99_ms=sim.p99_ms,
            rejection_ratio=sim.rejected / sim.requests if sim.requests else 0.0,
            error_ratio=sim.error_ratio,
            analytic_mean_ms=analysis.mean_ms,
            analytic_throughput_rps=analysis.throughput_rps,
            analytic_rejection_ratio=analysis.rejection_ratio,
            stations=analysis.stations,
            simulated=sim,
            notes=notes,
            run_p99_s=None if sim.runs is None else sim.runs.p99_s,
        )
    return Prediction(
        scenario=scenario.name,
        rate_rps=scenario.rate,
        stable=analysis.stable,
        bottleneck=analysis.bottleneck,
        capacity_rps=analysis.capacity_rps,
        throughput_rps=analysis.throughput_rps,
        mean_ms=analysis.mean_ms,
        p50_ms=None,
        p90_ms=None,
        p99_ms=None,
        rejection_ratio=analysis.rejection_ratio,
        error_ratio=analysis.rejection_ratio,
        analytic_mean_ms=analysis.mean_ms,
        analytic_throughput_rps=analysis.throughput_rps,
        analytic_rejection_ratio=analysis.rejection_ratio,
        stations=analysis.stations,
        simulated=None,
        notes=notes,
    )


def _notes(scenario: Scenario, analysis: Analysis, sim: SimResult | None) -> list[str]:
    notes = []
    for station in analysis.stations:
        rho = station.utilisation
        if station.state == "unstable" and rho is not None:
            notes.append(
                f"{station.name}: ρ = {rho:.3g} ≥ 1, its queue grows without bound; throughput "
                f"is capped at {(station.capacity_rps or 0) * station.instances:,.1f}/s, and "
                "simulated latencies grow with the number of requests simulated"
            )
        elif station.state == "saturated" and rho is not None and station.kind == "backend":
            notes.append(
                f"{station.name}: ρ = {rho:.3g} ≥ 1: it serves "
                f"{station.capacity_rps or 0:,.1f} calls/s each, its queue is full (every "
                "replica's slots are taken) and the slots in front refuse the rest (503)"
            )
        elif station.state == "saturated" and rho is not None:
            notes.append(
                f"{station.name}: ρ = {rho:.3g} ≥ 1 per replica's slots: it serves "
                f"{station.capacity_rps or 0:,.1f} calls/s each and refuses the rest "
                "(queue full or queue timeout: 503)"
            )
    if sim is not None and sim.slice_note:
        notes.append(sim.slice_note)
    if analysis.stable and analysis.capacity_rps < math.inf:
        notes.append(
            f"the first station to saturate is {analysis.bottleneck}, "
            f"at {analysis.capacity_rps:,.1f} req/s"
        )
    return notes


# -- the SLO -----------------------------------------------------------------------------------


def latency_violations(
    slo: SLO,
    figures: tuple[float | None, float | None, float | None, float | None],
    error_ratio: float,
    missing: str,
) -> list[str]:
    """Why latencies ``figures`` (p50, p90, p99, mean, in ms) and ``error_ratio``, predicted
    or measured, miss ``slo``; ``missing`` says why a latency the SLO bounds is absent."""
    found = []
    bounds = (slo.p50_ms, slo.p90_ms, slo.p99_ms, slo.mean_ms)
    for name, bound, value in zip(("p50", "p90", "p99", "mean"), bounds, figures, strict=True):
        if bound is None:
            continue
        if value is None:
            found.append(f"{name}: {missing}")
        elif value > bound:
            found.append(f"{name} {value:,.1f} ms > {bound:g} ms")
    if error_ratio > slo.max_error_ratio:
        found.append(f"errors {error_ratio:.2%} > {slo.max_error_ratio:.2%}")
    return found


def violations(slo: SLO, prediction: Prediction) -> list[str]:
    """Why ``prediction`` misses ``slo`` (empty: it meets it)."""
    found = []
    if not prediction.stable:
        found.append("a station is unstable (its queue grows without bound)")
    figures = (prediction.p50_ms, prediction.p90_ms, prediction.p99_ms, prediction.mean_ms)
    found += latency_violations(
        slo, figures, prediction.error_ratio, "no prediction (nothing succeeded, or not simulated)"
    )
    if slo.run_p99_s is not None:
        if prediction.run_p99_s is None:
            found.append("run p99: no prediction (no runs in the scenario)")
        elif prediction.run_p99_s > slo.run_p99_s:
            found.append(f"run p99 {prediction.run_p99_s:,.2f} s > {slo.run_p99_s:g} s")
    return found


def meets(slo: SLO, prediction: Prediction) -> bool:
    return not violations(slo, prediction)


def hopeless(slo: SLO, analysis: Analysis) -> bool:
    """Whether the closed forms alone rule the SLO out, so that no simulation is needed: a
    station is unstable, the mean already exceeds a percentile bound, or the pools surely
    refuse more than the SLO allows (their refusals at ρ ≥ 1 are 1 − 1/ρ, near exact)."""
    if not analysis.stable:
        return True
    mean = analysis.mean_ms
    bounds = [b for b in (slo.p50_ms, slo.p90_ms, slo.p99_ms, slo.mean_ms) if b is not None]
    if mean is not None and bounds and mean > max(bounds):
        return True
    return analysis.rejection_ratio > 2 * slo.max_error_ratio + 0.01


# -- the largest rate --------------------------------------------------------------------------


class RateSearch(msgspec.Struct, kw_only=True):
    """The largest rate that meets the SLO (0: none does), and the prediction there."""

    rate_rps: float
    bound_rps: float  # the closed forms' bound: the rate at which a station reaches ρ = 1
    prediction: Prediction | None
    evaluations: int
    reason: str | None = None  # why the rate is 0


def max_rate(
    scenario: Scenario,
    slo: SLO,
    *,
    requests: int = SEARCH_REQUESTS,
    seed: int = 1,
    tolerance: float = 0.01,
) -> RateSearch:
    """The largest rate that meets ``slo``, below the closed-form bound (no station at ρ ≥ 1):
    a walk down from the bound, then bisection to ``tolerance``, each probe a simulation with
    the same seed (so that probes differ only by the rate)."""
    bound = analyze(scenario).capacity_rps
    if math.isinf(bound):
        bound = scenario.rate * 1000
    evaluations = 0

    def probe(rate: float) -> Prediction:
        nonlocal evaluations
        evaluations += 1
        return predict(scenario, rate, requests=requests, seed=seed)

    # Walk down from the bound until a rate passes, then bisect between it and the last failure.
    high = bound
    best: Prediction | None = None
    for share in (0.999, 0.95, 0.85, 0.7, 0.5, 0.3, 0.1, 0.01):
        trial = probe(bound * share)
        if meets(slo, trial):
            best, low = trial, bound * share
            break
        high = bound * share
    if best is None:
        return RateSearch(
            rate_rps=0.0,
            bound_rps=bound,
            prediction=trial,
            evaluations=evaluations,
            reason="even at 1% of capacity: " + "; ".join(violations(slo, trial)),
        )
    if high == bound:
        return RateSearch(rate_rps=low, bound_rps=bound, prediction=best, evaluations=evaluations)
    while (high - low) > tolerance * high:
        middle = (low + high) / 2
        trial = probe(middle)
        if meets(slo, trial):
            low, best = middle, trial
        else:
            high = middle
    return RateSearch(rate_rps=low, bound_rps=bound, prediction=best, evaluations=evaluations)


# -- the cheapest change -----------------------------------------------------------------------


class ChangeOption(msgspec.Struct, kw_only=True):
    """One way to meet the SLO: ``knob`` from ``before`` to ``after``, at ``cost``."""

    knob: str  # gateways | endpoints | slots | hit_ratio | workers
    description: str
    before: float
    after: float
    units: int
    cost: float
    prediction: Prediction


class ChangePlan(msgspec.Struct, kw_only=True):
    rate_rps: float
    passes_now: bool
    violations: list[str]
    best: ChangeOption | None
    options: list[ChangeOption]  # every knob that can make it pass, cheapest first
    impossible: list[str]  # knobs that cannot, within their search limit


# knob → (how to apply a value, the current value, the largest value tried, unit cost, units)
_Knob = tuple[Callable[[Scenario, int], Scenario], int, int, float, Callable[[int], int], str]


def _knobs(scenario: Scenario, costs: Costs) -> dict[str, _Knob]:
    gw = scenario.gateway
    groups = scenario.model.endpoints
    first = groups[0]
    knobs: dict[str, _Knob] = {
        "gateways": (
            lambda s, n: msgspec.structs.replace(
                s, gateway=msgspec.structs.replace(s.gateway, replicas=n)
            ),
            gw.replicas,
            max(64, gw.replicas * 64),
            costs.gateway,
            lambda n: n - gw.replicas,
            "gateway replicas",
        ),
        "endpoints": (
            lambda s, n: _with_groups(s, [msgspec.structs.replace(first, count=n), *groups[1:]]),
            first.count,
            max(64, first.count * 64),
            costs.endpoint,
            lambda n: n - first.count,
            f"{first.name} endpoints",
        ),
        "hit_ratio": (
            lambda s, n: msgspec.structs.replace(
                s, cache=msgspec.structs.replace(s.cache, hit_ratio=n / 100)
            ),
            round(scenario.cache.hit_ratio * 100),
            99,
            costs.hit_ratio_point,
            lambda n: n - round(scenario.cache.hit_ratio * 100),
            "cache hit ratio (%)",
        ),
    }
    limited = [g.max_concurrency for g in groups if g.max_concurrency is not None]
    if limited:
        slots = min(limited)
        total = scenario.endpoint_count
        knobs["slots"] = (
            lambda s, n: _with_groups(
                s,
                [
                    g
                    if g.max_concurrency is None
                    else msgspec.structs.replace(g, max_concurrency=max(n, g.max_concurrency))
                    for g in s.model.endpoints
                ],
            ),
            slots,
            max(4096, slots * 64),
            costs.slot,
            lambda n: (n - slots) * total,
            "max_concurrency per endpoint",
        )
    runs = scenario.runs
    if runs is not None and runs.rate > 0:
        knobs["workers"] = (
            lambda s, n: msgspec.structs.replace(
                s, runs=None if s.runs is None else msgspec.structs.replace(s.runs, workers=n)
            ),
            runs.workers,
            max(64, runs.workers * 64),
            costs.worker,
            lambda n: n - runs.workers,
            "workers",
        )
    return knobs


def _with_groups(scenario: Scenario, groups: list[object]) -> Scenario:
    model = msgspec.structs.replace(scenario.model, endpoints=tuple(groups))
    return msgspec.structs.replace(scenario, model=model)


def cheapest_change(
    scenario: Scenario,
    slo: SLO,
    *,
    rate: float | None = None,
    costs: Costs | None = None,
    requests: int = SEARCH_REQUESTS,
    seed: int = 1,
) -> ChangePlan:
    """For each knob, the smallest change that meets ``slo`` at ``rate`` (exponential search,
    then bisection, on the simulation); the cheapest by ``costs`` (default: the scenario's)."""
    if rate is not None:
        scenario = scenario.with_rate(rate)
    costs = costs or scenario.costs
    now = predict(scenario, requests=requests, seed=seed)
    missed = violations(slo, now)
    if not missed:
        return ChangePlan(
            rate_rps=scenario.rate,
            passes_now=True,
            violations=[],
            best=None,
            options=[],
            impossible=[],
        )
    options: list[ChangeOption] = []
    impossible: list[str] = []
    for name, (apply, current, limit, unit_cost, units, label) in _knobs(scenario, costs).items():
        found = _search(scenario, slo, apply, current, limit, requests=requests, seed=seed)
        if found is None:
            impossible.append(f"{label}: not even at {limit:,}")
            continue
        value, result = found
        count = units(value)
        options.append(
            ChangeOption(
                knob=name,
                description=f"{label}: {current:,} → {value:,}",
                before=float(current),
                after=float(value),
                units=count,
                cost=count * unit_cost,
                prediction=result,
            )
        )
    options.sort(key=lambda o: (o.cost, o.units))
    return ChangePlan(
        rate_rps=scenario.rate,
        passes_now=False,
        violations=missed,
        best=options[0] if options else None,
        options=options,
        impossible=impossible,
    )


def _search(
    scenario: Scenario,
    slo: SLO,
    apply: Callable[[Scenario, int], Scenario],
    current: int,
    limit: int,
    *,
    requests: int,
    seed: int,
) -> tuple[int, Prediction] | None:
    """The smallest value of one knob that meets ``slo``, and the prediction there."""
    tried: dict[int, Prediction | None] = {}

    def passes(value: int) -> bool:
        if value not in tried:
            changed = apply(scenario, value)
            if hopeless(slo, analyze(changed)):
                tried[value] = None
            else:
                trial = predict(changed, requests=requests, seed=seed)
                tried[value] = trial if meets(slo, trial) else None
        return tried[value] is not None

    found = _smallest(passes, current, limit)
    if found is None:
        return None
    result = tried[found]
    assert result is not None
    return found, result


def _smallest(passes: Callable[[int], bool], current: int, limit: int) -> int | None:
    """The smallest value above ``current`` (at most ``limit``) that passes, assuming that
    passing is monotonic: steps of 1, 2, 4 … up, then bisection back."""
    step = 1
    failed = current
    while True:
        value = min(current + step, limit)
        if passes(value):
            break
        failed = value
        if value >= limit:
            return None
        step *= 2
    low, high = failed, value  # low fails (or is the current value), high passes
    while high - low > 1:
        middle = (low + high) // 2
        if passes(middle):
            high = middle
        else:
            low = middle
    return high
