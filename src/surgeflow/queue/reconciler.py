"""The Reconciler: puts back the runs the store is waiting on but the queue has lost.

The store is the truth about runs; the queue only says who works on what next. A queue can lose
jobs: Redis restarted without persistence, was flushed, failed over before replicating, or
trimmed its stream; a process can die between creating a run and enqueuing it. This loop finds
such runs and enqueues them again, so losing the queue's data delays runs but loses none.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from surgeflow.errors import NotFound
from surgeflow.queue.base import Queue
from surgeflow.store.base import RunStatus, Store

log = logging.getLogger("surgeflow.queue")

_WAITING = frozenset({RunStatus.QUEUED, RunStatus.RUNNING})


class Reconciler:
    """Every ``interval_s``, re-enqueue the queued or running runs that have no job.

    A run counts only once it was last updated more than ``grace_s`` ago, so a run whose put is
    still on its way is not enqueued twice (a double put is harmless, but noisy). A run found
    missing is read again before its put: one that finished between the two reads (its job acked
    in between) is left alone. Each round pages through every waiting run, ``page_size`` at a
    time (newest first, by key, so runs created meanwhile shift nothing). ``clock`` (Unix
    seconds) is for tests.
    """

    def __init__(
        self,
        store: Store,
        queue: Queue,
        *,
        interval_s: float = 30.0,
        grace_s: float = 60.0,
        page_size: int = 1000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if interval_s <= 0 or grace_s < 0 or page_size < 1:
            raise ValueError("interval_s must be positive, grace_s not negative, page_size >= 1")
        self.store = store
        self.queue = queue
        self.interval_s = interval_s
        self.grace_s = grace_s
        self.page_size = page_size
        self._clock = clock
        self.rounds = 0  # completed reconcile_once calls
        self.reenqueued = 0  # runs put back, over all rounds
        self.failures = 0  # rounds that raised (run() logs them and carries on)
        self._stopping = asyncio.Event()

    def __repr__(self) -> str:
        return (
            f"<Reconciler interval_s={self.interval_s} grace_s={self.grace_s}"
            f" rounds={self.rounds} reenqueued={self.reenqueued} failures={self.failures}>"
        )

    async def reconcile_once(self) -> int:
        """One round; returns how many runs it re-enqueued.

        Two reads per page find the candidates (the store's waiting runs, then which of them
        the queue holds); only missing runs cost more I/O.
        """
        cutoff = self._clock() - self.grace_s
        restored = 0
        before: str | None = None
        while runs := await self.store.list_runs(
            statuses=_WAITING, limit=self.page_size, before=before
        ):
            before = runs[-1].id
            restored += await self._restore([run.id for run in runs if run.updated_at <= cutoff])
            if len(runs) < self.page_size:
                break
        self.rounds += 1
        self.reenqueued += restored
        return restored

    async def _restore(self, run_ids: list[str]) -> int:
        """Put back those of ``run_ids`` that the queue lacks and that are still waiting."""
        present = await self.queue.present(run_ids) if run_ids else set()
        restored = 0
        for run_id in run_ids:
            if run_id in present:
                continue
            try:
                run = await self.store.get_run(run_id)
            except NotFound:
                continue
            if run.status in _WAITING and await self.queue.put(run_id):
                log.warning("re-enqueued run %s, which the queue had lost", run_id)
                restored += 1
        return restored

    async def run(self) -> None:
        """Reconcile every ``interval_s`` until `stop()`; a failed round is logged and retried
        at the next interval (leasing goes on meanwhile)."""
        while not self._stopping.is_set():
            try:
                await self.reconcile_once()
            except Exception:
                self.failures += 1
                log.exception("reconciling the store with the queue failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval_s)

    def stop(self) -> None:
        """Make `run` return after the current round (safe to call from a signal handler)."""
        self._stopping.set()
