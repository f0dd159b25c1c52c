"""What the peer drivers share: ``enqueue-and-wait N``, CPU time from /proc, completion polling.

Imports only the standard library and ``redis`` (both environments have it): `queue_peers.py`
uses `tree_cpu_seconds` too.

A driver gives `main` two coroutines: ``connect(redis_url)`` returning its client, and
``submit(client, count)`` enqueuing ``count`` no-op jobs as fast as the library allows and
returning the Redis keys their results will be stored under. `main` submits a warm-up batch and
waits for it (so the worker is up), then times ``N`` jobs from the first submit until the last
result key exists, and prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from redis import asyncio as aioredis

CHUNK = 1000  # result keys per MGET while polling


def cpu_seconds(pid: int) -> float:
    """User + system CPU time used so far by process ``pid`` (all its threads); 0 if gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text("ascii").rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo.extend(int(child) for child in task.read_text("ascii").split())
            except OSError:
                continue
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and its live descendants (taskiq's worker is a child process)."""
    return sum(cpu_seconds(p) for p in descendants(pid))


async def wait_for_keys(
    redis: aioredis.Redis, keys: Sequence[str], timeout_s: float, interval_s: float
) -> int:
    """How many of ``keys`` exist by the time all do or ``timeout_s`` passes.

    Polls the oldest ``CHUNK`` still missing with one MGET; a worker works roughly in order, so
    a fully present chunk is followed at once by the next, and a partial one by a pause.
    """
    pending = list(keys)
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        chunk = pending[:CHUNK]
        values = await redis.mget(chunk)
        missing = [key for key, value in zip(chunk, values, strict=True) if value is None]
        pending = missing + pending[CHUNK:]
        if missing:
            await asyncio.sleep(interval_s)
    return len(keys) - len(pending)


async def _drive(
    args: argparse.Namespace,
    connect: Callable[[str], Awaitable[Any]],
    submit: Callable[[Any, int], Awaitable[list[str]]],
) -> dict[str, Any]:
    redis = aioredis.from_url(args.redis)
    client = await connect(args.redis)
    try:
        keys = await submit(client, args.warmup)
        warm = await wait_for_keys(redis, keys, args.startup_s, args.interval_s)
        if warm != args.warmup:
            return {"error": f"warm-up: {warm}/{args.warmup} completed in {args.startup_s:g} s"}
        worker_cpu0 = tree_cpu_seconds(args.worker_pid)
        redis_cpu0 = cpu_seconds(args.redis_pid) if args.redis_pid else 0.0
        client_cpu0 = time.process_time()
        started = time.perf_counter()
        keys = await submit(client, args.jobs)
        submitted = time.perf_counter()
        completed = await wait_for_keys(redis, keys, args.timeout_s, args.interval_s)
        elapsed = time.perf_counter() - started
        return {
            "jobs": args.jobs,
            "completed": completed,
            "elapsed_s": elapsed,
            "submit_s": submitted - started,
            "worker_cpu_s": tree_cpu_seconds(args.worker_pid) - worker_cpu0,
            "redis_cpu_s": (cpu_seconds(args.redis_pid) - redis_cpu0) if args.redis_pid else None,
            "client_cpu_s": time.process_time() - client_cpu0,
        }
    finally:
        close = getattr(client, "aclose", None) or getattr(client, "close", None)
        if close is not None:
            result = close()
            if asyncio.iscoroutine(result):
                await result
        await redis.aclose()


def main(
    connect: Callable[[str], Awaitable[Any]],
    submit: Callable[[Any, int], Awaitable[list[str]]],
    argv: Sequence[str] | None = None,
) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["enqueue-and-wait"])
    parser.add_argument("jobs", type=int)
    parser.add_argument("--redis", required=True, help="redis://127.0.0.1:PORT/0")
    parser.add_argument("--worker-pid", type=int, required=True)
    parser.add_argument("--redis-pid", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--startup-s", type=float, default=60.0)
    parser.add_argument("--timeout-s", type=float, default=120.0)
    parser.add_argument("--interval-s", type=float, default=0.02)
    args = parser.parse_args(argv)
    result = asyncio.run(_drive(args, connect, submit))
    print(json.dumps(result), flush=True)
    return 0 if result.get("completed") == args.jobs else 1


if __name__ == "__main__":
    sys.exit("run arq_job.py, celery_job.py or taskiq_job.py")
