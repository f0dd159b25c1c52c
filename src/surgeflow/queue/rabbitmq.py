"""The RabbitMQ Queue: RabbitMQ carries tickets, a PostgreSQL table keeps the truth.

RabbitMQ alone cannot keep the Queue's promises: ``put`` is idempotent per run id while a job
exists, ``present`` tells which runs have a job, and leases and delays run on the queue's own
clock. So every job is a row of one PostgreSQL table, the *index*, and RabbitMQ carries messages
about the jobs:

- ``surgeflow_queue_jobs`` (PostgreSQL)  one row per (queue name, run id): the job id, state
  (``ready``, ``delayed``, ``leased``, ``dead``), attempts, owner, lease deadline, last error and
  its current ticket number. Every change is one statement, the lease ones guarded by (run id,
  job id, owner, attempts) as the Redis queue's Lua is, so any number of processes share it.
- ``surgeflow.<name>`` (RabbitMQ)  a durable queue of *tickets* (run id, job id, ticket number),
  one published, persistent and confirmed, whenever a job becomes ready. A worker's queue object
  consumes it (``prefetch`` at a time) into a local buffer from its first ``get`` on.
- ``surgeflow.<name>.dead`` (RabbitMQ)  a durable queue with a message (run id, job id,
  attempts, error) for every job that died, for operators (the management UI shows it).

A ticket is a hint; the index decides. ``get`` leases expired leases first, then the jobs of the
buffered tickets that the index still holds as ready with that job id and ticket number (the
others are stale and dropped), then, while it has room, the oldest ready jobs straight from the
index (``FOR UPDATE SKIP LOCKED``). That last step is why a job put is leased by the next ``get``
whatever RabbitMQ does: its ticket may still be on the wire, or sit in a busy worker's buffer.
Every ticket taken is acked once the index has decided; tickets still buffered when an object
closes go back to RabbitMQ (closing the channel requeues them). Tickets are what wake waiting
workers in every process (``wait``) and what spreads the jobs among them.

Losing RabbitMQ's data loses no job. A ready job whose ticket was not taken within
``redeliver_after_s`` (on the queue's clock) gets a new one, its ticket number bumped so that the
old one is stale if it turns up. ``get`` looks for such jobs every few seconds, while the ticket
queue holds no ready message: a backlog waiting in RabbitMQ is not lost, and ticketing it again
would only flood the queue. Once the index has changed, a call succeeds: a ticket or dead-letter
message that RabbitMQ failed to take is logged, and the robust connection reconnects in the
background while the calls go on from the index alone.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import secrets
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Sequence
from types import TracebackType
from typing import Any, Self

import aio_pika
import asyncpg  # type: ignore[import-untyped]
import msgspec
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel, AbstractRobustQueue
from aio_pika.connection import make_url
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError

from surgeflow._sqlite import State
from surgeflow.errors import ConfigError, QueueError
from surgeflow.queue.base import Job, QueueStats
from surgeflow.store.postgres import MIGRATION_LOCK, PooledConnection, redact

log = logging.getLogger("surgeflow.queue")

TABLE = "surgeflow_queue_jobs"
MAX_CONNECTIONS = 10  # PostgreSQL connections per queue object (a process)
SWEEP_EVERY_S = 5.0  # how often `get` looks for lost tickets (at most, on the queue's clock)
_BATCH = 1000  # delayed jobs made ready, and lost tickets issued again, per get (the rest later)
_CLOSE_TIMEOUT_S = 10.0
_MAX_NAME_BYTES = 255  # RabbitMQ's limit on a queue name

# Taken under the schema lock the PostgreSQL store migrates under, so that processes opening at
# once create the table once. `ordinal` breaks ties of available_at in insertion order.
_DDL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    queue text NOT NULL,
    run_id text NOT NULL,
    id text NOT NULL,
    ordinal bigint GENERATED ALWAYS AS IDENTITY,
    state text NOT NULL CHECK (state IN ('ready', 'delayed', 'leased', 'dead')),
    attempts integer NOT NULL DEFAULT 0,
    owner text,
    ticket bigint NOT NULL DEFAULT 0,
    ticket_at double precision,
    available_at double precision NOT NULL,
    lease_until double precision,
    error text,
    created_at double precision NOT NULL,
    PRIMARY KEY (queue, run_id)
);
CREATE INDEX IF NOT EXISTS {TABLE}_due ON {TABLE} (queue, state, available_at, ordinal);
CREATE INDEX IF NOT EXISTS {TABLE}_leases ON {TABLE} (queue, lease_until)
    WHERE state = 'leased';
CREATE INDEX IF NOT EXISTS {TABLE}_tickets ON {TABLE} (queue, ticket_at) WHERE state = 'ready';
"""

