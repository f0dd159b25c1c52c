"""PNG plots of bench results (the ``plots`` extra: matplotlib, drawn with the Agg backend).

- `plot_run`: one result over time: latency percentiles per second, and the achieved rate
  against the offered one (with errors and drops);
- `plot_sweep`: several results (a sweep of offered load): p50/p99 latency and achieved
  throughput against the offered rate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from surgeflow.errors import ConfigError
from surgeflow.tuning.results import BenchResult

INSTALL_HINT = "pip install 'surgeflow[plots]'"


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend; `ConfigError` naming the extra when it is missing."""
    try:
        import matplotlib
    except ImportError:
        raise ConfigError(f"plots need matplotlib, not installed here: {INSTALL_HINT}") from None
    matplotlib.use("Agg")  # files only, no display: works on a server or in CI
    import matplotlib.pyplot as plt

    return plt


def plot_run(result: BenchResult, path: Path) -> None:
    """Latency percentiles and throughput against offered rate, second by second."""
    if not result.timeline:
        raise ConfigError("this result has no timeline to plot")
    plt = pyplot()
    seconds = [s.t_s + 0.5 for s in result.timeline]
    figure, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(10, 7), layout="constrained")
    figure.suptitle(f"{result.target.kind} {result.target.url}: {result.profile}")
    for name, values in (
        ("p50", [s.p50_ms for s in result.timeline]),
        ("p99", [s.p99_ms for s in result.timeline]),
    ):
        points = [(x, y) for x, y in zip(seconds, values, strict=True) if y is not None]
        if points:
            top.plot(*zip(*points, strict=True), marker=".", label=f"{name} latency")
    if result.latency.p99_ms is not None:
        top.axhline(result.latency.p99_ms, linestyle=":", color="grey", label="p99 overall")
    top.set_ylabel("ms (from the intended send time)")
    top.legend(loc="upper left")
    top.grid(alpha=0.3)
    # Counts per second as stairs over their second: a partial last second reads as what it is.
    edges = [s.t_s for s in result.timeline] + [result.timeline[-1].t_s + 1]
    bottom.stairs([s.offered for s in result.timeline], edges, label="offered req/s", ls="--")
    bottom.stairs([s.ok for s in result.timeline], edges, label="ok responses/s")
    if any(s.errors for s in result.timeline):
        bottom.stairs([s.errors for s in result.timeline], edges, label="errors/s")
    if any(s.dropped for s in result.timeline):
        bottom.stairs([s.dropped for s in result.timeline], edges, label="dropped/s")
    bottom.set_ylabel("per second")
    bottom.set_xlabel("seconds since start")
    bottom.legend(loc="upper left")
    bottom.grid(alpha=0.3)
    for axes in (top, bottom):
        if result.load.warmup_s:
            axes.axvspan(0, result.load.warmup_s, color="grey", alpha=0.15, lw=0)
        axes.axvline(result.window.end_s, color="grey", lw=0.8)
    _save(plt, figure, path)


def plot_sweep(results: list[BenchResult], path: Path) -> None:
    """p50/p99 latency and achieved throughput against offered load, one point per result."""
    if not results:
        raise ConfigError("a sweep plot needs at least one result")
    plt = pyplot()
    ordered = sorted(results, key=lambda r: r.offered_rps)
    offered = [r.offered_rps for r in ordered]
    figure, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(9, 7), layout="constrained")
    figure.suptitle(f"{ordered[0].target.kind} {ordered[0].target.url}: a sweep of offered load")
    for name, values in (
        ("p50", [r.latency.p50_ms for r in ordered]),
        ("p99", [r.latency.p99_ms for r in ordered]),
    ):
        points = [(x, y) for x, y in zip(offered, values, strict=True) if y is not None]
        if points:
            top.plot(*zip(*points, strict=True), marker="o", label=f"{name} latency")
    top.set_ylabel("ms")
    measured = [r.latency.p99_ms for r in ordered if r.latency.p99_ms]
    measured += [r.latency.p50_ms for r in ordered if r.latency.p50_ms]
    if measured and max(measured) > 20 * min(measured):
        top.set_yscale("log")  # past saturation latency grows by orders of magnitude
    top.legend(loc="upper left")
    top.grid(alpha=0.3, which="both")
    bottom.plot(offered, [r.achieved_rps for r in ordered], marker="o", label="achieved ok/s")
    bottom.plot(offered, offered, ls="--", color="grey", label="offered (ideal)")
    bottom.set_xlabel("offered req/s")
    bottom.set_ylabel("ok responses/s")
    bottom.legend(loc="upper left")
    bottom.grid(alpha=0.3)
    _save(plt, figure, path)


def _save(plt: Any, figure: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        figure.savefig(path, dpi=110)
    finally:
        plt.close(figure)
