"""Durable runs per second through the SQLite store + queue with one worker (concurrency 64).

Every round, each phase on a fresh SQLite file in a temp dir, N runs of a 3-step no-op workflow:

- ``submit only``: N ``Service.submit`` calls (create run + ``run.queued`` event + enqueue) from
  ``--submit-concurrency`` client tasks, with no worker;
- ``drain``: then one ``Worker.run(burst=True)`` works that backlog off; ``submit → done`` is N over
  the two times together;
- ``concurrent``: a worker runs while the clients submit; time from the first submit until every
  run has succeeded.

Each durable run checkpoints its 3 steps and records 9 events; every figure is the median of the
rounds. The worker shares the process (and the event loop) with the submitting clients.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop
from _common import machine, median, print_table, write_results

from surgeflow.config import Settings, StoreSettings
from surgeflow.service import Service
from surgeflow.store.base import RunStatus
from surgeflow.store.sqlite import SQLiteStore
from surgeflow.workflow import Context, Step, Workflow

WORKFLOW = "three"


async def noop(ctx: Context) -> None:
    return None


def three_steps() -> Workflow:
    return Workflow(WORKFLOW, [Step(noop, name=f"s{i}") for i in range(3)])


def service(tmp: str) -> Service:
    settings = Settings(store=StoreSettings(url=f"sqlite:///{Path(tmp) / 'runs.db'}"), workflows=[])
    return Service(
        settings, workflows={WORKFLOW: three_steps()}, embedded_worker=False, api_keys=[]
    )


async def submit_all(svc: Service, runs: int, clients: int) -> float:
    """Seconds to submit ``runs`` runs from ``clients`` concurrent tasks."""
    numbers = iter(range(runs))

    async def client() -> None:
        for n in numbers:
            await svc.submit(WORKFLOW, {"n": n})

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - started


async def count_succeeded(svc: Service, runs: int) -> int:
    done = await svc.store.list_runs(statuses=frozenset({RunStatus.SUCCEEDED}), limit=runs + 1)
    return len(done)


def db_stats(svc: Service) -> dict[str, int]:
    assert isinstance(svc.store, SQLiteStore)
    stats = svc.store.db.stats
    return {
        "transactions": stats.transactions,
        "writes": stats.writes,
        "reads": stats.reads,
        "largest_batch": stats.largest_batch,
    }


async def backlog_round(
    runs: int, clients: int, concurrency: int, timeout_s: float
) -> dict[str, Any]:
    """Submit everything, then let a burst worker drain it."""
    with tempfile.TemporaryDirectory(prefix="bench-queue-") as tmp:
        async with service(tmp) as svc:
            submit_s = await submit_all(svc, runs, clients)
            after_submit = db_stats(svc)
            worker = svc.new_worker(concurrency=concurrency)
            started = time.perf_counter()
            await asyncio.wait_for(worker.run(burst=True), timeout_s)
            drain_s = time.perf_counter() - started
            succeeded = await count_succeeded(svc, runs)
            stats = db_stats(svc)
    writes = stats["writes"] - after_submit["writes"]
    return {
        "submit_s": submit_s,
        "drain_s": drain_s,
        "succeeded": succeeded,
        "submit_writes_per_run": after_submit["writes"] / runs,
        "worker_writes_per_run": writes / runs,
        "db": stats,
    }


async def concurrent_round(
    runs: int, clients: int, concurrency: int, timeout_s: float
) -> dict[str, Any]:
    """A worker running while the clients submit."""
    with tempfile.TemporaryDirectory(prefix="bench-queue-") as tmp:
        async with service(tmp) as svc:
            worker = svc.new_worker(concurrency=concurrency, poll_interval_s=0.05)
            working = asyncio.create_task(worker.run())
            await asyncio.sleep(0.05)  # past its start-up reconcile
            started = time.perf_counter()
            try:
                async with asyncio.timeout(timeout_s):
                    await submit_all(svc, runs, clients)
                    # The worker exposes a counter, not an event: poll it.
                    while worker.completed < runs:  # noqa: ASYNC110
                        await asyncio.sleep(0.002)
                elapsed_s = time.perf_counter() - started
            finally:
                worker.stop()
                await working
            succeeded = await count_succeeded(svc, runs)
            stats = db_stats(svc)
    return {"elapsed_s": elapsed_s, "succeeded": succeeded, "db": stats}


async def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    phases: list[tuple[str, Callable[..., Awaitable[dict[str, Any]]]]] = [
        ("backlog", backlog_round),
        ("concurrent", concurrent_round),
    ]
    rounds: list[dict[str, Any]] = []
    await backlog_round(200, args.submit_concurrency, args.concurrency, args.timeout_s)  # warm-up
    for index in range(args.rounds):
        result: dict[str, Any] = {}
        order = phases if index % 2 == 0 else phases[::-1]
        for name, phase in order:
            result[name] = await phase(
                args.runs, args.submit_concurrency, args.concurrency, args.timeout_s
            )
        for name in ("backlog", "concurrent"):
            if result[name]["succeeded"] != args.runs:
                raise RuntimeError(f"{name}: {result[name]['succeeded']}/{args.runs} succeeded")
        rounds.append(result)
        backlog, both = result["backlog"], result["concurrent"]
        print(
            f"  round {index + 1}/{args.rounds}: submit {args.runs / backlog['submit_s']:7,.0f}/s"
            f"  drain {args.runs / backlog['drain_s']:7,.0f}/s"
            f"  concurrent {args.runs / both['elapsed_s']:7,.0f}/s",
            flush=True,
        )
    return rounds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000, help="runs per phase per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=64, help="the worker's")
    parser.add_argument("--submit-concurrency", type=int, default=64, help="submitting tasks")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="per phase")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # not "no API keys exist yet" on every service start
    info = machine()
    rounds = uvloop.run(measure(args))
    n = args.runs
    submit = [n / r["backlog"]["submit_s"] for r in rounds]
    drain = [n / r["backlog"]["drain_s"] for r in rounds]
    end_to_end = [n / (r["backlog"]["submit_s"] + r["backlog"]["drain_s"]) for r in rounds]
    concurrent = [n / r["concurrent"]["elapsed_s"] for r in rounds]
    summary = {
        "submit_only_runs_per_s": median(submit),
        "drain_runs_per_s": median(drain),
        "submit_to_completion_runs_per_s": median(end_to_end),
        "concurrent_runs_per_s": median(concurrent),
        "submit_writes_per_run": median([r["backlog"]["submit_writes_per_run"] for r in rounds]),
        "worker_writes_per_run": median([r["backlog"]["worker_writes_per_run"] for r in rounds]),
    }
    print()
    print(f"{n} runs of a 3-step no-op workflow per phase; median of {args.rounds} rounds")
    print_table(
        ["phase", "runs/s"],
        [
            ["submit only (no worker)", summary["submit_only_runs_per_s"]],
            ["drain the backlog (burst worker)", summary["drain_runs_per_s"]],
            [
                "submit → all succeeded (sequential phases)",
                summary["submit_to_completion_runs_per_s"],
            ],
            ["worker running during submission", summary["concurrent_runs_per_s"]],
        ],
    )
    print(
        f"SQLite writes per run: {summary['submit_writes_per_run']:.1f} to submit, "
        f"{summary['worker_writes_per_run']:.1f} to execute"
    )
    payload: dict[str, Any] = {"benchmark": "queue_runs", "machine": info, "settings": vars(args)}
    payload.update(summary=summary, rounds=rounds)
    print(f"results: {write_results('queue_runs', payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
