"""The Reconciler against a real store and a real Redis that loses its data."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from surgeflow.queue.base import QueueStats
from surgeflow.queue.reconciler import Reconciler
from surgeflow.queue.redis import RedisQueue
from surgeflow.store.base import Run, RunStatus
from surgeflow.store.sqlite import SQLiteStore
from tests.queue.conftest import FakeClock, flush_redis
from tests.services import RedisServer


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    async with SQLiteStore(tmp_path / "store.db") as store:
        yield store


@pytest.fixture
async def queue(own_redis: RedisServer) -> AsyncIterator[RedisQueue]:
    async with RedisQueue(own_redis.url) as queue:
        yield queue


async def submit(store: SQLiteStore, queue: RedisQueue, n: int) -> list[str]:
    ids = []
    for i in range(n):
        run, _ = await store.create_run("demo", {"i": i})
        assert await queue.put(run.id)
        ids.append(run.id)
    return ids


async def test_losing_redis_loses_no_run(
    store: SQLiteStore, queue: RedisQueue, own_redis: RedisServer
) -> None:
    queued = await submit(store, queue, 6)
    running, finished, cancelled = queued.pop(), queued.pop(), queued.pop()
    await store.start_run(running)
    await store.start_run(finished)
    await store.finish_run(finished, RunStatus.SUCCEEDED, output={})
    await store.request_cancel(cancelled)
    reconciler = Reconciler(store, queue, grace_s=0)
    assert await reconciler.reconcile_once() == 0  # nothing lost yet

    own_redis.restart()  # no persistence: every job is gone
    assert await queue.stats() == QueueStats()
    assert await reconciler.reconcile_once() == 4
    waiting = {*queued, running}
    assert await queue.present([*waiting, finished, cancelled]) == waiting  # terminal: not put
    assert await reconciler.reconcile_once() == 0  # a second round finds nothing missing
    assert (reconciler.rounds, reconciler.reenqueued) == (3, 4)

    jobs = await queue.get("w", lease_s=30, limit=10)
    assert sorted(job.run_id for job in jobs) == sorted(waiting)
    assert all(job.attempts == 1 for job in jobs)


async def test_recently_updated_runs_get_a_grace_period(
    store: SQLiteStore, queue: RedisQueue, own_redis: RedisServer
) -> None:
    await submit(store, queue, 3)
    flush_redis(own_redis)
    clock = FakeClock()
    clock.now = (await store.list_runs(limit=1))[0].updated_at + 5
    reconciler = Reconciler(store, queue, grace_s=10, clock=clock)
    assert await reconciler.reconcile_once() == 0  # their put may still be on its way
    clock.now += 5
    assert await reconciler.reconcile_once() == 3


class StaleListing:
    """A store whose listing was taken before a run finished (a race with a worker)."""

    def __init__(self, store: SQLiteStore, runs: list[Run]) -> None:
        self.store = store
        self.runs = runs

    async def list_runs(self, *, before: str | None = None, **kwargs: Any) -> list[Run]:
        return self.runs if before is None else []

    async def get_run(self, run_id: str) -> Run:
        return await self.store.get_run(run_id)


async def test_a_run_that_finishes_meanwhile_is_not_put_back(
    store: SQLiteStore, queue: RedisQueue
) -> None:
    [run_id] = await submit(store, queue, 1)
    listing = await store.list_runs(limit=10)
    [job] = await queue.get("w", lease_s=30)
    await store.finish_run(run_id, RunStatus.SUCCEEDED, output={})
    await queue.ack(job, "w")
    reconciler = Reconciler(StaleListing(store, listing), queue, grace_s=0)  # type: ignore[arg-type]
    assert await reconciler.reconcile_once() == 0
    assert await queue.present([run_id]) == set()


async def test_a_round_pages_through_every_waiting_run(
    store: SQLiteStore, queue: RedisQueue, own_redis: RedisServer
) -> None:
    queued = await submit(store, queue, 7)
    await store.finish_run(queued[3], RunStatus.SUCCEEDED, output={})
    flush_redis(own_redis)
    reconciler = Reconciler(store, queue, grace_s=0, page_size=2)
    assert await reconciler.reconcile_once() == 6  # four pages of two
    waiting = set(queued) - {queued[3]}
    assert await queue.present(queued) == waiting


async def eventually(predicate: Callable[[], bool], *, timeout_s: float) -> None:
    for _ in range(int(timeout_s / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not true within {timeout_s} s")


async def test_run_reconciles_until_stopped(
    store: SQLiteStore, queue: RedisQueue, own_redis: RedisServer
) -> None:
    ids = await submit(store, queue, 3)
    reconciler = Reconciler(store, queue, interval_s=0.05, grace_s=0)
    task = asyncio.create_task(reconciler.run())
    try:
        await asyncio.sleep(0.1)
        flush_redis(own_redis)
        await eventually(lambda: reconciler.reenqueued >= 3, timeout_s=5)
        assert await queue.present(ids) == set(ids)
        own_redis.stop()  # a failing round is counted, and the loop goes on
        await eventually(lambda: reconciler.failures > 0, timeout_s=20)
    finally:
        reconciler.stop()
        await asyncio.wait_for(task, 10)
    assert reconciler.reenqueued == 3
    assert "reenqueued=3" in repr(reconciler)
