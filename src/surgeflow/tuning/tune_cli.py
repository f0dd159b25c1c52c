"""What ``surgeflow tune`` does with its options: tune, print the trials and the chosen setting,
write JSON and a plot. Bad input raises `ConfigError`, which the command line prints on one line
(exit code 2)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from surgeflow.config import load_settings
from surgeflow.errors import ConfigError
from surgeflow.tuning.scenario import SLO
from surgeflow.tuning.tune import (
    DEFAULT_MAX_TRIALS,
    MaxConcurrency,
    Trial,
    TuneResult,
    check_inputs,
    tune,
)


@dataclass(frozen=True, kw_only=True)
class TuneOptions:
    """The command line's options, as given."""

    config: Path | None = None
    model: str | None = None
    rate: float = 100.0
    slo_p99_ms: float = 1000.0
    max_error_ratio: float = 0.01
    trial_s: float = 10.0
    seed: int = 1
    max_trials: int = DEFAULT_MAX_TRIALS
    plot: Path | None = None
    json_out: Path | None = None


def run_command(console: Console, options: TuneOptions) -> TuneResult:
    """Everything ``surgeflow tune`` does but parse arguments."""
    if not options.slo_p99_ms > 0:
        raise ConfigError(f"--slo-p99-ms must be > 0, not {options.slo_p99_ms:g}")
    if not 0 <= options.max_error_ratio <= 1:
        raise ConfigError(f"--max-error-ratio must be within 0..1, not {options.max_error_ratio:g}")
    if options.plot is not None:
        from surgeflow.tuning.plots import pyplot

        pyplot()  # fail now, not after the trials, when matplotlib is missing
    settings = load_settings(options.config)  # no file: the embedded default
    slo = SLO(p99_ms=options.slo_p99_ms, max_error_ratio=options.max_error_ratio)
    knob = MaxConcurrency()
    model = check_inputs(
        settings,
        model=options.model,
        rate=options.rate,
        trial_s=options.trial_s,
        max_trials=options.max_trials,
    )
    console.print(
        f"[bold]surgeflow tune[/bold]: {knob.name} of {model} at"
        f" {options.rate:g} req/s for {slo.describe()}; trials of {options.trial_s:g} s"
        f" (at most {options.max_trials}), seed {options.seed}"
    )

    def show(trial: Trial) -> None:
        verdict = "[green]pass[/green]" if trial.passed else "[red]fail[/red]"
        console.print(
            f"  trial {knob.name}={trial.value}: measured p99 {_ms(trial.measured_p99_ms)} ms,"
            f" errors {trial.measured_error_ratio:.2%}: {verdict}"
        )

    async def main() -> TuneResult:
        return await tune(
            settings,
            model=model,
            rate=options.rate,
            slo=slo,
            knob=knob,
            trial_s=options.trial_s,
            seed=options.seed,
            max_trials=options.max_trials,
            on_trial=show,
        )

    try:
        import uvloop

        result = uvloop.run(main())
    except ImportError:
        result = asyncio.run(main())
    render(console, result)
    if options.json_out is not None:
        options.json_out.parent.mkdir(parents=True, exist_ok=True)
        options.json_out.write_bytes(result.to_json())
        console.print(f"wrote {options.json_out}")
    if options.plot is not None:
        plot_tune(result, options.plot)
        console.print(f"wrote {options.plot}")
    return result


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:,.1f}"


def trial_table(result: TuneResult) -> Table:
    table = Table(
        title=f"{result.knob}: {result.model} at {result.rate_rps:g} req/s, "
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


def render(console: Console, result: TuneResult) -> None:
    console.print(trial_table(result))
    console.print(escape(result.outcome), soft_wrap=True)
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}", soft_wrap=True)
    if result.chosen is None:
        return
    console.print(
        f"chosen: [bold]{result.knob} {result.chosen}[/bold] (the config has {result.current});"
        f" {result.resources:,} {result.resource_unit}"
    )
    console.print("# in the config (other keys of the model and its endpoints as they were):")
    console.print(escape(result.snippet), end="", soft_wrap=True, highlight=False)


def plot_tune(result: TuneResult, path: Path) -> None:
    """Predicted and measured p99 against the knob's value, with the SLO line."""
    from surgeflow.tuning.plots import pyplot

    plt = pyplot()
    figure, axes = plt.subplots(figsize=(8, 5), layout="constrained")
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
    axes.set_xlabel(result.knob)
    axes.set_ylabel("p99 latency (ms)")
    axes.set_title(f"surgeflow tune: {result.model} at {result.rate_rps:g} req/s")
    axes.legend()
    axes.grid(alpha=0.3, which="both")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        figure.savefig(path, dpi=110)
    finally:
        plt.close(figure)
