"""Tests of the threaded, batching SQLite helper."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from surgeflow._sqlite import Schema, SQLiteDatabase, State, parse_target
from surgeflow.errors import ConfigError

ITEMS = Schema(
    name="test",
    ddl=("CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)",),
)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[SQLiteDatabase]:
    async with SQLiteDatabase(tmp_path / "test.db", schemas=[ITEMS]) as database:
        yield database


async def insert(db: SQLiteDatabase, name: str) -> int:
    rows = await db.execute("INSERT INTO items (name) VALUES (?) RETURNING id", (name,))
    return int(rows[0][0])


async def count(db: SQLiteDatabase) -> int:
    return int((await db.query("SELECT count(*) FROM items"))[0][0])


async def hold_writer(db: SQLiteDatabase) -> tuple[threading.Event, asyncio.Task[object]]:
    """Occupy the writer thread until the returned event is set, so later writes queue up."""
    gate = threading.Event()
    entered = threading.Event()

    def blocking(conn: sqlite3.Connection) -> None:
        entered.set()
        gate.wait(5)

    task = asyncio.create_task(db.write(blocking))
    await asyncio.to_thread(entered.wait, 5)
    return gate, task


@pytest.mark.parametrize(
    ("target", "path"),
    [
        ("sqlite:///runs.db", Path("runs.db")),
        ("sqlite:///data/runs.db", Path("data/runs.db")),
        ("sqlite:////var/lib/runs.db", Path("/var/lib/runs.db")),
        ("runs.db", Path("runs.db")),
        (Path("/tmp/x.db"), Path("/tmp/x.db")),
    ],
)
def test_parse_target(target: str | Path, path: Path) -> None:
    assert parse_target(target) == path


@pytest.mark.parametrize(
    "target", ["sqlite://:memory:", ":memory:", "sqlite://", "sqlite:///", "postgresql://x/y"]
)
def test_parse_target_rejects(target: str) -> None:
    with pytest.raises(ConfigError):
        parse_target(target)


async def test_lifecycle(tmp_path: Path) -> None:
    db = SQLiteDatabase(tmp_path / "test.db", schemas=[ITEMS])
    states = [db.state]
    with pytest.raises(sqlite3.ProgrammingError):
        await db.query("SELECT 1")
    await db.open()
    await db.open()  # idempotent
    states.append(db.state)
    assert "state=open" in repr(db)
    assert await insert(db, "a") == 1
    await db.aclose()
    await db.aclose()
    states.append(db.state)
    assert states == [State.UNOPENED, State.OPEN, State.CLOSED]
    assert "state=closed" in repr(db)
    with pytest.raises(sqlite3.ProgrammingError):
        await insert(db, "b")
    with pytest.raises(sqlite3.ProgrammingError):
        await db.open()
    assert not [t for t in threading.enumerate() if t.name.startswith("sqlite-")]


async def test_pragmas(db: SQLiteDatabase) -> None:
    def pragmas(conn: sqlite3.Connection) -> tuple[object, ...]:
        return tuple(
            conn.execute(f"PRAGMA {name}").fetchone()[0]
            for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
        )

    # synchronous 1 = NORMAL; the writer waits for another process's lock itself (`_begin`)
    assert await db.write(pragmas) == ("wal", 1, 1, 0)
    assert await db.read(pragmas) == ("wal", 1, 1, 5000)


def lock_from_another_connection(path: Path, seconds: float) -> threading.Thread:
    """Hold the file's write lock from a connection of another 'process' for ``seconds``."""
    locked = threading.Event()

    def hold() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        locked.set()
        time.sleep(seconds)
        conn.execute("COMMIT")
        conn.close()

    thread = threading.Thread(target=hold)
    thread.start()
    locked.wait()
    return thread


