"""Load-aware policies: least connections and power of two choices by peak-EWMA cost."""

from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from surgeflow.models.simulated import SimulatedBackend
from surgeflow.routing import NO_KEY, Endpoint, LeastConnections, P2CEwma, PeakEWMA, Policy

LOADS = st.lists(
    st.tuples(st.integers(1, 10), st.integers(0, 50), st.integers(0, 5000)),  # weight, inflight, ms
    min_size=1,
    max_size=12,
)


def endpoints(specs: Sequence[tuple[int, int, int]]) -> list[Endpoint]:
    made = []
    for i, (weight, inflight, latency_ms) in enumerate(specs):
        latency = PeakEWMA(initial_s=latency_ms / 1000)
        endpoint = Endpoint(SimulatedBackend(f"ep-{i}"), weight=weight, latency=latency)
        endpoint.inflight = inflight
        made.append(endpoint)
    return made


# -- least connections --------------------------------------------------------------------------


@given(LOADS)
def test_least_connections_picks_a_least_loaded_endpoint(specs: list[tuple[int, int, int]]) -> None:
    candidates = endpoints(specs)
    policy = LeastConnections()
    lowest = min(Fraction(e.inflight, e.weight) for e in candidates)
    for _ in range(len(candidates)):
        picked = policy.pick(candidates, NO_KEY)
        assert Fraction(picked.inflight, picked.weight) == lowest


@given(st.integers(1, 12), st.integers(0, 20), st.integers(1, 5))
def test_least_connections_takes_ties_in_turn(count: int, inflight: int, rounds: int) -> None:
    candidates = endpoints([(1, inflight, 0)] * count)
    policy = LeastConnections()
    counts = Counter(policy.pick(candidates, NO_KEY).name for _ in range(count * rounds))
    assert counts == {e.name: rounds for e in candidates}


def test_least_connections_spreads_over_the_tied_ones_only() -> None:
    # 0/1 and 2/2 are not tied with 1/2: equal shares for ep-0 and ep-3, none for the others.
    candidates = endpoints([(1, 3, 0), (1, 0, 0), (2, 2, 0), (4, 0, 0), (1, 1, 0)])
    policy = LeastConnections()
    counts = Counter(policy.pick(candidates, NO_KEY).name for _ in range(100))
    assert counts == {"ep-1": 50, "ep-3": 50}
    assert repr(policy) == "<LeastConnections turn=100>"


def test_least_connections_follows_the_load_as_it_changes() -> None:
    candidates = endpoints([(1, 0, 0), (2, 0, 0), (1, 0, 0)])
    policy = LeastConnections()
    for _ in range(40):  # calls that never finish: inflight is the whole history
        policy.pick(candidates, NO_KEY).inflight += 1
    assert [e.inflight for e in candidates] == [10, 20, 10]


# -- power of two choices -----------------------------------------------------------------------


@given(LOADS.filter(lambda specs: len(specs) >= 2), st.integers(0, 2**32))
def test_p2c_never_picks_the_most_expensive_endpoint(
    specs: list[tuple[int, int, int]], seed: int
) -> None:
    candidates = endpoints(specs)
    policy = P2CEwma(seed=seed)
    for _ in range(20):
        picked = policy.pick(candidates, NO_KEY)
        assert any(picked.cost <= other.cost for other in candidates if other is not picked)


@given(LOADS.filter(lambda specs: len(specs) == 2), st.integers(0, 2**32))
def test_p2c_between_two_always_picks_the_cheaper(
    specs: list[tuple[int, int, int]], seed: int
) -> None:
    candidates = endpoints(specs)
    cheaper = min(e.cost for e in candidates)
    picked = P2CEwma(seed=seed).pick(candidates, NO_KEY)
    assert picked.cost == cheaper


def test_p2c_with_one_candidate_returns_it() -> None:
    (only,) = endpoints([(1, 9, 900)])
    assert P2CEwma(seed=1).pick([only], NO_KEY) is only


def simulate(
    policy: Policy, candidates: Sequence[Endpoint], requests: int, rate_per_s: float
) -> Counter[str]:
    """Poisson arrivals; each call takes its endpoint's latency and holds one in-flight slot."""
    rng = random.Random(5)
    order = itertools.count()  # breaks ties between equal finishing times
    finishing: list[tuple[float, int, Endpoint]] = []
    counts: Counter[str] = Counter()
    now = 0.0
    for _ in range(requests):
        now += rng.expovariate(rate_per_s)
        while finishing and finishing[0][0] <= now:
            heapq.heappop(finishing)[2].inflight -= 1
        endpoint = policy.pick(candidates, NO_KEY)
        endpoint.inflight += 1
        counts[endpoint.name] += 1
        heapq.heappush(finishing, (now + endpoint.latency.value, next(order), endpoint))
    return counts


@pytest.mark.parametrize("count", [2, 3, 4, 8])
@pytest.mark.parametrize("load", [0.5, 2.0])  # calls in flight per fast endpoint, about
def test_p2c_keeps_traffic_off_a_slow_endpoint(count: int, load: float) -> None:
    candidates = endpoints([(1, 0, 500)] + [(1, 0, 100)] * (count - 1))
    counts = simulate(P2CEwma(seed=3), candidates, 3000, rate_per_s=load * count / 0.1)
    assert counts["ep-0"] < 3000 / count / 4


def test_p2c_tries_a_new_endpoint_without_a_latency_sample() -> None:
    candidates = endpoints([(1, 2, 200), (1, 2, 200), (1, 2, 200), (1, 0, 0)])
    policy = P2CEwma(seed=11)
    counts = Counter(policy.pick(candidates, NO_KEY).name for _ in range(1000))
    # It wins whenever it is one of the two drawn: half the time with four candidates.
    assert 400 < counts["ep-3"] < 600
    assert repr(policy) == "<P2CEwma seed=11 picks=1000>"


def test_p2c_with_a_seed_repeats_itself() -> None:
    candidates = endpoints([(1, i % 3, 100) for i in range(6)])
    runs = [
        [policy.pick(candidates, NO_KEY).name for _ in range(50)]
        for policy in (P2CEwma(seed=4), P2CEwma(seed=4), P2CEwma(seed=5))
    ]
    assert runs[0] == runs[1] != runs[2]
