"""Tests of the SQLite Queue: leases, retries, dead jobs, several workers and processes."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)

import surgeflow.queue.sqlite
from surgeflow.queue.base import Job, QueueStats
from surgeflow.queue.sqlite import SQLiteQueue


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def queue(tmp_path: Path, clock: FakeClock) -> AsyncIterator[SQLiteQueue]:
    async with SQLiteQueue(tmp_path / "queue.db", max_attempts=3, clock=clock) as q:
        yield q


async def test_put_is_idempotent_while_the_job_exists(queue: SQLiteQueue) -> None:
    assert await queue.put("run_1")
    assert not await queue.put("run_1")
    [job] = await queue.get("w", lease_s=10)
    assert job.id.startswith("job_")
    assert not await queue.put("run_1")  # leased still counts
    await queue.ack(job, "w")
    assert await queue.put("run_1")  # a new job once the old one is gone


async def test_present_tells_which_runs_have_a_job(queue: SQLiteQueue) -> None:
    ids = [f"run-{i}" for i in range(1200)]  # more than one SQL batch
    for run_id in ids[::2]:
        await queue.put(run_id)
    assert await queue.present(ids) == set(ids[::2])
    assert await queue.present([]) == set()


async def test_get_leases_in_order_of_availability(queue: SQLiteQueue, clock: FakeClock) -> None:
    await queue.put("late", delay_s=5)
    await queue.put("early")
    assert [j.run_id for j in await queue.get("w", lease_s=10, limit=5)] == ["early"]
    clock.now += 5
    [job] = await queue.get("w", lease_s=10, limit=5)
    assert (job.run_id, job.attempts, job.max_attempts) == ("late", 1, 3)
    assert job.lease_expires_at == clock.now + 10


async def test_concurrent_gets_never_share_a_job(queue: SQLiteQueue) -> None:
    for i in range(100):
        await queue.put(f"run_{i}")
    batches = await asyncio.gather(*(queue.get(f"w{i}", lease_s=10, limit=3) for i in range(60)))
    ids = [job.id for batch in batches for job in batch]
    assert len(ids) == len(set(ids)) == 100
    assert await queue.stats() == QueueStats(ready=0, leased=100, dead=0)


async def test_expired_lease_is_taken_over(queue: SQLiteQueue, clock: FakeClock) -> None:
    await queue.put("run_1")
    [old] = await queue.get("crashed", lease_s=10)
    clock.now += 10
    assert await queue.get("other", lease_s=10) == []  # the lease holds up to its expiry
    clock.now += 0.001
    [new] = await queue.get("other", lease_s=10)
    assert new.id == old.id
    assert new.attempts == 2
    assert not await queue.extend(old, "crashed", lease_s=10)
    await queue.ack(old, "crashed")  # a no-op: the job is not theirs any more
    assert (await queue.stats()).leased == 1
    assert await queue.nack(old, "crashed", delay_s=0, error="late")  # lives on elsewhere
    await queue.bury(old, "crashed", error="late")
    await queue.release(old, "crashed")
    assert (await queue.stats()).leased == 1
    assert await queue.extend(new, "other", lease_s=10)
    await queue.ack(new, "other")
    assert await queue.stats() == QueueStats()


async def test_a_worker_that_leases_again_cannot_use_its_stale_job(
    queue: SQLiteQueue, clock: FakeClock
) -> None:
    await queue.put("run_1")
    [first] = await queue.get("w", lease_s=1)
    clock.now += 2
    [second] = await queue.get("w", lease_s=1)
    await queue.ack(first, "w")
    assert (await queue.stats()).leased == 1
    await queue.ack(second, "w")
    assert (await queue.stats()).leased == 0


async def test_a_just_expired_lease_can_still_be_extended(
    queue: SQLiteQueue, clock: FakeClock
) -> None:
    await queue.put("run_1")
    [job] = await queue.get("w", lease_s=1)
    clock.now += 3
    assert await queue.extend(job, "w", lease_s=10)
    assert job.lease_expires_at == clock.now + 10
    assert await queue.get("thief", lease_s=1) == []


async def test_nack_backs_off_then_dies(queue: SQLiteQueue, clock: FakeClock) -> None:
    await queue.put("run_1")
    for attempt in (1, 2):
        [job] = await queue.get("w", lease_s=10)
        assert job.attempts == attempt
        assert await queue.nack(job, "w", delay_s=30, error="boom")
        clock.now += 29.9
        assert await queue.get("w", lease_s=10) == []
        assert (await queue.stats()).ready == 1
        clock.now += 0.1
    [job] = await queue.get("w", lease_s=10)
    assert job.attempts == 3
    assert not await queue.nack(job, "w", delay_s=30, error="boom")
    clock.now += 1000
    assert await queue.get("w", lease_s=10) == []
    assert await queue.stats() == QueueStats(dead=1)
    assert not await queue.put("run_1")  # a dead job keeps its run id


async def test_release_does_not_count_an_attempt(queue: SQLiteQueue) -> None:
    await queue.put("run_1")
    [job] = await queue.get("w", lease_s=10)
    await queue.release(job, "w")
    [again] = await queue.get("w", lease_s=10)
    assert again.attempts == 1


async def test_bury_and_exhausted_jobs(queue: SQLiteQueue, clock: FakeClock) -> None:
    await queue.put("crashy")
    for _ in range(4):  # the worker dies every time: only the lease expiry counts attempts
        [job] = await queue.get("w", lease_s=1)
        clock.now += 2
    assert job.exhausted
    [job] = await queue.get("w", lease_s=1)
    await queue.bury(job, "w", error="gave up")
    assert await queue.stats() == QueueStats(dead=1)


async def test_stats(queue: SQLiteQueue, clock: FakeClock) -> None:
    for i in range(3):
        await queue.put(f"run_{i}")
        clock.now += 10
    await queue.put("later", delay_s=100)
    [job] = await queue.get("w", lease_s=10)
    assert job.run_id == "run_0"
    assert await queue.stats() == QueueStats(ready=3, leased=1, dead=0, oldest_ready_age_s=20.0)


async def test_wait_wakes_on_a_put(queue: SQLiteQueue) -> None:
    started = time.monotonic()
    await queue.wait(0.05)  # nothing put: the full timeout
    assert time.monotonic() - started >= 0.04

    waiter = asyncio.create_task(queue.wait(5))
    await asyncio.sleep(0.01)
    started = time.monotonic()
    await queue.put("run_1")
    await waiter
    assert time.monotonic() - started < 1

    await queue.put("run_2")  # nobody is waiting: the next wait returns at once
    started = time.monotonic()
    await queue.wait(5)
    assert time.monotonic() - started < 1


async def test_real_time_lease_expiry(tmp_path: Path) -> None:
    async with SQLiteQueue(tmp_path / "q.db") as queue:
        await queue.put("run_1")
        [old] = await queue.get("a", lease_s=0.05)
        assert await queue.get("b", lease_s=0.05) == []
        await asyncio.sleep(0.06)
        [new] = await queue.get("b", lease_s=5)
        assert (new.id, new.attempts) == (old.id, 2)
        assert queue.lease_expiries == 1  # counted for the metrics; a retry would not be
        await queue.ack(old, "a")
        await queue.ack(new, "b")
        assert await queue.stats() == QueueStats()


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


@dataclasses.dataclass
class Expected:
    """The model's view of one job row."""

    job_id: str | None  # learned at the first lease
    status: str = "ready"
    attempts: int = 0
    available_at: float = 0.0
    owner: str | None = None
    lease_expires_at: float = 0.0