async def test_a_write_waits_for_another_connections_lock_and_goes_soon_after(
    db: SQLiteDatabase,
) -> None:
    holder = lock_from_another_connection(db.path, 0.2)
    started = time.perf_counter()
    await insert(db, "after the lock")
    waited = time.perf_counter() - started
    holder.join()
    # SQLite's own busy handler could sleep up to 100 ms past the lock's end; ours a millisecond.
    assert 0.15 <= waited < 0.28
    assert await count(db) == 1


async def test_a_lock_held_past_the_busy_timeout_fails_the_write(tmp_path: Path) -> None:
    async with SQLiteDatabase(tmp_path / "t.db", schemas=[ITEMS], busy_timeout_ms=100) as db:
        holder = lock_from_another_connection(db.path, 0.5)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            await insert(db, "too late")
        holder.join()
        await insert(db, "now")  # the writer carries on
        assert await count(db) == 1


async def test_concurrent_writes_share_transactions(db: SQLiteDatabase) -> None:
    ids = await asyncio.gather(*(insert(db, f"item-{i}") for i in range(500)))
    assert sorted(ids) == list(range(1, 501))
    assert await count(db) == 500
    assert db.stats.writes == 500
    assert db.stats.transactions < 100
    assert db.stats.largest_batch > 5


async def test_failing_write_fails_alone(db: SQLiteDatabase) -> None:
    def insert_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO items (name) VALUES ('doomed')")
        raise KeyError("boom")

    gate, blocker = await hold_writer(db)
    transactions = db.stats.transactions
    tasks: list[asyncio.Task[object]] = [
        asyncio.create_task(insert(db, f"ok-{i}")) for i in range(10)
    ]
    tasks.insert(5, asyncio.create_task(db.write(insert_then_fail)))
    tasks.append(asyncio.create_task(insert(db, "ok-1")))  # UNIQUE violation: fails too
    await asyncio.sleep(0.01)  # let every task submit its write
    gate.set()
    await blocker
    results = await asyncio.gather(*tasks, return_exceptions=True)

    assert isinstance(results[5], KeyError)
    assert isinstance(results[-1], sqlite3.IntegrityError)
    assert all(isinstance(r, int) for i, r in enumerate(results) if i not in (5, 11))
    assert db.stats.transactions == transactions + 2  # the blocker's, then all twelve in one
    names = {row[0] for row in await db.query("SELECT name FROM items")}
    assert names == {f"ok-{i}" for i in range(10)}  # 'doomed' was rolled back


async def test_event_loop_keeps_running_during_write_burst(db: SQLiteDatabase) -> None:
    loop = asyncio.get_running_loop()
    ticks: list[float] = []
    stop = asyncio.Event()
    window: list[float] = []

    async def ticker() -> None:
        while not stop.is_set():
            ticks.append(time.monotonic())
            await asyncio.sleep(0.002)

    def slow_write(conn: object) -> None:
        window.append(time.monotonic())
        time.sleep(0.3)  # the writer thread is busy for 0.3 s
        window.append(time.monotonic())

    ticking = asyncio.create_task(ticker())
    # A write that holds the writer for 0.3 s, then 3000 more queued behind it.
    slow = asyncio.create_task(db.write(slow_write))
    await asyncio.gather(*(insert(db, f"item-{i}") for i in range(3000)))
    await slow
    stop.set()
    await ticking

    # Had the loop waited on the writer, it could not have ticked while the writer slept: one
    # gap would span the whole 0.3 s. (How often it ticks depends on the machine's load: queuing
    # the 3,000 inserts keeps it busy for part of the window.)
    during = [window[0], *(t for t in ticks if window[0] < t < window[1]), window[1]]
    assert len(during) >= 4
    assert max(b - a for a, b in itertools.pairwise(during)) < 0.25
    assert await count(db) == 3000
    assert loop.is_running()


