"""Rate profiles and arrival schedules: counts, gaps, reproducibility, no drift."""

import itertools
import math
import statistics

import pytest

from surgeflow.errors import ConfigError
from surgeflow.tuning.arrivals import RateProfile, arrival_times


def test_constant_arrivals_are_evenly_spaced_from_the_start() -> None:
    times = list(arrival_times(RateProfile.fixed(50), "constant", until_s=2.0))
    assert len(times) == 100
    assert times[0] == 0.0
    assert all(t == pytest.approx(k / 50) for k, t in enumerate(times))


def test_constant_arrivals_do_not_drift_over_many_requests() -> None:
    times = arrival_times(RateProfile.fixed(3000), "constant", until_s=3600.0)
    for k, t in enumerate(times):
        if k == 1_000_000:
            # Computed from the start, not summed gap by gap: no accumulated rounding.
            assert t == pytest.approx(1_000_000 / 3000, abs=1e-9)
            break


def test_poisson_is_reproducible_with_a_seed_and_has_the_right_rate() -> None:
    profile = RateProfile.fixed(100)
    first = list(arrival_times(profile, "poisson", until_s=200.0, seed=7))
    again = list(arrival_times(profile, "poisson", until_s=200.0, seed=7))
    other = list(arrival_times(profile, "poisson", until_s=200.0, seed=8))
    assert first == again
    assert first != other
    assert len(first) == pytest.approx(20_000, rel=0.03)
    gaps = [b - a for a, b in itertools.pairwise(first)]
    assert statistics.fmean(gaps) == pytest.approx(0.01, rel=0.03)
    # Exponential gaps: the standard deviation equals the mean.
    assert statistics.stdev(gaps) / statistics.fmean(gaps) == pytest.approx(1.0, abs=0.05)


def test_a_ramp_sends_the_integral_of_its_rate() -> None:
    profile = RateProfile.ramp(10, 200, over_s=10.0)
    times = list(arrival_times(profile, "constant", until_s=10.0))
    assert len(times) == pytest.approx((10 + 200) / 2 * 10, abs=1)
    first_half = sum(t < 5.0 for t in times)
    assert first_half == pytest.approx((10 + 105) / 2 * 5, abs=1)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[0] == pytest.approx(1 / 10, rel=0.1)  # the rate rises during the gap
    assert gaps[-1] == pytest.approx(1 / 200, rel=0.05)
    assert profile.rate(5.0) == pytest.approx(105)
    assert profile.rate(60.0) == 200  # the last rate holds after the ramp


def test_a_ramp_down_and_poisson_ramp() -> None:
    down = list(arrival_times(RateProfile.ramp(200, 10, over_s=10.0), "constant", until_s=10.0))
    assert len(down) == pytest.approx(1050, abs=1)
    up = list(arrival_times(RateProfile.ramp(10, 200, 10.0), "poisson", until_s=10.0, seed=1))
    assert len(up) == pytest.approx(1050, rel=0.1)
    assert sum(t >= 5 for t in up) > 2 * sum(t < 5 for t in up) * 0.8


def test_steps_hold_each_rate_for_its_step_and_the_last_one_after() -> None:
    profile = RateProfile.steps([50, 100, 150], step_s=2.0)
    times = list(arrival_times(profile, "constant", until_s=8.0))
    per_step = [sum(lo <= t < lo + 2 for t in times) for lo in (0, 2, 4, 6)]
    assert per_step == [pytest.approx(n, abs=1) for n in (100, 200, 300, 300)]


def test_a_delayed_profile_warms_up_at_its_first_rate() -> None:
    profile = RateProfile.ramp(10, 100, over_s=10.0).delayed(2.0)
    assert profile.rate(1.0) == 10
    assert profile.rate(7.0) == pytest.approx(55)
    assert profile.cumulative(2.0) == pytest.approx(20)
    assert profile.cumulative(12.0) == pytest.approx(20 + 550)


@pytest.mark.parametrize("rates", [[0], [-5], [10, 0], [math.nan], [math.inf]])
def test_rates_must_be_positive(rates: list[float]) -> None:
    with pytest.raises(ConfigError, match="must be > 0"):
        RateProfile.steps(rates, 1.0)
