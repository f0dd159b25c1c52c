"""The SQLite Queue: jobs with leases in a table, shareable with the store's file."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from surgeflow._sqlite import Schema, SQLiteBacked, SQLiteDatabase
from surgeflow.errors import QueueError
from surgeflow.queue.base import Job, QueueStats

SCHEMA = Schema(
    name="queue",
    ddl=(
        # status: 'ready' (waits for available_at), 'leased' (until lease_expires_at) or 'dead'.
        """CREATE TABLE IF NOT EXISTS jobs (
            id TEXT PRIMARY KEY,
            run_id TEXT NOT NULL UNIQUE,
            status TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            available_at REAL NOT NULL,
            lease_owner TEXT,
            lease_expires_at REAL,
            created_at REAL NOT NULL,
            last_error TEXT,
            reclaimed INTEGER NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX IF NOT EXISTS jobs_ready ON jobs (status, available_at)",
        "CREATE INDEX IF NOT EXISTS jobs_leased ON jobs (status, lease_expires_at)",
    ),
    migrations=("ALTER TABLE jobs ADD COLUMN reclaimed INTEGER NOT NULL DEFAULT 0",),
)

# One statement leases the jobs, so no two workers (threads or processes) can take the same one:
# every write runs under the file's write lock (BEGIN IMMEDIATE). Each branch walks its own index
# and stops after ``limit`` rows, so a long backlog does not make every lease a full scan.
# ``reclaimed`` is set from the row as it was: 1 when the job was taken from an expired lease.
_LEASE_SQL = """
UPDATE jobs SET status = 'leased', attempts = attempts + 1, lease_owner = ?, lease_expires_at = ?,
    reclaimed = (status = 'leased')
WHERE id IN (
    SELECT id FROM (
        SELECT id, available_at FROM (
            SELECT id, available_at FROM jobs WHERE status = 'leased' AND lease_expires_at < ?
            ORDER BY lease_expires_at LIMIT ?)
        UNION ALL
        SELECT id, available_at FROM (
            SELECT id, available_at FROM jobs WHERE status = 'ready' AND available_at <= ?
            ORDER BY available_at LIMIT ?)
    ) ORDER BY available_at LIMIT ?
)
RETURNING id, run_id, attempts, lease_expires_at, available_at, reclaimed
"""
# A lease is one (job, owner, attempt): a job leased again, even to the same worker, is a new one.
_OWNED = "id = ? AND status = 'leased' AND lease_owner = ? AND attempts = ?"


def _owned(job: Job, worker_id: str) -> tuple[str, str, int]:
    return (job.id, worker_id, job.attempts)


