"""Every policy: the contract, make_policy, and the simple spreads (round robin, random)."""

from __future__ import annotations

import itertools
import random
import typing
from collections import Counter
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from surgeflow.config import ModelSettings
from surgeflow.errors import ConfigError
from surgeflow.models.simulated import SimulatedBackend
from surgeflow.routing import (
    NO_KEY,
    POLICY_NAMES,
    ConsistentHash,
    Endpoint,
    LeastConnections,
    P2CEwma,
    RandomChoice,
    RoundRobin,
    RouteKey,
    WeightedRoundRobin,
    make_policy,
)


def endpoints(weights: Sequence[int]) -> list[Endpoint]:
    return [Endpoint(SimulatedBackend(f"ep-{i}"), weight=w) for i, w in enumerate(weights)]


def chi_square(counts: Counter[str], expected: dict[str, float]) -> float:
    return sum((counts[name] - e) ** 2 / e for name, e in expected.items())


# -- the contract -------------------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(
    st.sampled_from(POLICY_NAMES),
    st.lists(st.integers(1, 3), min_size=1, max_size=10),
    st.randoms(use_true_random=False),
)
def test_every_policy_picks_one_of_the_candidates_as_they_change(
    name: str, weights: list[int], rng: random.Random
) -> None:
    everyone = endpoints(weights)
    policy = make_policy(name, seed=1)
    for i in range(60):
        present = [e for e in everyone if rng.random() < 0.7] or [rng.choice(everyone)]
        for e in present:
            e.inflight = rng.randrange(10)
        key = RouteKey(key_id=f"k{i % 7}") if rng.random() < 0.8 else NO_KEY
        assert policy.pick(present, key) in present


# -- make_policy --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_make_policy_makes_every_named_policy(name: str) -> None:
    policy = make_policy(name, hash_on="user", seed=3)
    assert policy.name == name
    candidates = endpoints([1, 2])
    assert policy.pick(candidates, RouteKey(user="u")) in candidates


def test_make_policy_returns_the_classes_with_the_options() -> None:
    assert isinstance(make_policy("round_robin"), RoundRobin)
    assert isinstance(make_policy("weighted_round_robin"), WeightedRoundRobin)
    assert isinstance(make_policy("least_connections"), LeastConnections)
    assert isinstance(make_policy("random"), RandomChoice)
    assert isinstance(make_policy("p2c_ewma"), P2CEwma)
    hashing = make_policy("consistent_hash", hash_on="ip")
    assert isinstance(hashing, ConsistentHash)
    assert hashing.hash_on == "ip"
    candidates = endpoints([1] * 8)
    for name in ("random", "p2c_ewma"):
        one, two = make_policy(name, seed=9), make_policy(name, seed=9)
        picks = [(one.pick(candidates, NO_KEY), two.pick(candidates, NO_KEY)) for _ in range(30)]
        assert all(a is b for a, b in picks)


def test_make_policy_refuses_an_unknown_name_and_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError) as caught:
        make_policy("fastest")
    message = str(caught.value)
    assert "'fastest'" in message
    assert all(name in message for name in POLICY_NAMES)
    with pytest.raises(ConfigError, match="hash_on"):
        make_policy("consistent_hash", hash_on="cookie")


def test_make_policy_knows_every_name_the_configuration_accepts() -> None:
    hints = typing.get_type_hints(ModelSettings)
    assert set(typing.get_args(hints["policy"])) == set(POLICY_NAMES)
    assert set(typing.get_args(hints["hash_on"])) == {"ip", "key", "user", "prompt"}


# -- round robin --------------------------------------------------------------------------------


@given(st.integers(1, 20), st.integers(1, 10))
def test_round_robin_gives_each_candidate_its_turn(count: int, rounds: int) -> None:
    candidates = endpoints([1] * count)
    policy = RoundRobin()
    sequence = [policy.pick(candidates, NO_KEY) for _ in range(count * rounds)]
    assert Counter(e.name for e in sequence) == {e.name: rounds for e in candidates}
    if count > 1:
        assert all(a is not b for a, b in itertools.pairwise(sequence))


def test_round_robin_repr_shows_the_turn() -> None:
    policy = RoundRobin()
    candidates = endpoints([1, 1, 1])
    assert [policy.pick(candidates, NO_KEY).name for _ in range(4)] == [
        "ep-0",
        "ep-1",
        "ep-2",
        "ep-0",
    ]
    assert repr(policy) == "<RoundRobin turn=4>"


# -- random -------------------------------------------------------------------------------------

# Chi-square at p = 0.001: 20.5 for 5 degrees of freedom, 13.8 for 2.


def test_random_spreads_uniformly() -> None:
    candidates = endpoints([1] * 6)
    policy = RandomChoice(seed=1)
    counts = Counter(policy.pick(candidates, NO_KEY).name for _ in range(12_000))
    assert chi_square(counts, {e.name: 2000 for e in candidates}) < 20.5


def test_random_follows_weights_unless_told_not_to() -> None:
    candidates = endpoints([1, 2, 3])
    policy = RandomChoice(seed=2)
    weighted = Counter(policy.pick(candidates, NO_KEY).name for _ in range(6000))
    assert chi_square(weighted, {"ep-0": 1000, "ep-1": 2000, "ep-2": 3000}) < 13.8
    policy = RandomChoice(weighted=False, seed=2)
    uniform = Counter(policy.pick(candidates, NO_KEY).name for _ in range(6000))
    assert chi_square(uniform, {e.name: 2000 for e in candidates}) < 13.8
    assert repr(policy) == "<RandomChoice weighted=False seed=2>"


def test_random_with_a_seed_repeats_itself() -> None:
    candidates = endpoints([1, 1, 2, 5])
    runs = [
        [policy.pick(candidates, NO_KEY).name for _ in range(50)]
        for policy in (RandomChoice(seed=7), RandomChoice(seed=7), RandomChoice(seed=8))
    ]
    assert runs[0] == runs[1] != runs[2]
