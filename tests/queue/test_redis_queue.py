"""Redis-only queue tests: failures, restarts, trimming, cross-process wake-ups, the PEL.

The behaviour every queue shares is in ``test_conformance.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from surgeflow.errors import QueueError
from surgeflow.queue.base import QueueStats
from surgeflow.queue.redis import GROUP, RedisQueue, queue_keys
from tests.services import RedisServer


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server this test alone uses, so it may pause or restart it."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.resume()
        server.stop()


@pytest.fixture
async def client(own_redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    redis = aioredis.Redis.from_url(own_redis.url, decode_responses=True)
    try:
        yield redis
    finally:
        await redis.aclose()


def test_keys_share_one_hash_tag() -> None:
    assert queue_keys("runs") == [
        "surgeflow:queue:{runs}:jobs",
        "surgeflow:queue:{runs}:index",
        "surgeflow:queue:{runs}:leases",
        "surgeflow:queue:{runs}:delayed",
        "surgeflow:queue:{runs}:dead",
    ]
    with pytest.raises(ValueError, match="braces"):
        RedisQueue("redis://127.0.0.1:1/0", name="a{b}")


async def test_repr_hides_the_password() -> None:
    queue = RedisQueue("redis://user:secret@127.0.0.1:1/0", name="q")
    try:
        assert "secret" not in repr(queue)
        assert repr(queue).startswith("<RedisQueue redis://user:***@127.0.0.1:1/0 name='q'")
    finally:
        await queue.aclose()


async def test_an_unreachable_redis_is_a_queue_error_in_bounded_time() -> None:
    queue = RedisQueue("redis://127.0.0.1:1/0", timeout_s=0.5)  # nothing listens on port 1
    try:
        started = time.monotonic()
        with pytest.raises(QueueError, match="is Redis up"):
            await queue.put("run_1")
        assert time.monotonic() - started < 2
    finally:
        await queue.aclose()


async def test_a_stalled_redis_times_out_then_recovers(own_redis: RedisServer) -> None:
    async with RedisQueue(own_redis.url, timeout_s=0.3) as queue:
        await queue.put("run_1")
        own_redis.pause()
        try:
            started = time.monotonic()
            with pytest.raises(QueueError, match="timed out"):
                await queue.get("w", lease_s=10)
            assert time.monotonic() - started < 1.5
            started = time.monotonic()
            await queue.wait(0.2)  # never raises: sleeps the timeout out
            assert time.monotonic() - started < 1.5
        finally:
            own_redis.resume()
        [job] = await queue.get("w", lease_s=10)
        assert job.run_id == "run_1"


async def test_a_restarted_redis_is_used_again(own_redis: RedisServer) -> None:
    async with RedisQueue(own_redis.url) as queue:
        await queue.put("run_1")
        await queue.get("w", lease_s=10)
        own_redis.restart()  # no persistence: every job is gone (the Reconciler restores them)
        assert await queue.present(["run_1"]) == set()
        assert await queue.put("run_1")  # the stream and its consumer group come back
        [job] = await queue.get("w", lease_s=10)
        assert (job.run_id, job.attempts) == ("run_1", 1)
        await queue.ack(job, "w")
        assert await queue.stats() == QueueStats()


async def test_trimmed_jobs_are_not_present_and_put_restores_them(
    own_redis: RedisServer, client: aioredis.Redis
) -> None:
    async with RedisQueue(own_redis.url, max_len=10) as queue:
        await queue.put("leased")
        [leased] = await queue.get("w", lease_s=30)
        ids = [f"run_{i}" for i in range(1000)]
        for run_id in ids:
            await queue.put(run_id)
        assert await client.xlen(queue_keys("runs")[0]) < 500  # trimmed, approximately
        present = await queue.present(ids)
        missing = [run_id for run_id in ids if run_id not in present]
        assert missing
        assert missing == ids[: len(missing)]  # the oldest went first
        assert await queue.present(["leased"]) == {"leased"}  # a lease survives trimming
        assert await queue.extend(leased, "w", lease_s=30)
        delivered: list[str] = []
        for _ in range(20):  # rounds of draining, then re-putting what is missing, as the
            while jobs := await queue.get("w", lease_s=30, limit=100):  # Reconciler would
                for job in jobs:
                    await queue.ack(job, "w")
                delivered.extend(job.run_id for job in jobs)
            if len(delivered) == len(ids):
                break
            for run_id in set(ids) - set(delivered) - await queue.present(ids):
                assert await queue.put(run_id)
        assert sorted(delivered) == sorted(ids)  # each once: no trimmed entry came back
        await queue.ack(leased, "w")
        assert await queue.stats() == QueueStats()


async def test_wait_wakes_on_another_processs_put(own_redis: RedisServer) -> None:
    async with RedisQueue(own_redis.url) as worker, RedisQueue(own_redis.url) as gateway:
        await gateway.put("run_1")
        [job] = await worker.get("w", lease_s=30)
        started = time.monotonic()
        await worker.wait(0.3)  # a leased entry is not news: the whole timeout
        assert time.monotonic() - started >= 0.25

        waiter = asyncio.create_task(worker.wait(5))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await gateway.put("run_2")
        await asyncio.wait_for(waiter, 2)
        assert time.monotonic() - started < 1
        assert [j.run_id for j in await worker.get("w", lease_s=30)] == ["run_2"]
        await worker.ack(job, "w")


async def test_the_pending_list_shows_who_holds_a_job(
    own_redis: RedisServer, client: aioredis.Redis
) -> None:
    jobs_key = queue_keys("runs")[0]
    async with RedisQueue(own_redis.url) as queue:
        await queue.put("run_1")
        [old] = await queue.get("crashed", lease_s=0.2)
        [entry] = await client.xpending_range(jobs_key, GROUP, "-", "+", 10)
        assert (entry["consumer"], entry["times_delivered"]) == ("crashed", 1)
        await asyncio.sleep(0.3)
        [new] = await queue.get("other", lease_s=30)
        [entry] = await client.xpending_range(jobs_key, GROUP, "-", "+", 10)
        assert (entry["consumer"], entry["times_delivered"]) == ("other", 2)
        assert new.attempts == entry["times_delivered"]
        await queue.nack(new, "other", delay_s=0, error="boom")
        assert await client.xpending_range(jobs_key, GROUP, "-", "+", 10) == []
        [again] = await queue.get("other", lease_s=30)
        await queue.bury(again, "other", error="gave up")
        dead: Any = await client.xrange(queue_keys("runs")[4])
        [(_, fields)] = dead
        assert (fields["run"], fields["error"], fields["attempts"]) == ("run_1", "gave up", "3")
        assert old.id == again.id


async def test_consumers_of_exited_workers_are_pruned(
    own_redis: RedisServer, client: aioredis.Redis
) -> None:
    jobs_key = queue_keys("runs")[0]
    async with RedisQueue(own_redis.url) as queue:
        for run_id in ("run_1", "run_2", "run_3"):
            await queue.put(run_id)
        [done] = await queue.get("exited", lease_s=30)
        await queue.ack(done, "exited")
        [held] = await queue.get("busy", lease_s=30)
        [kept] = await queue.get("slow", lease_s=30)
        assert await queue.prune_consumers(3600) == 0  # nobody idle that long
        await asyncio.sleep(0.05)
        assert await queue.prune_consumers(0.01) == 1  # "exited": it holds nothing
        names = {c["name"] for c in await client.xinfo_consumers(jobs_key, GROUP)}
        assert names == {"busy", "slow"}
        await queue.ack(held, "busy")
        assert await queue.prune_consumers(0) == 1
        names = {c["name"] for c in await client.xinfo_consumers(jobs_key, GROUP)}
        assert names == {"slow"}  # still holds run_3
        assert kept.run_id == "run_3"


async def test_batched_calls_survive_a_script_flush(
    own_redis: RedisServer, client: aioredis.Redis
) -> None:
    async with RedisQueue(own_redis.url) as queue:
        await queue.put("run_0")
        await client.script_flush()  # as after a restart: Redis knows no script
        added = await asyncio.gather(*(queue.put(f"run_{i}") for i in range(5)))
        assert added == [False, True, True, True, True]  # each ran exactly once
        jobs = await queue.get("w", lease_s=30, limit=10)
        await client.script_flush()
        await asyncio.gather(*(queue.ack(job, "w") for job in jobs))
        assert await queue.stats() == QueueStats()
