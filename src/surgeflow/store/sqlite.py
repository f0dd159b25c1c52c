"""The SQLite Store: runs, checkpoints, events and API keys in one file."""

from __future__ import annotations

import contextlib
import secrets
import sqlite3
import time
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import msgspec

from surgeflow._sqlite import Schema, SQLiteBacked
from surgeflow.errors import Conflict, NotFound, StoreError, ValidationError
from surgeflow.store.base import ApiKey, Run, RunEvent, RunStatus, StartedEvent

SCHEMA = Schema(
    name="store",
    ddl=(
        """CREATE TABLE IF NOT EXISTS runs (
            id TEXT PRIMARY KEY,
            workflow TEXT NOT NULL,
            status TEXT NOT NULL,
            input TEXT NOT NULL,
            output TEXT,
            error TEXT,
            idempotency_key TEXT,
            key_id TEXT,
            cancel_requested INTEGER NOT NULL DEFAULT 0,
            attempts INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            started_at REAL,
            finished_at REAL
        )""",
        # Idempotency keys are scoped to the API key that sent them, so one tenant's key can never
        # return another tenant's run.
        """CREATE UNIQUE INDEX IF NOT EXISTS runs_idempotency
            ON runs (coalesce(key_id, ''), idempotency_key) WHERE idempotency_key IS NOT NULL""",
        "CREATE INDEX IF NOT EXISTS runs_created ON runs (created_at)",
        "CREATE INDEX IF NOT EXISTS runs_status_created ON runs (status, created_at)",
        """CREATE TABLE IF NOT EXISTS checkpoints (
            run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
            key TEXT NOT NULL,
            output BLOB NOT NULL,
            saved_at REAL NOT NULL,
            PRIMARY KEY (run_id, key)
        ) WITHOUT ROWID""",
        """CREATE TABLE IF NOT EXISTS events (
            run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            type TEXT NOT NULL,
            at REAL NOT NULL,
            step TEXT,
            data TEXT,
            PRIMARY KEY (run_id, seq)
        ) WITHOUT ROWID""",
        """CREATE TABLE IF NOT EXISTS api_keys (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            hash TEXT NOT NULL UNIQUE,
            created_at REAL NOT NULL,
            revoked_at REAL,
            admin INTEGER NOT NULL DEFAULT 0,
            cache INTEGER NOT NULL DEFAULT 1
        )""",
    ),
    migrations=(
        "ALTER TABLE api_keys ADD COLUMN admin INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE api_keys ADD COLUMN cache INTEGER NOT NULL DEFAULT 1",
    ),
)

_RUN_COLUMNS = (
    "id, workflow, status, input, output, error, idempotency_key, key_id, cancel_requested,"
    " attempts, created_at, updated_at, started_at, finished_at"
)
_TERMINAL_SQL = ", ".join(f"'{s.value}'" for s in RunStatus if s.terminal)
_KEY_COLUMNS = "id, name, hash, created_at, revoked_at, admin, cache"

_encoder = msgspec.json.Encoder()
_decode_dict = msgspec.json.Decoder(dict[str, Any]).decode


def _encode(value: Any, what: str) -> str:
    try:
        return _encoder.encode(value).decode()
    except (TypeError, msgspec.EncodeError) as exc:
        raise ValidationError(f"{what} is not JSON-serialisable: {exc}") from exc


def _run_from_row(row: tuple[Any, ...]) -> Run:
    (id_, workflow, status, input_, output, error, ikey, key_id, cancel, attempts, *times) = row
    created_at, updated_at, started_at, finished_at = times
    return Run(
        id=id_,
        workflow=workflow,
        status=RunStatus(status),
        input=_decode_dict(input_),
        output=None if output is None else msgspec.json.decode(output),
        error=error,
        idempotency_key=ikey,
        key_id=key_id,
        cancel_requested=bool(cancel),
        attempts=attempts,
        created_at=created_at,
        updated_at=updated_at,
        started_at=started_at,
        finished_at=finished_at,
    )


def _fetch_run(conn: sqlite3.Connection, run_id: str) -> Run:
    row = conn.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,)).fetchone()
    if row is None:
        raise NotFound(f"no run {run_id!r}")
    return _run_from_row(row)


def _update_live_run(
    conn: sqlite3.Connection, run_id: str, assignments: str, params: tuple[Any, ...]
) -> tuple[Run, bool]:
    """Apply ``assignments`` unless the run is terminal: the run as it now is and whether it
    was changed, or `NotFound`."""
    row = conn.execute(
        f"UPDATE runs SET {assignments} WHERE id = ? AND status NOT IN ({_TERMINAL_SQL})"
        f" RETURNING {_RUN_COLUMNS}",
        (*params, run_id),
    ).fetchone()
    return (_fetch_run(conn, run_id), False) if row is None else (_run_from_row(row), True)