LEASE_S = 10.0
MAX_ATTEMPTS = 3


class QueueMachine(RuleBasedStateMachine):
    """Random put/get/ack/nack/release/extend/expire sequences against a model of the queue."""

    leases = Bundle("leases")

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock()
        self.queue = SQLiteQueue(
            Path(self.tmp.name) / "q.db", max_attempts=MAX_ATTEMPTS, clock=self.clock
        )
        self.jobs: dict[str, Expected] = {}  # by run id: the rows that exist
        self.acked: set[str] = set()  # job ids
        self.puts: dict[str, int] = {}  # run id -> accepted puts
        self.endings: dict[str, int] = {}  # run id -> acks + burials

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return self.loop.run_until_complete(coro)

    def current(self, job: Job, worker: str) -> Expected | None:
        expected = self.jobs.get(job.run_id)
        if (
            expected is not None
            and expected.status == "leased"
            and expected.job_id == job.id
            and expected.owner == worker
            and expected.attempts == job.attempts
        ):
            return expected
        return None

    def end(self, run_id: str) -> None:
        self.endings[run_id] = self.endings.get(run_id, 0) + 1

    @rule(run_id=st.sampled_from([f"run_{i}" for i in range(3)]), delay_s=st.sampled_from([0, 5]))
    def put(self, run_id: str, delay_s: float) -> None:
        accepted = self.run(self.queue.put(run_id, delay_s=delay_s))
        assert accepted == (run_id not in self.jobs)
        if accepted:
            self.jobs[run_id] = Expected(job_id=None, available_at=self.clock.now + delay_s)
            self.puts[run_id] = self.puts.get(run_id, 0) + 1

    @rule(target=leases, worker=st.sampled_from(["a", "b"]), limit=st.integers(1, 3))
    def get(self, worker: str, limit: int) -> object:
        now = self.clock.now
        due = {
            run_id
            for run_id, e in self.jobs.items()
            if (e.status == "ready" and e.available_at <= now)
            or (e.status == "leased" and e.lease_expires_at < now)
        }
        jobs: list[Job] = self.run(self.queue.get(worker, lease_s=LEASE_S, limit=limit))
        assert len(jobs) == min(limit, len(due))
        assert len({job.id for job in jobs}) == len(jobs)
        for job in jobs:
            assert job.run_id in due
            assert job.id not in self.acked
            expected = self.jobs[job.run_id]
            assert expected.job_id in (None, job.id)
            expected.job_id, expected.status, expected.owner = job.id, "leased", worker
            expected.attempts += 1
            expected.lease_expires_at = now + LEASE_S
            assert job.attempts == expected.attempts
        return multiple(*[(job, worker) for job in jobs])

    @rule(lease=leases)
    def ack(self, lease: tuple[Job, str]) -> None:
        job, worker = lease
        expected = self.current(job, worker)
        self.run(self.queue.ack(job, worker))
        if expected is not None:
            del self.jobs[job.run_id]
            self.acked.add(job.id)
            self.end(job.run_id)

    @rule(lease=leases, delay_s=st.sampled_from([0, 5]))
    def nack(self, lease: tuple[Job, str], delay_s: float) -> None:
        job, worker = lease
        expected = self.current(job, worker)
        retried = self.run(self.queue.nack(job, worker, delay_s=delay_s, error="x"))
        if expected is None:
            assert retried
            return
        assert retried == (expected.attempts < MAX_ATTEMPTS)
        expected.status = "ready" if retried else "dead"
        expected.available_at = self.clock.now + delay_s
        expected.owner = None
        if not retried:
            self.end(job.run_id)

    @rule(lease=leases)
    def release(self, lease: tuple[Job, str]) -> None:
        job, worker = lease
        expected = self.current(job, worker)
        self.run(self.queue.release(job, worker))
        if expected is not None:
            expected.status, expected.owner = "ready", None
            expected.attempts -= 1
            expected.available_at = self.clock.now

    @rule(lease=leases)
    def extend(self, lease: tuple[Job, str]) -> None:
        job, worker = lease
        expected = self.current(job, worker)
        extended = self.run(self.queue.extend(job, worker, lease_s=LEASE_S))
        assert extended == (expected is not None)
        if expected is not None:
            expected.lease_expires_at = self.clock.now + LEASE_S

    @rule(dt_s=st.sampled_from([LEASE_S / 2, LEASE_S + 0.5]))
    def advance(self, dt_s: float) -> None:
        self.clock.now += dt_s

    @invariant()
    def counts_match(self) -> None:
        stats: QueueStats = self.run(self.queue.stats())
        statuses = [e.status for e in self.jobs.values()]
        counts = (statuses.count("ready"), statuses.count("leased"), statuses.count("dead"))
        assert (stats.ready, stats.leased, stats.dead) == counts

    def teardown(self) -> None:
        try:
            # Every accepted put ends acked or dead: drain what is left and count.
            self.clock.now += 1000
            while jobs := self.run(self.queue.get("drain", lease_s=LEASE_S, limit=10)):
                for job in jobs:
                    assert job.id not in self.acked
                    self.run(self.queue.ack(job, "drain"))
                    self.acked.add(job.id)
                    self.end(job.run_id)
            rows = self.run(self.queue.db.query("SELECT run_id FROM jobs"))
            dead = {run_id for (run_id,) in rows}
            assert dead == {r for r, e in self.jobs.items() if e.status == "dead"}
            assert self.puts == self.endings
        finally:
            self.run(self.queue.aclose())
            self.loop.close()
            self.tmp.cleanup()


def test_queue_never_loses_or_repeats_an_acked_job() -> None:
    run_state_machine_as_test(
        QueueMachine,
        settings=settings(max_examples=30, stateful_step_count=40, deadline=None),
    )


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
