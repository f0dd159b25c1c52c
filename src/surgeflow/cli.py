"""The ``surgeflow`` command line: serve, worker, demo, mock-llm, keys."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import signal
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from surgeflow import __version__
from surgeflow.auth import new_key
from surgeflow.config import Settings, load_settings
from surgeflow.errors import SurgeflowError
from surgeflow.logs import Logging

app = typer.Typer(
    help="Serve AI agent workflows to many concurrent users, and tune how they are served.",
    no_args_is_help=True,
    add_completion=False,
)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
cache_app = typer.Typer(help="Manage a running gateway's cache.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")
alerts_app = typer.Typer(help="Check and export the alert rules.", no_args_is_help=True)
app.add_typer(alerts_app, name="alerts")

console = Console()
T = TypeVar("T")

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config file (SURGEFLOW_* variables override it)."),
]


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when it is installed; turn surgeflow errors into a message and exit 2."""
    try:
        import uvloop

        return uvloop.run(coro)
    except SurgeflowError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


def _settings(config: Path | None) -> Settings:
    try:
        settings = load_settings(config)
    except SurgeflowError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    _start_logging(settings)
    return settings


_logging: Logging | None = None


def _stop_logging() -> None:
    if _logging is not None:
        _logging.stop()


def _start_logging(settings: Settings) -> None:
    """One `Logging` per process: a second command in the same process (tests) replaces it."""
    global _logging
    if _logging is not None:
        _logging.stop()
    else:
        atexit.register(_stop_logging)  # write what is still buffered
    _logging = Logging(
        level=settings.log.level, format=settings.log.format, prompts=settings.log.prompts
    )
    _logging.start()


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Interface to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=1, max=256, help="Gateway processes sharing the port (about one per core)."
        ),
    ] = 1,
    fd: Annotated[
        int | None, typer.Option(hidden=True, help="An inherited listening socket.")
    ] = None,
) -> None:
    """Run the gateway (and, unless worker.embedded is false, a worker in the same process).

    With --workers N, N processes serve one port; a supervisor restarts one that dies and
    drains them all on SIGTERM.
    """
    settings = _settings(config)
    host = host or settings.server.host
    port = settings.server.port if port is None else port
    if workers > 1:
        from surgeflow.supervisor import Supervisor

        supervisor = Supervisor(
            workers=workers,
            host=host,
            port=port,
            config=config,
            drain_s=settings.worker.drain_timeout_s + 15,
            metrics_dir=settings.server.metrics_dir,
        )
        logging.basicConfig(level="WARNING", format="%(levelname)s %(name)s %(message)s")
        raise typer.Exit(_run(supervisor.run()))

    from surgeflow.server import serve_forever
    from surgeflow.service import Service

    async def main() -> None:
        async with Service(settings) as service:
            await serve_forever(service, host, port, fd=fd, quiet=fd is not None)

    _run(main())


@app.command()
def worker(
    config: ConfigOption = None,
    concurrency: Annotated[int | None, typer.Option(min=1, help="Runs at once.")] = None,
    burst: Annotated[bool, typer.Option(help="Exit once the queue has nothing ready.")] = False,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=0, max=65535, help="Serve /metrics, /healthz and /readyz on this port (0: any)."
        ),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option(help="Address for --metrics-port (0.0.0.0 in a container).")
    ] = "127.0.0.1",
) -> None:
    """Execute queued workflow runs until SIGTERM (then drain) or, with --burst, until idle."""
    from surgeflow.server import WorkerApp, running_app
    from surgeflow.service import Service

    settings = _settings(config)

    async def main() -> None:
        async with Service(settings, embedded_worker=False) as service:
            options = {} if concurrency is None else {"concurrency": concurrency}
            runner = service.new_worker(**options)
            service.start_reconciler()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, runner.stop)
            async with contextlib.AsyncExitStack() as stack:
                if metrics_port is not None:
                    app = WorkerApp(service, runner)
                    url = await stack.enter_async_context(
                        running_app(app, metrics_host, metrics_port, graceful_timeout_s=1)
                    )
                    console.print(f"worker metrics on {url}/metrics")
                console.print(f"worker {runner.id} started (concurrency {runner.concurrency})")
                await runner.run(burst=burst)
                console.print(f"worker {runner.id} stopped after {runner.completed} runs")

    _run(main())


