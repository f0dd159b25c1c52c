"""The Queue protocol: at-least-once delivery of run ids to workers, with leases."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import msgspec


class Job(msgspec.Struct, kw_only=True):
    """A leased unit of work. ``attempts`` counts leases, this one included."""

    id: str
    run_id: str
    attempts: int
    max_attempts: int
    lease_expires_at: float

    @property
    def exhausted(self) -> bool:
        """True when this lease is past the allowed number of attempts."""
        return self.attempts > self.max_attempts


class QueueStats(msgspec.Struct):
    ready: int = 0
    leased: int = 0
    dead: int = 0
    oldest_ready_age_s: float = 0.0


class Queue(Protocol):
    """Run ids waiting for a worker.

    Delivery is at least once: a job is leased to one worker for ``lease_s`` seconds; a lease
    that is not extended expires and the job is leased again (``attempts`` grows). ``put`` is
    idempotent on ``run_id`` while the job exists. ``lease_expiries`` counts the jobs this
    object leased again because their lease had expired (a worker died or stalled).
    """

    lease_expiries: int

    async def put(self, run_id: str, *, delay_s: float = 0.0) -> bool:
        """Enqueue ``run_id``; ``False`` if a job for it already exists."""
        ...

    async def get(self, worker_id: str, *, lease_s: float, limit: int = 1) -> list[Job]:
        """Lease up to ``limit`` jobs that are ready or whose lease expired; never blocks."""
        ...

    async def extend(self, job: Job, worker_id: str, *, lease_s: float) -> bool:
        """Extend a lease; ``False`` if the worker no longer holds it."""
        ...

    async def ack(self, job: Job, worker_id: str) -> None:
        """The job is done: remove it."""
        ...

    async def nack(self, job: Job, worker_id: str, *, delay_s: float, error: str) -> bool:
        """The attempt failed: retry after ``delay_s`` (``True``), or the job is now dead."""
        ...

    async def release(self, job: Job, worker_id: str) -> None:
        """Give the job back untried (draining worker): ready now, this attempt not counted."""
        ...

    async def bury(self, job: Job, worker_id: str, *, error: str) -> None:
        """Move the job to the dead state."""
        ...

    async def present(self, run_ids: Sequence[str]) -> set[str]:
        """Those of ``run_ids`` that have a job (ready, leased or dead); a read, not a write."""
        ...

    async def stats(self) -> QueueStats: ...

    async def wait(self, timeout_s: float) -> None:
        """Return when a job may be ready (a put in this process) or after ``timeout_s``."""
        ...

    async def aclose(self) -> None: ...
