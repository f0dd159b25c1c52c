"""SQLite off the event loop: one batching writer thread and a small pool of reader threads."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self, TypeVar

from surgeflow.errors import ConfigError, SurgeflowError

T = TypeVar("T")
Params = Sequence[Any] | Mapping[str, Any]
Migration = str | Callable[[sqlite3.Connection], None]
_Op = tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]
_Outcome = tuple[asyncio.Future[Any], Any, BaseException | None]
_STOP = None  # the sentinel a thread's queue receives on close
_FIRST_PAUSE_S, _LAST_PAUSE_S = 0.0001, 0.001  # the writer's waits for another process's lock


class State(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


@dataclasses.dataclass(frozen=True)
class Schema:
    """One component's tables: idempotent DDL plus migrations that bring an older file up to it.

    A file that has no version recorded for ``name`` is new: the DDL creates the current tables and
    no migration runs. Otherwise ``migrations[recorded:]`` run in order, then the DDL.
    """

    name: str
    ddl: tuple[str, ...]
    migrations: tuple[Migration, ...] = ()

    @property
    def version(self) -> int:
        return len(self.migrations)


@dataclasses.dataclass
class DatabaseStats:
    """Counters for tests and benchmarks (the writer thread keeps all but ``reads``)."""

    transactions: int = 0
    writes: int = 0
    failed_writes: int = 0
    reads: int = 0
    largest_batch: int = 0


def parse_target(target: str | os.PathLike[str]) -> Path:
    """The file named by ``sqlite:///relative.db``, ``sqlite:////abs/path.db`` or a plain path."""
    if isinstance(target, os.PathLike):
        return Path(target)
    if target.startswith("sqlite://"):
        rest = target.removeprefix("sqlite://")
        if not rest.startswith("/") or len(rest) < 2:
            raise ConfigError(
                f"bad SQLite URL {target!r}: use sqlite:///relative/path.db or sqlite:////abs/path.db"
            )
        target = rest[1:]
    elif "://" in target:
        raise ConfigError(f"not a SQLite URL: {target!r}")
    if target == ":memory:" or "?" in target:
        # Each thread holds its own connection, so they must all name one file.
        raise ConfigError(f"unsupported SQLite target {target!r}: give a file path")
    return Path(target)


