"""SQLite-only queue tests: several queue objects and processes on one file, and migrations.

The behaviour every queue shares is in ``test_conformance.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
from pathlib import Path

import surgeflow.queue.sqlite
from surgeflow.queue.base import QueueStats
from surgeflow.queue.sqlite import SQLiteQueue


async def drain(queue: SQLiteQueue, worker: str, delivered: list[str], work_s: float = 0.0) -> None:
    """Lease and ack until no job is left anywhere (other workers' leases included).

    ``work_s`` is how long a worker holds its lease before the ack, as a real step would.
    """
    while True:
        jobs = await queue.get(worker, lease_s=30, limit=4)
        if jobs and work_s:
            await asyncio.sleep(work_s)
        for job in jobs:
            await queue.ack(job, worker)
        delivered.extend(job.id for job in jobs)
        if not jobs:
            stats = await queue.stats()
            if stats.ready == stats.leased == 0:
                return
            await asyncio.sleep(0.001)


async def test_two_queues_on_one_file_never_double_lease(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    async with SQLiteQueue(path) as one, SQLiteQueue(path) as two:
        for i in range(300):
            await one.put(f"run_{i}")
        delivered: dict[str, list[str]] = {f"w{i}": [] for i in range(6)}
        await asyncio.gather(
            *(
                drain(q, w, got, work_s=0.005)
                for (w, got), q in zip(delivered.items(), [one, two] * 3, strict=True)
            )
        )
    ids = [job_id for got in delivered.values() for job_id in got]
    assert len(ids) == len(set(ids)) == 300
    # Both databases handed out work, so the two really competed for the same rows. Without the
    # simulated work, one connection's group commits can hold the write lock back to back while
    # the other sleeps in SQLite's busy handler, and take every job; with it the lock is free
    # between batches. (Which worker of each database wins stays up to the scheduler.)
    assert any(delivered[w] for w in ("w0", "w2", "w4"))
    assert any(delivered[w] for w in ("w1", "w3", "w5"))


CHILD_SCRIPT = """
import asyncio, json, sys

from surgeflow.queue.sqlite import SQLiteQueue


async def main(path):
    async with SQLiteQueue(path) as queue:
        print("ready", flush=True)
        delivered = []
        while True:
            jobs = await queue.get("child", lease_s=30, limit=4)
            for job in jobs:
                await queue.ack(job, "child")
            delivered.extend(job.id for job in jobs)
            if not jobs:
                stats = await queue.stats()
                if stats.ready == stats.leased == 0:
                    break
                await asyncio.sleep(0.001)
        print(json.dumps(delivered), flush=True)


asyncio.run(main(sys.argv[1]))
"""


async def test_a_second_process_never_gets_our_jobs(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    src = Path(surgeflow.queue.sqlite.__file__).parents[2]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]),
    }
    async with SQLiteQueue(path) as queue:
        for i in range(600):
            await queue.put(f"run_{i}")
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CHILD_SCRIPT, str(path), env=env, stdout=asyncio.subprocess.PIPE
        )
        try:
            assert child.stdout is not None
            assert await asyncio.wait_for(child.stdout.readline(), 10) == b"ready\n"
            ours: list[str] = []
            await drain(queue, "parent", ours)
            theirs = json.loads(await asyncio.wait_for(child.stdout.readline(), 10))
            assert await child.wait() == 0
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()
    assert len(ours) + len(theirs) == len(set(ours) | set(theirs)) == 600
    assert ours
    assert theirs


async def test_a_queue_file_from_before_lease_expiry_counting_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # the jobs table as version 0 wrote it, with a job
        conn.execute(
            "CREATE TABLE jobs (id TEXT PRIMARY KEY, run_id TEXT NOT NULL UNIQUE,"
            " status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,"
            " available_at REAL NOT NULL, lease_owner TEXT, lease_expires_at REAL,"
            " created_at REAL NOT NULL, last_error TEXT)"
        )
        conn.execute("CREATE TABLE schema_versions (name TEXT PRIMARY KEY, version INTEGER)")
        conn.execute("INSERT INTO schema_versions VALUES ('queue', 0)")
        conn.execute(
            "INSERT INTO jobs VALUES ('job_1', 'run_1', 'ready', 0, 0, NULL, NULL, 0, NULL)"
        )
    async with SQLiteQueue(path) as queue:
        [job] = await queue.get("w", lease_s=30)
        assert (job.run_id, job.attempts, queue.lease_expiries) == ("run_1", 1, 0)
        await queue.ack(job, "w")
        assert await queue.stats() == QueueStats()
