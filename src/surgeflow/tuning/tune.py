"""``surgeflow tune``: the smallest setting of a knob that meets an SLO, found by the model and
confirmed by short bench trials against the embedded service.

1. The model (`planner.predict`, `SEARCH_REQUESTS` simulated requests a probe) bisects the
   knob's range for the smallest value it predicts passes: its *pick*.
2. Trials: the service is started in this process with a candidate value, `run_bench` offers
   Poisson load at the rate, and the measured p99 and error ratio decide. The first trial is the
   pick; `next_value` then walks to the boundary: one below a pass, up by ×1.25 (at least +1)
   above a failure, bisection between a failure and a pass, until the value just below the
   smallest pass has failed or the trials run out.

A `Knob` is the setting being tuned. Only `MaxConcurrency` exists; worker concurrency,
``server.max_in_flight`` or a cache TTL are further knobs of the same shape.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import msgspec
import yaml

from surgeflow.config import Settings
from surgeflow.errors import ConfigError
from surgeflow.tuning.bench import run_bench
from surgeflow.tuning.network import analyze
from surgeflow.tuning.planner import (
    SEARCH_REQUESTS,
    Prediction,
    hopeless,
    latency_violations,
    predict,
    violations,
)
from surgeflow.tuning.results import BenchResult, LoadSettings
from surgeflow.tuning.scenario import SLO, Scenario, _model_settings
from surgeflow.tuning.targets import TargetSettings

DEFAULT_MAX_TRIALS = 6
STEP_UP = 1.25  # above a failed trial, the next value is ×1.25 (at least +1)


class Knob(Protocol):
    """One setting the tuner can change: its range, how to set it, and what a value costs."""

    name: str
    lowest: int
    highest: int

    def current(self, settings: Settings, model: str) -> int:
        """The value the config has now."""
        ...

    def apply(self, settings: Settings, model: str, value: int) -> Settings:
        """A copy of ``settings`` with the knob at ``value`` (the model reads the same copy)."""
        ...

    def snippet(self, settings: Settings, model: str, value: int) -> dict[str, Any]:
        """The part of a config that sets the knob to ``value``."""
        ...

    def resources(self, settings: Settings, model: str, value: int) -> tuple[int, str]:
        """What ``value`` uses, and its unit (total slots, workers …)."""
        ...


class MaxConcurrency:
    """``max_concurrency`` of every endpoint of the model: the slots per endpoint."""

    name = "max_concurrency"
    lowest = 1
    highest = 1024

    def current(self, settings: Settings, model: str) -> int:
        return min(e.max_concurrency for e in _model_settings(settings, model).endpoints)

    def apply(self, settings: Settings, model: str, value: int) -> Settings:
        models = [
            msgspec.structs.replace(
                m,
                endpoints=[msgspec.structs.replace(e, max_concurrency=value) for e in m.endpoints],
            )
            if m.name == model
            else m
            for m in settings.models
        ]
        return msgspec.structs.replace(settings, models=models)

    def snippet(self, settings: Settings, model: str, value: int) -> dict[str, Any]:
        chosen = _model_settings(settings, model)
        endpoints = [
            {"name": e.name or f"{chosen.name}-{i}", "max_concurrency": value}
            for i, e in enumerate(chosen.endpoints)
        ]
        return {"models": [{"name": chosen.name, "endpoints": endpoints}]}

    def resources(self, settings: Settings, model: str, value: int) -> tuple[int, str]:
        return value * len(_model_settings(settings, model).endpoints), "slots in total"


class Probe(msgspec.Struct, kw_only=True, frozen=True):
    """One prediction of the model at one value of the knob."""

    value: int
    p99_ms: float | None
    error_ratio: float
    passes: bool
    simulated: bool  # False: the closed forms alone ruled it out


class Trial(msgspec.Struct, kw_only=True, frozen=True):
    """One bench run against the service with the knob at ``value``."""

    value: int
    predicted_passes: bool
    predicted_p99_ms: float | None  # None: the closed forms ruled the value out (ρ ≥ 1 …)
    predicted_error_ratio: float
    measured_p99_ms: float | None
    measured_error_ratio: float
    offered_rps: float
    achieved_rps: float
    passed: bool
    violations: list[str]


class TuneResult(msgspec.Struct, kw_only=True):
    """What the tuner did and chose (``chosen`` is None when no trial met the SLO)."""

    knob: str
    model: str
    rate_rps: float
    slo: SLO
    seed: int
    trial_s: float
    warmup_s: float
    max_trials: int
    current: int
    model_pick: int | None  # the smallest value the model predicts passes (None: none does)
    probes: list[Probe]
    trials: list[Trial]
    chosen: int | None
    confirmed: bool  # a trial one below ``chosen`` failed, or ``chosen`` is the knob's lowest
    outcome: str
    warnings: list[str]
    snippet: str  # YAML setting the knob to ``chosen`` ("" without one)
    resources: int | None
    resource_unit: str

    def to_json(self) -> bytes:
        return msgspec.json.format(msgspec.json.encode(self), indent=2) + b"\n"


# -- deciding: plain code, no I/O ---------------------------------------------------------------


def smallest_passing(passes: Callable[[int], bool], lowest: int, highest: int) -> int | None:
    """The smallest value in ``lowest..highest`` that passes, by bisection (passing is assumed
    monotonic); None when not even ``highest`` does."""
    if not passes(highest):
        return None
    failed, passed = lowest - 1, highest
    while passed - failed > 1:
        middle = (failed + passed) // 2
        if passes(middle):
            passed = middle
        else:
            failed = middle
    return passed


def next_value(
    outcomes: dict[int, bool], start: int, lowest: int, highest: int, *, step_up: float = STEP_UP
) -> int | None:
    """The next value to try given the trials so far (value → passed), or None when the
    boundary is found: the value just below the smallest pass has failed (or it is ``lowest``),
    or nothing passed at ``highest``."""
    if not outcomes:
        return start
    passes = [value for value, ok in outcomes.items() if ok]
    if not passes:
        top = max(outcomes)
        if top >= highest:
            return None
        return min(highest, max(top + 1, math.ceil(top * step_up)))
    best = min(passes)
    below = [value for value, ok in outcomes.items() if not ok and value < best]
    floor = max(below) if below else lowest - 1
    if best - floor <= 1:
        return None
    if below:
        return (floor + best) // 2
    if best == start:
        return best - 1  # the model's pick passed: does the next smaller value fail?
    # It passed too: the model is pessimistic here; step down as fast as it would step up.
    return max(lowest, min(best - 1, math.floor(best / step_up)))


def trial_violations(slo: SLO, result: BenchResult) -> list[str]:
    """Why a bench result misses ``slo`` (empty: it meets it)."""
    latency = result.latency
    figures = (latency.p50_ms, latency.p90_ms, latency.p99_ms, latency.mean_ms)
    found = latency_violations(slo, figures, result.error_ratio, "nothing succeeded")
    if result.counts.dropped:
        found.append(f"{result.counts.dropped:,} requests dropped by the load generator")
    return found


def trial_settings(
    settings: Settings, knob: Knob, model: str, value: int, *, seed: int, workdir: Path
) -> Settings:
    """The config a trial runs: the knob at ``value``, the model's simulated endpoints seeded
    with ``seed``, and nothing shared with a real deployment (a fresh SQLite store, no metrics
    directory, no alerts, no tracing)."""
    changed = knob.apply(settings, model, value)
    models = [
        msgspec.structs.replace(
            m,
            endpoints=[
                e
                if e.simulated is None
                else msgspec.structs.replace(
                    e, simulated=msgspec.structs.replace(e.simulated, seed=seed)
                )
                for e in m.endpoints
            ],
        )
        if m.name == model
        else m
        for m in changed.models
    ]
    return msgspec.structs.replace(
        changed,
        models=models,
        store=msgspec.structs.replace(
            changed.store, url=f"sqlite:///{workdir / f'tune-{value}.db'}"
        ),
        queue=msgspec.structs.replace(changed.queue, url=None),
        server=msgspec.structs.replace(changed.server, metrics_dir=None),
        alerts=msgspec.structs.replace(changed.alerts, enabled=False),
        tracing=msgspec.structs.replace(changed.tracing, enabled=False),
    )


def request_timeout_s(slo: SLO) -> float:
    """Each trial request's bound: far above the SLO (it fails either way), so an overloaded
    trial ends soon after its load does."""
    bounds = [b for b in (slo.p50_ms, slo.p90_ms, slo.p99_ms, slo.mean_ms) if b is not None]
    if not bounds:
        return 30.0
    return min(30.0, max(2.0, 20 * max(bounds) / 1000))


def _yaml(document: dict[str, Any]) -> str:
    text: str = yaml.safe_dump(document, sort_keys=False)
    return text


# -- doing: the model's probes and the trials ------------------------------------------------------


async def run_trial(
    settings: Settings,
    model: str,
    *,
    rate: float,
    seed: int,
    trial_s: float,
    warmup_s: float,
    timeout_s: float,
) -> BenchResult:
    """Start the service with ``settings`` in this process, bench it, stop it."""
    from surgeflow.server import running_gateway
    from surgeflow.service import Service

    key = "sk-tune-" + secrets.token_hex(12)
    async with (
        Service(settings, api_keys=[key], embedded_worker=False) as service,
        running_gateway(service) as url,
    ):
        target = TargetSettings(kind="chat", url=url, model=model)
        load = LoadSettings(
            arrival="poisson",
            rate_rps=rate,
            duration_s=trial_s,
            warmup_s=warmup_s,
            seed=seed,
            timeout_s=timeout_s,
        )
        return await run_bench(target, load, api_key=key, scrape_metrics=False)


def check_inputs(
    settings: Settings, *, model: str | None, rate: float, trial_s: float, max_trials: int
) -> str:
    """The name of the model to tune; `ConfigError` for input no trial could use."""
    chosen = _model_settings(settings, model).name
    if not rate > 0:
        raise ConfigError(f"--rate must be > 0 req/s, not {rate:g}")
    if not 0 < trial_s <= 600:
        raise ConfigError(f"--trial-s must be > 0 and ≤ 600, not {trial_s:g}")
    if max_trials < 1:
        raise ConfigError(f"--max-trials must be ≥ 1, not {max_trials}")
    # The model cannot describe HTTP endpoints from a config alone (their service time).
    Scenario.from_settings(settings, model=chosen, rate=rate)
    return chosen


async def tune(
    settings: Settings,
    *,
    model: str | None,
    rate: float,
    slo: SLO,
    knob: Knob | None = None,
    trial_s: float = 10.0,
    warmup_s: float | None = None,
    seed: int = 1,
    max_trials: int = DEFAULT_MAX_TRIALS,
    requests: int = SEARCH_REQUESTS,
    on_trial: Callable[[Trial], None] | None = None,
) -> TuneResult:
    """Tune ``knob`` (default `MaxConcurrency`) of ``model`` for ``slo`` at ``rate`` req/s."""
    knob = knob or MaxConcurrency()
    chosen_model = check_inputs(
        settings, model=model, rate=rate, trial_s=trial_s, max_trials=max_trials
    )
    warmup = min(2.0, trial_s / 4) if warmup_s is None else warmup_s
    if warmup < 0:
        raise ConfigError(f"warm-up must be ≥ 0 s, not {warmup:g}")

    probes: dict[int, tuple[Probe, Prediction | None]] = {}

    def probe(value: int) -> tuple[Probe, Prediction | None]:
        if value not in probes:
            scenario = Scenario.from_settings(
                knob.apply(settings, chosen_model, value), model=chosen_model, rate=rate
            )
            analysis = analyze(scenario)
            if hopeless(slo, analysis):
                probes[value] = (
                    Probe(
                        value=value,
                        p99_ms=None,
                        error_ratio=analysis.rejection_ratio,
                        passes=False,
                        simulated=False,
                    ),
                    None,
                )
            else:
                prediction = predict(scenario, requests=requests, seed=seed)
                probes[value] = (
                    Probe(
                        value=value,
                        p99_ms=prediction.p99_ms,
                        error_ratio=prediction.error_ratio,
                        passes=not violations(slo, prediction),
                        simulated=True,
                    ),
                    prediction,
                )
        return probes[value]

    def search() -> int | None:
        return smallest_passing(lambda v: probe(v)[0].passes, knob.lowest, knob.highest)

    pick = await asyncio.to_thread(search)  # seconds of simulation: off the event loop
    start = pick if pick is not None else knob.highest

    trials: list[Trial] = []
    outcomes: dict[int, bool] = {}
    with tempfile.TemporaryDirectory(prefix="surgeflow-tune-") as tmp:
        while len(trials) < max_trials:
            value = next_value(outcomes, start, knob.lowest, knob.highest)
            if value is None:
                break
            predicted = (await asyncio.to_thread(probe, value))[0]
            result = await run_trial(
                trial_settings(settings, knob, chosen_model, value, seed=seed, workdir=Path(tmp)),
                chosen_model,
                rate=rate,
                seed=seed,
                trial_s=trial_s,
                warmup_s=warmup,
                timeout_s=request_timeout_s(slo),
            )
            missed = trial_violations(slo, result)
            trial = Trial(
                value=value,
                predicted_passes=predicted.passes,
                predicted_p99_ms=predicted.p99_ms,
                predicted_error_ratio=predicted.error_ratio,
                measured_p99_ms=result.latency.p99_ms,
                measured_error_ratio=result.error_ratio,
                offered_rps=result.offered_rps,
                achieved_rps=result.achieved_rps,
                passed=not missed,
                violations=missed,
            )
            trials.append(trial)
            outcomes[value] = trial.passed
            if on_trial is not None:
                on_trial(trial)

    passing = [t.value for t in trials if t.passed]
    chosen = min(passing) if passing else None
    confirmed = chosen is not None and (chosen == knob.lowest or outcomes.get(chosen - 1) is False)
    outcome = _outcome(knob, pick, trials, chosen, confirmed, max_trials)
    warnings = []
    if chosen is not None and not probe(chosen)[0].passes:
        # Near ρ = 1 a queue takes longer than a short trial to reach its steady state.
        steady = probe(chosen)[0].p99_ms
        said = "rules it out" if steady is None else f"predicts p99 {steady:,.1f} ms"
        warnings.append(
            f"the model {said} at {chosen} in steady state: the trial may have been too short to"
            f" show it; longer trials (--trial-s) or {pick if pick is not None else 'more'}"
            " would be safer"
        )
    resources = None
    unit = ""
    snippet = ""
    if chosen is not None:
        resources, unit = knob.resources(settings, chosen_model, chosen)
        snippet = _yaml(knob.snippet(settings, chosen_model, chosen))
    return TuneResult(
        knob=knob.name,
        model=chosen_model,
        rate_rps=rate,
        slo=slo,
        seed=seed,
        trial_s=trial_s,
        warmup_s=warmup,
        max_trials=max_trials,
        current=knob.current(settings, chosen_model),
        model_pick=pick,
        probes=sorted((p for p, _ in probes.values()), key=lambda p: p.value),
        trials=trials,
        chosen=chosen,
        confirmed=confirmed,
        outcome=outcome,
        warnings=warnings,
        snippet=snippet,
        resources=resources,
        resource_unit=unit,
    )


def _outcome(
    knob: Knob,
    pick: int | None,
    trials: list[Trial],
    chosen: int | None,
    confirmed: bool,
    max_trials: int,
) -> str:
    model_said = (
        f"the model predicted {pick} is the smallest {knob.name} that meets the SLO"
        if pick is not None
        else f"the model predicted no {knob.name} in {knob.lowest}..{knob.highest} meets the SLO"
    )
    if chosen is None:
        largest = max(t.value for t in trials)
        limit = (
            f"not even {knob.highest}"
            if largest >= knob.highest
            else f"up to {largest} within {max_trials} trials"
        )
        return f"no setting met the SLO: {model_said}; measured, {limit}"
    if confirmed:
        below = "it is the lowest value" if chosen == knob.lowest else f"{chosen - 1} failed"
        return f"{knob.name} {chosen} meets the SLO ({below}); {model_said}"
    return (
        f"{knob.name} {chosen} meets the SLO; a smaller value may too (the trials ran out before"
        f" the value below it was tried); {model_said}"
    )
