"""``surgeflow bench`` as a user runs it: results as JSON, --compare, plots, bad input."""

import asyncio
import json
import sys
from pathlib import Path

import msgspec
import pytest
from typer.testing import CliRunner

from surgeflow.cli import app
from surgeflow.errors import ConfigError, ValidationError
from surgeflow.tuning.bench import run_bench
from surgeflow.tuning.plots import plot_run, plot_sweep
from surgeflow.tuning.results import (
    RESULT_VERSION,
    BenchResult,
    LoadSettings,
    compare,
    decode_histogram,
    load_result,
    save_result,
)
from surgeflow.tuning.targets import TargetSettings

from .conftest import Stub

runner = CliRunner()
PNG = b"\x89PNG\r\n\x1a\n"


_results: list[BenchResult] = []


@pytest.fixture
async def result(stub: Stub) -> BenchResult:
    """One real run, shared by the tests that only read it (results are immutable)."""
    if not _results:
        target = TargetSettings(kind="chat", url=stub.url, model="stub")
        load = LoadSettings(rate_rps=100, duration_s=1.5, warmup_s=0.5)
        _results.append(await run_bench(target, load))
    return _results[0]


def scaled(result: BenchResult, rate: float, latency: float) -> BenchResult:
    """``result`` as if it had run at ``rate`` times the throughput, ``latency`` times slower."""
    slower = msgspec.structs.replace(
        result.latency,
        p50_ms=(result.latency.p50_ms or 0) * latency,
        p99_ms=(result.latency.p99_ms or 0) * latency,
    )
    return msgspec.structs.replace(
        result,
        offered_rps=result.offered_rps * rate,
        achieved_rps=result.achieved_rps * rate,
        latency=slower,
    )


def test_a_result_round_trips_through_json(result: BenchResult, tmp_path: Path) -> None:
    path = tmp_path / "out" / "result.json"
    save_result(result, path)
    assert load_result(path) == result
    raw = json.loads(path.read_text())
    assert raw["version"] == RESULT_VERSION
    assert raw["tool"] == "surgeflow bench"
    assert set(raw["latency"]) >= {"mean_ms", "min_ms", "p50_ms", "p90_ms", "p99_ms", "p999_ms"}
    assert raw["counts"]["sent"] == 150
    assert raw["timeline"][0]["offered"] == 100
    # The encoded histograms hold the latencies, so results can be merged.
    merged = decode_histogram(raw["latency"]["histogram"])
    merged.add(decode_histogram(raw["latency"]["histogram"]))
    assert merged.get_total_count() == 2 * result.latency.count


def test_load_result_refuses_what_is_not_a_result(tmp_path: Path) -> None:
    (tmp_path / "other.json").write_text('{"hello": 1}')
    with pytest.raises(ValidationError, match="not a surgeflow bench result"):
        load_result(tmp_path / "other.json")
    (tmp_path / "future.json").write_text('{"tool": "surgeflow bench", "version": 99}')
    with pytest.raises(ValidationError, match="upgrade surgeflow"):
        load_result(tmp_path / "future.json")
    with pytest.raises(ValidationError, match="cannot read"):
        load_result(tmp_path / "missing.json")


def test_compare_gives_ratios_to_the_first(result: BenchResult) -> None:
    rows = {row.name: row for row in compare([result, scaled(result, 2.0, 3.0)])}
    assert rows["achieved req/s"].ratios == [1.0, pytest.approx(2.0)]
    assert rows["p99 ms"].ratios == [1.0, pytest.approx(3.0)]
    assert rows["error ratio"].ratios == [None, None]  # 0 errors: no ratio


def test_cli_compare_prints_the_table(result: BenchResult, tmp_path: Path) -> None:
    save_result(result, tmp_path / "a.json")
    save_result(scaled(result, 2.0, 3.0), tmp_path / "b.json")
    out = runner.invoke(
        app, ["bench", "--compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")]
    )
    assert out.exit_code == 0, out.output
    assert "achieved req/s" in out.output
    assert "(2.00×)" in out.output
    assert "(3.00×)" in out.output