async def test_reads_are_not_blocked_by_an_open_write_transaction(db: SQLiteDatabase) -> None:
    await insert(db, "committed")
    gate = threading.Event()

    def insert_and_hold(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO items (name) VALUES ('pending')")
        gate.wait(5)

    writing = asyncio.create_task(db.write(insert_and_hold))
    await asyncio.sleep(0.02)
    started = time.monotonic()
    assert await count(db) == 1  # WAL: the reader sees the last commit, at once
    assert time.monotonic() - started < 0.5
    gate.set()
    await writing
    assert await count(db) == 2


async def test_aclose_runs_submitted_writes(tmp_path: Path) -> None:
    db = await SQLiteDatabase(tmp_path / "test.db", schemas=[ITEMS]).open()
    gate, blocker = await hold_writer(db)
    tasks = [asyncio.create_task(insert(db, f"item-{i}")) for i in range(100)]
    await asyncio.sleep(0.01)
    gate.set()
    await db.aclose()
    await blocker
    assert sorted([await t for t in tasks]) == list(range(1, 101))

    async with SQLiteDatabase(tmp_path / "test.db", schemas=[ITEMS]) as again:
        assert await count(again) == 100


async def test_cancelled_caller_leaves_the_writer_healthy(db: SQLiteDatabase) -> None:
    gate, blocker = await hold_writer(db)
    cancelled = asyncio.create_task(insert(db, "cancelled"))
    await asyncio.sleep(0.01)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    gate.set()
    await blocker
    assert await insert(db, "after") > 0
    # A submitted write runs even when nobody waits for it any more.
    assert {row[0] for row in await db.query("SELECT name FROM items")} == {"cancelled", "after"}
    assert "pending_writes=0" in repr(db)


async def test_two_databases_on_one_file_serialise_their_writes(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    counter = Schema(
        name="counter",
        ddl=(
            "CREATE TABLE IF NOT EXISTS counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)",
            "INSERT OR IGNORE INTO counter VALUES (1, 0)",
        ),
    )

    def bump(conn: sqlite3.Connection) -> None:
        # Read, then write: lost updates would show if two connections interleaved.
        n = conn.execute("SELECT n FROM counter").fetchone()[0]
        conn.execute("UPDATE counter SET n = ?", (n + 1,))

    async with (
        SQLiteDatabase(path, schemas=[counter]) as one,
        SQLiteDatabase(path, schemas=[counter]) as two,
    ):
        await asyncio.gather(*(db.write(bump) for _ in range(200) for db in (one, two)))
        assert await one.query("SELECT n FROM counter") == [(400,)]


async def test_migrations_run_once_and_only_on_older_files(tmp_path: Path) -> None:
    v0 = Schema(name="t", ddl=("CREATE TABLE IF NOT EXISTS t (a INTEGER)",))
    calls: list[str] = []

    def backfill(conn: sqlite3.Connection) -> None:
        calls.append("backfill")
        conn.execute("UPDATE t SET b = a * 10")

    v2 = Schema(
        name="t",
        ddl=("CREATE TABLE IF NOT EXISTS t (a INTEGER, b INTEGER)",),
        migrations=("ALTER TABLE t ADD COLUMN b INTEGER", backfill),
    )
    old = tmp_path / "old.db"
    async with SQLiteDatabase(old, schemas=[v0]) as db:
        await db.execute("INSERT INTO t (a) VALUES (4)")
    for _ in range(2):  # the second open finds version 2 and runs nothing
        async with SQLiteDatabase(old, schemas=[v2]) as db:
            assert await db.query("SELECT a, b FROM t") == [(4, 40)]
            assert await db.query("SELECT version FROM schema_versions") == [(2,)]
    assert calls == ["backfill"]

    async with SQLiteDatabase(tmp_path / "new.db", schemas=[v2]) as db:
        assert await db.query("SELECT version FROM schema_versions") == [(2,)]
    assert calls == ["backfill"]  # a new file gets the current DDL, no migration


async def test_open_fails_cleanly_on_a_bad_path(tmp_path: Path) -> None:
    db = SQLiteDatabase(tmp_path / "missing-dir" / "x.db")
    with pytest.raises(sqlite3.OperationalError):
        await db.open()
    assert db.state is State.UNOPENED
    assert not [t for t in threading.enumerate() if t.name.startswith("sqlite-")]
