"""The PostgreSQL Store: runs, checkpoints, events and API keys shared by many processes."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import urllib.parse
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any, Self

import asyncpg  # type: ignore[import-untyped]

from surgeflow._sqlite import State
from surgeflow.errors import ConfigError, Conflict, NotFound, StoreError, ValidationError
from surgeflow.store.base import ApiKey, Run, RunEvent, RunStatus, StartedEvent

# The row codecs are the SQLite store's: both select the same columns in the same order.
from surgeflow.store.sqlite import (
    _KEY_COLUMNS,
    _RUN_COLUMNS,
    _TERMINAL_SQL,
    _decode_dict,
    _encode,
    _key_from_row,
    _run_from_row,
)

COMPONENT = "store"  # this module's rows in surgeflow_schema; a PostgreSQL queue would add its own

# Migration n (counting from 1) brings the schema from version n - 1 to n. Append, never edit: a
# database records the versions it has and runs only the later ones.
MIGRATIONS: tuple[str, ...] = (
    # 1: the tables of the SQLite store. JSON is `json`, not `jsonb`: jsonb rewrites numbers (1e20
    # comes back as an int) and rejects "\u0000", and nothing here queries inside the documents.
    # `ordinal` breaks ties of created_at in insertion order (SQLite's rowid); `last_seq` is the
    # per-run event counter that append_event bumps under the run's row lock.
    """
    CREATE TABLE runs (
        id text PRIMARY KEY,
        ordinal bigint GENERATED ALWAYS AS IDENTITY,
        workflow text NOT NULL,
        status text NOT NULL,
        input json NOT NULL,
        output json,
        error text,
        idempotency_key text,
        key_id text,
        cancel_requested boolean NOT NULL DEFAULT false,
        attempts integer NOT NULL DEFAULT 0,
        created_at double precision NOT NULL,
        updated_at double precision NOT NULL,
        started_at double precision,
        finished_at double precision,
        last_seq integer NOT NULL DEFAULT 0
    );
    -- Scoped to the API key that sent them: one tenant's key never returns another tenant's run.
    CREATE UNIQUE INDEX runs_idempotency
        ON runs (coalesce(key_id, ''), idempotency_key) WHERE idempotency_key IS NOT NULL;
    CREATE INDEX runs_created ON runs (created_at, ordinal);
    CREATE INDEX runs_status_created ON runs (status, created_at, ordinal);
    CREATE TABLE checkpoints (
        run_id text NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
        key text NOT NULL,
        output bytea NOT NULL,
        saved_at double precision NOT NULL,
        PRIMARY KEY (run_id, key)
    );
    CREATE TABLE events (
        run_id text NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
        seq integer NOT NULL,
        type text NOT NULL,
        at double precision NOT NULL,
        step text,
        data json,
        PRIMARY KEY (run_id, seq)
    );
    CREATE TABLE api_keys (
        id text PRIMARY KEY,
        name text NOT NULL,
        hash text NOT NULL UNIQUE,
        created_at double precision NOT NULL,
        revoked_at double precision,
        admin boolean NOT NULL DEFAULT false,
        cache boolean NOT NULL DEFAULT true
    );
    """,
)

# Every surgeflow process that migrates takes this transaction-level advisory lock first, so
# concurrent starters apply each migration once, one after another ("surgeflo" as a bigint).
MIGRATION_LOCK = int.from_bytes(b"surgeflo", "big")

_CLOSE_TIMEOUT_S = 10.0
_SCHEMES = ("postgresql", "postgres")
# The errors of the driver and the network, translated to StoreError where they cross into
# surgeflow (all but DataError, a value PostgreSQL refuses, which becomes a ValidationError).
_DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


class PooledConnection(asyncpg.Connection):  # type: ignore[misc]
    """A pooled connection handed back as it is, without asyncpg's reset query (``RESET ALL``,
    ``UNLISTEN *``, ``CLOSE ALL``, ``pg_advisory_unlock_all()``): surgeflow leaves no session
    state on a connection (its advisory locks are transaction-scoped; it never LISTENs, SETs or
    holds a cursor), so the reset would only cost a round trip per pooled call."""

    def get_reset_query(self) -> str:
        return ""


def redact(url: str) -> str:
    """``url`` without its password, for messages and repr."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, hosts = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:***@{hosts}"
    query = "***" if "password" in parts.query.lower() else parts.query
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