def test_plots_are_pngs(result: BenchResult, tmp_path: Path) -> None:
    plot_run(result, tmp_path / "run.png")
    plot_sweep([result, scaled(result, 2.0, 3.0), scaled(result, 4, 40)], tmp_path / "sweep.png")
    assert (tmp_path / "run.png").read_bytes()[:8] == PNG
    assert (tmp_path / "sweep.png").read_bytes()[:8] == PNG


def test_cli_plots_from_result_files(result: BenchResult, tmp_path: Path) -> None:
    save_result(result, tmp_path / "a.json")
    save_result(scaled(result, 2.0, 3.0), tmp_path / "b.json")
    files = [str(tmp_path / "a.json"), str(tmp_path / "b.json")]
    sweep = runner.invoke(app, ["bench", "--plot-sweep", str(tmp_path / "sweep.png"), *files])
    assert sweep.exit_code == 0, sweep.output
    assert (tmp_path / "sweep.png").read_bytes()[:8] == PNG
    one = runner.invoke(app, ["bench", "--plot", str(tmp_path / "one.png"), files[0]])
    assert one.exit_code == 0, one.output
    assert (tmp_path / "one.png").read_bytes()[:8] == PNG


def test_plots_without_matplotlib_name_the_extra(
    result: BenchResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib → ImportError
    with pytest.raises(ConfigError, match=r"pip install 'surgeflow\[plots\]'"):
        plot_run(result, tmp_path / "run.png")
    save_result(result, tmp_path / "a.json")
    out = runner.invoke(app, ["bench", "--plot", str(tmp_path / "x.png"), str(tmp_path / "a.json")])
    assert out.exit_code == 2
    assert "surgeflow[plots]" in out.output


async def test_cli_runs_a_bench_and_writes_json_and_a_plot(stub: Stub, tmp_path: Path) -> None:
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    argv = ["bench", "--url", stub.url, "--model", "stub", "--rate", "40", "--duration-s", "1"]
    argv += ["--quiet", "--output", str(out_json), "--plot", str(out_png)]
    # The command runs its own event loop; the stub server needs this one free meanwhile.
    out = await asyncio.to_thread(runner.invoke, app, argv)
    assert out.exit_code == 0, out.output
    assert "achieved 40" in out.output
    assert load_result(out_json).counts.ok == 40
    assert out_png.read_bytes()[:8] == PNG


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rate", "0"], "must be > 0"),
        (["--rate", "-3"], "must be > 0"),
        (["--target", "graphql"], "unknown target 'graphql'"),
        (["--url", "http://example.com/v1"], "--allow-remote example.com"),
        (["--ramp", "10-200"], "--ramp takes FROM:TO"),
        (["--steps", "50,x"], "--steps takes rates"),
        (["--rate", "5", "--concurrency", "3"], "exactly one of"),
        (["--duration-s", "99999"], "≤ 3600"),
        (["--target", "invoke"], "needs --workflow"),
        (["--target", "invoke", "--workflow", "w", "--input", "[1]"], "--input must be"),
        (["--arrival", "bursty"], "unknown --arrival"),
        (["--hit-ratio", "1.5"], "--hit-ratio"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(args: list[str], message: str) -> None:
    out = runner.invoke(app, ["bench", "--quiet", *args])
    assert out.exit_code == 2, out.output
    assert message in out.output
    assert out.output.strip().count("\n") == 0, out.output


def test_result_files_need_an_action(tmp_path: Path) -> None:
    out = runner.invoke(app, ["bench", str(tmp_path / "a.json")])
    assert out.exit_code == 2
    assert "--compare" in out.output
    one = runner.invoke(app, ["bench", "--compare", str(tmp_path / "a.json")])
    assert one.exit_code == 2
    assert "at least two" in one.output
