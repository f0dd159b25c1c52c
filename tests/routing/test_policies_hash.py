"""Consistent hashing: stable, even, and minimal movement when endpoints come and go."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from surgeflow.errors import ConfigError
from surgeflow.models.simulated import SimulatedBackend
from surgeflow.routing import NO_KEY, ConsistentHash, Endpoint, RouteKey

KEYS = 2000


def endpoints(weights: Sequence[int], prefix: str = "ep") -> list[Endpoint]:
    return [Endpoint(SimulatedBackend(f"{prefix}-{i}"), weight=w) for i, w in enumerate(weights)]


def random_keys(seed: int) -> list[RouteKey]:
    rng = random.Random(seed)
    return [RouteKey(key_id=f"sk-{rng.getrandbits(64):016x}") for _ in range(KEYS)]


def mapping(
    policy: ConsistentHash, candidates: Sequence[Endpoint], keys: Sequence[RouteKey]
) -> list[str]:
    return [policy.pick(candidates, key).name for key in keys]


@settings(max_examples=20, deadline=None)
@given(st.integers(2, 20), st.integers(0, 19), st.integers(0, 2**32))
def test_removing_an_endpoint_moves_only_the_keys_it_had(count: int, gone: int, seed: int) -> None:
    gone %= count
    everyone = endpoints([1] * count)
    keys = random_keys(seed)
    policy = ConsistentHash()
    before = mapping(policy, everyone, keys)
    after = mapping(policy, everyone[:gone] + everyone[gone + 1 :], keys)
    removed = everyone[gone].name
    for was, now in zip(before, after, strict=True):
        assert now == was or was == removed
        assert now != removed


@settings(max_examples=20, deadline=None)
@given(st.integers(2, 20), st.integers(0, 2**32))
def test_adding_an_endpoint_moves_about_its_share_of_keys_all_to_it(count: int, seed: int) -> None:
    everyone = endpoints([1] * count)
    keys = random_keys(seed)
    policy = ConsistentHash()
    before = mapping(policy, everyone, keys)
    after = mapping(policy, [*everyone, Endpoint(SimulatedBackend("new"))], keys)
    moved = [now for was, now in zip(before, after, strict=True) if now != was]
    assert set(moved) <= {"new"}
    assert len(moved) <= 2 * KEYS / (count + 1)


@settings(max_examples=20, deadline=None)
@given(st.integers(2, 20), st.integers(0, 2**32))
def test_keys_spread_evenly(count: int, seed: int) -> None:
    counts = Counter(mapping(ConsistentHash(), endpoints([1] * count), random_keys(seed)))
    fair = KEYS / count
    assert len(counts) == count
    assert max(counts.values()) <= 2 * fair


def test_points_follow_weight() -> None:
    counts = Counter(mapping(ConsistentHash(), endpoints([1, 3]), random_keys(7)))
    assert 2.2 < counts["ep-1"] / counts["ep-0"] < 4


def test_the_same_key_maps_to_the_same_endpoint_in_any_order_and_instance() -> None:
    candidates = endpoints([1, 2, 1, 1, 3])
    keys = random_keys(3)[:300]
    first = mapping(ConsistentHash(), candidates, keys)
    policy = ConsistentHash()
    shuffled = candidates[:]
    random.Random(1).shuffle(shuffled)
    assert mapping(policy, shuffled, keys) == first
    assert mapping(policy, candidates, keys) == first
    assert mapping(policy, shuffled, keys) == first


def test_the_mapping_is_pinned_across_processes() -> None:
    # blake2b, not the salted hash(): a restart or another replica must not move every key.
    policy = ConsistentHash()
    candidates = endpoints([1, 1, 1, 1])
    names = [policy.pick(candidates, RouteKey(key_id=f"team-{i}")).name for i in range(8)]
    assert names == PINNED


PINNED = ["ep-1", "ep-1", "ep-1", "ep-1", "ep-1", "ep-1", "ep-0", "ep-3"]


@pytest.mark.parametrize(
    ("hash_on", "field"),
    [("ip", "client_ip"), ("key", "key_id"), ("user", "user"), ("prompt", "prompt_prefix")],
)
def test_hash_on_chooses_the_field_and_ignores_the_others(hash_on: str, field: str) -> None:
    policy = ConsistentHash(hash_on=hash_on)
    candidates = endpoints([1] * 5)
    noise = random.Random(0)
    chosen = set()
    for i in range(200):
        alone = RouteKey(**{field: f"value-{i}"})
        crowded = RouteKey(
            client_ip=f"10.0.0.{noise.randrange(256)}",
            key_id=f"key-{noise.random()}",
            user=f"user-{noise.random()}",
            prompt_prefix=f"prompt-{noise.random()}",
        )
        crowded = msgspec.structs.replace(crowded, **{field: f"value-{i}"})
        picked = policy.pick(candidates, alone)
        assert policy.pick(candidates, crowded) is picked
        chosen.add(picked.name)
    assert len(chosen) == 5


def test_without_the_field_it_takes_the_candidates_in_turn() -> None:
    policy = ConsistentHash(hash_on="user")
    candidates = endpoints([1, 1, 1])
    counts = Counter(policy.pick(candidates, RouteKey(key_id="k")).name for _ in range(30))
    assert counts == {"ep-0": 10, "ep-1": 10, "ep-2": 10}


def test_a_ring_is_built_once_per_candidate_set() -> None:
    policy = ConsistentHash()
    everyone = endpoints([1, 1, 1])
    fewer = everyone[:2]
    for i in range(50):
        policy.pick(everyone if i % 2 else fewer, RouteKey(key_id=str(i)))
    assert policy.builds == 2
    policy.pick(everyone, NO_KEY)  # no key: no ring needed
    assert repr(policy) == "<ConsistentHash hash_on=key vnodes=160 rings=2 builds=2>"
    heavier = [*fewer, Endpoint(SimulatedBackend("ep-2"), weight=2)]
    policy.pick(heavier, RouteKey(key_id="x"))
    assert policy.builds == 3  # a weight change is a new ring


def test_bad_settings_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="ip, key, user, prompt"):
        ConsistentHash(hash_on="cookie")
    with pytest.raises(ConfigError, match="vnodes"):
        ConsistentHash(vnodes=0)
