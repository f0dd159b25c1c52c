"""What ``surgeflow bench`` does with its options: run a bench, compare results, plot them.

`surgeflow.cli` declares the options; this module parses the ones that are text (``--ramp
10:200``, ``--steps 50,100``, ``--input '{...}'``) and raises `ConfigError` for bad input, which
the command line prints on one line (exit code 2).
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console

from surgeflow.errors import ConfigError
from surgeflow.tuning.arrivals import ARRIVAL_KINDS
from surgeflow.tuning.bench import Bench, Snapshot
from surgeflow.tuning.results import BenchResult, LoadSettings, load_result, save_result
from surgeflow.tuning.targets import TARGET_KINDS, TargetSettings
from surgeflow.tuning.view import live_view, render_compare, render_result, render_snapshot

DEFAULT_DURATION_S = 10.0


@dataclass(frozen=True, kw_only=True)
class BenchOptions:
    """The command line's options, as given."""

    files: Sequence[Path] = ()
    target: str = "chat"
    url: str = "http://127.0.0.1:8000"
    api_key: str | None = None
    model: str = "sim-small"
    prompt: str | None = None
    prompts: int | None = None
    hit_ratio: float | None = None
    max_tokens: int | None = None
    workflow: str = ""
    input: str = "{}"
    rate: float | None = None
    ramp: str | None = None
    steps: str | None = None
    step_s: float = 10.0
    arrival: str = "constant"
    concurrency: int | None = None
    think_ms: float = 0.0
    duration_s: float | None = None
    warmup_s: float = 0.0
    requests: int | None = None
    max_in_flight: int = 10_000
    timeout_s: float = 30.0
    seed: int = 0
    allow_remote: Sequence[str] = ()
    output: Path | None = None
    plot: Path | None = None
    plot_sweep: Path | None = None
    compare: bool = False
    quiet: bool = False


def run_command(console: Console, options: BenchOptions) -> None:
    """Compare, plot, or run a bench, as the options say."""
    if options.compare or options.plot_sweep is not None or options.files:
        _from_files(console, options)
        return
    target, load = settings_from(options)
    bench = Bench(target, load, allow_remote=options.allow_remote, api_key=options.api_key)
    if options.plot is not None:
        from surgeflow.tuning.plots import pyplot

        pyplot()  # fail now, not after the run, when matplotlib is missing
    raise_open_files_limit(load.max_in_flight + 256)
    result = _run_loop(console, bench, quiet=options.quiet)
    console.print(render_result(result))
    if options.output is not None:
        save_result(result, options.output)
        console.print(f"wrote {options.output}")
    if options.plot is not None:
        from surgeflow.tuning.plots import plot_run

        plot_run(result, options.plot)
        console.print(f"wrote {options.plot}")


def _run_loop(console: Console, bench: Bench, *, quiet: bool) -> BenchResult:
    async def main() -> BenchResult:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not main thread
            loop.add_signal_handler(signal.SIGINT, bench.stop)
        try:
            if quiet:
                return await bench.run()
            title = (
                f"surgeflow bench: {bench.target_settings.kind} {bench.root}, {bench.describe()}"
            )
            with live_view(console, title) as live:

                def show(snapshot: Snapshot) -> None:
                    live.update(render_snapshot(title, snapshot), refresh=True)

                bench.on_tick = show
                return await bench.run()
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signal.SIGINT)

    try:
        import uvloop

        return uvloop.run(main())
    except ImportError:
        return asyncio.run(main())


def _from_files(console: Console, options: BenchOptions) -> None:
    files = list(options.files)
    if options.compare:
        if len(files) < 2:
            raise ConfigError("--compare needs at least two result files")
        results = [load_result(path) for path in files]
        console.print(render_compare([path.name for path in files], results))
    if options.plot_sweep is not None:
        if not files:
            raise ConfigError("--plot-sweep OUT.png needs result files: a.json b.json …")
        from surgeflow.tuning.plots import plot_sweep

        plot_sweep([load_result(path) for path in files], options.plot_sweep)
        console.print(f"wrote {options.plot_sweep}")
    if options.plot is not None:
        if len(files) != 1:
            raise ConfigError("--plot OUT.png with files plots one result: give exactly one")
        from surgeflow.tuning.plots import plot_run

        plot_run(load_result(files[0]), options.plot)
        console.print(f"wrote {options.plot}")
    if not (options.compare or options.plot_sweep or options.plot):
        raise ConfigError(
            "result files go with --compare, --plot-sweep OUT.png or --plot OUT.png; "
            "without files, surgeflow bench runs a load test"
        )


def settings_from(options: BenchOptions) -> tuple[TargetSettings, LoadSettings]:
    """The target and load settings the options describe; `ConfigError` if they do not fit."""
    if options.target not in TARGET_KINDS:
        raise ConfigError(f"unknown target {options.target!r}: use {', '.join(TARGET_KINDS)}")
    if options.arrival not in ARRIVAL_KINDS:
        raise ConfigError(f"unknown --arrival {options.arrival!r}: use {', '.join(ARRIVAL_KINDS)}")
    if options.rate is not None and not options.rate > 0:
        raise ConfigError(f"--rate must be > 0 req/s, not {options.rate:g}")
    ramp = _ramp(options.ramp) if options.ramp is not None else None
    steps = _steps(options.steps) if options.steps is not None else None
    rate = options.rate
    if rate is None and ramp is None and steps is None and options.concurrency is None:
        rate = 10.0
    duration_s = options.duration_s
    if duration_s is None:
        duration_s = len(steps) * options.step_s if steps else DEFAULT_DURATION_S
    extras: dict[str, Any] = {}
    if options.prompt is not None:
        extras["prompt"] = options.prompt
    target = TargetSettings(
        kind=options.target,  # checked above
        url=options.url,
        model=options.model,
        prompts=options.prompts,
        hit_ratio=options.hit_ratio,
        max_tokens=options.max_tokens,
        workflow=options.workflow,
        input=_input(options.input),
        **extras,
    )
    load = LoadSettings(
        mode="closed" if options.concurrency is not None else "open",
        arrival=options.arrival,  # checked above
        rate_rps=rate,
        ramp_rps=ramp,
        steps_rps=steps,
        step_s=options.step_s,
        concurrency=options.concurrency,
        think_ms=options.think_ms,
        duration_s=duration_s,
        warmup_s=options.warmup_s,
        requests=options.requests,
        max_in_flight=options.max_in_flight,
        timeout_s=options.timeout_s,
        seed=options.seed,
    )
    return target, load


def _ramp(text: str) -> tuple[float, float]:
    start, sep, end = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return float(start), float(end)
    except ValueError:
        raise ConfigError(f"--ramp takes FROM:TO in req/s, like 10:200, not {text!r}") from None


def _steps(text: str) -> tuple[float, ...]:
    try:
        rates = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"--steps takes rates in req/s, like 50,100,150, not {text!r}") from None
    return rates


def _input(text: str) -> dict[str, Any]:
    try:
        return msgspec.json.decode(text.encode(), type=dict[str, Any])
    except msgspec.DecodeError as exc:
        raise ConfigError(f"--input must be a JSON object: {exc}") from None


def raise_open_files_limit(wanted: int) -> None:
    """Raise this process's soft limit on open files towards ``wanted`` (each request in flight
    holds a socket); best effort, up to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
