"""The source article's worked cases: its printed figures, the same formula done right, and the
queueing model's answer."""

import pytest
from typer.testing import CliRunner

from surgeflow.cli import app
from surgeflow.tuning.article import CASES, formula_terms, report, unloaded_s

CASE1, CASE2 = CASES


def test_the_printed_values_are_kept_as_printed() -> None:
    assert CASE1.printed_total == 178.5
    assert sum(CASE1.printed_terms) == pytest.approx(178.5)
    assert CASE2.printed_total == 13009.8
    # Case 2's printed terms do not even add up to its printed total.
    assert sum(CASE2.printed_terms) == pytest.approx(13710.8)


def test_the_formula_computed_correctly() -> None:
    # 10^6/8 × 0.01 = 1,250 (printed 12.5); 10^6/0.9 × 0.019 = 21,111 (printed 111) ...
    assert formula_terms(CASE1) == pytest.approx((1250.0, 21111.111, 5000.0, 5000.0))
    assert sum(formula_terms(CASE1)) == pytest.approx(32361.111)
    assert formula_terms(CASE2) == pytest.approx((625.0, 2625.0, 833.333, 100.0))
    assert sum(formula_terms(CASE2)) == pytest.approx(4183.333)
    # One request through the four stages, with no waiting at all.
    assert unloaded_s(CASE1) == pytest.approx(0.034)
    assert unloaded_s(CASE2) == pytest.approx(0.94)


def test_the_queueing_model_finds_both_cases_overloaded() -> None:
    first = report(CASE1, simulated=False)
    gateway = first.as_given.stations[0]
    assert gateway.utilisation == pytest.approx(1e6 * 0.01 / 8)  # 1,250
    assert gateway.state == "unstable"
    backend = next(s for s in first.as_given.stations if s.kind == "backend")
    assert backend.utilisation == pytest.approx(1e6 * 0.1 * 0.05 / (10 * 2))  # 250
    assert not first.as_given.stable
    assert first.as_given.throughput_rps == pytest.approx(800)  # 8 balancers × 100/s
    assert (first.gateways_needed, first.services_needed, first.concurrency_needed) == (
        12_500,
        3_125,
        625,
    )
    assert first.sized.stable
    # M/D/1 balancers at ρ = 0.8 wait 2t = 20 ms; services are M/D/2 at ρ = 0.8.
    assert first.sized.stations[0].wait_ms == pytest.approx(20.0)
    assert first.sized.analytic_mean_ms == pytest.approx(58.44, abs=0.05)

    second = report(CASE2, simulated=False)
    assert second.as_given.stations[0].utilisation == pytest.approx(625)
    assert second.as_given.throughput_rps == pytest.approx(8)
    assert (second.gateways_needed, second.services_needed, second.concurrency_needed) == (
        3_125,
        42,
        25,
    )


def test_the_sized_case_is_simulated_on_a_slice() -> None:
    sized = report(CASE1, requests=20_000).sized
    assert sized.simulated is not None
    assert sized.simulated.slice_note
    assert sized.throughput_rps == pytest.approx(1e6, rel=0.05)
    assert sized.mean_ms == pytest.approx(sized.analytic_mean_ms, rel=0.1)
    assert sized.p99_ms is not None
    assert sized.p50_ms is not None
    assert sized.p99_ms > sized.p50_ms


def test_plan_article_cases_prints_all_three_answers() -> None:
    result = CliRunner().invoke(app, ["plan", "--article-cases", "--requests", "5000"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for figure in ("178.5", "32,361.1", "1,250.0", "21,111.1", "13,009.8", "13,710.8", "4,183.3"):
        assert figure in text
    assert "ρ = 1.25e+03" in text
    assert "unstable" in text
    assert "M = 12,500" in text
    assert "S = 3,125" in text
    assert "not a response time" in text
