"""arq's side of `queue_peers.py`: the no-op job, the worker's settings, and the driver.

Worker (one process): ``arq benchmarks.queue_peers.arq_job.WorkerSettings``, settings from the
environment: ``QP_REDIS_URL``, ``QP_ARQ_MAX_JOBS`` (arq's default 10), ``QP_ARQ_POLL_DELAY``
(default 0.5 s). Driver: ``python -m benchmarks.queue_peers.arq_job enqueue-and-wait N ...``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.constants import result_key_prefix

BATCH = 200  # enqueue_job calls in flight at once


async def noop(ctx: dict[str, Any]) -> None:
    return None


async def quiet(ctx: dict[str, Any]) -> None:
    """arq logs two lines per job at INFO; the other systems log nothing per job."""
    logging.getLogger("arq").setLevel(logging.WARNING)


class WorkerSettings:
    functions = [noop]  # noqa: RUF012 (arq reads class attributes)
    redis_settings = RedisSettings.from_dsn(os.environ.get("QP_REDIS_URL", "redis://127.0.0.1"))
    max_jobs = int(os.environ.get("QP_ARQ_MAX_JOBS", "10"))
    poll_delay = float(os.environ.get("QP_ARQ_POLL_DELAY", "0.5"))
    on_startup = quiet


async def connect(url: str) -> ArqRedis:
    return await create_pool(RedisSettings.from_dsn(url))


async def submit(pool: ArqRedis, count: int) -> list[str]:
    keys: list[str] = []
    for start in range(0, count, BATCH):
        size = min(BATCH, count - start)
        jobs = await asyncio.gather(*(pool.enqueue_job("noop") for _ in range(size)))
        keys += [result_key_prefix + job.job_id for job in jobs if job is not None]
    return keys


if __name__ == "__main__":
    from benchmarks.queue_peers._drive import main

    sys.exit(main(connect, submit))
