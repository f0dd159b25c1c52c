"""Celery's side of `queue_peers.py`: the no-op task, the app's settings, and the driver.

Worker (one process): ``celery -A benchmarks.queue_peers.celery_job worker --pool=solo
--without-heartbeat --without-gossip --without-mingle -l warning``; Redis broker and result
backend from ``QP_REDIS_URL``, prefetch multiplier from ``QP_CELERY_PREFETCH`` (default 4).
Driver: ``python -m benchmarks.queue_peers.celery_job enqueue-and-wait N ...``.
"""

from __future__ import annotations

import os
import sys

from celery import Celery

URL = os.environ.get("QP_REDIS_URL", "redis://127.0.0.1")

app = Celery("queue_peers", broker=URL, backend=URL)
app.conf.update(
    worker_prefetch_multiplier=int(os.environ.get("QP_CELERY_PREFETCH", "4")),
    broker_connection_retry_on_startup=True,
    task_ignore_result=False,  # results stored, so completion is visible (and comparable)
    result_expires=3600,
    worker_send_task_events=False,
)


@app.task(name="noop")
def noop() -> None:
    return None


async def connect(url: str) -> Celery:
    return app  # configured from QP_REDIS_URL, which the harness sets for the driver too


async def submit(client: Celery, count: int) -> list[str]:
    """One publish per task over one producer connection (Celery has no batch publish)."""
    keys = []
    with client.producer_or_acquire() as producer:
        for _ in range(count):
            result = noop.apply_async(producer=producer)
            keys.append(f"celery-task-meta-{result.id}")
    return keys


if __name__ == "__main__":
    from benchmarks.queue_peers._drive import main

    sys.exit(main(connect, submit))
