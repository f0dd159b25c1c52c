"""Chat cache hits, in process: µs per `ModelClient.chat` answered from memory, Redis or both tiers.

Every variant is the same `ModelClient.chat` call (temperature 0, one API key) on the same event
loop, measured in the same rounds, and reported as the median over rounds. Within a round the
variants take turns in slices of ``--calls / --chunks`` calls (each after a 10 % warm-up), in an
order that rotates slice by slice, so each one samples the whole round; a round's figure is the
median of its slices:

- ``hit``: the cache is a `MemoryCache`; the answer is in it.
- ``miss``: no cache; a zero-latency `SimulatedBackend` answers through the router. It shows what
  a hit saves on this side of the wire; a real upstream adds its whole latency on top.
- ``redis_hit``: the cache is a `RedisCache` alone; every call is a GET to a private
  ``redis-server`` on loopback.
- ``tiered_hit_memory``: `TieredCache(MemoryCache, RedisCache)`, the production shape of a
  ``redis://`` cache URL; the answer is in the memory tier, so Redis is not asked.
- ``tiered_hit_redis``: the same `TieredCache`, but the answer's key is deleted from the memory
  tier before every call (outside the timed region), so each call misses in memory, hits in
  Redis and fills the memory tier again, as a gateway does for an answer another gateway cached.
  Each call is timed on its own here (two `perf_counter` reads, about 0.1 µs, are included).
- ``redis_get`` and ``redis_py_get``: for reference, one `RedisCache.get` of the same value, and
  the redis-py ``GET`` underneath it without `RedisCache`'s timeout wrapper.
- ``redis_c_get``: the same ``GET`` from ``redis-benchmark`` (C, one connection, in a
  subprocess, on this process's CPU): a loopback round trip with no Python in it. Skipped when
  ``redis-benchmark`` is not installed.

Where the processes run matters more than anything in Python here: on this machine (a 2-vCPU VM)
a loopback round trip between two processes costs several times more when they sit on different
CPUs (a client that sleeps while it waits is woken on an idle vCPU) than on the same one. So
placement is fixed with CPU affinity. ``--placement cross`` (the default): this process on one
CPU, redis-server on the other, as with Redis on another host; ``redis_c_get_same_cpu`` then
runs the C client on redis-server's CPU, the true floor. There, the C client is no floor for
Python: it sleeps at once after each request and pays a vCPU wake-up, where Python is often still
busy when the reply lands. ``same``: both on one CPU, no wake-ups, which isolates the Python cost.
``scheduler``: no pinning; the figures then jump between the two cases from run to run.

The Redis clients use surgeflow's defaults (50 ms timeout). Before timing, each variant is checked
to answer from where it claims to: its backend is never called during the timed loops, and the
Redis hit counters grow by the number of calls; a Redis call that timed out would count as an
error and is reported. Runs on uvloop, as the gateway does (``--loop asyncio`` for the stdlib loop).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import os
import shutil
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop
from _common import machine, median, print_table, write_results
from _servers import redis_server
from redis import asyncio as aioredis

from surgeflow.cache import MemoryCache
from surgeflow.cache.keys import chat_cache_key
from surgeflow.cache.redis import KEY_PREFIX, RedisCache
from surgeflow.cache.tiered import TieredCache
from surgeflow.models import ChatRequest, Message, ModelClient, SimulatedBackend
from surgeflow.routing import RouteKey

VARIANTS = (
    "hit",
    "miss",
    "redis_hit",
    "tiered_hit_memory",
    "tiered_hit_redis",
    "redis_get",
    "redis_py_get",
    "redis_c_get",
    "redis_c_get_same_cpu",
)
LABELS = {
    "hit": "memory hit (MemoryCache)",
    "miss": "miss to a 0 ms simulated backend",
    "redis_hit": "Redis hit (RedisCache alone)",
    "tiered_hit_memory": "tiered hit in memory",
    "tiered_hit_redis": "tiered hit in Redis (memory tier missed)",
    "redis_get": "RedisCache.get alone",
    "redis_py_get": "redis-py GET alone",
    "redis_c_get": "redis-benchmark GET (C client)",
    "redis_c_get_same_cpu": "redis-benchmark GET, on redis-server's CPU",
}


async def _us_per_call(call: Callable[[], Awaitable[Any]], n: int) -> float:
    for _ in range(n // 10):
        await call()
    started = time.perf_counter()
    for _ in range(n):
        await call()
    return (time.perf_counter() - started) / n * 1e6


async def _us_per_call_after(
    prepare: Callable[[], Awaitable[Any]], call: Callable[[], Awaitable[Any]], n: int
) -> float:
    """Like `_us_per_call`, but ``prepare()`` runs before every call, outside the timed region."""
    for _ in range(n // 10):
        await prepare()
        await call()
    elapsed = 0.0
    for _ in range(n):
        await prepare()
        started = time.perf_counter()
        await call()
        elapsed += time.perf_counter() - started
    return elapsed / n * 1e6


async def _c_client_us_per_get(url: str, key: str, n: int, cpu: int | None = None) -> float:
    """µs per ``GET key`` from ``redis-benchmark``, one connection, ``n`` requests; on ``cpu``
    when given, else on this process's CPUs."""
    port = url.rsplit(":", 1)[1].split("/", 1)[0]
    command = ["redis-benchmark", "-h", "127.0.0.1", "-p", port, "-c", "1", "-n", str(n)]
    if cpu is not None:
        command = ["taskset", "-c", str(cpu), *command]
    process = await asyncio.create_subprocess_exec(
        *command, "--csv", "GET", key, stdout=asyncio.subprocess.PIPE
    )
    stdout, _ = await process.communicate()
    rows = list(csv.DictReader(io.StringIO(stdout.decode())))
    if process.returncode != 0 or not rows:
        raise RuntimeError(f"redis-benchmark failed: {stdout.decode()[-500:]!r}")
    return 1e6 / float(rows[-1]["rps"])