def _append(
    conn: sqlite3.Connection,
    run_id: str,
    events: Sequence[tuple[str, str | None, str | None]],
    now: float,
) -> int:
    """Append encoded ``events`` (type, step, data JSON) after the run's last; the first seq.
    max + 1 is race-free: every write holds the file's write lock (BEGIN IMMEDIATE)."""
    row = conn.execute(
        "SELECT coalesce(max(seq), 0) FROM events WHERE run_id = ?", (run_id,)
    ).fetchone()
    first = int(row[0]) + 1
    with _of_a_known_run(run_id):
        conn.executemany(
            "INSERT INTO events (run_id, seq, type, at, step, data) VALUES (?, ?, ?, ?, ?, ?)",
            [
                (run_id, first + i, type, now, step, data)
                for i, (type, step, data) in enumerate(events)
            ],
        )
    return first


def _checkpoints(conn: sqlite3.Connection, run_id: str) -> dict[str, bytes]:
    rows = conn.execute("SELECT key, output FROM checkpoints WHERE run_id = ?", (run_id,))
    return {key: bytes(output) for key, output in rows}


@contextlib.contextmanager
def _of_a_known_run(run_id: str) -> Iterator[None]:
    """Rows that reference ``run_id`` are written in here: `NotFound` if there is no such run
    (the foreign key on ``runs`` says so, with no query of its own)."""
    try:
        yield
    except sqlite3.IntegrityError as exc:
        if "FOREIGN KEY" in str(exc):
            raise NotFound(f"no run {run_id!r}") from None
        raise


def _key_from_row(row: tuple[Any, ...]) -> ApiKey:
    return ApiKey(
        id=row[0],
        name=row[1],
        hash=row[2],
        created_at=row[3],
        revoked_at=row[4],
        admin=bool(row[5]),
        cache=bool(row[6]),
    )


