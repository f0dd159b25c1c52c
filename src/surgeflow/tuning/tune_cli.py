"""What ``surgeflow tune`` does with its options: tune, print the trials and the chosen setting,
write JSON and a plot. Bad input raises `ConfigError`, which the command line prints on one line
(exit code 2)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from surgeflow.config import load_settings
from surgeflow.errors import ConfigError
from surgeflow.tuning.knobs import Workload, knob_named
from surgeflow.tuning.scenario import SLO
from surgeflow.tuning.tune import (
    DEFAULT_MAX_TRIALS,
    Trial,
    TuneReport,
    TuneResult,
    check_inputs,
    tune_all,
)


@dataclass(frozen=True, kw_only=True)
class TuneOptions:
    """The command line's options, as given."""

    config: Path | None = None
    knobs: tuple[str, ...] = ("max_concurrency",)
    target: str = "chat"
    model: str | None = None
    hit_ratio: float = 0.0
    prompts: int = 1
    workflow: str = ""
    input: str = "{}"
    rate: float = 100.0
    slo_p99_ms: float = 1000.0
    max_error_ratio: float = 0.01
    trial_s: float = 10.0
    seed: int = 1
    max_trials: int = DEFAULT_MAX_TRIALS
    plot: Path | None = None
    json_out: Path | None = None


def workload_of(options: TuneOptions) -> Workload:
    if options.target not in ("chat", "runs"):
        raise ConfigError(f"--target must be chat or runs, not {options.target!r}")
    try:
        given = json.loads(options.input)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--input is not JSON: {exc}") from None
    if not isinstance(given, dict):
        raise ConfigError("--input must be a JSON object")
    return Workload(
        kind="runs" if options.target == "runs" else "chat",
        model=options.model or "",
        hit_ratio=options.hit_ratio,
        prompts=options.prompts,
        workflow=options.workflow,
        input=given,
    )


def run_command(console: Console, options: TuneOptions) -> TuneReport:
    """Everything ``surgeflow tune`` does but parse arguments."""
    if not options.slo_p99_ms > 0:
        raise ConfigError(f"--slo-p99-ms must be > 0, not {options.slo_p99_ms:g}")
    if not 0 <= options.max_error_ratio <= 1:
        raise ConfigError(f"--max-error-ratio must be within 0..1, not {options.max_error_ratio:g}")
    knobs = [knob_named(name) for name in options.knobs]
    if options.plot is not None:
        from surgeflow.tuning.plots import pyplot

        pyplot()  # fail now, not after the trials, when matplotlib is missing
    settings = load_settings(options.config)  # no file: the embedded default
    slo = SLO(p99_ms=options.slo_p99_ms, max_error_ratio=options.max_error_ratio)
    _, workload = check_inputs(
        settings,
        workload_of(options),
        knobs,
        rate=options.rate,
        trial_s=options.trial_s,
        max_trials=options.max_trials,
    )
    names = ", then ".join(knob.name for knob in knobs)
    unit = "runs/s" if workload.kind == "runs" else "req/s"
    console.print(
        f"[bold]surgeflow tune[/bold]: {names} for {escape(workload.describe())} at"
        f" {options.rate:g} {unit}, {slo.describe()}; trials of {options.trial_s:g} s"
        f" (at most {options.max_trials} a knob), seed {options.seed}"
    )
    if workload.kind == "runs":
        console.print("  measuring one run alone (one at a time, for up to 5 s) …")

    def show(name: str, trial: Trial) -> None:
        verdict = "[green]pass[/green]" if trial.passed else "[red]fail[/red]"
        kinds = ", ".join(f"{kind} {n:,}" for kind, n in sorted(trial.errors.items()))
        console.print(
            f"  trial {name}={trial.value}: measured p99 {_ms(trial.measured_p99_ms)} ms,"
            f" errors {trial.measured_error_ratio:.2%}{f' ({kinds})' if kinds else ''}: {verdict}"
        )

    async def main() -> TuneReport:
        return await tune_all(
            settings,
            workload,
            knobs,
            rate=options.rate,
            slo=slo,
            trial_s=options.trial_s,
            seed=options.seed,
            max_trials=options.max_trials,
            on_trial=show,
        )

    try:
        import uvloop

        report = uvloop.run(main())
    except ImportError:
        report = asyncio.run(main())
    render(console, report)
    if options.json_out is not None:
        options.json_out.parent.mkdir(parents=True, exist_ok=True)
        options.json_out.write_bytes(report.to_json())
        console.print(f"wrote {options.json_out}")
    if options.plot is not None:
        plot_tune(report, options.plot)
        console.print(f"wrote {options.plot}")
    return report


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:,.1f}"


