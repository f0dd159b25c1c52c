"""``surgeflow tune``: the smallest setting of a knob that meets an SLO, found by the model and
confirmed by short bench trials against the service, started in this process.

1. The model bisects the knob's range for the smallest value it predicts passes: its *pick*.
   Chat: `planner.predict` (`SEARCH_REQUESTS` simulated requests a probe) on the scenario the
   candidate config describes, with the hit ratio its cache TTL gives the workload. Runs: the
   worker pool simulated as a queue (`runsim.simulate_runs`) with the run time measured first.
2. Trials: the service is started with a candidate value, `run_bench` offers Poisson load at
   the rate, and the measured p99 and error ratio decide. The first trial is the pick;
   `next_value` then walks to the boundary: one below a pass, up by ×1.25 (at least +1) above
   a failure, bisection between a failure and a pass, until the value just below the smallest
   pass has failed or the trials run out.

Several knobs are tuned one after another, each with the values chosen before it in place.
The knobs themselves are in `surgeflow.tuning.knobs`.
"""

from __future__ import annotations

import asyncio
import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import yaml

from surgeflow.config import Settings
from surgeflow.errors import ConfigError
from surgeflow.tuning.knobs import (
    MAX_SETTLE_S,
    Candidate,
    Knob,
    MaxConcurrency,
    Workload,
    chat_scenario,
    run_queue,
)
from surgeflow.tuning.network import analyze
from surgeflow.tuning.planner import (
    SEARCH_REQUESTS,
    hopeless,
    latency_violations,
    predict,
    violations,
)
from surgeflow.tuning.results import BenchResult, LoadSettings
from surgeflow.tuning.runsim import simulate_runs
from surgeflow.tuning.scenario import SLO, _model_settings
from surgeflow.tuning.trials import (
    RunCalibration,
    isolated,
    measure_run_service,
    measure_worker_cpu,
    run_trial,
)

DEFAULT_MAX_TRIALS = 6
STEP_UP = 1.25  # above a failed trial, the next value is ×1.25 (at least +1)
RUN_REQUESTS = 20_000  # simulated runs a probe


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
    errors: dict[str, int]  # by kind: status_503, timeout, run.failed …
    offered_rps: float
    achieved_rps: float
    passed: bool
    violations: list[str]


class TuneResult(msgspec.Struct, kw_only=True):
    """What the tuner did and chose for one knob (``chosen`` is None when no trial met the SLO)."""

    knob: str
    workload: Workload
    rate_rps: float
    slo: SLO
    seed: int
    trial_s: float
    warmup_s: float
    max_trials: int
    current: int | None  # None: unlimited
    calibration: RunCalibration | None  # runs: one run measured alone, as the model used it
    model_pick: int | None  # the smallest value the model predicts passes (None: none does)
    probes: list[Probe]
    trials: list[Trial]
    chosen: int | None
    confirmed: bool  # a trial one below ``chosen`` failed, or ``chosen`` is the knob's lowest
    outcome: str
    warnings: list[str]
    snippet: str  # YAML setting the knob to ``chosen`` ("" without one)
    advice: str  # what to do besides the snippet ("" for nothing)
    resources: int | None
    resource_unit: str


class TuneReport(msgspec.Struct, kw_only=True):
    """Every knob tuned, in order (each with the choices before it in place), and the config
    snippet that sets them all."""

    results: list[TuneResult]
    snippet: str
    advice: list[str]

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