# $1 is the queue name in every statement. Each picks its rows with FOR UPDATE SKIP LOCKED, so
# no two processes lease one job, and none waits on another's rows (no deadlock). The pick is a
# CTE, run once: as ``run_id IN (subquery)`` PostgreSQL may run it again for every row, and
# each run, skipping the rows the statement changed, picks more (past the LIMIT).
_PUT = f"""
INSERT INTO {TABLE} (queue, run_id, id, state, ticket, ticket_at, available_at, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (queue, run_id) DO NOTHING RETURNING id
"""
_LEASED = "j.id, j.run_id, j.attempts, j.available_at, j.ordinal"

# $2: now, $3: at most this many. Delayed jobs that came due become ready with a new ticket.
_PROMOTE = f"""
WITH picked AS (
    SELECT run_id FROM {TABLE} WHERE queue = $1 AND state = 'delayed' AND available_at <= $2
    ORDER BY available_at, ordinal LIMIT $3 FOR UPDATE SKIP LOCKED)
UPDATE {TABLE} AS j SET state = 'ready', ticket = ticket + 1, ticket_at = $2
FROM picked WHERE j.queue = $1 AND j.run_id = picked.run_id
RETURNING j.run_id, j.id, j.ticket
"""
# $2: now, $3: issued at or before this, $4: at most this many. Lost tickets are issued again.
_REISSUE = f"""
WITH picked AS (
    SELECT run_id FROM {TABLE} WHERE queue = $1 AND state = 'ready' AND ticket_at <= $3
    ORDER BY ticket_at LIMIT $4 FOR UPDATE SKIP LOCKED)
UPDATE {TABLE} AS j SET ticket = ticket + 1, ticket_at = $2
FROM picked WHERE j.queue = $1 AND j.run_id = picked.run_id
RETURNING j.run_id, j.id, j.ticket
"""
# The lease statements take $2: worker, $3: lease deadline.
# $4: now, $5: limit. A lease is expired once past its deadline (not at it).
_LEASE_EXPIRED = f"""
WITH picked AS (
    SELECT run_id FROM {TABLE} WHERE queue = $1 AND state = 'leased' AND lease_until < $4
    ORDER BY lease_until LIMIT $5 FOR UPDATE SKIP LOCKED)
UPDATE {TABLE} AS j SET attempts = attempts + 1, owner = $2, lease_until = $3
FROM picked WHERE j.queue = $1 AND j.run_id = picked.run_id
RETURNING {_LEASED}
"""
# $4, $5, $6: the tickets' run ids, job ids and numbers. A ticket leases its job only if the job
# is still ready under that id and ticket number; a row another statement holds is about to be
# leased or re-ticketed by it, so that ticket is stale too.
_LEASE_TICKETS = f"""
WITH picked AS (
    SELECT k.run_id FROM {TABLE} AS k
    JOIN unnest($4::text[], $5::text[], $6::bigint[]) AS t (run_id, id, ticket)
        ON k.run_id = t.run_id AND k.id = t.id AND k.ticket = t.ticket
    WHERE k.queue = $1 AND k.state = 'ready' FOR UPDATE OF k SKIP LOCKED)
UPDATE {TABLE} AS j SET state = 'leased', attempts = attempts + 1, owner = $2, lease_until = $3,
    ticket_at = NULL
FROM picked WHERE j.queue = $1 AND j.run_id = picked.run_id
RETURNING {_LEASED}
"""
# $4: limit. The oldest ready jobs, whoever holds their tickets.
_LEASE_READY = f"""
WITH picked AS (
    SELECT run_id FROM {TABLE} WHERE queue = $1 AND state = 'ready'
    ORDER BY available_at, ordinal LIMIT $4 FOR UPDATE SKIP LOCKED)
UPDATE {TABLE} AS j SET state = 'leased', attempts = attempts + 1, owner = $2, lease_until = $3,
    ticket_at = NULL
FROM picked WHERE j.queue = $1 AND j.run_id = picked.run_id
RETURNING {_LEASED}
"""
# A lease is one (job, owner, attempt): a job leased again, even to the same worker, is a new one.
# $2: run id, $3: job id, $4: worker, $5: attempts.
_OWNED = (
    "queue = $1 AND run_id = $2 AND id = $3 AND state = 'leased' AND owner = $4 AND attempts = $5"
)
_EXTEND = f"UPDATE {TABLE} SET lease_until = $6 WHERE {_OWNED} RETURNING id"
_ACK = f"DELETE FROM {TABLE} WHERE {_OWNED}"
# $6: max attempts, $7: delayed (a delay > 0), $8: now, $9: available at, $10: error.
_NACK = f"""
UPDATE {TABLE} SET
    state = CASE WHEN attempts >= $6 THEN 'dead' WHEN $7 THEN 'delayed' ELSE 'ready' END,
    ticket = CASE WHEN attempts < $6 AND NOT $7 THEN ticket + 1 ELSE ticket END,
    ticket_at = CASE WHEN attempts < $6 AND NOT $7 THEN $8::double precision END,
    available_at = $9, owner = NULL, lease_until = NULL, error = $10
WHERE {_OWNED} RETURNING state, ticket, attempts
"""
# $6: now.
_RELEASE = f"""
UPDATE {TABLE} SET state = 'ready', attempts = greatest(attempts - 1, 0), ticket = ticket + 1,
    ticket_at = $6, available_at = $6, owner = NULL, lease_until = NULL
WHERE {_OWNED} RETURNING ticket
"""
# $6: error.
_BURY = f"""
UPDATE {TABLE} SET state = 'dead', owner = NULL, lease_until = NULL, error = $6
WHERE {_OWNED} RETURNING attempts
"""
_PRESENT = f"SELECT run_id FROM {TABLE} WHERE queue = $1 AND run_id = ANY($2::text[])"
_STATS = f"SELECT state, count(*), min(available_at) FROM {TABLE} WHERE queue = $1 GROUP BY state"

