"""The ``surgeflow`` command: keys, serve and demo, run as a user runs them."""

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from subprocess import PIPE, STDOUT

import aiohttp
import pytest
from typer.testing import CliRunner

from surgeflow.cli import app

runner = CliRunner()


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SURGEFLOW_API_KEYS", raising=False)
    return tmp_path


def test_keys_create_list_revoke(in_tmp: Path) -> None:
    created = runner.invoke(app, ["keys", "create", "--name", "team-a"])
    assert created.exit_code == 0, created.output
    key_id = re.search(r"key_[0-9a-f]{12}", created.output)
    secret = re.search(r"^sf-\S{40,}$", created.output, re.MULTILINE)
    assert key_id is not None
    assert secret is not None
    assert (in_tmp / "surgeflow.db").exists()

    listed = runner.invoke(app, ["keys", "list"])
    assert key_id.group() in listed.output
    assert "team-a" in listed.output
    assert secret.group() not in listed.output  # only the digest is stored

    revoked = runner.invoke(app, ["keys", "revoke", key_id.group()])
    assert revoked.exit_code == 0
    unknown = runner.invoke(app, ["keys", "revoke", "key_000000000000"])
    assert unknown.exit_code == 2
    assert "key_000000000000" in unknown.output


def test_a_bad_config_file_is_reported_not_raised(in_tmp: Path) -> None:
    (in_tmp / "bad.yaml").write_text("server: {port: many}\n")
    result = runner.invoke(app, ["keys", "list", "--config", "bad.yaml"])
    assert result.exit_code == 2
    assert "$.server.port" in result.output


@pytest.mark.slow
async def test_serve_accepts_a_created_key_and_stops_on_sigterm(in_tmp: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SURGEFLOW_API_KEYS"}
    create = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "surgeflow", "keys", "create", cwd=in_tmp, env=env, stdout=PIPE
    )
    secret = (await create.communicate())[0].decode().strip().splitlines()[-1]
    server = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "surgeflow", "serve", "--port", "0"),
        cwd=in_tmp,
        env=env,
        stdout=PIPE,
        stderr=STDOUT,
    )
    try:
        assert server.stdout is not None
        line = (await asyncio.wait_for(server.stdout.readline(), 30)).decode()
        url = re.search(r"http://127\.0\.0\.1:\d+", line)
        assert url is not None, line
        headers = {"Authorization": f"Bearer {secret}"}
        async with aiohttp.ClientSession(url.group()) as http:
            async with http.get("/v1/workflows", headers=headers) as response:
                names = [w["name"] for w in (await response.json())["data"]]
            assert names == ["customer_service", "recommendation"]
            async with http.get("/v1/workflows") as response:
                assert response.status == 401
    finally:
        server.send_signal(signal.SIGTERM)
        output = (await asyncio.wait_for(server.communicate(), 30))[0].decode()
    assert server.returncode == 0, output
    assert "draining" in output


@pytest.mark.slow
def test_demo_drives_both_agents_and_summarises(in_tmp: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "surgeflow", "demo", "--requests", "20", "--runs", "4"],
        cwd=in_tmp,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "160"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert re.search(r"40 requests in [\d.]+ s", out)
    for agent in ("customer_service", "recommendation"):
        assert re.search(rf"{agent}\s+│\s+20\s+│\s+0\s+│", out), out
    assert "intent=" in out
    assert "picks:" in out
    assert "durable runs: 8/8 succeeded" in out
    assert not list(in_tmp.iterdir())  # the demo leaves nothing behind