class SQLiteQueue(SQLiteBacked):
    """The `Queue` in a SQLite file (``sqlite:///surgeflow.db``), or in a shared `SQLiteDatabase`.

    Safe for many tasks and for several processes on one file. ``wait`` wakes early only for puts
    made through this object; other processes' puts are found by polling. ``clock`` (Unix
    seconds) is for tests.
    """

    _schema: ClassVar[Schema] = SCHEMA
    _error: ClassVar[type[QueueError]] = QueueError

    def __init__(
        self,
        target: str | os.PathLike[str] | SQLiteDatabase,
        *,
        max_attempts: int = 5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        super().__init__(target)
        self.max_attempts = max_attempts
        self._clock = clock
        self._wakeup = asyncio.Event()
        self.lease_expiries = 0  # jobs this object leased again because a lease had expired

    def __repr__(self) -> str:
        return (
            f"<SQLiteQueue path={str(self.db.path)!r} state={self._state.value}"
            f" max_attempts={self.max_attempts}>"
        )

    async def put(self, run_id: str, *, delay_s: float = 0.0) -> bool:
        """Enqueue ``run_id``; ``False`` if a job for it already exists (even a dead one)."""
        now = self._clock()
        params = ("job_" + secrets.token_urlsafe(15), run_id, now + max(delay_s, 0.0), now)
        rows = await self._execute(
            "INSERT INTO jobs (id, run_id, status, available_at, created_at)"
            " VALUES (?, ?, 'ready', ?, ?) ON CONFLICT (run_id) DO NOTHING RETURNING id",
            params,
        )
        if rows and delay_s <= 0:
            self._wakeup.set()
        return bool(rows)

    async def get(self, worker_id: str, *, lease_s: float, limit: int = 1) -> list[Job]:
        """Lease up to ``limit`` jobs that are ready or whose lease expired; never blocks.

        A job is handed out even when its ``attempts`` exceed ``max_attempts`` (a worker that
        crashed each time): check `Job.exhausted` and `bury` it.
        """
        if lease_s <= 0:
            raise ValueError("lease_s must be positive")
        if limit <= 0:
            return []
        now = self._clock()
        params = (worker_id, now + lease_s, now, limit, now, limit, limit)
        rows = await self._execute(_LEASE_SQL, params)
        rows.sort(key=lambda row: row[4])  # RETURNING does not keep the ORDER BY
        self.lease_expiries += sum(row[5] for row in rows)
        return [
            Job(
                id=id_,
                run_id=run_id,
                attempts=attempts,
                max_attempts=self.max_attempts,
                lease_expires_at=expires_at,
            )
            for id_, run_id, attempts, expires_at, _, _ in rows
        ]

    async def extend(self, job: Job, worker_id: str, *, lease_s: float) -> bool:
        """Extend a lease (and ``job.lease_expires_at``); ``False`` if the worker lost it.

        A lease that expired but was not taken by another worker can still be extended.
        """
        expires_at = self._clock() + lease_s
        rows = await self._execute(
            f"UPDATE jobs SET lease_expires_at = ? WHERE {_OWNED} RETURNING id",
            (expires_at, *_owned(job, worker_id)),
        )
        if rows:
            job.lease_expires_at = expires_at
        return bool(rows)

    async def ack(self, job: Job, worker_id: str) -> None:
        """The job is done: remove it. A no-op for a worker that lost the lease."""
        await self._execute(f"DELETE FROM jobs WHERE {_OWNED}", _owned(job, worker_id))

    async def nack(self, job: Job, worker_id: str, *, delay_s: float, error: str) -> bool:
        """Retry after ``delay_s`` (``True``), or the attempts are spent and the job is dead.

        A worker that lost the lease changes nothing and gets ``True``: the job lives on elsewhere.
        """
        rows = await self._execute(
            "UPDATE jobs SET status = CASE WHEN attempts >= ? THEN 'dead' ELSE 'ready' END,"
            " available_at = ?, lease_owner = NULL, lease_expires_at = NULL, last_error = ?"
            f" WHERE {_OWNED} RETURNING status",
            (self.max_attempts, self._clock() + max(delay_s, 0.0), error, *_owned(job, worker_id)),
        )
        retried = not rows or rows[0][0] == "ready"
        if rows and retried and delay_s <= 0:
            self._wakeup.set()
        return retried

    async def release(self, job: Job, worker_id: str) -> None:
        """Give the job back untried (draining worker): ready now, this attempt not counted."""
        rows = await self._execute(
            "UPDATE jobs SET status = 'ready', attempts = max(attempts - 1, 0), available_at = ?,"
            f" lease_owner = NULL, lease_expires_at = NULL WHERE {_OWNED} RETURNING id",
            (self._clock(), *_owned(job, worker_id)),
        )
        if rows:
            self._wakeup.set()

    async def bury(self, job: Job, worker_id: str, *, error: str) -> None:
        """Move the job to the dead state (kept, so the run id cannot be put again)."""
        await self._execute(
            "UPDATE jobs SET status = 'dead', lease_owner = NULL, lease_expires_at = NULL,"
            f" last_error = ? WHERE {_OWNED}",
            (error, *_owned(job, worker_id)),
        )

    async def present(self, run_ids: Sequence[str]) -> set[str]:
        """Those of ``run_ids`` that have a job (ready, leased or dead)."""
        ids = list(run_ids)

        def select(conn: sqlite3.Connection) -> set[str]:
            found: set[str] = set()
            for start in range(0, len(ids), 500):  # under SQLite's bound-parameter limit
                batch = ids[start : start + 500]
                sql = f"SELECT run_id FROM jobs WHERE run_id IN ({', '.join('?' * len(batch))})"
                found.update(row[0] for row in conn.execute(sql, batch))
            return found

        return await self._read(select) if ids else set()

    async def stats(self) -> QueueStats:
        """Counts by state; a ready job's age is counted from when it became available."""
        now = self._clock()
        rows = await self._read(
            lambda conn: conn.execute(
                "SELECT status, count(*), min(available_at) FROM jobs GROUP BY status"
            ).fetchall()
        )
        stats = QueueStats()
        for status, count, oldest_available_at in rows:
            if status == "ready":
                stats.ready = count
                stats.oldest_ready_age_s = max(now - oldest_available_at, 0.0)
            elif status == "leased":
                stats.leased = count
            elif status == "dead":
                stats.dead = count
        return stats

    async def wait(self, timeout_s: float) -> None:
        """Return when a job may be ready (a put through this object) or after ``timeout_s``."""
        # The event stays set from a put made while nobody waited, so such a put is not missed.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout_s)
        self._wakeup.clear()

    async def _execute(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        return await self._write(lambda conn: conn.execute(sql, params).fetchall())