def trial_table(result: TuneResult) -> Table:
    unit = "runs/s" if result.workload.kind == "runs" else "req/s"
    table = Table(
        title=f"{result.knob}: {result.workload.describe()} at {result.rate_rps:g} {unit}, "
        + result.slo.describe(),
        caption="p99 in ms; ruled out: the closed forms exclude it (ρ ≥ 1 …)",
    )
    for name in ("#", "value", "model p99", "model", "measured p99", "errors", "ok/s", "passed"):
        table.add_column(name, justify="right")
    for index, trial in enumerate(result.trials, 1):
        table.add_row(
            str(index),
            str(trial.value),
            "ruled out" if trial.predicted_p99_ms is None else _ms(trial.predicted_p99_ms),
            "pass" if trial.predicted_passes else "fail",
            _ms(trial.measured_p99_ms),
            f"{trial.measured_error_ratio:.2%}",
            f"{trial.achieved_rps:,.1f}",
            "[green]yes[/green]" if trial.passed else "[red]no[/red]",
        )
    return table


def render(console: Console, report: TuneReport) -> None:
    for result in report.results:
        if result.calibration is not None:
            console.print(f"measured: {escape(result.calibration.describe())}", soft_wrap=True)
        console.print(trial_table(result))
        console.print(escape(result.outcome), soft_wrap=True)
        for warning in result.warnings:
            console.print(f"[yellow]warning:[/yellow] {escape(warning)}", soft_wrap=True)
        if result.chosen is not None:
            current = "unlimited" if result.current is None else f"{result.current:,}"
            console.print(
                f"chosen: [bold]{result.knob} {result.chosen:,}[/bold] (the config has"
                f" {current}); {result.resources:,} {result.resource_unit}"
            )
    if not report.snippet:
        return
    console.print("# in the config (other keys of the models and endpoints as they were):")
    console.print(escape(report.snippet), end="", soft_wrap=True, highlight=False)
    for advice in report.advice:
        console.print(f"# and {escape(advice)}", soft_wrap=True, highlight=False)


def plot_tune(report: TuneReport, path: Path) -> None:
    """Per knob (a column): predicted and measured p99 against its value, with the SLO line,
    and below it the error ratio, with the SLO's bound."""
    from surgeflow.tuning.plots import pyplot

    plt = pyplot()
    count = len(report.results)
    figure, panels = plt.subplots(
        2,
        count,
        figsize=(7 * count, 7),
        layout="constrained",
        squeeze=False,
        sharex="col",
        height_ratios=(3, 1.3),
    )
    for column, result in enumerate(report.results):
        _plot_latency(plt, panels[0][column], result)
        _plot_errors(panels[1][column], result)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        figure.savefig(path, dpi=110)
    finally:
        plt.close(figure)


def _plot_latency(plt: Any, axes: Any, result: TuneResult) -> None:
    predicted = [(p.value, p.p99_ms) for p in result.probes if p.p99_ms is not None]
    if predicted:
        axes.plot(*zip(*predicted, strict=True), marker=".", label="predicted p99 (model)")
    for passed, colour, label in ((True, "tab:green", "passed"), (False, "tab:red", "failed")):
        points = [
            (t.value, t.measured_p99_ms)
            for t in result.trials
            if t.passed is passed and t.measured_p99_ms is not None
        ]
        if points:
            axes.scatter(
                *zip(*points, strict=True), color=colour, zorder=3, label=f"measured p99, {label}"
            )
    if result.slo.p99_ms is not None:
        axes.axhline(result.slo.p99_ms, ls="--", color="grey", label="SLO p99")
    if result.chosen is not None:
        axes.axvline(result.chosen, ls=":", color="tab:green", label=f"chosen {result.chosen}")
    axes.set_xscale("log", base=2)
    axes.xaxis.set_major_formatter(plt.FuncFormatter(lambda value, _: f"{value:g}"))
    shown = [y for _, y in predicted] + [
        t.measured_p99_ms for t in result.trials if t.measured_p99_ms is not None
    ]
    if shown and max(shown) > 20 * min(shown):
        axes.set_yscale("log")  # an overloaded value's p99 is orders of magnitude above
    unit = "runs/s" if result.workload.kind == "runs" else "req/s"
    axes.set_ylabel("p99 latency (ms)")
    axes.set_title(
        f"{result.knob}: {result.workload.describe()} at {result.rate_rps:g} {unit}", fontsize=10
    )
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3, which="both")


def _plot_errors(axes: Any, result: TuneResult) -> None:
    predicted = [(p.value, 100 * p.error_ratio) for p in result.probes]
    if predicted:
        axes.plot(*zip(*predicted, strict=True), marker=".", label="predicted")
    for passed, colour in ((True, "tab:green"), (False, "tab:red")):
        points = [
            (t.value, 100 * t.measured_error_ratio) for t in result.trials if t.passed is passed
        ]
        if points:
            axes.scatter(*zip(*points, strict=True), color=colour, zorder=3)
    axes.axhline(100 * result.slo.max_error_ratio, ls="--", color="grey", label="SLO bound")
    if result.chosen is not None:
        axes.axvline(result.chosen, ls=":", color="tab:green")
    axes.set_xlabel(result.knob)
    axes.set_ylabel("errors (%)")
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3, which="both")
