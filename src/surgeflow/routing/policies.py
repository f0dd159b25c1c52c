"""The policies by the names configuration uses for them."""

from __future__ import annotations

from surgeflow.errors import ConfigError
from surgeflow.routing.base import Policy
from surgeflow.routing.consistent_hash import ConsistentHash
from surgeflow.routing.least_connections import LeastConnections
from surgeflow.routing.p2c_ewma import P2CEwma
from surgeflow.routing.random_choice import RandomChoice
from surgeflow.routing.round_robin import RoundRobin
from surgeflow.routing.weighted_round_robin import WeightedRoundRobin

POLICY_NAMES = (
    "round_robin",
    "weighted_round_robin",
    "least_connections",
    "consistent_hash",
    "random",
    "p2c_ewma",
)


def make_policy(name: str, *, hash_on: str = "key", seed: int | None = None) -> Policy:
    """A new policy called ``name``; ``hash_on`` is for consistent_hash, ``seed`` for randomness."""
    match name:
        case "round_robin":
            return RoundRobin()
        case "weighted_round_robin":
            return WeightedRoundRobin()
        case "least_connections":
            return LeastConnections()
        case "consistent_hash":
            return ConsistentHash(hash_on=hash_on)
        case "random":
            return RandomChoice(seed=seed)
        case "p2c_ewma":
            return P2CEwma(seed=seed)
        case _:
            raise ConfigError(
                f"unknown routing policy {name!r}; choose one of {', '.join(POLICY_NAMES)}"
            )
