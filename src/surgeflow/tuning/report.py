"""`surgeflow plan` for a terminal: gather the inputs, predict, print tables, write JSON/PNG."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console
from rich.table import Table

from surgeflow.config import Settings, load_settings
from surgeflow.errors import ConfigError
from surgeflow.tuning.article import CASES, EXPLANATION, CaseReport, report
from surgeflow.tuning.network import Analysis, Station
from surgeflow.tuning.planner import (
    DEFAULT_REQUESTS,
    SEARCH_REQUESTS,
    ChangePlan,
    Prediction,
    RateSearch,
    cheapest_change,
    max_rate,
    predict,
    violations,
)
from surgeflow.tuning.scenario import SLO, Scenario
from surgeflow.tuning.sources import (
    Observed,
    load_bench,
    read_metrics,
    scenario_from_observed,
)


class PlanInputs(msgspec.Struct, kw_only=True):
    """The command line's choices (see ``surgeflow plan --help``)."""

    scenario: Path | None = None
    config: Path | None = None
    model: str | None = None
    rate: float | None = None
    hit_ratio: float | None = None
    gateways: int | None = None
    metrics: str | None = None
    metrics_interval_s: float = 3.0
    bench: Path | None = None
    slo_p99_ms: float | None = None
    slo_p50_ms: float | None = None
    slo_error_ratio: float | None = None
    requests: int = DEFAULT_REQUESTS
    seed: int = 1
    json_out: Path | None = None
    plot: Path | None = None


