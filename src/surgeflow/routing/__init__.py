"""Routing model calls across endpoints: policies, health, limits, retries."""

from surgeflow.routing.base import NO_KEY, Policy, RouteKey
from surgeflow.routing.consistent_hash import ConsistentHash
from surgeflow.routing.endpoint import Endpoint, PeakEWMA
from surgeflow.routing.least_connections import LeastConnections
from surgeflow.routing.p2c_ewma import P2CEwma
from surgeflow.routing.policies import POLICY_NAMES, make_policy
from surgeflow.routing.random_choice import RandomChoice
from surgeflow.routing.round_robin import RoundRobin
from surgeflow.routing.weighted_round_robin import WeightedRoundRobin

__all__ = [
    "NO_KEY",
    "POLICY_NAMES",
    "ConsistentHash",
    "Endpoint",
    "LeastConnections",
    "P2CEwma",
    "PeakEWMA",
    "Policy",
    "RandomChoice",
    "RoundRobin",
    "RouteKey",
    "WeightedRoundRobin",
    "make_policy",
]
