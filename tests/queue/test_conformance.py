"""The Queue contract, run against every backend (see ``conftest.py``): leases, retries, dead
jobs, concurrency, and a model-based test that no acked job is lost or delivered again."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import tempfile
import time
from collections.abc import Coroutine
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

from surgeflow.queue.base import Job, Queue, QueueStats
from tests.queue.conftest import FakeClock, MakeQueue, open_queue, queue_target


async def test_put_is_idempotent_while_the_job_exists(queue: Queue) -> None:
    assert await queue.put("run_1")
    assert not await queue.put("run_1")
    [job] = await queue.get("w", lease_s=10)
    assert job.id.startswith("job_")
    assert not await queue.put("run_1")  # leased still counts
    await queue.ack(job, "w")
    assert await queue.put("run_1")  # a new job once the old one is gone


async def test_present_tells_which_runs_have_a_job(queue: Queue) -> None:
    ids = [f"run-{i}" for i in range(1200)]  # more than one batch
    for run_id in ids[::2]:
        await queue.put(run_id)
    [leased] = await queue.get("w", lease_s=10)
    [dead] = await queue.get("w", lease_s=10)
    await queue.bury(dead, "w", error="x")
    await queue.put("delayed", delay_s=100)
    expected = {*ids[::2], "delayed"}
    assert {leased.run_id, dead.run_id} <= expected
    assert await queue.present([*ids, "delayed"]) == expected
    assert await queue.present([]) == set()


async def test_get_leases_in_order_of_availability(queue: Queue, clock: FakeClock) -> None:
    await queue.put("late", delay_s=5)
    await queue.put("early")
    assert [j.run_id for j in await queue.get("w", lease_s=10, limit=5)] == ["early"]
    clock.now += 5
    [job] = await queue.get("w", lease_s=10, limit=5)
    assert (job.run_id, job.attempts, job.max_attempts) == ("late", 1, 3)
    assert job.lease_expires_at == clock.now + 10


async def test_get_and_ack(queue: Queue) -> None:
    for i in range(5):
        await queue.put(f"run_{i}")
    jobs = await queue.get("w", lease_s=10, limit=3)
    assert [job.run_id for job in jobs] == ["run_0", "run_1", "run_2"]
    assert await queue.stats() == QueueStats(ready=2, leased=3)
    for job in jobs:
        await queue.ack(job, "w")
    assert await queue.stats() == QueueStats(ready=2)
    assert await queue.present([job.run_id for job in jobs]) == set()
    assert await queue.get("w", lease_s=10, limit=0) == []
    with pytest.raises(ValueError, match="lease_s"):
        await queue.get("w", lease_s=0)


async def test_concurrent_gets_never_share_a_job(queue: Queue) -> None:
    for i in range(100):
        await queue.put(f"run_{i}")
    batches = await asyncio.gather(*(queue.get(f"w{i}", lease_s=10, limit=3) for i in range(60)))
    ids = [job.id for batch in batches for job in batch]
    assert len(ids) == len(set(ids)) == 100
    assert await queue.stats() == QueueStats(ready=0, leased=100, dead=0)


async def test_expired_lease_is_taken_over(queue: Queue, clock: FakeClock) -> None:
    await queue.put("run_1")
    [old] = await queue.get("crashed", lease_s=10)
    clock.now += 10
    assert await queue.get("other", lease_s=10) == []  # the lease holds up to its expiry
    clock.now += 0.001
    [new] = await queue.get("other", lease_s=10)
    assert new.id == old.id
    assert new.attempts == 2
    assert queue.lease_expiries == 1
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
    queue: Queue, clock: FakeClock
) -> None:
    await queue.put("run_1")
    [first] = await queue.get("w", lease_s=1)
    clock.now += 2
    [second] = await queue.get("w", lease_s=1)
    await queue.ack(first, "w")
    assert (await queue.stats()).leased == 1
    await queue.ack(second, "w")
    assert (await queue.stats()).leased == 0


async def test_extend_keeps_the_job_from_being_reclaimed(queue: Queue, clock: FakeClock) -> None:
    await queue.put("run_1")
    [job] = await queue.get("w", lease_s=10)
    for _ in range(5):
        clock.now += 8
        assert await queue.extend(job, "w", lease_s=10)
        assert job.lease_expires_at == clock.now + 10
        assert await queue.get("thief", lease_s=10) == []
    clock.now += 10.001
    [taken] = await queue.get("thief", lease_s=10)
    assert (taken.id, taken.attempts, queue.lease_expiries) == (job.id, 2, 1)


async def test_a_just_expired_lease_can_still_be_extended(queue: Queue, clock: FakeClock) -> None:
    await queue.put("run_1")
    [job] = await queue.get("w", lease_s=1)
    clock.now += 3
    assert await queue.extend(job, "w", lease_s=10)
    assert job.lease_expires_at == clock.now + 10
    assert await queue.get("thief", lease_s=1) == []


async def test_nack_backs_off_then_dies(queue: Queue, clock: FakeClock) -> None:
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
    assert await queue.present(["run_1"]) == {"run_1"}
    assert not await queue.put("run_1")  # a dead job keeps its run id


async def test_nack_without_delay_is_ready_at_once(queue: Queue) -> None:
    await queue.put("run_1")
    [job] = await queue.get("w", lease_s=10)
    assert await queue.nack(job, "w", delay_s=0, error="boom")
    [again] = await queue.get("w", lease_s=10)
    assert (again.id, again.attempts) == (job.id, 2)


async def test_release_does_not_count_an_attempt(queue: Queue) -> None:
    await queue.put("run_1")
    [job] = await queue.get("w", lease_s=10)
    await queue.release(job, "w")
    assert await queue.stats() == QueueStats(ready=1)
    [again] = await queue.get("w", lease_s=10)
    assert (again.id, again.attempts) == (job.id, 1)


async def test_bury_and_exhausted_jobs(queue: Queue, clock: FakeClock) -> None:
    await queue.put("crashy")
    for _ in range(4):  # the worker dies every time: only the lease expiry counts attempts
        [job] = await queue.get("w", lease_s=1)
        clock.now += 2
    assert job.exhausted
    [job] = await queue.get("w", lease_s=1)
    await queue.bury(job, "w", error="gave up")
    assert await queue.stats() == QueueStats(dead=1)
    assert await queue.get("w", lease_s=1) == []
    assert not await queue.put("crashy")


async def test_stats(queue: Queue, clock: FakeClock) -> None:
    assert await queue.stats() == QueueStats()
    for i in range(3):
        await queue.put(f"run_{i}")
        clock.now += 10
    await queue.put("later", delay_s=100)  # a delayed job counts as ready, not yet as waiting
    [job] = await queue.get("w", lease_s=10)
    assert job.run_id == "run_0"
    assert await queue.stats() == QueueStats(ready=3, leased=1, dead=0, oldest_ready_age_s=20.0)


async def test_wait_wakes_on_a_put(queue: Queue) -> None:
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


async def test_real_time_lease_expiry(make_queue: MakeQueue) -> None:
    queue = await make_queue()
    await queue.put("run_1")
    [old] = await queue.get("a", lease_s=0.3)
    assert await queue.get("b", lease_s=0.3) == []
    await asyncio.sleep(0.4)
    [new] = await queue.get("b", lease_s=5)
    assert (new.id, new.attempts) == (old.id, 2)
    assert queue.lease_expiries == 1  # counted for the metrics; a retry would not be
    await queue.ack(old, "a")
    await queue.ack(new, "b")
    assert await queue.stats() == QueueStats()


async def test_real_time_extend_holds_the_lease(make_queue: MakeQueue) -> None:
    queue = await make_queue()
    await queue.put("run_1")
    [job] = await queue.get("a", lease_s=0.5)
    for _ in range(8):  # 0.8 s in all, past the first lease
        await asyncio.sleep(0.1)
        assert await queue.extend(job, "a", lease_s=0.5)
        assert await queue.get("b", lease_s=5) == []
    await asyncio.sleep(0.6)  # no more extensions: the lease runs out
    [taken] = await queue.get("b", lease_s=5)
    assert (taken.id, taken.attempts) == (job.id, 2)
    assert not await queue.extend(job, "a", lease_s=0.5)


async def test_real_time_nack_delay(make_queue: MakeQueue) -> None:
    queue = await make_queue()
    await queue.put("run_1")
    [job] = await queue.get("w", lease_s=5)
    assert await queue.nack(job, "w", delay_s=0.3, error="boom")
    assert await queue.get("w", lease_s=5) == []
    await asyncio.sleep(0.4)
    [again] = await queue.get("w", lease_s=5)
    assert again.attempts == 2


async def drain(queue: Queue, worker: str, delivered: list[str], work_s: float = 0.0) -> None:
    """Lease and ack until no job is left anywhere (other workers' leases included)."""
    while True:
        jobs = await queue.get(worker, lease_s=30, limit=4)
        if jobs and work_s:
            await asyncio.sleep(work_s)
        for job in jobs:
            await queue.ack(job, worker)
        delivered.extend(job.run_id for job in jobs)
        if not jobs:
            stats = await queue.stats()
            if stats.ready == stats.leased == 0:
                return
            await asyncio.sleep(0.001)


async def test_concurrent_consumers_get_each_job_exactly_once(make_queue: MakeQueue) -> None:
    producer = await make_queue()
    consumers = [await make_queue() for _ in range(4)]
    for i in range(500):
        await producer.put(f"run_{i}")
    delivered: dict[str, list[str]] = {f"w{i}": [] for i in range(4)}
    await asyncio.wait_for(
        asyncio.gather(
            *(
                drain(q, w, got, work_s=0.002)
                for (w, got), q in zip(delivered.items(), consumers, strict=True)
            )
        ),
        30,
    )
    runs = [run_id for got in delivered.values() for run_id in got]
    assert sorted(runs) == sorted(f"run_{i}" for i in range(500))  # each exactly once
    assert sum(1 for got in delivered.values() if got) >= 2  # they really competed
    assert await producer.stats() == QueueStats()


@dataclasses.dataclass
class Expected:
    """The model's view of one job."""

    job_id: str | None  # learned at the first lease
    status: str = "ready"
    attempts: int = 0
    available_at: float = 0.0
    owner: str | None = None
    lease_expires_at: float = 0.0


LEASE_S = 10.0
MAX_ATTEMPTS = 3


class QueueMachine(RuleBasedStateMachine):
    """Random put/get/ack/nack/release/extend/expire sequences against a model of the queue.

    ``backend`` and ``target_for`` are set on a subclass per test (see `machine_for`).
    """

    backend: str
    target_for: Any  # (temporary directory) -> target
    leases = Bundle("leases")

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock()
        self.queue = open_queue(
            self.backend,
            self.target_for(Path(self.tmp.name)),
            max_attempts=MAX_ATTEMPTS,
            clock=self.clock,
        )
        self.jobs: dict[str, Expected] = {}  # by run id: the jobs that exist
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
    def bury(self, lease: tuple[Job, str]) -> None:
        job, worker = lease
        expected = self.current(job, worker)
        self.run(self.queue.bury(job, worker, error="x"))
        if expected is not None:
            expected.status, expected.owner = "dead", None
            self.end(job.run_id)

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
            dead = {r for r, e in self.jobs.items() if e.status == "dead"}
            assert self.run(self.queue.present([f"run_{i}" for i in range(3)])) == dead
            assert self.run(self.queue.stats()) == QueueStats(dead=len(dead))
            assert self.puts == self.endings
        finally:
            self.run(self.queue.aclose())
            self.loop.close()
            self.tmp.cleanup()


def test_queue_never_loses_or_repeats_an_acked_job(
    queue_backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    base = queue_target(queue_backend, request, tmp_path)
    examples = itertools.count()

    def target_for(directory: Path) -> str:
        if queue_backend == "sqlite":
            return str(directory / "q.db")
        return f"{base}-{next(examples)}"  # a fresh queue name per example

    machine = type(
        "Machine",
        (QueueMachine,),
        {"backend": queue_backend, "target_for": staticmethod(target_for)},
    )
    run_state_machine_as_test(
        machine,
        settings=settings(max_examples=30, stateful_step_count=40, deadline=None),
    )