@app.command()
def demo(
    requests: Annotated[int, typer.Option(min=1, max=100_000, help="Requests per agent.")] = 200,
    concurrency: Annotated[int, typer.Option(min=1, max=1000, help="Requests in flight.")] = 32,
    runs: Annotated[int, typer.Option(min=0, max=10_000, help="Durable runs per agent.")] = 25,
    serve: Annotated[bool, typer.Option("--serve", help="Keep serving afterwards.")] = False,
    port: Annotated[int, typer.Option(help="Port for --serve (0: any free port).")] = 0,
) -> None:
    """Start the embedded service, drive concurrent traffic at both agents, print a summary."""
    from surgeflow.demo import run_demo

    logging.basicConfig(level="WARNING", format="%(levelname)s %(name)s %(message)s")
    _run(
        run_demo(
            console,
            requests=requests,
            concurrency=concurrency,
            runs=runs,
            serve=serve,
            port=port,
        )
    )


@app.command("mock-llm")
def mock_llm(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 9000,
    model: Annotated[
        list[str] | None,
        typer.Option(help="Name /v1/models lists (repeat for several; default: mock)."),
    ] = None,
    ttft_ms: Annotated[float, typer.Option(help="Mean time to first token.")] = 50.0,
    tokens_per_s: Annotated[float, typer.Option(help="Token rate (0: instant).")] = 200.0,
    latency: Annotated[
        Literal["lognormal", "exponential", "constant"],
        typer.Option(help="How time to first token is drawn."),
    ] = "constant",
    jitter: Annotated[float, typer.Option(help="Sigma of the lognormal latency.")] = 0.5,
    error_rate: Annotated[float, typer.Option(help="Probability of a 500.")] = 0.0,
    rate_429: Annotated[float, typer.Option(help="Probability of a 429.")] = 0.0,
    retry_after_s: Annotated[float, typer.Option(help="Retry-After sent with 429s.")] = 1.0,
    hang_rate: Annotated[float, typer.Option(help="Probability of never answering.")] = 0.0,
    slow_factor: Annotated[float, typer.Option(help="Multiplies every latency.")] = 1.0,
    capacity: Annotated[
        int | None, typer.Option(min=1, help="Calls served at once; the rest queue (FIFO).")
    ] = None,
    rate_limit_rps: Annotated[
        float | None, typer.Option(help="Answer 429 above this many requests per second.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seeds failures and latency draws.")] = 0,
    api_key: Annotated[
        str | None, typer.Option(help="Require 'Authorization: Bearer <key>' on /v1 routes.")
    ] = None,
) -> None:
    """Serve a simulated OpenAI-compatible model, with knobs for failures (see /admin/config)."""
    from surgeflow.mockllm import MockLLM, serve_forever
    from surgeflow.models.simulated import SimulatedBackend

    logging.basicConfig(level="WARNING", format="%(levelname)s %(name)s %(message)s")

    async def main() -> None:
        backend = SimulatedBackend(
            "mock",
            ttft_ms=ttft_ms,
            tokens_per_s=tokens_per_s,
            latency=latency,
            jitter=jitter,
            error_rate=error_rate,
            rate_429=rate_429,
            retry_after_s=retry_after_s,
            hang_rate=hang_rate,
            slow_factor=slow_factor,
            capacity=capacity,
            rate_limit_rps=rate_limit_rps,
            seed=seed,
        )
        await serve_forever(MockLLM(backend, models=model or ["mock"], api_key=api_key), host, port)

    _run(main())