def run_plan(console: Console, inputs: PlanInputs) -> None:
    """Everything ``surgeflow plan`` does but parse arguments; bad input raises `ConfigError`."""
    scenario, observed = build_scenario(inputs)
    slo = _slo(inputs, scenario)
    prediction = predict(scenario, requests=inputs.requests, seed=inputs.seed)
    render_scenario(console, scenario)
    render_prediction(console, prediction, observed)
    search: RateSearch | None = None
    change: ChangePlan | None = None
    if slo is not None:
        console.print(f"\n[bold]SLO[/bold]: {slo.describe()}")
        missed = violations(slo, prediction)
        if missed:
            console.print(f"[red]missed[/red] at {scenario.rate:,.1f} req/s: " + "; ".join(missed))
        else:
            console.print(f"[green]met[/green] at {scenario.rate:,.1f} req/s")
        search = max_rate(scenario, slo, requests=min(inputs.requests, SEARCH_REQUESTS))
        render_rate_search(console, search)
        if missed:
            change = cheapest_change(
                scenario, slo, requests=min(inputs.requests, SEARCH_REQUESTS), seed=inputs.seed
            )
            render_change_plan(console, change)
    if inputs.json_out is not None:
        document = {
            "scenario": scenario,
            "slo": slo,
            "prediction": prediction,
            "observed": observed,
            "max_rate": search,
            "cheapest_change": change,
        }
        _write_json(inputs.json_out, document)
        console.print(f"wrote {inputs.json_out}")
    if inputs.plot is not None:
        plot_latency_curve(
            scenario,
            slo,
            inputs.plot,
            seed=inputs.seed,
            requests=min(inputs.requests, SEARCH_REQUESTS // 2),
        )
        console.print(f"wrote {inputs.plot}")


def build_scenario(inputs: PlanInputs) -> tuple[Scenario, Observed | None]:
    """The scenario the inputs describe; flags given on the command line win."""
    if inputs.scenario is not None and inputs.config is not None:
        raise ConfigError("give a scenario file or --config, not both")
    if inputs.metrics is not None and inputs.bench is not None:
        raise ConfigError("give --metrics or --bench, not both")
    settings: Settings | None = None
    if inputs.config is not None:
        settings = load_settings(inputs.config)
    base = Scenario.from_yaml(inputs.scenario) if inputs.scenario is not None else None
    observed: Observed | None = None
    if inputs.metrics is not None:
        observed = asyncio.run(
            read_metrics(inputs.metrics, interval_s=inputs.metrics_interval_s, model=inputs.model)
        )
    elif inputs.bench is not None:
        observed = load_bench(inputs.bench)
    if observed is not None:
        scenario = scenario_from_observed(
            observed, settings=settings, base=base, model=inputs.model
        )
    elif base is not None:
        scenario = base
    else:
        scenario = Scenario.from_settings(settings or Settings(), model=inputs.model)
    changes: dict[str, Any] = {}
    if inputs.rate is not None:
        if inputs.rate <= 0:
            raise ConfigError("--rate must be > 0")
        changes["rate"] = inputs.rate
    if inputs.hit_ratio is not None:
        if not 0 <= inputs.hit_ratio <= 1:
            raise ConfigError("--hit-ratio must be between 0 and 1")
        changes["cache"] = msgspec.structs.replace(scenario.cache, hit_ratio=inputs.hit_ratio)
    if inputs.gateways is not None:
        if inputs.gateways < 1:
            raise ConfigError("--gateways must be >= 1")
        changes["gateway"] = msgspec.structs.replace(scenario.gateway, replicas=inputs.gateways)
    return (msgspec.structs.replace(scenario, **changes) if changes else scenario), observed


def _slo(inputs: PlanInputs, scenario: Scenario) -> SLO | None:
    given = (inputs.slo_p99_ms, inputs.slo_p50_ms, inputs.slo_error_ratio)
    if all(value is None for value in given):
        return scenario.slo
    base = scenario.slo or SLO()
    try:
        return msgspec.convert(
            {
                **msgspec.structs.asdict(base),
                **({} if inputs.slo_p99_ms is None else {"p99_ms": inputs.slo_p99_ms}),
                **({} if inputs.slo_p50_ms is None else {"p50_ms": inputs.slo_p50_ms}),
                **(
                    {}
                    if inputs.slo_error_ratio is None
                    else {"max_error_ratio": inputs.slo_error_ratio}
                ),
            },
            SLO,
        )
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid SLO: {exc}") from None


def _write_json(path: Path, document: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(msgspec.json.format(msgspec.json.encode(document), indent=2) + b"\n")


# -- tables ------------------------------------------------------------------------------------


def _ms(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "∞"
    return f"{value:,.{digits}f}"


def _rho(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.3g}"


def render_scenario(console: Console, scenario: Scenario) -> None:
    gw, cache, model = scenario.gateway, scenario.cache, scenario.model
    console.print(f"[bold]{scenario.name}[/bold]: {scenario.rate:,.1f} req/s ({scenario.arrivals})")
    console.print(
        f"  gateway: {gw.replicas} × 1 event loop, CPU {gw.cpu_hit_ms:g} ms a hit, "
        f"{gw.cpu_miss_ms:g} ms a miss; balancer: {gw.split}"
    )
    console.print(
        f"  cache: hit ratio {cache.hit_ratio:.1%} (hit +{cache.hit_ms:g} ms, "
        f"miss +{cache.miss_ms:g} ms)"
    )
    for group in model.endpoints:
        slots = "no limit" if group.max_concurrency is None else f"{group.max_concurrency} slots"
        capacity = "" if group.capacity is None else f", backend serves {group.capacity} at once"
        console.print(
            f"  {group.count} × {group.name}: {slots}, queue {group.max_queue} "
            f"≤ {group.queue_timeout_s:g} s{capacity}; {group.service.describe()} "
            f"(mean {group.service.mean_s * 1000:,.1f} ms, scv {group.service.scv_value:.3f})"
        )
    console.print(f"  policy: {model.policy}; retries: {model.retry.attempts} attempts")
    if scenario.runs is not None:
        runs = scenario.runs
        console.print(
            f"  runs: {runs.rate:g}/s to {runs.workers} × {runs.concurrency} worker slots, "
            f"{runs.service.describe()}"
        )


def station_table(stations: list[Station], prediction: Prediction | None = None) -> Table:
    table = Table(title="stations (per instance)")
    for column in ("station", "instances", "servers", "λ /s", "service ms", "ρ", "wait ms"):
        table.add_column(column, justify="left" if column == "station" else "right")
    if prediction is not None and prediction.simulated is not None:
        table.add_column("wait ms (sim)", justify="right")
    table.add_column("state")
    table.add_column("formula")
    simulated = {}
    if prediction is not None and prediction.simulated is not None:
        simulated = {s.name: s for s in prediction.simulated.stations}
    for station in stations:
        style = {"unstable": "red", "saturated": "red", "busy": "yellow"}.get(station.state, "")
        row = [
            station.name,
            f"{station.instances:,}",
            "∞" if station.servers is None else f"{station.servers:,}",
            f"{station.arrival_rps:,.2f}",
            f"{station.service_ms:,.3g}",
            _rho(station.utilisation),
            _ms(station.wait_ms, 2),
        ]
        if prediction is not None and prediction.simulated is not None:
            sim = simulated.get(station.name)
            row.append("" if sim is None else f"{sim.mean_wait_ms:,.2f}")
        row += [f"[{style}]{station.state}[/{style}]" if style else station.state, station.formula]
        table.add_row(*row)
    return table


def render_prediction(
    console: Console, prediction: Prediction, observed: Observed | None = None
) -> None:
    console.print(station_table(prediction.stations, prediction))
    table = Table(title=f"prediction at {prediction.rate_rps:,.1f} req/s")
    table.add_column("")
    table.add_column("closed forms", justify="right")
    table.add_column("simulation", justify="right")
    if observed is not None:
        table.add_column(f"measured ({observed.source})", justify="right")
    sim = prediction.simulated
    rows: list[tuple[str, str, str, str]] = [
        (
            "throughput req/s",
            f"{prediction.analytic_throughput_rps:,.1f}",
            "" if sim is None else f"{sim.throughput_rps:,.1f}",
            ""
            if observed is None or observed.achieved_rps is None
            else f"{observed.achieved_rps:,.1f}",
        ),
        (
            "mean ms",
            _ms(prediction.analytic_mean_ms),
            "" if sim is None else _ms(sim.mean_ms),
            "" if observed is None or observed.mean_ms is None else _ms(observed.mean_ms),
        ),
    ]
    for name in ("p50", "p90", "p99"):
        value = getattr(prediction, f"{name}_ms")
        seen = None if observed is None else getattr(observed, f"{name}_ms")
        rows.append(
            (f"{name} ms", "", "" if sim is None else _ms(value), "" if seen is None else _ms(seen))
        )
    rows.append(
        (
            "errors",
            f"{prediction.analytic_rejection_ratio:.2%}",
            "" if sim is None else f"{prediction.error_ratio:.2%}",
            ""
            if observed is None or observed.error_ratio is None
            else f"{observed.error_ratio:.2%}",
        )
    )
    for row in rows:
        table.add_row(*(row if observed is not None else row[:3]))
    console.print(table)
    console.print(
        f"bottleneck: [bold]{prediction.bottleneck}[/bold]; capacity "
        f"{prediction.capacity_rps:,.1f} req/s; "
        + ("stable" if prediction.stable else "[red]unstable[/red]")
    )
    if sim is not None and sim.reasons:
        console.print("errors by kind: " + ", ".join(f"{k} {v:,}" for k, v in sim.reasons.items()))
    if sim is not None and sim.runs is not None:
        runs = sim.runs
        console.print(
            f"runs: mean {runs.mean_s:,.2f} s, p50 {runs.p50_s:,.2f} s, p99 {runs.p99_s:,.2f} s, "
            f"worker slots busy {runs.utilisation:.0%}"
        )
    for note in prediction.notes:
        console.print(f"  • {note}")


def render_rate_search(console: Console, search: RateSearch) -> None:
    if search.rate_rps <= 0:
        console.print(f"largest rate that meets it: [red]none[/red] ({search.reason})")
        return
    prediction = search.prediction
    assert prediction is not None
    console.print(
        f"largest rate that meets it: [bold]{search.rate_rps:,.1f} req/s[/bold] "
        f"(p99 {_ms(prediction.p99_ms)} ms, errors {prediction.error_ratio:.2%}; "
        f"closed-form bound {search.bound_rps:,.1f} req/s; {search.evaluations} simulations)"
    )


def render_change_plan(console: Console, plan: ChangePlan) -> None:
    if plan.passes_now:
        return
    table = Table(title=f"changes that meet the SLO at {plan.rate_rps:,.1f} req/s, cheapest first")
    for column in ("change", "units", "cost", "p99 ms", "errors", "bottleneck"):
        table.add_column(column, justify="left" if column in ("change", "bottleneck") else "right")
    for option in plan.options:
        p = option.prediction
        table.add_row(
            option.description,
            f"{option.units:,}",
            f"{option.cost:,.2f}",
            _ms(p.p99_ms),
            f"{p.error_ratio:.2%}",
            p.bottleneck,
        )
    console.print(table)
    if plan.best is not None:
        console.print(f"cheapest: [bold]{plan.best.description}[/bold] (cost {plan.best.cost:g})")
    for line in plan.impossible:
        console.print(f"  • cannot: {line}")


# -- the article's cases -----------------------------------------------------------------------


def run_article_cases(
    console: Console, *, requests: int = DEFAULT_REQUESTS, seed: int = 1, json_out: Path | None
) -> list[CaseReport]:
    reports = [report(case, requests=requests, seed=seed) for case in CASES]
    for case_report in reports:
        render_article_case(console, case_report)
    console.print()
    console.print(EXPLANATION, soft_wrap=False)
    if json_out is not None:
        _write_json(json_out, {"cases": reports, "explanation": EXPLANATION})
        console.print(f"wrote {json_out}")
    return reports


def render_article_case(console: Console, r: CaseReport) -> None:
    c = r.case
    console.print()
    console.print(f"[bold]{c.name}[/bold] ({c.english})")
    console.print(
        f"  N = {c.n:,.0f} req/s, t = {c.t:g} s, M = {c.m}, h = {c.h:g} (t_h = {c.t_h:g} s, "
        f"t_c = {c.t_c:g} s), p = {c.p}, S = {c.s}, t_m = {c.t_m:g} s"
        + (f"; {c.remark}" if c.remark else "")
    )
    table = Table(title="T = N/M·t + N/h·(h·t_h + (1−h)·t_c) + N/p·t + N/S·t_m, in seconds")
    for column in ("term", "as printed", "computed"):
        table.add_column(column, justify="left" if column == "term" else "right")
    names = (
        f"N/M·t = {c.n:,.0f}/{c.m} × {c.t:g}",
        f"N/h·(…) = {c.n:,.0f}/{c.h:g} × {c.h * c.t_h + (1 - c.h) * c.t_c:g}",
        f"N/p·t = {c.n:,.0f}/{c.p} × {c.t:g}",
        f"N/S·t_m = {c.n:,.0f}/{c.s} × {c.t_m:g}",
    )
    for name, printed, correct in zip(names, c.printed_terms, r.correct_terms, strict=True):
        table.add_row(name, f"{printed:,.1f}", f"{correct:,.1f}")
    total_note = (
        f"{c.printed_total:,.1f}"
        if math.isclose(c.printed_total, r.printed_terms_sum)
        else f"{c.printed_total:,.1f} (its terms add up to {r.printed_terms_sum:,.1f})"
    )
    table.add_row("[bold]T[/bold]", total_note, f"[bold]{r.correct_total:,.1f}[/bold]")
    console.print(table)
    console.print(
        f"  One request through the stages, no waiting: t + h·t_h + (1−h)·(t_c + t_m) = "
        f"{r.unloaded_ms:,.1f} ms."
    )
    console.print(
        "  The queueing model, parameters as given (gateway = the M load balancers, service ="
        " the S services of p slots each, reached by the misses):"
    )
    _render_analysis(console, r.as_given)
    m_needed, s_needed, p_needed = r.gateways_needed, r.services_needed, r.concurrency_needed
    console.print(
        f"  For ρ ≤ 0.8 everywhere: M = {m_needed:,} load balancers (ρ = "
        f"{c.n * c.t / m_needed:.3f}), and S = {s_needed:,} services at p = {c.p} "
        f"or p = {p_needed:,} at S = {c.s}."
    )
    sized = r.sized
    console.print(
        f"  With M = {m_needed:,} and S = {s_needed:,}: mean {_ms(sized.analytic_mean_ms)} ms "
        f"(closed forms); simulated mean {_ms(sized.mean_ms)} ms, p50 {_ms(sized.p50_ms)}, "
        f"p90 {_ms(sized.p90_ms)}, p99 {_ms(sized.p99_ms)} ms, "
        f"{sized.throughput_rps:,.0f} req/s served."
    )
    if sized.simulated is not None and sized.simulated.slice_note:
        console.print(f"  ({sized.simulated.slice_note})")
    console.print(
        f"  With M = {m_needed:,} and p = {p_needed:,}: mean "
        f"{_ms(r.sized_by_concurrency.mean_ms)} ms (closed forms): fewer, wider services "
        "pool their slots and wait less."
    )


def _render_analysis(console: Console, analysis: Analysis) -> None:
    for station in analysis.stations:
        if station.utilisation is None:
            continue
        capacity = (station.capacity_rps or 0.0) * station.instances
        console.print(
            f"    {station.name}: {station.instances:,} × {station.servers} servers, "
            f"ρ = {_rho(station.utilisation)} → {station.state}; capacity {capacity:,.1f}/s"
        )
    console.print(
        f"    throughput at most {analysis.throughput_rps:,.1f} of {analysis.rate_rps:,.0f} "
        f"req/s; bottleneck: {analysis.bottleneck}; "
        + ("stable" if analysis.stable else "no finite response time: queues grow without bound")
    )


# -- the plot ------------------------------------------------------------------------------------


def plot_latency_curve(
    scenario: Scenario,
    slo: SLO | None,
    path: Path,
    *,
    seed: int = 1,
    requests: int = SEARCH_REQUESTS // 2,
    points: int = 10,
) -> None:
    """p50/p90/p99 and errors against the rate, up to the closed-form capacity (a PNG)."""
    from surgeflow.tuning.plots import pyplot

    plt = pyplot()
    predictions = []
    capacity = predict(scenario, simulated=False).capacity_rps
    top = capacity if math.isfinite(capacity) else scenario.rate * 2
    for i in range(1, points + 1):
        rate = top * i / points * 0.999
        predictions.append(predict(scenario, rate, requests=requests, seed=seed))
    rates = [p.rate_rps for p in predictions]
    figure, (upper, lower) = plt.subplots(2, 1, sharex=True, figsize=(9, 7), layout="constrained")
    figure.suptitle(f"surgeflow plan: {scenario.name}")
    for name in ("p50", "p90", "p99"):
        upper.plot(rates, [getattr(p, f"{name}_ms") for p in predictions], marker="o", label=name)
    if slo is not None and slo.p99_ms is not None:
        upper.axhline(slo.p99_ms, color="red", linestyle="--", label="SLO p99")
    upper.axvline(scenario.rate, color="grey", linestyle=":", label="scenario rate")
    upper.set_ylabel("latency ms (simulated)")
    upper.legend()
    lower.plot(rates, [p.error_ratio * 100 for p in predictions], marker="o", color="black")
    lower.set_ylabel("errors %")
    lower.set_xlabel("offered req/s")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
