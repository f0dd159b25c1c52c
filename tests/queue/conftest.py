"""One queue conformance suite, three backends: ``queue_backend`` names one, ``make_queue`` opens
queue objects on it that share one queue (one SQLite file, one Redis queue name, one RabbitMQ
queue name with its index in the session's PostgreSQL database)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import itertools
import os
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aio_pika
import asyncpg
import pytest
import redis

from surgeflow.queue.base import Queue
from surgeflow.queue.rabbitmq import TABLE, RabbitMQQueue, queue_names
from surgeflow.queue.redis import RedisQueue
from surgeflow.queue.sqlite import SQLiteQueue
from surgeflow.store.postgres import redact
from tests.postgres import fresh_database
from tests.services import RedisServer

BACKENDS = ("sqlite", "redis", "rabbitmq")
# The machine's RabbitMQ (``rabbitmq-server -detached``), shared with other runs: every queue name
# of this session carries a token of its own.
RABBITMQ_URL = os.environ.get("SURGEFLOW_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
_names = itertools.count()
_session = secrets.token_hex(3)
_opened_rabbitmq: set[str] = set()  # the RabbitMQ queue names opened, to delete after the test
T = TypeVar("T")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class MakeQueue(Protocol):
    def __call__(
        self, *, max_attempts: int = ..., clock: Callable[[], float] | None = ...
    ) -> Awaitable[Queue]: ...


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One private redis-server for the session; each test gets its own queue name in it."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def run_in_own_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on an event loop of its own, in a thread of its own: sync fixtures and
    finalizers may be set up from an async fixture, with the test's loop running."""
    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        return executor.submit(asyncio.run, coro).result()


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    """The machine's RabbitMQ; skipped if it does not answer (failed instead under
    ``SURGEFLOW_REQUIRE_SERVICES=1``)."""

    async def check() -> None:
        connection = await aio_pika.connect(RABBITMQ_URL, timeout=3)
        await connection.close()

    try:
        run_in_own_loop(check())
    except (aio_pika.exceptions.AMQPError, OSError, TimeoutError) as exc:
        message = (
            f"no RabbitMQ at {redact(RABBITMQ_URL)} ({type(exc).__name__}: {exc}): start it"
            " with `rabbitmq-server -detached`, or set SURGEFLOW_RABBITMQ_URL"
        )
        if os.environ.get("SURGEFLOW_REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return RABBITMQ_URL


@pytest.fixture(scope="session")
def rabbitmq_index_url(postgres_admin_url: str) -> Iterator[str]:
    """A database of the session's for the RabbitMQ queues' index; each test has its own queue
    names in it."""
    loop = asyncio.new_event_loop()  # one loop in a thread of its own serves setup and teardown
    thread = threading.Thread(target=loop.run_forever, name="rabbitmq-index", daemon=True)
    thread.start()

    def run(coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    database = fresh_database(postgres_admin_url)
    try:
        url = run(database.__aenter__())
        try:
            yield url
        finally:
            run(database.__aexit__(None, None, None))
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


def rabbitmq_name() -> str:
    """A RabbitMQ queue name no other test or run uses."""
    return f"t{_session}-{next(_names)}"


async def drop_rabbitmq_queues(url: str, index_url: str, names: list[str]) -> None:
    """Delete the RabbitMQ queues and the index rows of the queues ``names``."""
    connection = await aio_pika.connect(url, timeout=10)
    try:
        channel = await connection.channel()
        for name in names:
            for queue in queue_names(name):
                await channel.queue_delete(queue)
    finally:
        await connection.close()
    conn = await asyncpg.connect(index_url, timeout=10)
    try:
        await conn.execute(f"DELETE FROM {TABLE} WHERE queue = ANY($1::text[])", names)
    except asyncpg.UndefinedTableError:  # no queue object was ever opened
        pass
    finally:
        await conn.close()


def _drop_rabbitmq_target(url: str, index_url: str, base: str) -> None:
    """Delete queue ``base`` and the queues named after it (``base-0``…, see the model test)."""
    names = sorted({base} | {n for n in _opened_rabbitmq if n.startswith(f"{base}-")})
    run_in_own_loop(drop_rabbitmq_queues(url, index_url, names))
    _opened_rabbitmq.difference_update(names)


def open_queue(
    backend: str,
    target: str,
    *,
    max_attempts: int = 5,
    clock: Callable[[], float] | None = None,
) -> Queue:
    """A queue object on ``target``: a SQLite path, ``redis-url#name``, or
    ``amqp-url#index-url#name``."""
    if backend == "sqlite":
        return SQLiteQueue(target, max_attempts=max_attempts, clock=clock or time.time)
    if backend == "rabbitmq":
        url, index_url, name = target.split("#")
        _opened_rabbitmq.add(name)
        return RabbitMQQueue(
            url,
            index_url=index_url,
            name=name,
            max_attempts=max_attempts,
            clock=clock,
            timeout_s=2.0,
        )
    url, name = target.split("#")
    return RedisQueue(url, name=name, max_attempts=max_attempts, clock=clock, timeout_s=2.0)


def queue_target(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a test's queue lives: a fresh file, or a fresh name in the session's Redis or the
    machine's RabbitMQ (whose queues and index rows are deleted after the test)."""
    if backend == "sqlite":
        return str(tmp_path / "queue.db")
    if backend == "rabbitmq":
        url: str = request.getfixturevalue("rabbitmq_url")
        index_url: str = request.getfixturevalue("rabbitmq_index_url")
        name = rabbitmq_name()
        request.addfinalizer(functools.partial(_drop_rabbitmq_target, url, index_url, name))
        return f"{url}#{index_url}#{name}"
    server: RedisServer = request.getfixturevalue("redis_server")
    return f"{server.url}#t{next(_names)}"


@pytest.fixture(params=BACKENDS)
def queue_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend


@pytest.fixture
async def make_queue(
    queue_backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[MakeQueue]:
    target = queue_target(queue_backend, request, tmp_path)
    opened: list[Queue] = []

    async def make(*, max_attempts: int = 5, clock: Callable[[], float] | None = None) -> Queue:
        queue = open_queue(queue_backend, target, max_attempts=max_attempts, clock=clock)
        opened.append(queue)
        return queue

    try:
        yield make
    finally:
        for queue in opened:
            await queue.aclose()


@pytest.fixture
async def queue(make_queue: MakeQueue, clock: FakeClock) -> Queue:
    """A queue on the fake clock with three attempts."""
    return await make_queue(max_attempts=3, clock=clock)


def flush_redis(server: RedisServer) -> None:
    with redis.Redis.from_url(server.url) as client:
        client.flushall()