@app.command()
def bench(
    files: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Result files, for --compare, --plot-sweep or --plot.", show_default=False
        ),
    ] = None,
    target: Annotated[str, typer.Option(help="What to load: chat, invoke or runs.")] = "chat",
    url: Annotated[
        str, typer.Option(help="Server root or OpenAI base URL (…/v1); loopback unless allowed.")
    ] = "http://127.0.0.1:8000",
    api_key: Annotated[
        str | None, typer.Option(envvar="SURGEFLOW_API_KEY", help="Sent as a Bearer token.")
    ] = None,
    model: Annotated[str, typer.Option(help="chat: the model name.")] = "sim-small",
    prompt: Annotated[str | None, typer.Option(help="chat: the prompt text.")] = None,
    prompts: Annotated[
        int | None, typer.Option(help="chat: N distinct prompts, cycled, at temperature 0.")
    ] = None,
    hit_ratio: Annotated[
        float | None,
        typer.Option(help="chat: share of requests repeating a hot prompt (temperature 0)."),
    ] = None,
    max_tokens: Annotated[int | None, typer.Option(help="chat: max_tokens to send.")] = None,
    workflow: Annotated[str, typer.Option(help="invoke, runs: the workflow's name.")] = "",
    input: Annotated[str, typer.Option(help="invoke, runs: the input, a JSON object.")] = "{}",
    rate: Annotated[
        float | None, typer.Option(help="Open loop at this many req/s (default 10).")
    ] = None,
    ramp: Annotated[
        str | None, typer.Option(help="Open loop, FROM:TO req/s, linearly over the duration.")
    ] = None,
    steps: Annotated[
        str | None, typer.Option(help="Open loop, rates like 50,100,150, each for --step-s.")
    ] = None,
    step_s: Annotated[float, typer.Option(help="Seconds each of --steps lasts.")] = 10.0,
    arrival: Annotated[
        str, typer.Option(help="Open loop: constant (even gaps) or poisson (seeded).")
    ] = "constant",
    concurrency: Annotated[
        int | None, typer.Option(help="Closed loop instead: N users, one request each.")
    ] = None,
    think_ms: Annotated[float, typer.Option(help="Closed loop: pause between requests.")] = 0.0,
    duration_s: Annotated[
        float | None, typer.Option(help="Load for this long (default 10, or the steps' total).")
    ] = None,
    warmup_s: Annotated[float, typer.Option(help="Load first, left out of the results.")] = 0.0,
    requests: Annotated[int | None, typer.Option(help="Stop after this many requests.")] = None,
    max_in_flight: Annotated[
        int, typer.Option(help="Beyond this many in flight, requests are dropped and counted.")
    ] = 10_000,
    timeout_s: Annotated[float, typer.Option(help="Per request (runs: submit to end).")] = 30.0,
    seed: Annotated[int, typer.Option(help="Seeds Poisson gaps and the hit-ratio draws.")] = 0,
    allow_remote: Annotated[
        list[str] | None,
        typer.Option(help="Allow loading this non-loopback host (repeat for several)."),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the result as JSON here.")
    ] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Plot the run (or one result file) to this PNG.")
    ] = None,
    plot_sweep: Annotated[
        Path | None, typer.Option(help="Plot the result files against offered load (PNG).")
    ] = None,
    compare: Annotated[
        bool, typer.Option("--compare", help="Compare the result files with the first.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No live view.")] = False,
) -> None:
    """Load a gateway (or any OpenAI-compatible server) open-loop, without coordinated omission.

    Latency counts from each request's intended send time, so a stall is never hidden.

    Loopback hosts only, unless --allow-remote names one: no load on another's server by mistake.
    """
    from rich.markup import escape

    from surgeflow.tuning.bench_cli import BenchOptions, run_command

    options = BenchOptions(
        files=files or (),
        target=target,
        url=url,
        api_key=api_key,
        model=model,
        prompt=prompt,
        prompts=prompts,
        hit_ratio=hit_ratio,
        max_tokens=max_tokens,
        workflow=workflow,
        input=input,
        rate=rate,
        ramp=ramp,
        steps=steps,
        step_s=step_s,
        arrival=arrival,
        concurrency=concurrency,
        think_ms=think_ms,
        duration_s=duration_s,
        warmup_s=warmup_s,
        requests=requests,
        max_in_flight=max_in_flight,
        timeout_s=timeout_s,
        seed=seed,
        allow_remote=allow_remote or (),
        output=output,
        plot=plot,
        plot_sweep=plot_sweep,
        compare=compare,
        quiet=quiet,
    )
    try:
        run_command(console, options)
    except SurgeflowError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None


