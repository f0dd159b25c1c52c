"""The retry budget: a share of recent requests plus a floor, expiring; and the backoff."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from surgeflow.config import RetrySettings
from surgeflow.routing.budget import RetryBudget, backoff_s
from tests.routing.clock import FakeClock


def budget(clock: FakeClock, **fields: Any) -> RetryBudget:
    return RetryBudget(RetrySettings(**fields), clock=clock)


def test_retries_are_a_share_of_requests() -> None:
    clock = FakeClock()
    retries = budget(clock, budget_ratio=0.2, min_per_s=0)
    for _ in range(10):
        retries.on_request()

    assert retries.try_retry()
    assert retries.try_retry()
    assert not retries.try_retry()
    assert (retries.requests, retries.retries, retries.refused) == (10, 2, 1)
    for _ in range(5):
        retries.on_request()
    assert retries.try_retry()


def test_deposits_expire_after_the_window() -> None:
    clock = FakeClock()
    retries = budget(clock, budget_ratio=0.5, min_per_s=0)
    for _ in range(100):
        retries.on_request()
    clock.advance(9.0)
    assert retries.balance == 50

    clock.advance(2.0)  # the burst has left the window: it funds nothing now

    assert retries.balance == 0
    assert not retries.try_retry()


def test_a_retry_counts_against_its_window_until_it_expires() -> None:
    clock = FakeClock()
    retries = budget(clock, budget_ratio=1.0, min_per_s=0)
    retries.on_request()
    clock.advance(5.0)
    assert retries.try_retry()  # funded by the request of 5 s ago
    clock.advance(5.5)  # that request expires; the retry has not yet
    retries.on_request()

    assert not retries.try_retry()  # the new request would fund a second retry for one request
    clock.advance(5.0)
    assert retries.try_retry()


def test_the_floor_allows_min_per_s_without_traffic() -> None:
    clock = FakeClock()
    retries = budget(clock, budget_ratio=0.2, min_per_s=5)

    assert [retries.try_retry() for _ in range(6)] == [True] * 5 + [False]
    clock.advance(0.2)
    assert retries.try_retry()
    assert not retries.try_retry()
    clock.advance(60.0)  # a quiet minute saves up one second's worth, no more
    assert sum(retries.try_retry() for _ in range(10)) == 5


def test_a_fractional_floor_allows_one_retry_now_and_then() -> None:
    clock = FakeClock()
    retries = budget(clock, budget_ratio=0, min_per_s=0.5)
    assert retries.try_retry()
    assert not retries.try_retry()
    clock.advance(2.0)
    assert retries.try_retry()


def test_the_ratio_is_spent_before_the_floor() -> None:
    clock = FakeClock()
    retries = budget(clock, budget_ratio=0.1, min_per_s=1)
    for _ in range(10):
        retries.on_request()

    assert retries.try_retry()  # from the ratio
    assert retries.snapshot()["floor_left"] == 1
    assert retries.try_retry()  # from the floor
    assert not retries.try_retry()


def test_the_bound_holds_over_a_long_outage() -> None:
    clock = FakeClock()
    rng = random.Random(7)
    retries = budget(clock, budget_ratio=0.2, min_per_s=10)
    start = clock.now
    wanted = 0
    for _ in range(20_000):  # 1000 s in steps of 50 ms, bursty traffic, every call failing
        clock.advance(0.05)
        for _ in range(rng.choice([0, 0, 1, 5, 20])):
            retries.on_request()
            for _ in range(3):  # three attempts each, like a default RetrySettings
                wanted += 1
                if not retries.try_retry():
                    break
    seconds = clock.now - start

    assert retries.retries <= 0.2 * retries.requests + 10 * (seconds + 1)
    assert retries.retries >= 0.2 * retries.requests  # and the budget is really spent
    assert retries.retries + retries.refused == wanted


@given(
    schedule=st.lists(
        st.tuples(st.floats(0, 4), st.integers(0, 30), st.integers(0, 30)), max_size=80
    ),
    ratio=st.sampled_from([0.0, 0.1, 0.2, 0.5, 1.0]),
    floor=st.sampled_from([0.0, 0.5, 1.0, 10.0]),
)
def test_retries_never_exceed_the_ratio_plus_the_floor(
    schedule: list[tuple[float, int, int]], ratio: float, floor: float
) -> None:
    clock = FakeClock()
    start = clock.now
    retries = budget(clock, budget_ratio=ratio, min_per_s=floor)
    for dt, requests, attempts in schedule:
        clock.advance(dt)
        for _ in range(requests):
            retries.on_request()
        for _ in range(attempts):
            retries.try_retry()
    saved = max(1.0, floor) if floor else 0.0  # one second's worth, available at once
    bound = ratio * retries.requests + floor * (clock.now - start) + saved
    assert retries.retries <= bound + 1e-6


def test_repr_and_snapshot() -> None:
    clock = FakeClock()
    retries = budget(clock, budget_ratio=0.5, min_per_s=0)
    for _ in range(4):
        retries.on_request()
    retries.try_retry()

    assert repr(retries) == "<RetryBudget ratio=0.5 balance=1.0 requests=4 retries=1 refused=0>"
    assert retries.snapshot() == {
        "requests": 4,
        "retries": 1,
        "refused": 0,
        "balance": 1.0,
        "floor_left": None,
    }


# -- backoff ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "ceiling"), [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.5), (90, 0.5)]
)
def test_backoff_doubles_with_equal_jitter_up_to_the_cap(attempt: int, ceiling: float) -> None:
    assert backoff_s(attempt, 0.1, 0.5, rng=lambda: 0.0) == pytest.approx(ceiling / 2)
    assert backoff_s(attempt, 0.1, 0.5, rng=lambda: 1.0) == pytest.approx(ceiling)
    assert ceiling / 2 <= backoff_s(attempt, 0.1, 0.5) <= ceiling


def test_budget_backoff_uses_its_settings() -> None:
    retries = RetryBudget(
        RetrySettings(backoff_s=0.05, max_backoff_s=1.0), clock=FakeClock(), rng=lambda: 0.5
    )
    assert retries.backoff_s(3) == pytest.approx(0.15)
    assert backoff_s(1, 0.0, 1.0) == 0.0