class PostgresStore:
    """The `Store` in a PostgreSQL database (``postgresql://user@host:5432/db``).

    Safe for many tasks and many processes on one database. Opens a pool of ``min_size`` to
    ``max_size`` connections on first use (or `open`) and migrates the schema. ``connect_timeout_s``
    bounds each connection attempt, ``command_timeout_s`` each statement (None: no bound).
    """

    def __init__(
        self,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout_s: float = 10.0,
        command_timeout_s: float | None = 30.0,
    ) -> None:
        if urllib.parse.urlsplit(url).scheme not in _SCHEMES:
            raise ConfigError(
                f"not a PostgreSQL URL: {redact(url)!r} (use postgresql://user@host:5432/db)"
            )
        if not 0 <= min_size <= max_size or max_size < 1:
            raise ValueError("need 0 <= min_size <= max_size and max_size >= 1")
        if connect_timeout_s <= 0 or (command_timeout_s is not None and command_timeout_s <= 0):
            raise ValueError("timeouts must be positive")
        self.url = url
        self._min_size = min_size
        self._max_size = max_size
        self._connect_timeout_s = connect_timeout_s
        self._command_timeout_s = command_timeout_s
        self._pool: Any = None  # an asyncpg.Pool once open
        self._state = State.UNOPENED
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        pool = self._pool
        connections = "" if pool is None else f" connections={pool.get_size()}"
        idle = "" if pool is None else f" idle={pool.get_idle_size()}"
        return (
            f"<PostgresStore url={redact(self.url)!r} state={self._state.value}{connections}{idle}>"
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
        """Connect and migrate the schema; methods call this themselves on first use."""
        async with self._lock:
            if self._state is State.CLOSED:
                raise StoreError("PostgresStore is closed")
            if self._state is State.UNOPENED:
                pool = await self._create_pool()
                try:
                    await _migrate(pool, MIGRATIONS)
                except BaseException as exc:
                    pool.terminate()
                    if isinstance(exc, _DRIVER_ERRORS):
                        raise StoreError(
                            f"cannot migrate the schema of {redact(self.url)}: {exc}"
                        ) from exc
                    raise
                self._pool, self._state = pool, State.OPEN
        return self

    async def aclose(self) -> None:
        """Wait (up to 10 s) for the statements in flight, then close every connection."""
        async with self._lock:
            self._state = State.CLOSED
            pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), _CLOSE_TIMEOUT_S)
            except TimeoutError:
                pool.terminate()

    async def _create_pool(self) -> Any:
        where = redact(self.url)
        try:
            return await asyncpg.create_pool(
                self.url,
                connection_class=PooledConnection,
                min_size=self._min_size,
                max_size=self._max_size,
                timeout=self._connect_timeout_s,
                command_timeout=self._command_timeout_s,
                server_settings={"application_name": "surgeflow"},
            )
        except TimeoutError as exc:
            raise StoreError(
                f"cannot connect to PostgreSQL at {where}: no answer within"
                f" {self._connect_timeout_s} s"
            ) from exc
        except (asyncpg.ClientConfigurationError, ValueError) as exc:
            raise StoreError(f"bad PostgreSQL URL {where!r}: {exc}") from exc
        except _DRIVER_ERRORS as exc:
            raise StoreError(f"cannot connect to PostgreSQL at {where}: {exc}") from exc

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        """A pooled connection; driver errors leave as `ValidationError` or `StoreError`."""
        if self._state is not State.OPEN:
            await self.open()
        pool = self._pool
        if pool is None:  # closed since the check above
            raise StoreError("PostgresStore is closed")
        try:
            async with pool.acquire() as conn:
                yield conn
        except asyncpg.DataError as exc:
            raise ValidationError(f"PostgreSQL rejected a value: {exc}") from exc
        except TimeoutError as exc:
            raise StoreError(
                f"PostgreSQL did not answer within {self._command_timeout_s} s"
            ) from exc
        except _DRIVER_ERRORS as exc:
            raise StoreError(f"PostgreSQL failed: {exc}") from exc

    async def create_run(
        self,
        workflow: str,
        input: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        key_id: str | None = None,
        queued_event: dict[str, Any] | None = None,
    ) -> tuple[Run, bool]:
        """Create a queued run; with a known idempotency key return that run and ``False``.
        With ``queued_event``, the run's first event, ``run.queued``, is written with it."""
        input_json = _encode(input, "run input")
        event_json = None if not queued_event else _encode(queued_event, "event data")
        run_id = "run_" + secrets.token_urlsafe(15)
        now = time.time()
        first_seq = 0 if queued_event is None else 1
        async with self._connection() as conn:
            # ON CONFLICT waits for a concurrent insert of the same key to commit, so exactly one
            # of many racing creates inserts and the others then find its row. The event goes in
            # with the run, in the same statement (a data-modifying WITH), or not at all.
            row = await conn.fetchrow(
                f"WITH created AS (INSERT INTO runs ({_RUN_COLUMNS}, last_seq)"
                " VALUES ($1, $2, 'queued', $3, NULL, NULL, $4, $5, false, 0, $6, $6, NULL, NULL,"
                " $7) ON CONFLICT (coalesce(key_id, ''), idempotency_key)"
                f" WHERE idempotency_key IS NOT NULL DO NOTHING RETURNING {_RUN_COLUMNS}),"
                " queued AS (INSERT INTO events (run_id, seq, type, at, step, data)"
                " SELECT id, 1, 'run.queued', $6, NULL, $8 FROM created WHERE $7 = 1)"
                " SELECT * FROM created",
                run_id,
                workflow,
                input_json,
                idempotency_key,
                key_id,
                now,
                first_seq,
                event_json,
            )
            if row is not None:
                return _run_from_row(row), True
            row = await conn.fetchrow(
                f"SELECT {_RUN_COLUMNS} FROM runs"
                " WHERE coalesce(key_id, '') = $1 AND idempotency_key = $2",
                key_id or "",
                idempotency_key,
            )
        if row is None:  # the conflicting insert rolled back between our two statements
            raise Conflict(f"a run with idempotency key {idempotency_key!r} vanished; retry")
        return _run_from_row(row), False

    async def get_run(self, run_id: str) -> Run:
        """The run, or `NotFound`."""
        async with self._connection() as conn:
            return await _fetch_run(conn, run_id)

    async def list_runs(
        self,
        *,
        statuses: frozenset[RunStatus] | None = None,
        limit: int = 100,
        before: str | None = None,
    ) -> list[Run]:
        """Runs, newest first, optionally only those in ``statuses``; with ``before`` (the id of
        the last run of the previous page), the page after it."""
        if limit <= 0 or (statuses is not None and not statuses):
            return []
        clauses: list[str] = []
        params: list[Any] = []
        if statuses is not None:
            params.append([s.value for s in statuses])
            clauses.append(f"status = ANY(${len(params)}::text[])")
        if before is not None:
            params.append(before)
            clauses.append(
                "(created_at, ordinal) <"
                f" (SELECT created_at, ordinal FROM runs WHERE id = ${len(params)})"
            )
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = (
            f"SELECT {_RUN_COLUMNS} FROM runs {where}"
            f" ORDER BY created_at DESC, ordinal DESC LIMIT {int(limit)}"
        )
        async with self._connection() as conn:
            rows = await conn.fetch(sql, *params)
        return [_run_from_row(row) for row in rows]

    async def start_run(
        self, run_id: str, *, started_event: StartedEvent | None = None
    ) -> tuple[Run, dict[str, bytes]]:
        """Mark a run running (``attempts`` + 1, ``started_at`` kept from the first start) and
        return it with its checkpoints, over one connection; with ``started_event``, append its
        ``run.started`` event right after (a crash in between leaves a running run without it,
        as separate writes would).

        A terminal run (cancelled while queued, say) is returned unchanged: check its status.
        """
        now = time.time()
        sql = (
            "status = 'running', attempts = attempts + 1, started_at = coalesce(started_at, $1),"
            " updated_at = $1"
        )
        async with self._connection() as conn:
            run, started = await _update_live_run(conn, run_id, sql, (now,))
            if not started:
                return run, {}
            checkpoints = await _checkpoints(conn, run_id)
            data = None if started_event is None else started_event(run, checkpoints)
            if data is not None:
                await conn.execute(
                    "WITH next AS (UPDATE runs SET last_seq = last_seq + 1 WHERE id = $1"
                    " RETURNING last_seq)"
                    " INSERT INTO events (run_id, seq, type, at, step, data)"
                    " SELECT $1, last_seq, 'run.started', $2, NULL, $3 FROM next",
                    run_id,
                    now,
                    _encode(data, "event data"),
                )
            return run, checkpoints

    async def finish_run(
        self,
        run_id: str,
        status: RunStatus,
        *,
        output: Any = None,
        error: str | None = None,
        event_data: dict[str, Any] | None = None,
    ) -> tuple[Run, bool]:
        """Move a run to a terminal status and append its terminal event, in one transaction:
        the run, and whether this call ended it (a run that is already terminal is left as it
        is, and gets no event)."""
        if not status.terminal:
            raise ValueError(f"finish_run needs a terminal status, not {status.value!r}")
        output_json = None if output is None else _encode(output, "run output")
        data_json = None if event_data is None else _encode(event_data, "event data")
        now = time.time()
        sql = "status = $1, output = $2, error = $3, finished_at = $4, updated_at = $4"
        async with self._connection() as conn, conn.transaction():
            run, ended = await _update_live_run(
                conn, run_id, sql, (status.value, output_json, error, now)
            )
            if ended:
                await conn.execute(
                    "WITH next AS (UPDATE runs SET last_seq = last_seq + 1 WHERE id = $1"
                    " RETURNING last_seq)"
                    " INSERT INTO events (run_id, seq, type, at, step, data)"
                    " SELECT $1, last_seq, $2, $3, NULL, $4 FROM next",
                    run_id,
                    f"run.{status.value}",
                    now,
                    data_json,
                )
        return run, ended

    async def request_cancel(self, run_id: str) -> Run:
        """Cancel a queued run at once; flag a running one (``cancel_requested``)."""
        # Every right-hand side sees the row as it was before this UPDATE.
        sql = (
            "status = CASE status WHEN 'queued' THEN 'cancelled' ELSE status END,"
            " finished_at = CASE status WHEN 'queued' THEN $1 ELSE finished_at END,"
            " cancel_requested = cancel_requested OR status = 'running',"
            " updated_at = $1"
        )
        async with self._connection() as conn:
            run, _ = await _update_live_run(conn, run_id, sql, (time.time(),))
            return run

    async def save_checkpoint(self, run_id: str, key: str, output: bytes) -> None:
        """Remember the JSON output of the finished step ``key`` (overwrites)."""
        async with self._connection() as conn:
            try:
                await conn.execute(
                    "INSERT INTO checkpoints (run_id, key, output, saved_at)"
                    " VALUES ($1, $2, $3, $4) ON CONFLICT (run_id, key) DO UPDATE"
                    " SET output = excluded.output, saved_at = excluded.saved_at",
                    run_id,
                    key,
                    bytes(output),
                    time.time(),
                )
            except asyncpg.ForeignKeyViolationError as exc:
                raise NotFound(f"no run {run_id!r}") from exc

    async def load_checkpoints(self, run_id: str) -> dict[str, bytes]:
        """Every saved step output of the run, by step key (empty for an unknown run)."""
        async with self._connection() as conn:
            return await _checkpoints(conn, run_id)

    async def append_event(
        self,
        run_id: str,
        type: str,
        *,
        step: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> RunEvent:
        """Append an event; its ``seq`` is one more than the run's last."""
        data_json = None if data is None else _encode(data, "event data")
        now = time.time()
        async with self._connection() as conn:
            # One statement, so one transaction: bumping the run's counter locks its row until
            # the event is in, so concurrent appends (from any process) queue up and the seqs
            # stay gapless; a failed insert rolls the counter back with it.
            seq = await conn.fetchval(
                "WITH next AS (UPDATE runs SET last_seq = last_seq + 1 WHERE id = $1"
                " RETURNING last_seq)"
                " INSERT INTO events (run_id, seq, type, at, step, data)"
                " SELECT $1, last_seq, $2, $3, $4, $5 FROM next RETURNING seq",
                run_id,
                type,
                now,
                step,
                data_json,
            )
        if seq is None:
            raise NotFound(f"no run {run_id!r}")
        return RunEvent(run_id=run_id, seq=int(seq), type=type, at=now, step=step, data=data)

    async def append_events(
        self, run_id: str, events: Sequence[tuple[str, str | None, dict[str, Any] | None]]
    ) -> list[RunEvent]:
        """Append ``events`` (type, step, data), in order, in one statement."""
        if not events:
            return []
        types = [type for type, _, _ in events]
        steps = [step for _, step, _ in events]
        data = [None if d is None else _encode(d, "event data") for _, _, d in events]
        now = time.time()
        async with self._connection() as conn:
            # The counter moves by the batch's size under the run's row lock, as one append does.
            last = await conn.fetchval(
                "WITH next AS (UPDATE runs SET last_seq = last_seq + $2 WHERE id = $1"
                " RETURNING last_seq)"
                " INSERT INTO events (run_id, seq, type, at, step, data)"
                " SELECT $1, next.last_seq - $2 + e.n, e.type, $3, e.step, e.data::json FROM next,"
                " unnest($4::text[], $5::text[], $6::text[]) WITH ORDINALITY"
                " AS e(type, step, data, n) RETURNING (SELECT last_seq FROM next)",
                run_id,
                len(events),
                now,
                types,
                steps,
                data,
            )
        if last is None:
            raise NotFound(f"no run {run_id!r}")
        first = int(last) - len(events) + 1
        return [
            RunEvent(run_id=run_id, seq=first + i, type=type, at=now, step=step, data=d)
            for i, (type, step, d) in enumerate(events)
        ]

    async def list_events(self, run_id: str, *, after_seq: int = 0) -> list[RunEvent]:
        """The run's events with ``seq > after_seq``, in order."""
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT seq, type, at, step, data FROM events"
                " WHERE run_id = $1 AND seq > $2 ORDER BY seq",
                run_id,
                after_seq,
            )
        return [
            RunEvent(
                run_id=run_id,
                seq=seq,
                type=type_,
                at=at,
                step=step,
                data=None if data is None else _decode_dict(data),
            )
            for seq, type_, at, step, data in rows
        ]

    async def add_api_key(self, key: ApiKey) -> None:
        """Store ``key``; `Conflict` if its id or hash is taken."""
        async with self._connection() as conn:
            try:
                await conn.execute(
                    f"INSERT INTO api_keys ({_KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    key.id,
                    key.name,
                    key.hash,
                    key.created_at,
                    key.revoked_at,
                    bool(key.admin),
                    bool(key.cache),
                )
            except asyncpg.UniqueViolationError as exc:
                raise Conflict(f"API key {key.id!r} or its hash exists already") from exc

    async def list_api_keys(self) -> list[ApiKey]:
        async with self._connection() as conn:
            # COLLATE "C": byte order, as in SQLite, whatever the database's locale.
            rows = await conn.fetch(
                f'SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY created_at, id COLLATE "C"'
            )
        return [_key_from_row(row) for row in rows]

    async def revoke_api_key(self, key_id: str) -> ApiKey:
        """Mark a key revoked (keeping the first revocation time), or `NotFound`."""
        async with self._connection() as conn:
            row = await conn.fetchrow(
                "UPDATE api_keys SET revoked_at = coalesce(revoked_at, $1) WHERE id = $2"
                f" RETURNING {_KEY_COLUMNS}",
                time.time(),
                key_id,
            )
        if row is None:
            raise NotFound(f"no API key {key_id!r}")
        return _key_from_row(row)