def _backend(name: str) -> SimulatedBackend:
    return SimulatedBackend(name, ttft_ms=0, tokens_per_s=0)


async def main_async(args: argparse.Namespace, url: str) -> dict[str, Any]:
    backends = {v: _backend(v) for v in ("hit", "miss", "redis_hit", "tiered")}
    redis_alone = RedisCache(url)
    local, shared = MemoryCache(), RedisCache(url)
    tiered = TieredCache(local, shared)
    clients = {
        "hit": ModelClient({"m": [backends["hit"]]}, cache=MemoryCache()),
        "miss": ModelClient({"m": [backends["miss"]]}),
        "redis_hit": ModelClient({"m": [backends["redis_hit"]]}, cache=redis_alone),
        "tiered": ModelClient({"m": [backends["tiered"]]}, cache=tiered),
    }
    raw_redis = aioredis.Redis.from_url(url, socket_timeout=0.05, socket_connect_timeout=0.05)
    question = [Message(role="user", content="What is the refund window?")]
    request = ChatRequest(model="m", temperature=0, messages=question)
    key = RouteKey(key_id="team-a")
    cache_key = chat_cache_key(request, scope=key.key_id)
    assert cache_key is not None

    # Fill every cache with one miss each, then check where the answers are, and that a hit
    # answers what the backend did.
    answers = {(await client.chat(request, key=key)).text for client in clients.values()}
    answers |= {(await client.chat(request, key=key)).text for client in clients.values()}
    if len(answers) != 1 or not next(iter(answers)):
        raise RuntimeError(f"cached and uncached answers differ: {answers}")
    stored = await raw_redis.get(KEY_PREFIX + cache_key)
    if not stored or await local.get(cache_key) is None:
        raise RuntimeError("the first call did not fill both tiers of the TieredCache")
    value_bytes = len(stored)

    async def drop_from_memory_tier() -> None:
        await local.delete(cache_key)

    timed: dict[str, Callable[[], Awaitable[Any]]] = {
        "hit": lambda: clients["hit"].chat(request, key=key),
        "miss": lambda: clients["miss"].chat(request, key=key),
        "redis_hit": lambda: clients["redis_hit"].chat(request, key=key),
        "tiered_hit_memory": lambda: clients["tiered"].chat(request, key=key),
        "tiered_hit_redis": lambda: clients["tiered"].chat(request, key=key),
        "redis_get": lambda: redis_alone.get(cache_key),
        "redis_py_get": lambda: raw_redis.get(KEY_PREFIX + cache_key),
    }
    calls_before = {name: b.calls for name, b in backends.items()}
    keyspace_before = await raw_redis.info("stats")
    counters_before = {id(c): (c.hits, c.errors) for c in (redis_alone, shared)}

    async def measure(variant: str, n: int) -> float:
        if variant == "tiered_hit_redis":
            return await _us_per_call_after(drop_from_memory_tier, timed[variant], n)
        if variant == "redis_c_get":
            return await _c_client_us_per_get(url, KEY_PREFIX + cache_key, n)
        if variant == "redis_c_get_same_cpu":
            return await _c_client_us_per_get(url, KEY_PREFIX + cache_key, n, args.redis_cpu)
        return await _us_per_call(timed[variant], n)

    rounds: dict[str, list[float]] = {v: [] for v in args.variants}
    per_chunk = max(1, args.calls // args.chunks)
    for index in range(args.rounds):
        # A round is `chunks` slices of every variant in turn, the order rotating slice by slice:
        # every variant samples the whole round, so the machine's drift hits them alike.
        # A round's figure is the median of its slices: a slice of a fast variant lasts a few
        # ms, and one preemption by another tenant would otherwise weigh on the whole round.
        slices: dict[str, list[float]] = {v: [] for v in args.variants}
        for chunk in range(args.chunks):
            shift = (index * args.chunks + chunk) % len(args.variants)
            for variant in args.variants[shift:] + args.variants[:shift]:
                slices[variant].append(await measure(variant, per_chunk))
        for variant in args.variants:
            rounds[variant].append(median(slices[variant]))
        print(
            f"  round {index + 1}/{args.rounds}: "
            + ", ".join(f"{v} {rounds[v][-1]:.1f}" for v in args.variants)
            + " µs",
            flush=True,
        )
    keyspace_after = await raw_redis.info("stats")
    checks = {
        "backend_calls_while_timing": {
            name: b.calls - calls_before[name] for name, b in backends.items() if name != "miss"
        },
        "redis_hits": {
            "redis_alone": redis_alone.hits - counters_before[id(redis_alone)][0],
            "tiered_shared": shared.hits - counters_before[id(shared)][0],
        },
        "redis_errors": {
            "redis_alone": redis_alone.errors - counters_before[id(redis_alone)][1],
            "tiered_shared": shared.errors - counters_before[id(shared)][1],
        },
        "memory_tier": {"hits": local.hits, "misses": local.misses},
        # Every GET while timing, the C client's included, must have found its key.
        "redis_server_keyspace": {
            kind: int(keyspace_after[f"keyspace_{kind}"] - keyspace_before[f"keyspace_{kind}"])
            for kind in ("hits", "misses")
        },
        "value_bytes": value_bytes,
    }
    for client in clients.values():
        await client.aclose()
    await tiered.aclose()
    await redis_alone.aclose()
    await raw_redis.aclose()
    return {"rounds": rounds, "checks": checks}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=20_000, help="per variant per round")
    parser.add_argument("--chunks", type=int, default=20, help="slices per variant per round")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    parser.add_argument(
        "--placement",
        choices=["cross", "same", "scheduler"],
        default="cross",
        help="this process and redis-server on different CPUs, on one, or unpinned",
    )
    args = parser.parse_args()
    args.variants = tuple(args.variants.split(","))
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; the variants are {', '.join(VARIANTS)}")
    cpus = sorted(os.sched_getaffinity(0))
    args.bench_cpu = args.redis_cpu = None
    if args.placement != "scheduler" and (len(cpus) < 2 or not shutil.which("taskset")):
        parser.error("--placement cross or same needs 2 CPUs and taskset; try scheduler")
    if args.placement == "cross":
        args.bench_cpu, args.redis_cpu = cpus[0], cpus[1]
    elif args.placement == "same":
        args.bench_cpu = args.redis_cpu = cpus[1]
    if args.bench_cpu is not None:
        os.sched_setaffinity(0, {args.bench_cpu})
    if args.placement != "cross":  # redis_c_get is already that, or placement is unknown
        args.variants = tuple(v for v in args.variants if v != "redis_c_get_same_cpu")
    if shutil.which("redis-benchmark") is None:
        print("NOTE: redis-benchmark is not installed: no C-client floor (redis_c_get*)")
        args.variants = tuple(v for v in args.variants if not v.startswith("redis_c_get"))
    info = machine()
    try:
        with redis_server(args.redis_cpu) as url:
            runner = uvloop.run if args.loop == "uvloop" else asyncio.run
            outcome = runner(main_async(args, url))
    except RuntimeError as exc:
        if "redis-server" in str(exc):
            print(f"cannot run: {exc}", file=sys.stderr)
            return 2
        raise
    rounds, checks = outcome["rounds"], outcome["checks"]
    figures = {v: median(rounds[v]) for v in args.variants}
    base = figures.get("hit")
    rows = []
    for variant in args.variants:
        ratios = [us / hit for us, hit in zip(rounds[variant], rounds.get("hit", []), strict=False)]
        times_hit = f"{median(ratios):.1f}×" if base is not None else "-"
        rows.append([LABELS[variant], f"{figures[variant]:.1f}", times_hit])
    print_table(["path", "µs per call", "× memory hit (median of rounds)"], rows)
    print(f"checks: {checks}")
    errors = sum(checks["redis_errors"].values())
    unexpected_calls = sum(checks["backend_calls_while_timing"].values())
    misses = checks["redis_server_keyspace"]["misses"]
    if errors or unexpected_calls or misses:
        print(
            f"WARNING: {errors} Redis errors, {unexpected_calls} backend calls and {misses} Redis"
            " misses while timing: some calls were not the hits they were meant to be"
        )
    settings = {**vars(args), "variants": list(args.variants)}
    payload = {"benchmark": "cache_hit", "machine": info, "settings": settings}
    results = {
        **payload,
        "hit_us": figures.get("hit"),
        "miss_us": figures.get("miss"),
        "us_per_call": figures,
        "checks": checks,
        "raw": rounds,
    }
    name = "cache_hit" if args.placement == "cross" else f"cache_hit-{args.placement}"
    print(f"results: {write_results(name, results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
