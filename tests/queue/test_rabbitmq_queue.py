"""RabbitMQ-only queue tests: failures, lost and stale tickets, dead letters, several objects on
one queue, buffered tickets of a closed object, a dropped connection.

The behaviour every queue shares is in ``test_conformance.py``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from surgeflow.errors import ConfigError, QueueError
from surgeflow.queue.base import Job, QueueStats
from surgeflow.queue.rabbitmq import RabbitMQQueue, queue_names
from tests.queue.conftest import FakeClock, queue_target, rabbitmq_name
from tests.services import free_port
from tests.tools import require_program

Opener = Callable[..., RabbitMQQueue]


@pytest.fixture
def target(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str, str]:
    """(RabbitMQ URL, index URL, name) of a fresh queue, deleted after the test."""
    url, index_url, name = queue_target("rabbitmq", request, tmp_path).split("#")
    return url, index_url, name


@pytest.fixture
def open_queue(target: tuple[str, str, str], clock: FakeClock) -> Opener:
    """Queue objects (processes, as far as the queue can tell) on the test's queue."""
    url, index_url, name = target

    def make(**options: Any) -> RabbitMQQueue:
        settings: dict[str, Any] = {"clock": clock, "timeout_s": 2.0, **options}
        return RabbitMQQueue(url, index_url=index_url, name=name, **settings)

    return make


@pytest.fixture
async def broker(target: tuple[str, str, str]) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """A channel of the test's own, to look into (or tamper with) the queue's RabbitMQ queues."""
    connection = await aio_pika.connect(target[0], timeout=5)
    try:
        yield await connection.channel()
    finally:
        await connection.close()


async def waiting(channel: aio_pika.abc.AbstractChannel, queue: str) -> int:
    """How many messages wait in ``queue`` (not counting those delivered and unacked)."""
    declared = await channel.declare_queue(queue, durable=True)
    count = declared.declaration_result.message_count
    assert count is not None
    return count


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def timed_wait(queue: RabbitMQQueue, timeout_s: float) -> float:
    """How long ``queue.wait(timeout_s)`` took."""
    started = time.monotonic()
    await queue.wait(timeout_s)
    return time.monotonic() - started


async def test_repr_hides_the_passwords() -> None:
    queue = RabbitMQQueue(
        "amqp://user:secret@127.0.0.1:1/vhost",
        index_url="postgresql://pg:hidden@127.0.0.1:1/db",
        name="q",
    )
    try:
        assert "secret" not in repr(queue)
        assert "hidden" not in repr(queue)
        assert repr(queue).startswith(
            "<RabbitMQQueue amqp://user:***@127.0.0.1:1/vhost name='q'"
            " index=postgresql://pg:***@127.0.0.1:1/db state=unopened"
        )
    finally:
        await queue.aclose()


def test_bad_settings_are_refused() -> None:
    index = "postgresql://127.0.0.1:1/db"
    with pytest.raises(ConfigError, match="not a RabbitMQ URL"):
        RabbitMQQueue("redis://user:secret@127.0.0.1:1/0", index_url=index)
    with pytest.raises(ConfigError, match="not a PostgreSQL URL"):
        RabbitMQQueue("amqp://127.0.0.1:1/", index_url="sqlite:///x.db")
    with pytest.raises(ValueError, match="queue name"):
        RabbitMQQueue("amqp://127.0.0.1:1/", index_url=index, name="")
    with pytest.raises(ValueError, match="prefetch"):
        RabbitMQQueue("amqp://127.0.0.1:1/", index_url=index, prefetch=0)
    assert queue_names("runs") == ("surgeflow.runs", "surgeflow.runs.dead")


async def test_an_unreachable_rabbitmq_is_a_queue_error_in_bounded_time(
    rabbitmq_index_url: str,
) -> None:
    queue = RabbitMQQueue(
        f"amqp://guest:secret@127.0.0.1:{free_port()}/",  # nothing listens there
        index_url=rabbitmq_index_url,
        name=rabbitmq_name(),
        timeout_s=0.5,
    )
    try:
        started = time.monotonic()
        with pytest.raises(QueueError, match="is RabbitMQ up") as raised:
            await queue.put("run_1")
        assert time.monotonic() - started < 2
        assert "secret" not in str(raised.value)
        assert "guest:***@" in str(raised.value)
        started = time.monotonic()
        await queue.wait(0.1)  # never raises
        assert time.monotonic() - started < 1
    finally:
        await queue.aclose()


