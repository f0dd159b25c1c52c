"""``surgeflow bench`` in a terminal: the live view, the summary of a run, ``--compare``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from surgeflow.tuning.bench import Snapshot
from surgeflow.tuning.results import BenchResult, compare


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:,.1f}"


def _number(value: float | None) -> str:
    if value is None:
        return "–"
    if abs(value) >= 100 or value == int(value):
        return f"{value:,.0f}"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3g}"


def _errors(errors: dict[str, int]) -> str:
    if not errors:
        return "0"
    kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(errors.items()))
    return f"{sum(errors.values())} ({kinds})"


def render_snapshot(title: str, snapshot: Snapshot) -> Table:
    phase = " [yellow](warm-up)[/yellow]" if snapshot.warming_up else ""
    table = Table(title=f"{title}{phase}", show_header=True, title_justify="left")
    for column in ("elapsed", "offered/s", "ok/s", "in flight", "p50 ms", "p99 ms", "errors"):
        table.add_column(column, justify="right")
    table.add_row(
        f"{snapshot.elapsed_s:.0f} / {snapshot.total_s:.0f} s",
        f"{snapshot.offered_rps:,.0f}",
        f"{snapshot.achieved_rps:,.0f}",
        f"{snapshot.in_flight:,}",
        f"{_ms(snapshot.p50_ms)} (all {_ms(snapshot.overall_p50_ms)})",
        f"{_ms(snapshot.p99_ms)} (all {_ms(snapshot.overall_p99_ms)})",
        _errors(snapshot.errors) + (f", dropped {snapshot.dropped}" if snapshot.dropped else ""),
    )
    return table


@contextlib.contextmanager
def live_view(console: Console, title: str) -> Iterator[Live]:
    """A rich `Live` the caller updates once a second (from the event loop: no refresh thread
    reads the bench's state while it changes); it disappears at the end, for the summary."""
    waiting = Text(f"{title}: starting …")
    with Live(waiting, console=console, auto_refresh=False, transient=True) as live:
        yield live


def render_result(result: BenchResult) -> Group:
    counts = result.counts
    head = Text.from_markup(
        f"[bold]{result.target.kind}[/bold] {result.target.url}  {result.profile}, "
        f"{result.window.duration_s:.1f} s measured"
        + (f" after {result.load.warmup_s:g} s warm-up" if result.load.warmup_s else "")
    )
    table = Table(show_header=True)
    for column in ("", "mean", "min", "p50", "p90", "p99", "p99.9", "max"):
        table.add_column(column, justify="left" if not column else "right")
    for name, latency in (
        ("latency ms", result.latency),
        ("service ms", result.service_latency),
    ):
        table.add_row(
            name,
            *(
                _ms(value)
                for value in (
                    latency.mean_ms,
                    latency.min_ms,
                    latency.p50_ms,
                    latency.p90_ms,
                    latency.p99_ms,
                    latency.p999_ms,
                    latency.max_ms,
                )
            ),
        )
    lines = [
        f"offered {result.offered_rps:,.1f} req/s, achieved {result.achieved_rps:,.1f} ok/s; "
        f"sent {counts.sent:,}, ok {counts.ok:,}, errors {_errors(counts.errors)}",
    ]
    if counts.dropped:
        lines.append(
            f"[yellow]dropped by the load generator: {counts.dropped:,}[/yellow] "
            f"({result.load.max_in_flight:,} already in flight)"
        )
    if counts.unfinished:
        lines.append(f"unfinished when the run ended: {counts.unfinished:,}")
    if result.cache_statuses:
        statuses = ", ".join(f"{s} {n:,}" for s, n in result.cache_statuses.items())
        lines.append(f"X-Surgeflow-Cache: {statuses}")
    server = result.server
    if server is not None and server.cache_hit_ratio is not None:
        lines.append(
            f"gateway cache: {server.cache_hits:,.0f} hits of {server.cache_lookups:,.0f} "
            f"lookups ({server.cache_hit_ratio:.1%})"
        )
    return Group(head, table, *(Text.from_markup(line) for line in lines))


def render_compare(names: list[str], results: list[BenchResult]) -> Table:
    table = Table(title="compared with the first", show_header=True, title_justify="left")
    table.add_column("metric")
    for name in names:
        table.add_column(name, justify="right")
    for row in compare(results):
        cells = []
        for index, (value, ratio) in enumerate(zip(row.values, row.ratios, strict=True)):
            text = _number(value)
            if index and ratio is not None:
                text += f" ({ratio:.2f}×)"
            cells.append(text)
        table.add_row(row.name, *cells)
    return table