class SQLiteDatabase:
    """A SQLite file served to async code.

    Writes go to one thread that runs everything queued as one transaction (``BEGIN IMMEDIATE``),
    each operation inside its own savepoint, so a failing operation fails alone. Its result is
    delivered only after the COMMIT. Reads go to ``readers`` threads, each with its own connection;
    WAL lets them read while the writer writes. Several processes may open the same file.
    A write that was submitted runs even if its caller stops waiting for it.
    """

    def __init__(
        self,
        target: str | os.PathLike[str],
        *,
        schemas: Iterable[Schema] = (),
        readers: int = 2,
        busy_timeout_ms: int = 5000,
        max_batch: int = 1000,
    ) -> None:
        if readers < 1 or max_batch < 1:
            raise ValueError("readers and max_batch must be at least 1")
        self.path = parse_target(target)
        self.stats = DatabaseStats()
        self.state = State.UNOPENED
        self._schemas = tuple(schemas)
        self._readers = readers
        self._busy_timeout_ms = busy_timeout_ms
        self._max_batch = max_batch
        self._write_q: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._read_q: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return (
            f"<SQLiteDatabase path={str(self.path)!r} state={self.state.value} "
            f"pending_writes={self._write_q.qsize()} transactions={self.stats.transactions}>"
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
        """Start the threads, set the PRAGMAs and create the schemas; idempotent."""
        async with self._lock:
            if self.state is State.OPEN:
                return self
            if self.state is State.CLOSED:
                raise sqlite3.ProgrammingError("the database is closed")
            loop = asyncio.get_running_loop()
            # Fresh queues: a failed earlier open may have left stop sentinels in the old ones.
            self._write_q, self._read_q = queue.SimpleQueue(), queue.SimpleQueue()
            try:
                # The writer first: it switches the file to WAL before any reader connects.
                await self._start(self._writer_main, "writer", loop)
                for i in range(self._readers):
                    await self._start(self._reader_main, f"reader-{i}", loop)
            except BaseException:
                await self._stop_threads()
                raise
            self.state = State.OPEN
            return self

    async def aclose(self) -> None:
        """Run the writes already submitted, then stop the threads."""
        async with self._lock:
            if self.state is State.CLOSED:
                return
            self.state = State.CLOSED
            await self._stop_threads()

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in the writer thread, inside a transaction it may share with other writes."""
        return await self._submit(self._write_q, fn)

    async def execute(self, sql: str, params: Params = ()) -> list[Any]:
        """Run one writing statement; its rows (``RETURNING``) or ``[]``."""
        return await self.write(lambda conn: conn.execute(sql, params).fetchall())

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in a reader thread, in one read transaction (a consistent snapshot)."""
        self.stats.reads += 1  # here, not in the readers: two threads would race on it
        return await self._submit(self._read_q, fn)

    async def query(self, sql: str, params: Params = ()) -> list[Any]:
        """The rows of one reading statement."""
        return await self.read(lambda conn: conn.execute(sql, params).fetchall())

    async def ensure_schema(self, schema: Schema) -> None:
        """Create or migrate ``schema``'s tables in this open database."""
        await self.write(lambda conn: _apply_schema(conn, schema))

    async def _submit(
        self, q: queue.SimpleQueue[_Op | None], fn: Callable[[sqlite3.Connection], T]
    ) -> T:
        if self.state is not State.OPEN:
            raise sqlite3.ProgrammingError(f"the database is {self.state.value}")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        q.put((fn, future))
        return await future

    async def _start(
        self,
        main: Callable[[asyncio.Future[None]], None],
        role: str,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        ready: asyncio.Future[None] = loop.create_future()
        thread = threading.Thread(target=main, args=(ready,), name=f"sqlite-{role}", daemon=True)
        thread.start()
        self._threads.append(thread)
        await ready

    async def _stop_threads(self) -> None:
        # The writer drains its queue up to the sentinel, so writes submitted before now still run.
        self._write_q.put(_STOP)
        for _ in range(self._readers):
            self._read_q.put(_STOP)
        threads, self._threads = self._threads, []
        for thread in threads:
            await asyncio.to_thread(thread.join)

    def _connect(self, *, busy_timeout_ms: int | None = None) -> sqlite3.Connection:
        # isolation_level=None: the module must not open transactions behind our back.
        timeout_ms = self._busy_timeout_ms if busy_timeout_ms is None else busy_timeout_ms
        conn = sqlite3.connect(self.path, timeout=timeout_ms / 1000, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {int(timeout_ms)}")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def _writer_main(self, ready: asyncio.Future[None]) -> None:
        try:
            conn = self._connect(busy_timeout_ms=0)  # `_begin` waits for the lock itself
        except Exception as exc:
            _deliver([(ready, None, exc)])
            return
        try:
            try:
                self._set_wal(conn)
                if self._schemas:
                    self._begin(conn)
                    for schema in self._schemas:
                        _apply_schema(conn, schema)
                    conn.execute("COMMIT")
            except Exception as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                _deliver([(ready, None, exc)])
                return
            _deliver([(ready, None, None)])
            self._writer_loop(conn)
        finally:
            conn.close()

    def _set_wal(self, conn: sqlite3.Connection) -> None:
        # Switching to WAL takes an exclusive lock; another process opening the same new file
        # at the same moment can make it fail at once rather than wait, so retry until the timeout.
        deadline = time.monotonic() + self._busy_timeout_ms / 1000
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            except sqlite3.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
                continue
            if mode != "wal":
                raise sqlite3.OperationalError(f"cannot use WAL (journal_mode is {mode})")
            return

    def _begin(self, conn: sqlite3.Connection) -> None:
        """``BEGIN IMMEDIATE``, waiting for another process's write lock in short sleeps.

        SQLite's own busy handler sleeps 1, 2, 5, 10 … up to 100 ms between tries, so a writer
        that meets another process's transaction often sleeps well past its end; these waits
        stay under a millisecond, which keeps two processes writing one file at full speed.
        """
        deadline = time.monotonic() + self._busy_timeout_ms / 1000
        pause = _FIRST_PAUSE_S
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, _LAST_PAUSE_S)

    def _writer_loop(self, conn: sqlite3.Connection) -> None:
        while True:
            op = self._write_q.get()
            if op is _STOP:
                return
            batch = [op]
            stop = False
            while len(batch) < self._max_batch:
                try:
                    op = self._write_q.get_nowait()
                except queue.Empty:
                    break
                if op is _STOP:
                    stop = True
                    break
                batch.append(op)
            self._run_batch(conn, batch)
            if stop:
                return

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Op]) -> None:
        outcomes: list[_Outcome] = []
        try:
            self._begin(conn)
            for fn, future in batch:
                conn.execute("SAVEPOINT op")
                try:
                    result = fn(conn)
                except Exception as exc:
                    if not conn.in_transaction:
                        raise  # SQLite rolled back the whole transaction: every op is lost
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    outcomes.append((future, None, exc))
                else:
                    conn.execute("RELEASE op")
                    outcomes.append((future, result, None))
            conn.execute("COMMIT")
        except Exception as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            outcomes = [(future, None, exc) for _, future in batch]
        else:
            self.stats.transactions += 1
        self.stats.writes += len(batch)
        self.stats.failed_writes += sum(1 for _, _, exc in outcomes if exc is not None)
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        _deliver(outcomes)

    def _reader_main(self, ready: asyncio.Future[None]) -> None:
        try:
            conn = self._connect()
            conn.execute("PRAGMA query_only = ON")
        except Exception as exc:
            _deliver([(ready, None, exc)])
            return
        _deliver([(ready, None, None)])
        try:
            while (op := self._read_q.get()) is not _STOP:
                fn, future = op
                try:
                    conn.execute("BEGIN")
                    result = fn(conn)
                    conn.execute("COMMIT")
                except Exception as exc:
                    if conn.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            conn.execute("ROLLBACK")
                    _deliver([(future, None, exc)])
                else:
                    _deliver([(future, result, None)])
        finally:
            conn.close()