async def _fetch_run(conn: Any, run_id: str) -> Run:
    row = await conn.fetchrow(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = $1", run_id)
    if row is None:
        raise NotFound(f"no run {run_id!r}")
    return _run_from_row(row)


async def _update_live_run(
    conn: Any, run_id: str, assignments: str, params: Sequence[Any]
) -> tuple[Run, bool]:
    """Apply ``assignments`` unless the run is terminal: the run as it now is and whether it
    was changed, or `NotFound`.

    ``assignments`` numbers its parameters from $1; the run id comes after them.
    """
    row = await conn.fetchrow(
        f"UPDATE runs SET {assignments} WHERE id = ${len(params) + 1}"
        f" AND status NOT IN ({_TERMINAL_SQL}) RETURNING {_RUN_COLUMNS}",
        *params,
        run_id,
    )
    # No row: the run is terminal (returned as it is) or does not exist.
    return (await _fetch_run(conn, run_id), False) if row is None else (_run_from_row(row), True)


async def _checkpoints(conn: Any, run_id: str) -> dict[str, bytes]:
    rows = await conn.fetch("SELECT key, output FROM checkpoints WHERE run_id = $1", run_id)
    return {key: bytes(output) for key, output in rows}


async def _migrate(pool: Any, migrations: Sequence[str]) -> None:
    """Bring the schema up to ``len(migrations)``, one migration per transaction.

    Each transaction first takes `MIGRATION_LOCK`, so of several processes starting at once one
    applies a migration and the others, let in after its COMMIT, find it recorded.
    """
    async with pool.acquire() as conn:
        while True:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS surgeflow_schema ("
                    " component text NOT NULL, version integer NOT NULL,"
                    " applied_at double precision NOT NULL, PRIMARY KEY (component, version))"
                )
                version = await conn.fetchval(
                    "SELECT coalesce(max(version), 0) FROM surgeflow_schema WHERE component = $1",
                    COMPONENT,
                )
                if version > len(migrations):
                    raise StoreError(
                        f"the database's {COMPONENT!r} schema is version {version}, newer than"
                        f" this surgeflow knows ({len(migrations)}): upgrade surgeflow"
                    )
                if version == len(migrations):
                    return
                await conn.execute(migrations[version])
                await conn.execute(
                    "INSERT INTO surgeflow_schema (component, version, applied_at)"
                    " VALUES ($1, $2, $3)",
                    COMPONENT,
                    version + 1,
                    time.time(),
                )