@app.command()
def plan(
    scenario: Annotated[
        Path | None,
        typer.Argument(help="A scenario YAML file (docs/tuning.md).", show_default=False),
    ] = None,
    config: ConfigOption = None,
    model: Annotated[
        str | None, typer.Option(help="The model to plan (default: the first).")
    ] = None,
    rate: Annotated[float | None, typer.Option(help="Offered chat requests per second.")] = None,
    hit_ratio: Annotated[float | None, typer.Option(help="Cache hit ratio, 0 to 1.")] = None,
    gateways: Annotated[int | None, typer.Option(help="Gateway replicas.")] = None,
    metrics: Annotated[
        str | None, typer.Option(help="A gateway's /metrics URL: rate, hit ratio, latencies.")
    ] = None,
    metrics_interval_s: Annotated[
        float, typer.Option(help="Seconds between the two scrapes of --metrics.")
    ] = 3.0,
    bench: Annotated[
        Path | None, typer.Option(help="A surgeflow bench result: plan its load, compare.")
    ] = None,
    slo_p99_ms: Annotated[float | None, typer.Option(help="SLO: p99 latency bound.")] = None,
    slo_p50_ms: Annotated[float | None, typer.Option(help="SLO: p50 latency bound.")] = None,
    slo_error_ratio: Annotated[
        float | None, typer.Option(help="SLO: largest share of errors (default 0.01).")
    ] = None,
    requests: Annotated[
        int, typer.Option(min=1000, max=5_000_000, help="Requests per simulation.")
    ] = 200_000,
    seed: Annotated[int, typer.Option(help="Seeds the simulation.")] = 1,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the results here.")] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Latency against rate, as a PNG (plots extra).")
    ] = None,
    article_cases: Annotated[
        bool, typer.Option("--article-cases", help="The source article's two worked cases.")
    ] = False,
) -> None:
    """Predict latency, throughput and the bottleneck with a queueing model and a simulation.

    From a scenario file, a config (--config, --model), a live gateway (--metrics) or a bench
    result (--bench). With an SLO: the largest rate that meets it and, if it is missed now, the
    cheapest change that meets it.
    """
    from rich.markup import escape

    from surgeflow.tuning.report import PlanInputs, run_article_cases, run_plan

    try:
        if article_cases:
            run_article_cases(console, requests=requests, seed=seed, json_out=json_out)
            return
        run_plan(
            console,
            PlanInputs(
                scenario=scenario,
                config=config,
                model=model,
                rate=rate,
                hit_ratio=hit_ratio,
                gateways=gateways,
                metrics=metrics,
                metrics_interval_s=metrics_interval_s,
                bench=bench,
                slo_p99_ms=slo_p99_ms,
                slo_p50_ms=slo_p50_ms,
                slo_error_ratio=slo_error_ratio,
                requests=requests,
                seed=seed,
                json_out=json_out,
                plot=plot,
            ),
        )
    except SurgeflowError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None


@app.command()
def tune(
    config: ConfigOption = None,
    knob: Annotated[
        list[str] | None,
        typer.Option(
            help="What to tune: max_concurrency, max_in_flight, cache_ttl_s (chat);"
            " worker_concurrency, workers (runs). Repeat to tune several, in that order."
        ),
    ] = None,
    target: Annotated[
        str, typer.Option(help="The load: chat requests, or durable workflow runs.")
    ] = "chat",
    model: Annotated[
        str | None, typer.Option(help="The model to tune (default: the first).")
    ] = None,
    hit_ratio: Annotated[
        float, typer.Option(help="Chat: the share of requests repeating a hot prompt.")
    ] = 0.0,
    prompts: Annotated[int, typer.Option(help="Chat: how many hot prompts repeat.")] = 1,
    workflow: Annotated[str, typer.Option(help="Runs: the workflow to run.")] = "",
    input: Annotated[str, typer.Option(help="Runs: the run's input, a JSON object.")] = "{}",
    rate: Annotated[float, typer.Option(help="Offered requests (or runs) per second.")] = 100.0,
    slo_p99_ms: Annotated[float, typer.Option(help="SLO: p99 latency bound.")] = 1000.0,
    max_error_ratio: Annotated[float, typer.Option(help="SLO: largest share of errors.")] = 0.01,
    trial_s: Annotated[float, typer.Option(help="Seconds of load per trial.")] = 10.0,
    seed: Annotated[
        int, typer.Option(help="Seeds the simulated endpoints, the arrivals and the model.")
    ] = 1,
    max_trials: Annotated[int, typer.Option(help="Bench trials at most, per knob.")] = 6,
    plot: Annotated[
        Path | None, typer.Option(help="Predicted and measured p99 against each knob (PNG).")
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the trials here.")] = None,
) -> None:
    """Choose the smallest setting that meets an SLO at a rate: slots per endpoint, the
    admission limit, a cache TTL, worker slots or worker processes.

    The model picks a value; short bench trials against the service, started in this process
    with each candidate, confirm it and walk to the boundary.
    """
    from rich.markup import escape

    from surgeflow.tuning.tune_cli import TuneOptions, run_command

    options = TuneOptions(
        config=config,
        knobs=tuple(knob or ["max_concurrency"]),
        target=target,
        model=model,
        hit_ratio=hit_ratio,
        prompts=prompts,
        workflow=workflow,
        input=input,
        rate=rate,
        slo_p99_ms=slo_p99_ms,
        max_error_ratio=max_error_ratio,
        trial_s=trial_s,
        seed=seed,
        max_trials=max_trials,
        plot=plot,
        json_out=json_out,
    )
    try:
        run_command(console, options)
    except SurgeflowError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None


@alerts_app.command("export")
def alerts_export(
    config: ConfigOption = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here instead of to stdout.")
    ] = None,
    group: Annotated[str, typer.Option(help="The rule group's name.")] = "surgeflow",
) -> None:
    """Write the alert rules as a Prometheus rules file, for Prometheus and Alertmanager.

    The rules are the config's (`alerts.rules`), or the defaults: the same ones surgeflow
    evaluates itself.
    """
    from surgeflow.alerts import prometheus_rules

    settings = _settings(config)
    try:
        text = prometheus_rules(settings.alerts, group)
    except SurgeflowError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    if output is None:
        typer.echo(text, nl=False)
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    console.print(f"wrote {len(settings.alerts.rules)} rules to {output}")


