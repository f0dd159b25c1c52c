"""Tests of what only the SQLite Store has: file paths and a database shared with the queue.

The Store contract itself is in test_store_conformance.py, run against every backend.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from surgeflow._sqlite import SQLiteDatabase
from surgeflow.errors import ConfigError, StoreError
from surgeflow.queue.sqlite import SQLiteQueue
from surgeflow.store.sqlite import SQLiteStore


async def test_reports_failures_as_store_errors(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "lazy.db")
    run, _ = await store.create_run("wf", {})  # no explicit open, a plain path
    await store.aclose()

    broken = SQLiteStore(tmp_path / "no-such-dir" / "x.db")
    with pytest.raises(StoreError):
        await broken.get_run(run.id)
    await broken.aclose()


def test_bad_urls_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="not a SQLite URL"):
        SQLiteStore("postgresql://localhost/db")
    with pytest.raises(ConfigError, match="unsupported"):
        SQLiteStore(":memory:")


async def test_store_and_queue_share_a_database(tmp_path: Path) -> None:
    async with SQLiteDatabase(tmp_path / "shared.db") as db:
        store, queue = SQLiteStore(db), SQLiteQueue(db)
        run, _ = await store.create_run("wf", {})
        assert await queue.put(run.id)
        await store.aclose()  # the store did not open the database, so it leaves it open
        [job] = await queue.get("w", lease_s=5)
        assert job.run_id == run.id
        assert await SQLiteStore(db).get_run(run.id) == run
        await queue.aclose()
        assert "state=open" in repr(db)
