"""The closed forms against textbook values and each other."""

import math

import pytest

from surgeflow.tuning import queueing as q


def _erlang_c_direct(c: int, a: float) -> float:
    """Erlang C from its definition (fine for small c)."""
    top = a**c / math.factorial(c) * c / (c - a)
    return top / (sum(a**k / math.factorial(k) for k in range(c)) + top)


def test_erlang_c_matches_a_table_value() -> None:
    assert q.erlang_c(2, 1.0) == pytest.approx(1 / 3)
    # The call-centre table: 10 agents, 8 erlangs → P(wait) = 0.4092.
    assert q.erlang_c(10, 8.0) == pytest.approx(0.4092, abs=5e-4)
    for c, a in [(1, 0.5), (3, 2.4), (7, 6.3), (20, 15.0)]:
        assert q.erlang_c(c, a) == pytest.approx(_erlang_c_direct(c, a))


def test_erlang_c_is_stable_for_thousands_of_servers() -> None:
    waiting = q.erlang_c(12_500, 10_000.0)  # ρ = 0.8: with so many servers, almost nobody waits
    assert 0 <= waiting < 1e-6
    assert q.erlang_c(4, 4.0) == 1.0  # ρ = 1


def test_mm1_wait_is_rho_over_mu_minus_lambda() -> None:
    # λ = 8/s, s = 0.1 s: μ = 10, ρ = 0.8, W = 0.8 / 2 = 0.4 s.
    assert q.mm1_wait_s(8, 0.1) == pytest.approx(0.4)
    assert q.mmc_wait_s(8, 0.1, 1) == pytest.approx(0.4)
    assert q.allen_cunneen_wait_s(8, 0.1, 1) == pytest.approx(0.4)


def test_md1_is_pollaczek_khinchine_half_of_mm1() -> None:
    # M/D/1: W = ρ·s / (2(1 − ρ)) = 0.8 × 0.1 / 0.4 = 0.2 s.
    assert q.mg1_wait_s(8, 0.1, 0.0) == pytest.approx(0.2)
    assert q.allen_cunneen_wait_s(8, 0.1, 1, ca2=1.0, cs2=0.0) == pytest.approx(0.2)
    assert q.mg1_wait_s(8, 0.1, 1.0) == pytest.approx(q.mm1_wait_s(8, 0.1))


def test_unstable_stations_wait_forever() -> None:
    assert math.isinf(q.mm1_wait_s(10, 0.1))
    assert math.isinf(q.mmc_wait_s(50, 0.1, 4))
    assert math.isinf(q.mg1_wait_s(12, 0.1, 0.5))
    assert q.utilisation(50, 0.1, 4) == pytest.approx(1.25)


def test_blocking_with_no_queue_is_erlang_b() -> None:
    assert q.mmck_blocking(5, 3.0, 5) == pytest.approx(q.erlang_b(5, 3.0))
    # A queue only lowers blocking.
    assert q.mmck_blocking(5, 3.0, 10) < q.erlang_b(5, 3.0)
    assert q.mmck_blocking(2000, 1500.0, 4000) < 1e-9


def test_wait_quantile_and_tail_agree() -> None:
    t99 = q.mmc_wait_quantile_s(32, 0.1, 4, 0.99)
    assert q.mmc_wait_tail(32, 0.1, 4, t99) == pytest.approx(0.01)
    assert q.mmc_wait_quantile_s(1, 0.1, 4, 0.5) == 0.0  # almost nobody waits


def test_servers_for_a_target_utilisation() -> None:
    assert q.servers_for(1e6, 0.01, 0.8) == 12_500
    assert q.servers_for(100, 0.1, 0.8) == 13


def test_mixture_moments() -> None:
    mean, scv = q.mixture_moments([(0.5, 1.0, 0.0), (0.5, 3.0, 0.0)])
    assert mean == pytest.approx(2.0)
    assert scv == pytest.approx(0.25)  # variance 1, mean² 4
