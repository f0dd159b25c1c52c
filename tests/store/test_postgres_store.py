"""Tests of what only the PostgreSQL Store has: migrations, connection failures, the pool.

The Store contract itself is in test_store_conformance.py, run against every backend.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

import surgeflow.store.postgres
from surgeflow.errors import ConfigError, StoreError, ValidationError
from surgeflow.store.postgres import MIGRATIONS, PostgresStore
from tests.services import free_port


async def _schema_rows(url: str) -> list[tuple[str, int]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT component, version FROM surgeflow_schema ORDER BY component, version"
        )
    finally:
        await conn.close()
    return [(row["component"], row["version"]) for row in rows]


async def test_concurrent_starters_apply_each_migration_once(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A second migration, so the starters also race on bringing version 1 up to 2.
    extra = "ALTER TABLE runs ADD COLUMN note text; INSERT INTO api_keys VALUES" + (
        " ('key_m', 'made by the migration', 'm', 0, NULL, false, true)"
    )
    monkeypatch.setattr(surgeflow.store.postgres, "MIGRATIONS", (*MIGRATIONS, extra))
    stores = [PostgresStore(postgres_url, max_size=2) for _ in range(8)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        created = await asyncio.gather(
            *(s.create_run("wf", {"i": i}) for i, s in enumerate(stores))
        )
        assert all(new for _, new in created)
        for s in stores:
            assert len(await s.list_runs()) == 8
        # Run twice, the data migration would have inserted a second key (or failed on its id).
        assert [k.id for k in await stores[0].list_api_keys()] == ["key_m"]
    finally:
        await asyncio.gather(*(s.aclose() for s in stores))
    assert await _schema_rows(postgres_url) == [("store", 1), ("store", 2)]


async def test_an_older_schema_is_migrated_and_a_newer_one_refused(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with PostgresStore(postgres_url) as store:
        run, _ = await store.create_run("wf", {})
    monkeypatch.setattr(
        surgeflow.store.postgres, "MIGRATIONS", (*MIGRATIONS, "ALTER TABLE runs ADD COLUMN x int")
    )
    async with PostgresStore(postgres_url) as store:
        assert (await store.get_run(run.id)).id == run.id  # the data survived the migration
    assert await _schema_rows(postgres_url) == [("store", 1), ("store", 2)]

    monkeypatch.setattr(surgeflow.store.postgres, "MIGRATIONS", MIGRATIONS)
    older = PostgresStore(postgres_url)
    with pytest.raises(StoreError, match="version 2, newer than this surgeflow knows"):
        await older.open()
    await older.aclose()


async def test_reopening_applies_nothing(postgres_url: str) -> None:
    for _ in range(3):
        async with PostgresStore(postgres_url) as store:
            await store.create_run("wf", {})
    assert await _schema_rows(postgres_url) == [("store", 1)]
    async with PostgresStore(postgres_url) as store:
        assert len(await store.list_runs()) == 3


def test_urls_that_are_not_postgresql_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="not a PostgreSQL URL"):
        PostgresStore("sqlite:///x.db")
    with pytest.raises(ConfigError, match=r"not a PostgreSQL URL: 'mysql://u:\*\*\*@h/db'"):
        PostgresStore("mysql://u:secret@h/db")
    with pytest.raises(ValueError, match="min_size"):
        PostgresStore("postgresql://h/db", min_size=3, max_size=2)


async def test_a_malformed_url_is_a_store_error() -> None:
    store = PostgresStore("postgresql://u@127.0.0.1:notaport/db")
    with pytest.raises(StoreError, match="bad PostgreSQL URL"):
        await store.open()
    await store.aclose()


async def test_a_refused_connection_is_a_store_error_without_the_password() -> None:
    url = f"postgresql://u:s3cret@127.0.0.1:{free_port()}/db"
    store = PostgresStore(url)
    with pytest.raises(StoreError, match="cannot connect to PostgreSQL") as caught:
        await store.get_run("run_x")
    assert "s3cret" not in str(caught.value)
    assert "u:***@127.0.0.1" in str(caught.value)
    assert "s3cret" not in repr(store)
    assert "state=unopened" in repr(store)  # a later call tries again
    await store.aclose()


@pytest.fixture
async def silent_server() -> AsyncIterator[int]:
    """A port that accepts connections and never says a word."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


async def test_a_server_that_never_answers_times_out(silent_server: int) -> None:
    store = PostgresStore(f"postgresql://u@127.0.0.1:{silent_server}/db", connect_timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(StoreError, match=r"no answer within 0\.3 s"):
        await store.open()
    assert time.monotonic() - started < 5
    await store.aclose()


async def test_an_unknown_database_is_a_store_error(postgres_admin_url: str) -> None:
    url = postgres_admin_url.rpartition("/")[0] + "/sf_no_such_database"
    store = PostgresStore(url)
    with pytest.raises(StoreError, match="sf_no_such_database"):
        await store.open()
    await store.aclose()


async def test_repr_shows_the_pool(postgres_url: str) -> None:
    store = PostgresStore(postgres_url, min_size=2, max_size=4)
    assert repr(store).startswith("<PostgresStore url='postgresql://")
    async with store:
        assert repr(store).endswith("state=open connections=2 idle=2>")
    assert repr(store).endswith("state=closed>")


async def test_cancelled_calls_return_their_connections(postgres_url: str) -> None:
    async with PostgresStore(postgres_url, max_size=4) as store:
        run, _ = await store.create_run("wf", {})
        tasks = [asyncio.create_task(store.append_event(run.id, "tick")) for _ in range(40)]
        await asyncio.sleep(0.005)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        pool = store._pool
        for _ in range(
            500
        ):  # a cancelled call's connection is reset and released in the background
            if pool.get_idle_size() == pool.get_size():
                break
            await asyncio.sleep(0.01)
        assert pool.get_idle_size() == pool.get_size()
        after = await store.append_event(run.id, "after")
        assert [e.seq for e in await store.list_events(run.id)] == list(range(1, after.seq + 1))


async def test_text_postgresql_cannot_hold_is_a_validation_error(postgres_url: str) -> None:
    """PostgreSQL text cannot hold NUL (SQLite can); inside JSON values it is fine."""
    async with PostgresStore(postgres_url) as store:
        with pytest.raises(ValidationError, match="PostgreSQL rejected a value"):
            await store.create_run("wf\x00", {})
        run, _ = await store.create_run("wf", {"nul": "\x00"})
        assert (await store.get_run(run.id)).input == {"nul": "\x00"}


async def test_statements_are_bounded_by_the_command_timeout(postgres_url: str) -> None:
    async with PostgresStore(postgres_url, command_timeout_s=0.3) as store:
        run, _ = await store.create_run("wf", {})
        blocker = await asyncpg.connect(postgres_url)
        try:
            async with blocker.transaction():
                await blocker.execute("SELECT 1 FROM runs WHERE id = $1 FOR UPDATE", run.id)
                with pytest.raises(StoreError, match=r"did not answer within 0\.3 s"):
                    await store.append_event(run.id, "tick")
        finally:
            await blocker.close()
        assert (await store.append_event(run.id, "tick")).seq == 1