async def test_an_unreachable_index_is_a_queue_error_in_bounded_time() -> None:
    queue = RabbitMQQueue(
        "amqp://guest:guest@127.0.0.1:1/",
        index_url=f"postgresql://pg:secret@127.0.0.1:{free_port()}/db",
        timeout_s=0.5,
    )
    try:
        started = time.monotonic()
        with pytest.raises(QueueError, match="is PostgreSQL up") as raised:
            await queue.get("w", lease_s=10)
        assert time.monotonic() - started < 2
        assert "secret" not in str(raised.value)
    finally:
        await queue.aclose()


async def test_lost_tickets_are_issued_again_after_redeliver_after_s(
    open_queue: Opener,
    broker: aio_pika.abc.AbstractChannel,
    target: tuple[str, str, str],
    clock: FakeClock,
) -> None:
    tickets = queue_names(target[2])[0]
    start = clock.now
    async with open_queue() as gateway:
        await gateway.put("a")
        await gateway.put("b")
    assert await waiting(broker, tickets) == 2
    await (await broker.declare_queue(tickets, durable=True)).purge()  # RabbitMQ lost them

    async def sweep(at: float) -> None:
        """Have another process get (its first get sweeps) and close, at ``at``: it takes the
        expired lease of "a", not "b", and any ticket it was handed goes back to RabbitMQ."""
        clock.now = at
        async with open_queue() as other:
            [again] = await other.get("other", lease_s=1)
            assert again.run_id == "a"

    async with open_queue(redeliver_after_s=30.0) as worker:
        [a] = await worker.get("w", lease_s=1)  # from the index; tickets come to it from now on
        assert a.run_id == "a"
        await sweep(start + 29)  # b's ticket is not overdue yet
        assert await timed_wait(worker, 0.3) >= 0.25
        await sweep(start + 35)  # now it is: a new one wakes the worker
        assert await timed_wait(worker, 5) < 2
        [b] = await worker.get("w", lease_s=10)
        assert (b.run_id, b.attempts) == ("b", 1)
        await worker.ack(b, "w")
    assert await waiting(broker, tickets) == 0  # the worker acked the ticket it used


async def test_a_stale_ticket_is_dropped(
    open_queue: Opener, broker: aio_pika.abc.AbstractChannel, target: tuple[str, str, str]
) -> None:
    tickets = queue_names(target[2])[0]
    async with open_queue() as gateway:
        worker = open_queue()
        try:
            assert await worker.get("w", lease_s=10) == []  # tickets come to it from now on
            await gateway.put("run_1")
            assert await timed_wait(worker, 5) < 2  # the ticket is in the worker's buffer
            [job] = await gateway.get("g", lease_s=10)  # the job leased from the index
            await gateway.ack(job, "g")
            assert await worker.get("w", lease_s=10) == []  # the ticket is stale: dropped
            assert await timed_wait(worker, 0.3) >= 0.25  # and gone from the buffer
            assert await gateway.stats() == QueueStats()
        finally:
            await worker.aclose()
    assert await waiting(broker, tickets) == 0  # acked, not requeued by the close


async def test_dead_jobs_go_to_the_dead_letter_queue(
    open_queue: Opener, broker: aio_pika.abc.AbstractChannel, target: tuple[str, str, str]
) -> None:
    async with open_queue(max_attempts=1) as queue:
        await queue.put("buried")
        [buried] = await queue.get("w", lease_s=10)
        await queue.bury(buried, "w", error="gave up")
        await queue.bury(buried, "w", error="again")  # not the lease any more: nothing
        await queue.put("failed")
        [failed] = await queue.get("w", lease_s=10)
        assert not await queue.nack(failed, "w", delay_s=0, error="boom")
        assert await queue.stats() == QueueStats(dead=2)
    dead = await broker.declare_queue(queue_names(target[2])[1], durable=True)
    letters = []
    while (message := await dead.get(no_ack=True, fail=False)) is not None:
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        letters.append(json.loads(message.body))
    assert [(d["run"], d["id"], d["attempts"], d["error"]) for d in letters] == [
        ("buried", buried.id, 1, "gave up"),
        ("failed", failed.id, 1, "boom"),
    ]