class SQLiteStore(SQLiteBacked):
    """The `Store` in a SQLite file (``sqlite:///surgeflow.db``), or in a shared `SQLiteDatabase`.

    Safe for many tasks and for several processes on one file.
    """

    _schema: ClassVar[Schema] = SCHEMA
    _error: ClassVar[type[StoreError]] = StoreError

    def __repr__(self) -> str:
        return f"<SQLiteStore path={str(self.db.path)!r} state={self._state.value}>"

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

        def create(conn: sqlite3.Connection) -> tuple[Run, bool]:
            if idempotency_key is not None:
                row = conn.execute(
                    f"SELECT {_RUN_COLUMNS} FROM runs WHERE coalesce(key_id, '') = ?"
                    " AND idempotency_key = ?",
                    (key_id or "", idempotency_key),
                ).fetchone()
                if row is not None:
                    return _run_from_row(row), False
            row = conn.execute(
                f"INSERT INTO runs ({_RUN_COLUMNS}) VALUES (?, ?, ?, ?, NULL, NULL, ?, ?, 0, 0,"
                f" ?, ?, NULL, NULL) RETURNING {_RUN_COLUMNS}",
                (run_id, workflow, "queued", input_json, idempotency_key, key_id, now, now),
            ).fetchone()
            if queued_event is not None:
                conn.execute(
                    "INSERT INTO events (run_id, seq, type, at, step, data)"
                    " VALUES (?, 1, 'run.queued', ?, NULL, ?)",
                    (run_id, now, event_json),
                )
            return _run_from_row(row), True

        return await self._write(create)

    async def get_run(self, run_id: str) -> Run:
        """The run, or `NotFound`."""
        return await self._read(lambda conn: _fetch_run(conn, run_id))

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
            clauses.append(f"status IN ({', '.join('?' * len(statuses))})")
            params += [s.value for s in statuses]
        if before is not None:
            clauses.append(
                "(created_at, rowid) < (SELECT created_at, rowid FROM runs WHERE id = ?)"
            )
            params.append(before)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = (
            f"SELECT {_RUN_COLUMNS} FROM runs {where} ORDER BY created_at DESC, rowid DESC LIMIT ?"
        )
        rows = await self._read(lambda conn: conn.execute(sql, (*params, limit)).fetchall())
        return [_run_from_row(row) for row in rows]

    async def start_run(
        self, run_id: str, *, started_event: StartedEvent | None = None
    ) -> tuple[Run, dict[str, bytes]]:
        """Mark a run running (``attempts`` + 1, ``started_at`` kept from the first start) and
        return it with its checkpoints, in one write; with ``started_event``, its
        ``run.started`` event in the same write.

        A terminal run (cancelled while queued, say) is returned unchanged: check its status.
        """
        now = time.time()
        sql = (
            "status = 'running', attempts = attempts + 1, started_at = coalesce(started_at, ?),"
            " updated_at = ?"
        )

        def start(conn: sqlite3.Connection) -> tuple[Run, dict[str, bytes]]:
            run, started = _update_live_run(conn, run_id, sql, (now, now))
            if not started:
                return run, {}
            checkpoints = _checkpoints(conn, run_id)
            data = None if started_event is None else started_event(run, checkpoints)
            if data is not None:
                _append(conn, run_id, [("run.started", None, _encode(data, "event data"))], now)
            return run, checkpoints

        return await self._write(start)

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
        sql = "status = ?, output = ?, error = ?, finished_at = ?, updated_at = ?"
        params = (status.value, output_json, error, now, now)

        def finish(conn: sqlite3.Connection) -> tuple[Run, bool]:
            run, ended = _update_live_run(conn, run_id, sql, params)
            if ended:
                conn.execute(
                    "INSERT INTO events (run_id, seq, type, at, step, data)"
                    " SELECT ?, coalesce(max(seq), 0) + 1, ?, ?, NULL, ? FROM events"
                    " WHERE run_id = ?",
                    (run_id, f"run.{status.value}", now, data_json, run_id),
                )
            return run, ended

        return await self._write(finish)

    async def request_cancel(self, run_id: str) -> Run:
        """Cancel a queued run at once; flag a running one (``cancel_requested``)."""
        now = time.time()
        sql = (
            "status = CASE status WHEN 'queued' THEN 'cancelled' ELSE status END,"
            " finished_at = CASE status WHEN 'queued' THEN ? ELSE finished_at END,"
            " cancel_requested = cancel_requested OR status = 'running',"
            " updated_at = ?"
        )
        run, _ = await self._write(lambda conn: _update_live_run(conn, run_id, sql, (now, now)))
        return run

    async def save_checkpoint(self, run_id: str, key: str, output: bytes) -> None:
        """Remember the JSON output of the finished step ``key`` (overwrites)."""
        now = time.time()

        def save(conn: sqlite3.Connection) -> None:
            with _of_a_known_run(run_id):
                conn.execute(
                    "INSERT INTO checkpoints (run_id, key, output, saved_at) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (run_id, key) DO UPDATE"
                    " SET output = excluded.output, saved_at = excluded.saved_at",
                    (run_id, key, output, now),
                )

        await self._write(save)

    async def load_checkpoints(self, run_id: str) -> dict[str, bytes]:
        """Every saved step output of the run, by step key (empty for an unknown run)."""
        return await self._read(lambda conn: _checkpoints(conn, run_id))

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

        def append(conn: sqlite3.Connection) -> int:
            # max + 1 is race-free: every write holds the file's write lock (BEGIN IMMEDIATE).
            with _of_a_known_run(run_id):
                row = conn.execute(
                    "INSERT INTO events (run_id, seq, type, at, step, data)"
                    " SELECT ?, coalesce(max(seq), 0) + 1, ?, ?, ?, ? FROM events"
                    " WHERE run_id = ? RETURNING seq",
                    (run_id, type, now, step, data_json, run_id),
                ).fetchone()
            return int(row[0])

        seq = await self._write(append)
        return RunEvent(run_id=run_id, seq=seq, type=type, at=now, step=step, data=data)

    async def append_events(
        self, run_id: str, events: Sequence[tuple[str, str | None, dict[str, Any] | None]]
    ) -> list[RunEvent]:
        """Append ``events`` (type, step, data), in order, in one write."""
        if not events:
            return []
        encoded = [
            (type, step, None if data is None else _encode(data, "event data"))
            for type, step, data in events
        ]
        now = time.time()

        def append(conn: sqlite3.Connection) -> int:
            return _append(conn, run_id, encoded, now)

        first = await self._write(append)
        return [
            RunEvent(run_id=run_id, seq=first + i, type=type, at=now, step=step, data=data)
            for i, (type, step, data) in enumerate(events)
        ]

    async def list_events(self, run_id: str, *, after_seq: int = 0) -> list[RunEvent]:
        """The run's events with ``seq > after_seq``, in order."""
        rows = await self._read(
            lambda conn: conn.execute(
                "SELECT seq, type, at, step, data FROM events"
                " WHERE run_id = ? AND seq > ? ORDER BY seq",
                (run_id, after_seq),
            ).fetchall()
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

        def add(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(
                    f"INSERT INTO api_keys ({_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        key.id,
                        key.name,
                        key.hash,
                        key.created_at,
                        key.revoked_at,
                        key.admin,
                        key.cache,
                    ),
                )
            except sqlite3.IntegrityError as exc:
                raise Conflict(f"API key {key.id!r} or its hash exists already") from exc

        await self._write(add)

    async def list_api_keys(self) -> list[ApiKey]:
        rows = await self._read(
            lambda conn: conn.execute(
                f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"
            ).fetchall()
        )
        return [_key_from_row(row) for row in rows]

    async def revoke_api_key(self, key_id: str) -> ApiKey:
        """Mark a key revoked (keeping the first revocation time), or `NotFound`."""
        now = time.time()

        def revoke(conn: sqlite3.Connection) -> ApiKey:
            row = conn.execute(
                "UPDATE api_keys SET revoked_at = coalesce(revoked_at, ?) WHERE id = ?"
                f" RETURNING {_KEY_COLUMNS}",
                (now, key_id),
            ).fetchone()
            if row is None:
                raise NotFound(f"no API key {key_id!r}")
            return _key_from_row(row)

        return await self._write(revoke)