_SCHEMES = ("amqp", "amqps")
_INDEX_SCHEMES = ("postgresql", "postgres")
# The errors of the drivers and the network, translated to QueueError where they cross into
# surgeflow (a message taken on a channel that has since closed raises ChannelInvalidStateError).
_INDEX_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)
_BROKER_ERRORS = (AMQPError, ChannelInvalidStateError, OSError, TimeoutError)


class _Ticket(msgspec.Struct, frozen=True):
    """The body of a ticket message: this job is ready (while the index agrees)."""

    run: str
    id: str
    ticket: int


class _Dead(msgspec.Struct, frozen=True):
    """The body of a dead-letter message."""

    run: str
    id: str
    attempts: int
    error: str
    at: float


_decode_ticket = msgspec.json.Decoder(_Ticket).decode


def queue_names(name: str) -> tuple[str, str]:
    """The RabbitMQ queues of queue ``name``: its tickets and its dead letters."""
    return (f"surgeflow.{name}", f"surgeflow.{name}.dead")


class RabbitMQQueue:
    """The `Queue` in RabbitMQ (``amqp://user:password@host:5672/vhost``) with its index in
    PostgreSQL (``index_url``), shared by any number of processes.

    Every call's PostgreSQL work is bounded by ``timeout_s`` and fails with `QueueError`; its
    RabbitMQ work (publishing tickets and dead letters, acking tickets) is bounded by
    ``timeout_s`` too, and a failure there is logged, not raised: the index has changed, and
    lost tickets are issued again. Opening needs both servers.

    A queue object starts taking tickets (up to ``prefetch`` unacked) on its first `get`, so a
    process that only puts (a gateway) holds none. Leases and delays use ``clock`` (Unix
    seconds; ``time.time`` unless given, for tests), which hosts should keep in step (NTP).
    ``wait`` wakes for puts, nacks and releases through this object, and for tickets from
    any process once this object has called `get`.
    """

    def __init__(
        self,
        url: str,
        *,
        index_url: str,
        name: str = "runs",
        max_attempts: int = 5,
        timeout_s: float = 5.0,
        clock: Callable[[], float] | None = None,
        prefetch: int = 32,
        redeliver_after_s: float = 30.0,
    ) -> None:
        if urllib.parse.urlsplit(url).scheme not in _SCHEMES:
            raise ConfigError(
                f"not a RabbitMQ URL: {redact(url)!r} (use amqp://user:password@host:5672/vhost)"
            )
        if urllib.parse.urlsplit(index_url).scheme not in _INDEX_SCHEMES:
            raise ConfigError(
                f"not a PostgreSQL URL for the queue's index: {redact(index_url)!r}"
                " (use postgresql://user@host:5432/db)"
            )
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        if timeout_s <= 0 or redeliver_after_s <= 0:
            raise ValueError("timeout_s and redeliver_after_s must be positive")
        if not name or len(queue_names(name)[1].encode()) > _MAX_NAME_BYTES:
            raise ValueError(f"bad queue name {name!r}: give a non-empty name of at most 230 bytes")
        self.url = redact(url)
        self.index_url = redact(index_url)
        self.name = name
        self.max_attempts = max_attempts
        self.timeout_s = timeout_s
        self.prefetch = prefetch
        self.redeliver_after_s = redeliver_after_s
        self.lease_expiries = 0  # jobs this object leased again because a lease had expired
        self._url = url
        self._index_url = index_url
        self._clock = clock or time.time
        self._tickets_name, self._dead_name = queue_names(name)
        self._state = State.UNOPENED
        self._lock = asyncio.Lock()
        self._pool: Any = None  # an asyncpg.Pool once open
        self._connection: aio_pika.RobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None  # publishes, with confirms
        self._tickets: AbstractRobustQueue | None = None  # declared on `_channel`
        self._inbox: AbstractRobustQueue | None = None  # the same queue, on its own channel
        self._consumer_tag: str | None = None
        self._consume_lock = asyncio.Lock()
        self._buffer: collections.deque[AbstractIncomingMessage] = collections.deque()
        self._wakeup = asyncio.Event()
        self._sweep_at = -math.inf  # when `get` next looks for lost tickets (queue clock)
        self._broker_away = False  # a RabbitMQ failure was logged as a warning

    def __repr__(self) -> str:
        return (
            f"<RabbitMQQueue {self.url} name={self.name!r} index={self.index_url}"
            f" state={self._state.value} max_attempts={self.max_attempts}"
            f" lease_expiries={self.lease_expiries}>"
        )

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def open(self) -> Self:
        """Connect to PostgreSQL (creating the index table) and to RabbitMQ (declaring the
        queues); methods call this themselves on first use."""
        async with self._lock:
            if self._state is State.CLOSED:
                raise QueueError("RabbitMQQueue is closed")
            if self._state is State.UNOPENED:
                pool = await self._open_index()
                try:
                    await self._open_broker()
                except BaseException:
                    pool.terminate()
                    raise
                self._pool, self._state = pool, State.OPEN
        return self

    async def _open_index(self) -> Any:
        pool: Any = None
        try:
            async with asyncio.timeout(self.timeout_s):
                pool = await asyncpg.create_pool(
                    self._index_url,
                    connection_class=PooledConnection,
                    min_size=1,
                    max_size=MAX_CONNECTIONS,
                    timeout=self.timeout_s,
                    command_timeout=self.timeout_s,
                    server_settings={"application_name": "surgeflow"},
                )
                async with pool.acquire() as conn, conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
                    await conn.execute(_DDL)
        except BaseException as exc:
            if pool is not None:
                pool.terminate()
            if isinstance(exc, (*_INDEX_ERRORS, asyncpg.ClientConfigurationError, ValueError)):
                raise self._index_error("connect", exc) from exc
            raise
        return pool

    async def _open_broker(self) -> None:
        connection = aio_pika.RobustConnection(
            make_url(self._url),
            client_properties={"connection_name": f"surgeflow queue {self.name}"},
        )
        try:
            async with asyncio.timeout(self.timeout_s):
                await connection.connect(timeout=self.timeout_s)
                channel = await connection.channel(publisher_confirms=True)
                tickets = await channel.declare_queue(self._tickets_name, durable=True)
                await channel.declare_queue(self._dead_name, durable=True)
                inbox_channel = await connection.channel(publisher_confirms=False)
                await inbox_channel.set_qos(prefetch_count=self.prefetch)
                inbox = await inbox_channel.declare_queue(self._tickets_name, durable=True)
        except BaseException as exc:
            with contextlib.suppress(*_BROKER_ERRORS):
                async with asyncio.timeout(self.timeout_s):
                    await connection.close()
            if isinstance(exc, (*_BROKER_ERRORS, ValueError)):
                raise self._broker_error("connect", exc) from exc
            raise
        self._connection, self._channel = connection, channel
        self._tickets, self._inbox = tickets, inbox

    async def aclose(self) -> None:
        """Close both connections; tickets still buffered go back to RabbitMQ."""
        async with self._lock:
            self._state = State.CLOSED
            connection, self._connection = self._connection, None
            pool, self._pool = self._pool, None
        self._buffer.clear()
        if connection is not None:
            try:
                async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                    await connection.close()
            except _BROKER_ERRORS as exc:
                log.debug("closing the RabbitMQ connection of %r failed: %s", self, exc)
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), _CLOSE_TIMEOUT_S)
            except TimeoutError:
                pool.terminate()

    async def put(self, run_id: str, *, delay_s: float = 0.0) -> bool:
        """Enqueue ``run_id``; ``False`` if a job for it already exists (even a dead one)."""
        now = self._clock()
        job_id = "job_" + secrets.token_urlsafe(15)
        ready = delay_s <= 0
        async with self._index("put") as conn:
            added = await conn.fetchval(
                _PUT,
                self.name,
                run_id,
                job_id,
                "ready" if ready else "delayed",
                1 if ready else 0,
                now if ready else None,
                now + max(delay_s, 0.0),
                now,
            )
        if added is None:
            return False
        if ready:
            await self._publish_tickets([_Ticket(run=run_id, id=job_id, ticket=1)])
            self._wakeup.set()
        return True

    async def get(self, worker_id: str, *, lease_s: float, limit: int = 1) -> list[Job]:
        """Lease up to ``limit`` jobs that are ready or whose lease expired; never blocks.

        A job is handed out even when its ``attempts`` exceed ``max_attempts`` (a worker that
        crashed each time): check `Job.exhausted` and `bury` it.
        """
        if lease_s <= 0:
            raise ValueError("lease_s must be positive")
        if limit <= 0:
            return []
        if self._state is not State.OPEN:
            await self.open()
        await self._consume()
        now = self._clock()
        until = now + lease_s
        sweep = False
        if now >= self._sweep_at:
            self._sweep_at = now + min(SWEEP_EVERY_S, self.redeliver_after_s)
            sweep = await self._tickets_waiting() == 0
        taken: list[AbstractIncomingMessage] = []
        leased: list[Any] = []
        try:
            async with self._index("get") as conn:
                issued = await conn.fetch(_PROMOTE, self.name, now, _BATCH)
                if sweep:
                    cutoff = now - self.redeliver_after_s
                    issued += await conn.fetch(_REISSUE, self.name, now, cutoff, _BATCH)
                lease = (self.name, worker_id, until)
                expired = await conn.fetch(_LEASE_EXPIRED, *lease, now, limit)
                room = limit - len(expired)
                if room > 0 and self._buffer:
                    taken = [self._buffer.popleft() for _ in range(min(room, len(self._buffer)))]
                    # A ticket redelivered after a reconnect may be buffered twice: once is enough.
                    tickets = list(dict.fromkeys(t for t in map(_decode, taken) if t is not None))
                    if tickets:
                        runs = [ticket.run for ticket in tickets]
                        ids = [ticket.id for ticket in tickets]
                        numbers = [ticket.ticket for ticket in tickets]
                        leased = await conn.fetch(_LEASE_TICKETS, *lease, runs, ids, numbers)
                        room -= len(leased)
                if room > 0:
                    leased += await conn.fetch(_LEASE_READY, *lease, room)
        except BaseException:
            self._buffer.extendleft(reversed(taken))  # their jobs are still ready: keep them
            raise
        await self._ack_tickets(taken)
        leased_ids = {row["id"] for row in leased}
        await self._publish_tickets(
            [
                _Ticket(run=row["run_id"], id=row["id"], ticket=row["ticket"])
                for row in issued
                if row["id"] not in leased_ids
            ]
        )
        self.lease_expiries += len(expired)

        def order(row: Any) -> tuple[float, int]:
            return (row["available_at"], row["ordinal"])

        return [
            Job(
                id=row["id"],
                run_id=row["run_id"],
                attempts=row["attempts"],
                max_attempts=self.max_attempts,
                lease_expires_at=until,
            )
            for row in [*sorted(expired, key=order), *sorted(leased, key=order)]
        ]

    async def extend(self, job: Job, worker_id: str, *, lease_s: float) -> bool:
        """Extend a lease (and ``job.lease_expires_at``); ``False`` if the worker lost it.

        A lease that expired but was not taken by another worker can still be extended.
        """
        expires_at = self._clock() + lease_s
        async with self._index("extend") as conn:
            extended = await conn.fetchval(_EXTEND, *self._lease(job, worker_id), expires_at)
        if extended is not None:
            job.lease_expires_at = expires_at
        return extended is not None

    async def ack(self, job: Job, worker_id: str) -> None:
        """The job is done: remove it. A no-op for a worker that lost the lease."""
        async with self._index("ack") as conn:
            await conn.execute(_ACK, *self._lease(job, worker_id))

    async def nack(self, job: Job, worker_id: str, *, delay_s: float, error: str) -> bool:
        """Retry after ``delay_s`` (``True``), or the attempts are spent and the job is dead.

        A worker that lost the lease changes nothing and gets ``True``: the job lives on elsewhere.
        """
        now = self._clock()
        async with self._index("nack") as conn:
            row = await conn.fetchrow(
                _NACK,
                *self._lease(job, worker_id),
                self.max_attempts,
                delay_s > 0,
                now,
                now + max(delay_s, 0.0),
                error,
            )
        if row is None:
            return True
        if row["state"] == "dead":
            await self._publish_dead(job, row["attempts"], error, now)
            return False
        if row["state"] == "ready":
            await self._publish_tickets([_Ticket(run=job.run_id, id=job.id, ticket=row["ticket"])])
            self._wakeup.set()
        return True

    async def release(self, job: Job, worker_id: str) -> None:
        """Give the job back untried (draining worker): ready now, this attempt not counted."""
        async with self._index("release") as conn:
            ticket = await conn.fetchval(_RELEASE, *self._lease(job, worker_id), self._clock())
        if ticket is not None:
            await self._publish_tickets([_Ticket(run=job.run_id, id=job.id, ticket=ticket)])
            self._wakeup.set()

    async def bury(self, job: Job, worker_id: str, *, error: str) -> None:
        """Move the job to the dead state (kept, so the run id cannot be put again)."""
        async with self._index("bury") as conn:
            attempts = await conn.fetchval(_BURY, *self._lease(job, worker_id), error)
        if attempts is not None:
            await self._publish_dead(job, attempts, error, self._clock())

    async def present(self, run_ids: Sequence[str]) -> set[str]:
        """Those of ``run_ids`` that have a job (ready, leased or dead)."""
        ids = list(run_ids)
        if not ids:
            return set()
        async with self._index("present") as conn:
            rows = await conn.fetch(_PRESENT, self.name, ids)
        return {row["run_id"] for row in rows}

    async def stats(self) -> QueueStats:
        """Counts by state (delayed jobs count as ready, as in the SQLite queue); a ready job's
        age is counted from when it became available."""
        now = self._clock()
        async with self._index("stats") as conn:
            rows = await conn.fetch(_STATS, self.name)
        stats = QueueStats()
        oldest = math.inf
        for state, count, oldest_available_at in rows:
            if state in ("ready", "delayed"):
                stats.ready += count
                oldest = min(oldest, oldest_available_at)
            elif state == "leased":
                stats.leased = count
            elif state == "dead":
                stats.dead = count
        if stats.ready:
            stats.oldest_ready_age_s = max(now - oldest, 0.0)
        return stats

    async def wait(self, timeout_s: float) -> None:
        """Return when a job may be ready (a ticket in this object's buffer, or a put, nack or
        release through this object) or after ``timeout_s``. Never raises."""
        # The event stays set from a put made while nobody waited, so such a put is not missed.
        if not self._buffer and not self._wakeup.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await self._wakeup.wait()
        self._wakeup.clear()

    @contextlib.asynccontextmanager
    async def _index(self, op: str) -> AsyncIterator[Any]:
        """A pooled PostgreSQL connection for ``op``, within ``timeout_s``; driver errors
        leave as `QueueError`."""
        if self._state is not State.OPEN:
            await self.open()
        pool = self._pool
        if pool is None:  # closed since the check above
            raise QueueError("RabbitMQQueue is closed")
        try:
            async with asyncio.timeout(self.timeout_s), pool.acquire() as conn:
                yield conn
        except _INDEX_ERRORS as exc:
            raise self._index_error(op, exc) from exc

    async def _consume(self) -> None:
        """Start taking tickets into the buffer, once (a robust queue consumes again after a
        reconnect); while RabbitMQ is away, `get` works from the index and tries again."""
        if self._consumer_tag is not None or not self._broker_up():
            return
        async with self._consume_lock:
            inbox = self._inbox
            if self._consumer_tag is not None or inbox is None:
                return
            try:
                async with asyncio.timeout(self.timeout_s):
                    self._consumer_tag = await inbox.consume(self._on_ticket)
            except _BROKER_ERRORS as exc:
                self._broker_failed("consume tickets", exc)

    async def _on_ticket(self, message: AbstractIncomingMessage) -> None:
        self._buffer.append(message)
        self._wakeup.set()

    async def _ack_tickets(self, messages: list[AbstractIncomingMessage]) -> None:
        """Ack taken tickets. One whose channel has closed since was requeued by RabbitMQ and
        will turn up stale; a failure here only costs that."""
        try:
            async with asyncio.timeout(self.timeout_s):
                for message in messages:
                    with contextlib.suppress(ChannelInvalidStateError):
                        await message.ack()
        except _BROKER_ERRORS as exc:
            self._broker_failed("ack tickets", exc)

    async def _publish_tickets(self, tickets: list[_Ticket]) -> None:
        messages = [
            aio_pika.Message(
                msgspec.json.encode(ticket),
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                content_type="application/json",
                type="ticket",
                message_id=f"{ticket.id}.{ticket.ticket}",
            )
            for ticket in tickets
        ]
        await self._publish(self._tickets_name, messages, "publish tickets")

    async def _publish_dead(self, job: Job, attempts: int, error: str, at: float) -> None:
        dead = _Dead(run=job.run_id, id=job.id, attempts=attempts, error=error, at=at)
        message = aio_pika.Message(
            msgspec.json.encode(dead),
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            content_type="application/json",
            type="dead",
            message_id=job.id,
        )
        await self._publish(self._dead_name, [message], "publish a dead letter")

    async def _publish(self, routing_key: str, messages: list[aio_pika.Message], op: str) -> None:
        """Publish persistent ``messages`` and wait for RabbitMQ's confirms; log a failure.
        Nothing is sent while the connection is down (the robust connection reconnects)."""
        channel = self._channel
        if not messages or channel is None:
            return
        if not self._broker_up():
            self._broker_failed(op, "not connected")
            return
        exchange = channel.default_exchange
        try:
            async with asyncio.timeout(self.timeout_s):
                results = await asyncio.gather(
                    *(exchange.publish(m, routing_key, mandatory=False) for m in messages),
                    return_exceptions=True,
                )
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        except _BROKER_ERRORS as exc:
            self._broker_failed(op, exc)
        else:
            self._broker_back()

    async def _tickets_waiting(self) -> int | None:
        """How many tickets wait in RabbitMQ undelivered; ``None`` if it cannot tell."""
        tickets = self._tickets
        if tickets is None or not self._broker_up():
            return None
        try:
            async with asyncio.timeout(self.timeout_s):
                declared = await tickets.declare()
        except _BROKER_ERRORS as exc:
            self._broker_failed("count tickets", exc)
            return None
        return declared.message_count

    def _broker_up(self) -> bool:
        connection = self._connection
        return connection is not None and connection.connected.is_set()

    def _broker_failed(self, op: str, exc: BaseException | str) -> None:
        """Log a RabbitMQ failure: a warning once per outage, then debug."""
        message = "RabbitMQ queue %r at %s: %s failed (%s); the index keeps the jobs"
        if self._broker_away:
            log.debug(message, self.name, self.url, op, exc)
        else:
            self._broker_away = True
            log.warning(message, self.name, self.url, op, exc)

    def _broker_back(self) -> None:
        if self._broker_away:
            self._broker_away = False
            log.info("RabbitMQ queue %r at %s: publishing again", self.name, self.url)

    def _lease(self, job: Job, worker_id: str) -> tuple[str, str, str, str, int]:
        return (self.name, job.run_id, job.id, worker_id, job.attempts)

    def _index_error(self, op: str, exc: BaseException) -> QueueError:
        reason = "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
        return QueueError(
            f"RabbitMQ queue {self.name!r}: {op} failed on its index at {self.index_url}"
            f" ({reason}: {exc}); is PostgreSQL up and reachable?"
        )

    def _broker_error(self, op: str, exc: BaseException) -> QueueError:
        reason = "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
        return QueueError(
            f"RabbitMQ queue {self.name!r} at {self.url}: {op} failed ({reason}: {exc});"
            " is RabbitMQ up and reachable?"
        )


def _decode(message: AbstractIncomingMessage) -> _Ticket | None:
    """The ticket a message carries, or ``None`` for a body that is not a ticket."""
    try:
        return _decode_ticket(message.body)
    except msgspec.DecodeError:
        log.warning("dropping a message that is not a ticket: %r", message.body[:200])
        return None
