"""Fixtures for tests that need a real service: a private redis-server, a private PostgreSQL."""

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.postgres import fresh_database, postgres_admin_urls
from tests.services import RedisServer


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, which it may stop, pause or restart."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    """A superuser URL of the session's PostgreSQL (started once, a few seconds)."""
    yield from postgres_admin_urls()


@pytest.fixture
async def postgres_url(postgres_admin_url: str) -> AsyncIterator[str]:
    """The URL of a new, empty database of the test's own."""
    async with fresh_database(postgres_admin_url) as url:
        yield url