async def test_two_processes_never_lease_one_job_twice(open_queue: Opener) -> None:
    async with open_queue(clock=time.time) as a, open_queue(clock=time.time) as b:
        leased: list[Job] = []
        produced = asyncio.Event()

        async def produce() -> None:
            for i in range(200):
                await (a if i % 2 else b).put(f"run_{i}")
                if i % 10 == 0:
                    await asyncio.sleep(0.001)  # let the workers in
            produced.set()

        async def work(queue: RabbitMQQueue, worker: str) -> None:
            while True:
                jobs = await queue.get(worker, lease_s=30, limit=3)
                leased.extend(jobs)
                if not jobs:
                    if produced.is_set() and (await queue.stats()).ready == 0:
                        return
                    await queue.wait(0.01)

        workers = [work(q, f"w{i}") for i, q in enumerate([a, b] * 3)]
        await asyncio.wait_for(asyncio.gather(produce(), *workers), 30)
        ids = [job.id for job in leased]
        assert len(ids) == len(set(ids)) == 200
        assert {job.attempts for job in leased} == {1}
        assert await a.stats() == QueueStats(leased=200)


async def test_tickets_buffered_by_a_closed_object_go_to_another(
    open_queue: Opener, broker: aio_pika.abc.AbstractChannel, target: tuple[str, str, str]
) -> None:
    tickets = queue_names(target[2])[0]
    runs = ["run_0", "run_1", "run_2"]
    async with open_queue() as gateway:
        first = open_queue()
        try:
            assert await first.get("w1", lease_s=10) == []  # tickets come to it from now on
            for run_id in runs:
                await gateway.put(run_id)

            async def all_delivered() -> bool:
                return await waiting(broker, tickets) == 0

            await eventually(all_delivered)  # all three delivered to first, unacked
        finally:
            await first.aclose()

        async def all_back() -> bool:
            return await waiting(broker, tickets) == 3

        await eventually(all_back)  # the close gave them back to RabbitMQ
        async with open_queue() as second:
            jobs = await second.get("w2", lease_s=10, limit=3)
            assert sorted(job.run_id for job in jobs) == runs
            assert await timed_wait(second, 5) < 2  # the tickets came to it
            assert await second.get("w2", lease_s=10, limit=3) == []  # stale now: dropped
            for job in jobs:
                await second.ack(job, "w2")
    assert await waiting(broker, tickets) == 0


def _close_connection(name: str) -> None:
    """Have RabbitMQ close the connection of queue ``name``, as a broker restart would."""
    rabbitmqctl = require_program("rabbitmqctl", "apt-get install rabbitmq-server")
    listed = subprocess.run(
        [rabbitmqctl, "list_connections", "-q", "pid", "client_properties"],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    )
    wanted = f'{{"connection_name","surgeflow queue {name}"}}'
    pids = [
        line.split("\t", 1)[0]
        for line in listed.stdout.splitlines()
        if line.startswith("<") and wanted in line
    ]
    assert len(pids) == 1, listed.stdout
    subprocess.run(
        [rabbitmqctl, "close_connection", pids[0], "test"],
        check=True,
        capture_output=True,
        timeout=30,
    )


@pytest.mark.slow
async def test_a_dropped_connection_is_reestablished(
    target: tuple[str, str, str], broker: aio_pika.abc.AbstractChannel, clock: FakeClock
) -> None:
    url, index_url, name = target
    worker = RabbitMQQueue(
        f"{url}?reconnect_interval=0.5", index_url=index_url, name=name, clock=clock, timeout_s=2
    )
    async with worker:
        assert await worker.get("w", lease_s=10) == []  # tickets come to it from now on
        await asyncio.to_thread(_close_connection, name)
        await worker.put("during")  # the index takes it, whether or not RabbitMQ does
        [during] = await worker.get("w", lease_s=10)
        assert during.run_id == "during"

        async def consuming() -> bool:
            declared = await broker.declare_queue(queue_names(name)[0], durable=True)
            return declared.declaration_result.consumer_count == 1

        await eventually(consuming, timeout_s=10)  # reconnected, and consuming again
        async with RabbitMQQueue(url, index_url=index_url, name=name, clock=clock) as gateway:
            await timed_wait(worker, 0)  # forget the wake-up of its own put
            await gateway.put("after")
            assert await timed_wait(worker, 5) < 2  # the ticket reached it
        [after] = await worker.get("w", lease_s=10)
        assert after.run_id == "after"
        await worker.ack(during, "w")
        await worker.ack(after, "w")
        assert await worker.stats() == QueueStats()
