"""taskiq's side of `queue_peers.py`: the no-op task, the broker, and the driver.

Worker: ``taskiq worker benchmarks.queue_peers.taskiq_job:broker --workers 1 --log-level
WARNING`` (a supervisor process and one worker child); ``QP_TASKIQ_BROKER`` picks
``ListQueueBroker`` (``list``, BRPOP, no acks: the default) or ``RedisStreamBroker``
(``stream``, a consumer group with acks); results in Redis (``RedisAsyncResultBackend``).
Driver: ``python -m benchmarks.queue_peers.taskiq_job enqueue-and-wait N ...``.
"""

from __future__ import annotations

import asyncio
import os
import sys

from taskiq import AsyncBroker
from taskiq_redis import ListQueueBroker, RedisAsyncResultBackend, RedisStreamBroker

URL = os.environ.get("QP_REDIS_URL", "redis://127.0.0.1")
BATCH = 200  # kiq calls in flight at once

_kind = os.environ.get("QP_TASKIQ_BROKER", "list")
broker: AsyncBroker = (RedisStreamBroker if _kind == "stream" else ListQueueBroker)(URL)
broker = broker.with_result_backend(RedisAsyncResultBackend(URL, result_ex_time=3600))


@broker.task(task_name="noop")
async def noop() -> None:
    return None


class Client:
    async def aclose(self) -> None:
        await broker.shutdown()


async def connect(url: str) -> Client:
    await broker.startup()
    return Client()


async def submit(client: Client, count: int) -> list[str]:
    keys: list[str] = []
    for start in range(0, count, BATCH):
        size = min(BATCH, count - start)
        tasks = await asyncio.gather(*(noop.kiq() for _ in range(size)))
        keys += [task.task_id for task in tasks]
    return keys


if __name__ == "__main__":
    from benchmarks.queue_peers._drive import main

    sys.exit(main(connect, submit))