@alerts_app.command("check")
def alerts_check(config: ConfigOption = None) -> None:
    """Validate the alert rules and list them, with what each one watches."""
    from surgeflow.alerts import validate

    settings = _settings(config)
    try:
        rules = validate(settings.alerts)
    except SurgeflowError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    for rule in rules:
        wait = f", for {rule.settings.for_}" if rule.for_s else ""
        console.print(f"[bold]{rule.name}[/bold] ({rule.kind}{wait}): {rule.summary}")
    console.print(f"{len(rules)} rules OK")


@cache_app.command("clear")
def cache_clear(
    url: Annotated[str, typer.Option(help="The gateway's base URL.")] = "http://127.0.0.1:8000",
    key: Annotated[str, typer.Option(envvar="SURGEFLOW_ADMIN_KEY", help="An admin API key.")] = "",
    prefix: Annotated[
        str | None, typer.Option(help="Only keys starting with this (chat:<key id>:<model>:).")
    ] = None,
    tag: Annotated[
        str | None, typer.Option(help="Only entries stored with this tag (X-Surgeflow-Cache-Tags).")
    ] = None,
    cache_key: Annotated[
        str | None, typer.Option(help="Only the entry with this exact key.")
    ] = None,
) -> None:
    """Invalidate cached answers on a running gateway: all, or by prefix, tag or cache key.

    --key is the admin API key; an entry's own key goes in --cache-key.
    """
    import aiohttp

    selectors = {"prefix": prefix, "tag": tag, "key": cache_key}
    params = {name: value for name, value in selectors.items() if value is not None}
    if len(params) > 1:
        console.print("[red]error:[/red] give at most one of --prefix, --tag and --cache-key")
        raise typer.Exit(2)

    async def main() -> None:
        headers = {"Authorization": f"Bearer {key}"}
        try:
            async with (
                aiohttp.ClientSession(headers=headers) as http,
                http.delete(f"{url.rstrip('/')}/v1/admin/cache", params=params) as response,
            ):
                body = await response.json(content_type=None)
        except aiohttp.ClientError as exc:
            console.print(f"[red]error:[/red] cannot reach {url}: {exc}")
            raise typer.Exit(2) from None
        if response.status != 200:
            console.print(f"[red]error:[/red] {body.get('error', {}).get('message', body)}")
            raise typer.Exit(2)
        console.print(f"deleted {body['deleted']} cached entries")

    _run(main())


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="Who the key is for.")] = "default",
    admin: Annotated[bool, typer.Option(help="May also call the /v1/admin routes.")] = False,
    cache: Annotated[
        bool, typer.Option(help="--no-cache: this key's requests never read or write the cache.")
    ] = True,
    config: ConfigOption = None,
) -> None:
    """Create an API key; the secret is printed once and only its digest is stored."""
    settings = _settings(config)

    async def main() -> None:
        async with _store(settings) as store:
            secret, record = new_key(name, admin=admin, cache=cache)
            await store.add_api_key(record)
        console.print(f"created key [bold]{record.id}[/bold] ({name}); keep this secret:")
        print(secret)

    _run(main())


@keys_app.command("list")
def keys_list(config: ConfigOption = None) -> None:
    """List API keys (ids and names, never secrets)."""
    settings = _settings(config)

    async def main() -> None:
        async with _store(settings) as store:
            keys = await store.list_api_keys()
        table = Table("id", "name", "admin", "cache", "created", "revoked")
        for key in keys:
            table.add_row(
                key.id,
                key.name,
                "yes" if key.admin else "",
                "" if key.cache else "off",
                _when(key.created_at),
                _when(key.revoked_at) if key.revoked_at else "",
            )
        console.print(table)

    _run(main())


@keys_app.command("revoke")
def keys_revoke(key_id: str, config: ConfigOption = None) -> None:
    """Revoke a key; gateways stop accepting it within auth.key_refresh_s seconds."""
    settings = _settings(config)

    async def main() -> None:
        async with _store(settings) as store:
            await store.revoke_api_key(key_id)
        console.print(f"revoked {key_id}")

    _run(main())


@app.command()
def version() -> None:
    """Print the version."""
    print(__version__)


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))


def _store(settings: Settings) -> Any:
    from surgeflow.store.sqlite import SQLiteStore

    return SQLiteStore(settings.store.url)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
