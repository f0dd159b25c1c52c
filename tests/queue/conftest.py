"""One queue conformance suite, two backends: ``queue_backend`` names one, ``make_queue`` opens
queue objects on it that share one queue (one SQLite file, one Redis queue name)."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Protocol

import pytest
import redis

from surgeflow.queue.base import Queue
from surgeflow.queue.redis import RedisQueue
from surgeflow.queue.sqlite import SQLiteQueue
from tests.services import RedisServer

BACKENDS = ("sqlite", "redis")
_names = itertools.count()


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


def open_queue(
    backend: str,
    target: str,
    *,
    max_attempts: int = 5,
    clock: Callable[[], float] | None = None,
) -> Queue:
    """A queue object on ``target``: a SQLite path, or ``redis-url#name``."""
    if backend == "sqlite":
        return SQLiteQueue(target, max_attempts=max_attempts, clock=clock or time.time)
    url, name = target.split("#")
    return RedisQueue(url, name=name, max_attempts=max_attempts, clock=clock, timeout_s=2.0)


def queue_target(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a test's queue lives: a fresh file, or a fresh name in the session's Redis."""
    if backend == "sqlite":
        return str(tmp_path / "queue.db")
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
