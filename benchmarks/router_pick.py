"""Routing decision cost: µs per ``policy.pick`` for every policy, at 3 and 100 endpoints.

Endpoints have random weights (1-4), calls in flight (0-32) and peak-EWMA latencies (50 ms-2 s),
fixed by ``--seed``; the candidate list is the same object on every pick, as a router re-filters
it only when something changes. Each pick gets the next of 1,024 routing keys (``key_id``, ``user``
… all set). Every round measures every (policy, size) once, interleaved, after a warm-up that
also sizes each loop to about ``--round-s``; reported is the median over rounds. The floor is a
policy that returns ``candidates[0]``: what the call alone costs. Separately, the time a
consistent-hash ring takes to build for a candidate set it has not seen, cold (every point
hashed) and warm (the endpoints' points known, only merged), median of ``--rounds`` builds.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
from collections.abc import Sequence
from typing import Any

from _common import machine, median, print_table, write_results

from surgeflow.models.simulated import SimulatedBackend
from surgeflow.routing import (
    POLICY_NAMES,
    ConsistentHash,
    Endpoint,
    PeakEWMA,
    Policy,
    RouteKey,
    make_policy,
)

FLOOR = "floor: return candidates[0]"
KEYS = 1024  # a power of two: the loop picks a key with a mask


class Floor:
    name = FLOOR

    def pick(self, candidates: Sequence[Endpoint], key: RouteKey) -> Endpoint:
        return candidates[0]


def candidates(count: int, rng: random.Random) -> list[Endpoint]:
    made = []
    for i in range(count):
        latency = PeakEWMA(initial_s=rng.uniform(0.05, 2.0))
        backend = SimulatedBackend(f"ep-{i}")
        endpoint = Endpoint(backend, weight=rng.randint(1, 4), latency=latency)
        endpoint.inflight = rng.randint(0, 32)
        made.append(endpoint)
    return made


def route_keys(rng: random.Random) -> list[RouteKey]:
    return [
        RouteKey(
            client_ip=f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}",
            key_id=f"sk-{rng.getrandbits(64):016x}",
            user=f"user-{rng.randrange(10**6)}",
            prompt_prefix=f"You are a helpful assistant #{rng.randrange(10**6)}",
        )
        for _ in range(KEYS)
    ]


def per_pick_ns(
    policy: Policy, endpoints: Sequence[Endpoint], keys: Sequence[RouteKey], iterations: int
) -> float:
    pick = policy.pick
    mask = KEYS - 1
    gc.collect()
    started = time.perf_counter_ns()
    for i in range(iterations):
        pick(endpoints, keys[i & mask])
    return (time.perf_counter_ns() - started) / iterations


def measure(sizes: Sequence[int], rounds: int, round_s: float, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    keys = route_keys(rng)
    sets = {size: candidates(size, rng) for size in sizes}
    names = [FLOOR, *POLICY_NAMES]
    policies: dict[tuple[str, int], Policy] = {
        (name, size): Floor() if name == FLOOR else make_policy(name, seed=seed)
        for name in names
        for size in sizes
    }
    iterations: dict[str, int] = {}
    for (name, size), policy in policies.items():  # warm-up (rings built), and size each loop
        per_pick_ns(policy, sets[size], keys, 1000)
        ns = per_pick_ns(policy, sets[size], keys, 5000)
        iterations[f"{name} @{size}"] = max(1000, int(round_s * 1e9 / ns))
    samples: dict[str, list[float]] = {label: [] for label in iterations}
    for index in range(rounds):
        for (name, size), policy in policies.items():
            label = f"{name} @{size}"
            samples[label].append(per_pick_ns(policy, sets[size], keys, iterations[label]) / 1000)
        print(f"  round {index + 1}/{rounds} done", flush=True)
    return {"us_per_pick": samples, "iterations": iterations, "rebuild_ms": rebuilds(sets, rounds)}


def rebuilds(sets: dict[int, list[Endpoint]], rounds: int) -> dict[str, float]:
    """Median ms to build a ring for an unseen set: cold, then with the points already known."""
    key = RouteKey(key_id="k")
    result: dict[str, float] = {}
    for size, endpoints in sets.items():
        cold: list[float] = []
        warm: list[float] = []
        for _ in range(rounds):
            policy = ConsistentHash()
            started = time.perf_counter_ns()
            policy.pick(endpoints, key)
            cold.append((time.perf_counter_ns() - started) / 1e6)
            started = time.perf_counter_ns()
            policy.pick(endpoints[1:], key)  # one endpoint gone: a new set
            warm.append((time.perf_counter_ns() - started) / 1e6)
        result[f"cold @{size}"] = median(cold)
        result[f"warm @{size}"] = median(warm)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--round-s", type=float, default=0.2, help="time per variant per round")
    parser.add_argument("--sizes", default="3,100", help="endpoint counts, comma-separated")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    info = machine()
    raw = measure(sizes, args.rounds, args.round_s, args.seed)
    samples: dict[str, list[float]] = raw["us_per_pick"]
    summary = {label: median(values) for label, values in samples.items()}
    rows: list[list[object]] = []
    for name in [FLOOR, *POLICY_NAMES]:
        row: list[object] = [name]
        for size in sizes:
            values = samples[f"{name} @{size}"]
            floor = samples[f"{FLOOR} @{size}"]
            ratios = [v / f for v, f in zip(values, floor, strict=True)]
            row += [f"{summary[f'{name} @{size}']:.3f}", f"{median(ratios):.1f}x"]
        rows.append(row)
    print()
    print(f"µs per pick, median of {args.rounds} rounds")
    headers = ["policy"]
    for size in sizes:
        headers += [f"µs @{size}", "vs floor"]
    print_table(headers, rows)
    rebuild: dict[str, float] = raw["rebuild_ms"]
    print()
    print("consistent_hash ring build for an unseen set, ms: ", end="")
    print(", ".join(f"{label} {ms:.2f}" for label, ms in rebuild.items()))
    result: dict[str, Any] = {"benchmark": "router_pick", "machine": info}
    result.update(settings=vars(args), median_us_per_pick=summary, rebuild_ms=rebuild, raw=raw)
    print(f"results: {write_results('router_pick', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