def merge_snippets(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The config parts in ``parts`` as one: mappings merge key by key, and lists of named
    mappings (models, endpoints) merge by name."""
    merged: dict[str, Any] = {}
    for part in parts:
        merged = _merge(merged, part)
    return merged


def _merge(old: Any, new: Any) -> Any:
    if isinstance(old, dict) and isinstance(new, dict):
        out = dict(old)
        for key, value in new.items():
            out[key] = _merge(out[key], value) if key in out else value
        return out
    if isinstance(old, list) and isinstance(new, list):
        named = {item["name"]: i for i, item in enumerate(old) if isinstance(item, dict)}
        out_list = list(old)
        for item in new:
            if isinstance(item, dict) and item.get("name") in named:
                index = named[item["name"]]
                out_list[index] = _merge(out_list[index], item)
            else:
                out_list.append(item)
        return out_list
    return new


class Predictor:
    """The model's verdict on each value of a knob, computed once per value."""

    def __init__(
        self,
        candidate: Candidate,
        workload: Workload,
        knob: Knob,
        *,
        rate: float,
        slo: SLO,
        seed: int,
        requests: int,
        calibration: RunCalibration | None,
    ) -> None:
        self.candidate = candidate
        self.workload = workload
        self.knob = knob
        self.rate = rate
        self.slo = slo
        self.seed = seed
        self.requests = requests
        self.calibration = calibration
        self.probes: dict[int, Probe] = {}

    def __call__(self, value: int) -> Probe:
        if value not in self.probes:
            changed = self.knob.apply(self.candidate, self.workload.model, value)
            if self.workload.kind == "runs":
                self.probes[value] = self._runs(changed, value)
            else:
                self.probes[value] = self._chat(changed, value)
        return self.probes[value]

    def _chat(self, candidate: Candidate, value: int) -> Probe:
        scenario = chat_scenario(candidate, self.workload, self.rate)
        analysis = analyze(scenario)
        if hopeless(self.slo, analysis):
            ratio = analysis.rejection_ratio
            return Probe(value=value, p99_ms=None, error_ratio=ratio, passes=False, simulated=False)
        prediction = predict(scenario, requests=self.requests, seed=self.seed)
        return Probe(
            value=value,
            p99_ms=prediction.p99_ms,
            error_ratio=prediction.error_ratio,
            passes=not violations(self.slo, prediction),
            simulated=True,
        )

    def _runs(self, candidate: Candidate, value: int) -> Probe:
        calibration = self.calibration
        assert calibration is not None
        separate = candidate.workers is not None and calibration.worker_cpu_ms is not None
        queue = run_queue(
            candidate,
            self.rate,
            calibration.service,
            overhead_ms=calibration.overhead_ms,
            cpu_ms=calibration.worker_cpu_ms or 0.0 if separate else calibration.cpu_ms,
        )
        servers = queue.workers * queue.concurrency
        slots_full = self.rate * queue.service.mean_s * queue.stretch >= servers
        if slots_full or math.isinf(queue.stretch):  # ρ ≥ 1: the backlog grows forever
            return Probe(value=value, p99_ms=None, error_ratio=0.0, passes=False, simulated=False)
        runs = simulate_runs(queue, count=RUN_REQUESTS, seed=self.seed)
        figures = (runs.p50_s * 1000, None, runs.p99_s * 1000, runs.mean_s * 1000)
        missed = latency_violations(self.slo, figures, 0.0, "no prediction")
        return Probe(
            value=value,
            p99_ms=runs.p99_s * 1000,
            error_ratio=0.0,
            passes=not missed,
            simulated=True,
        )


# -- doing: the model's probes and the trials ------------------------------------------------------


def check_inputs(
    deployment: Settings | Candidate,
    workload: Workload,
    knobs: list[Knob],
    *,
    rate: float,
    trial_s: float,
    max_trials: int,
) -> tuple[Candidate, Workload]:
    """The deployment and workload as the tuner uses them (the model's name filled in);
    `ConfigError` for input no trial could use."""
    candidate = deployment if isinstance(deployment, Candidate) else Candidate(settings=deployment)
    settings = candidate.settings
    if not rate > 0:
        raise ConfigError(f"--rate must be > 0 req/s, not {rate:g}")
    if not 0 < trial_s <= 600:
        raise ConfigError(f"--trial-s must be > 0 and ≤ 600, not {trial_s:g}")
    if max_trials < 1:
        raise ConfigError(f"--max-trials must be ≥ 1, not {max_trials}")
    if not knobs:
        raise ConfigError("name at least one knob to tune")
    if len({knob.name for knob in knobs}) < len(knobs):
        raise ConfigError("each knob may be named once")
    model = _model_settings(settings, workload.model or None)
    workload = msgspec.structs.replace(workload, model=model.name)
    for knob in knobs:
        if knob.kind != workload.kind:
            raise ConfigError(
                f"knob {knob.name} is tuned under {knob.kind} load, not {workload.kind}"
                f" (--target {knob.kind})"
            )
    if workload.kind == "runs":
        if not workload.workflow:
            raise ConfigError("--target runs needs --workflow NAME")
        return candidate, workload
    if not 0 <= workload.hit_ratio <= 1:
        raise ConfigError(f"--hit-ratio must be within 0..1, not {workload.hit_ratio:g}")
    if workload.prompts < 1:
        raise ConfigError(f"--prompts must be ≥ 1, not {workload.prompts}")
    if any(knob.name == "cache_ttl_s" for knob in knobs):
        if not workload.hit_ratio:
            raise ConfigError(
                "tuning cache_ttl_s needs repeated prompts (--hit-ratio above 0): without"
                " them a TTL answers nothing"
            )
        if not model.cache.enabled:
            raise ConfigError(f"model {model.name!r} has its cache off (cache.enabled: false)")
    # The model cannot describe HTTP endpoints from a config alone (their service time).
    chat_scenario(candidate, workload, rate)
    return candidate, workload


async def tune_all(
    deployment: Settings | Candidate,
    workload: Workload,
    knobs: list[Knob],
    *,
    rate: float,
    slo: SLO,
    trial_s: float = 10.0,
    warmup_s: float | None = None,
    seed: int = 1,
    max_trials: int = DEFAULT_MAX_TRIALS,
    requests: int = SEARCH_REQUESTS,
    on_trial: Callable[[str, Trial], None] | None = None,
) -> TuneReport:
    """Tune ``knobs`` one after another, each with the values chosen before it in place."""
    candidate, workload = check_inputs(
        deployment, workload, knobs, rate=rate, trial_s=trial_s, max_trials=max_trials
    )
    results: list[TuneResult] = []
    for knob in knobs:

        def report(trial: Trial, name: str = knob.name) -> None:
            if on_trial is not None:
                on_trial(name, trial)

        result = await tune(
            candidate,
            workload,
            knob=knob,
            rate=rate,
            slo=slo,
            trial_s=trial_s,
            warmup_s=warmup_s,
            seed=seed,
            max_trials=max_trials,
            requests=requests,
            on_trial=report,
        )
        results.append(result)
        if result.chosen is not None:
            candidate = knob.apply(candidate, workload.model, result.chosen)
    parts = [yaml.safe_load(r.snippet) for r in results if r.snippet]
    return TuneReport(
        results=results,
        snippet=_yaml(merge_snippets(parts)) if parts else "",
        advice=[r.advice for r in results if r.advice],
    )


async def tune(
    deployment: Settings | Candidate,
    workload: Workload | None = None,
    *,
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
    """Tune ``knob`` (default `MaxConcurrency`) for ``slo`` at ``rate`` of ``workload``
    (default: chat to the config's first model)."""
    knob = knob or MaxConcurrency()
    candidate, workload = check_inputs(
        deployment,
        workload or Workload(),
        [knob],
        rate=rate,
        trial_s=trial_s,
        max_trials=max_trials,
    )
    warmup = min(2.0, trial_s / 4) if warmup_s is None else warmup_s
    if warmup < 0:
        raise ConfigError(f"warm-up must be ≥ 0 s, not {warmup:g}")
    model = workload.model

    trials: list[Trial] = []
    outcomes: dict[int, bool] = {}
    with tempfile.TemporaryDirectory(prefix="surgeflow-tune-") as tmp:
        workdir = Path(tmp)
        calibration = None
        if workload.kind == "runs":
            calibration = await measure_run_service(
                isolated(candidate, seed=seed, store=workdir / "calibration.db"),
                workload,
                seed=seed,
                duration_s=min(5.0, trial_s),
                workdir=workdir,
            )
            if knob.apply(candidate, model, knob.lowest).workers is not None:
                # Separate processes: what a run costs a worker process alone.
                # At half what one worker process can take (its slots, the CPU measured).
                slots = candidate.settings.worker.concurrency / calibration.service.mean_s
                cpu = 1000 / calibration.cpu_ms if calibration.cpu_ms else math.inf
                worker_cpu_ms = await measure_worker_cpu(
                    isolated(candidate, seed=seed, store=workdir / "calibration-worker.db"),
                    workload,
                    rate=max(1.0, min(rate, slots, cpu) / 2),
                    seed=seed,
                    duration_s=min(5.0, trial_s),
                    workdir=workdir,
                )
                calibration = msgspec.structs.replace(calibration, worker_cpu_ms=worker_cpu_ms)
        probe = Predictor(
            candidate,
            workload,
            knob,
            rate=rate,
            slo=slo,
            seed=seed,
            requests=requests,
            calibration=calibration,
        )
        # Seconds of simulation: off the event loop.
        pick = await asyncio.to_thread(
            smallest_passing, lambda v: probe(v).passes, knob.lowest, knob.highest
        )
        start = pick if pick is not None else knob.highest
        load = LoadSettings(
            arrival="poisson",
            rate_rps=rate,
            duration_s=trial_s,
            warmup_s=warmup,
            seed=seed,
            timeout_s=request_timeout_s(slo),
        )
        while len(trials) < max_trials:
            value = next_value(outcomes, start, knob.lowest, knob.highest)
            if value is None:
                break
            predicted = await asyncio.to_thread(probe, value)
            trial_dir = workdir / f"trial-{len(trials) + 1}"
            trial_dir.mkdir()
            changed = knob.apply(candidate, model, value)
            settle = min(MAX_SETTLE_S, knob.settle_s(value))
            result = await run_trial(
                isolated(changed, seed=seed, store=trial_dir / "store.db"),
                workload,
                msgspec.structs.replace(load, warmup_s=max(warmup, settle)),
                workdir=trial_dir,
            )
            missed = trial_violations(slo, result)
            trial = Trial(
                value=value,
                predicted_passes=predicted.passes,
                predicted_p99_ms=predicted.p99_ms,
                predicted_error_ratio=predicted.error_ratio,
                measured_p99_ms=result.latency.p99_ms,
                measured_error_ratio=result.error_ratio,
                errors=dict(result.counts.errors),
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
    warnings = []
    if chosen is not None and not probe(chosen).passes:
        # Near ρ = 1 a queue takes longer than a short trial to reach its steady state.
        steady = probe(chosen).p99_ms
        said = "rules it out" if steady is None else f"predicts p99 {steady:,.1f} ms"
        warnings.append(
            f"the model {said} at {chosen} in steady state: the trial may have been too short to"
            f" show it; longer trials (--trial-s) or {pick if pick is not None else 'more'}"
            " would be safer"
        )
    if chosen is not None and knob.settle_s(chosen) > MAX_SETTLE_S:
        warnings.append(
            f"at {chosen} the deployment takes {knob.settle_s(chosen):,.0f} s to settle and"
            f" trials warmed up {MAX_SETTLE_S:g} s: they may have measured a better state than"
            " the steady one"
        )
    resources = None
    snippet = advice = ""
    if chosen is not None:
        resources = knob.resources(candidate, workload, rate, chosen)
        snippet = _yaml(knob.snippet(candidate, model, chosen))
        advice = knob.advice(chosen)
    return TuneResult(
        knob=knob.name,
        workload=workload,
        rate_rps=rate,
        slo=slo,
        seed=seed,
        trial_s=trial_s,
        warmup_s=warmup,
        max_trials=max_trials,
        current=knob.current(candidate, model),
        calibration=calibration,
        model_pick=pick,
        probes=sorted(probe.probes.values(), key=lambda p: p.value),
        trials=trials,
        chosen=chosen,
        confirmed=confirmed,
        outcome=_outcome(knob, pick, trials, chosen, confirmed, max_trials),
        warnings=warnings,
        snippet=snippet,
        advice=advice,
        resources=resources,
        resource_unit=knob.unit,
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
