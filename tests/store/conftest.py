"""Fixtures of the store tests: `store` and `store_factory` run each test against every backend."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from surgeflow.store.postgres import PostgresStore
from surgeflow.store.sqlite import SQLiteStore

AnyStore = SQLiteStore | PostgresStore
StoreFactory = Callable[[], AnyStore]


@pytest.fixture(params=["sqlite", "postgres"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Makes unopened stores of one backend, all on one (new) database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/store.db"
        return lambda: SQLiteStore(url)
    url = request.getfixturevalue("postgres_url")  # only PostgreSQL tests need a server
    return lambda: PostgresStore(url)


@pytest.fixture
async def store(store_factory: StoreFactory) -> AsyncIterator[AnyStore]:
    async with store_factory() as s:
        yield s
