"""A PostgreSQL for tests: a private server of the session's own, a fresh database per test.

The private server is a throw-away cluster (``initdb`` + ``pg_ctl``, trust auth, ``fsync=off``) on a
free loopback port. Run as root, both programs go through ``runuser -u postgres``, since initdb
refuses root. Without them, the machine's own server at `FALLBACK_ADMIN_URL` serves instead; without
either, the tests skip (or fail, under ``SURGEFLOW_REQUIRE_SERVICES=1``).

A conftest uses the helpers like this::

    @pytest.fixture(scope="session")
    def postgres_admin_url(tmp_path_factory):
        yield from postgres_admin_urls()

    @pytest.fixture
    async def postgres_url(postgres_admin_url):
        async with fresh_database(postgres_admin_url) as url:
            yield url
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.services import free_port

FALLBACK_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
_START_TIMEOUT_S = 30


class PostgresServer:
    """A private PostgreSQL cluster in a temporary directory, on a free loopback port."""

    def __init__(self, bin_dir: Path) -> None:
        self._bin_dir = bin_dir
        self._as_postgres = os.geteuid() == 0  # initdb and postgres refuse to run as root
        self._directory = Path(tempfile.mkdtemp(prefix="surgeflow-pg-"))
        self._data = self._directory / "data"
        self.port = 0
        self.admin_url = ""

    def _run(self, *command: str) -> None:
        argv = [str(self._bin_dir / command[0]), *command[1:]]
        if self._as_postgres:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        subprocess.run(argv, check=True, capture_output=True, timeout=_START_TIMEOUT_S)

    def start(self) -> None:
        if self._as_postgres:
            entry = pwd.getpwnam("postgres")
            os.chown(self._directory, entry.pw_uid, entry.pw_gid)
        self._run(
            "initdb",
            "--pgdata",
            str(self._data),
            "--username=postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        # free_port can race with another process taking the port: try a few.
        for attempt in range(3):
            self.port = free_port()
            options = (
                f"-p {self.port} -k {self._directory} -c listen_addresses=127.0.0.1"
                " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
                " -c max_connections=300"
            )
            try:
                self._run(
                    "pg_ctl",
                    "--pgdata",
                    str(self._data),
                    "--log",
                    str(self._directory / "server.log"),
                    "--wait",
                    f"--timeout={_START_TIMEOUT_S}",
                    "-o",
                    options,
                    "start",
                )
            except subprocess.CalledProcessError:
                if attempt == 2:
                    raise
                continue
            break
        self.admin_url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        """Stop the server (if it started) and delete its files."""
        try:
            if (self._data / "postmaster.pid").exists():
                self._run("pg_ctl", "--pgdata", str(self._data), "--mode=immediate", "stop")
        finally:
            shutil.rmtree(self._directory, ignore_errors=True)

    def log(self) -> str:
        path = self._directory / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""


def find_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/*/bin`` that has initdb and pg_ctl, else one on PATH."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True
    )
    for directory in candidates:
        if all((Path(directory) / name).exists() for name in ("initdb", "pg_ctl")):
            return Path(directory)
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb and shutil.which("pg_ctl") else None


async def _can_connect(url: str) -> bool:
    try:
        conn = await asyncpg.connect(url, timeout=3)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    await conn.close()
    return True


def postgres_admin_urls() -> Iterator[str]:
    """Yield a superuser URL of a private server (started now, stopped after), else of the
    machine's server; skip, or fail under ``SURGEFLOW_REQUIRE_SERVICES=1``, if neither works."""
    reasons: list[str] = []
    bin_dir = find_bin_dir()
    needs_user = os.geteuid() == 0
    if bin_dir is None:
        reasons.append("no initdb/pg_ctl (apt-get install postgresql)")
    elif needs_user and not _user_exists("postgres"):
        reasons.append("running as root and there is no 'postgres' user to run initdb as")
    else:
        server = PostgresServer(bin_dir)
        try:
            server.start()
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", b"") or b""
            log = server.log()
            server.stop()
            reasons.append(f"a private server did not start: {exc} {detail!r} {log[-500:]}")
        else:
            try:
                yield server.admin_url
            finally:
                server.stop()
            return
    if asyncio.run(_can_connect(FALLBACK_ADMIN_URL)):
        yield FALLBACK_ADMIN_URL
        return
    reasons.append(f"and nothing answers at {FALLBACK_ADMIN_URL}")
    message = "no PostgreSQL for the tests: " + "; ".join(reasons)
    if os.environ.get("SURGEFLOW_REQUIRE_SERVICES") == "1":
        pytest.fail(message)
    pytest.skip(message)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def database_url(admin_url: str, name: str) -> str:
    """``admin_url`` with its database swapped for ``name``."""
    base, _, _ = admin_url.rpartition("/")
    return f"{base}/{name}"


@contextlib.asynccontextmanager
async def fresh_database(admin_url: str) -> AsyncIterator[str]:
    """The URL of a new, empty database on the server of ``admin_url``, dropped afterwards."""
    name = "sf_test_" + secrets.token_hex(6)
    admin = await asyncpg.connect(admin_url, timeout=10)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield database_url(admin_url, name)
    finally:
        admin = await asyncpg.connect(admin_url, timeout=10)
        try:
            # FORCE: a test that failed may have left connections open.
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