def _apply_schema(conn: sqlite3.Connection, schema: Schema) -> None:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_versions"
        " (name TEXT PRIMARY KEY, version INTEGER NOT NULL)"
    )
    row = conn.execute(
        "SELECT version FROM schema_versions WHERE name = ?", (schema.name,)
    ).fetchone()
    if row is not None:
        for migration in schema.migrations[row[0] :]:
            if isinstance(migration, str):
                conn.execute(migration)
            else:
                migration(conn)
    for statement in schema.ddl:
        conn.execute(statement)
    conn.execute(
        "INSERT INTO schema_versions (name, version) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET version = excluded.version",
        (schema.name, schema.version),
    )


def _deliver(outcomes: list[_Outcome]) -> None:
    """Hand results to the futures' loops, one wake-up per loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].get_loop(), []).append(outcome)
    for loop, items in by_loop.items():
        # A closed loop raises RuntimeError: nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle, items)


def _settle(outcomes: list[_Outcome]) -> None:
    for future, result, exc in outcomes:
        if future.done():
            continue  # the caller was cancelled
        if exc is None:
            future.set_result(result)
        else:
            future.set_exception(exc)


class SQLiteBacked:
    """Base of the stores and queues kept in a `SQLiteDatabase`.

    Given a URL or path, the object opens (on first use) and closes its own database; given a
    `SQLiteDatabase`, it shares it and leaves closing it to whoever created it.
    """

    _schema: ClassVar[Schema]
    _error: ClassVar[type[SurgeflowError]]

    def __init__(self, target: str | os.PathLike[str] | SQLiteDatabase) -> None:
        if isinstance(target, SQLiteDatabase):
            self._db, self._owns_db = target, False
        else:
            self._db, self._owns_db = SQLiteDatabase(target), True
        self._state = State.UNOPENED
        self._lock = asyncio.Lock()

    @property
    def db(self) -> SQLiteDatabase:
        return self._db

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
        """Open the database and create the tables; methods call this themselves on first use."""
        async with self._lock:
            if self._state is State.CLOSED:
                raise self._error(f"{type(self).__name__} is closed")
            if self._state is State.UNOPENED:
                try:
                    await self._db.open()
                    await self._db.ensure_schema(self._schema)
                except sqlite3.Error as exc:
                    raise self._error(f"cannot open {self._db.path}: {exc}") from exc
                self._state = State.OPEN
        return self

    async def aclose(self) -> None:
        async with self._lock:
            self._state = State.CLOSED
        if self._owns_db:
            await self._db.aclose()

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._state is not State.OPEN:
            await self.open()
        try:
            return await self._db.write(fn)
        except sqlite3.Error as exc:
            raise self._error(f"SQLite write failed: {exc}") from exc

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._state is not State.OPEN:
            await self.open()
        try:
            return await self._db.read(fn)
        except sqlite3.Error as exc:
            raise self._error(f"SQLite read failed: {exc}") from exc
