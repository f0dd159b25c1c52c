"""nginx with the shipped config (deploy/nginx/) on loopback, in front of the test's upstreams.

Only the upstream servers' addresses and the listen port change; everything else is the file
as shipped. Used by the deploy tests and by the scale-out test.
"""

import asyncio
import contextlib
import os
import re
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from tests.services import free_port
from tests.tools import require_program

DEPLOY = Path(__file__).parents[1] / "deploy"
NGINX_CONF = DEPLOY / "nginx" / "nginx.conf"
UPSTREAMS_CONF = DEPLOY / "nginx" / "upstreams.conf"


def upstream_servers(text: str) -> list[str]:
    return re.findall(r"^\s*server\s+([^\s;]+)", text, re.MULTILINE)


def nginx_binary() -> str:
    return require_program("nginx", "apt-get install nginx")


def prepare_nginx(directory: Path, ports: list[int], listen: int) -> Path:
    """The shipped config in ``directory``, its upstream servers and listen port on loopback.

    Only the server addresses and the listen port change; the test's own paths (temporary files)
    are added to the upstream include, which sits in the http block.
    """
    upstreams = UPSTREAMS_CONF.read_text()
    shipped = upstream_servers(upstreams)
    assert len(shipped) == len(ports), "one loopback port per shipped upstream server"
    addresses = iter(ports)
    upstreams = re.sub(
        r"^(\s*server\s+)[^\s;]+",
        lambda m: f"{m.group(1)}127.0.0.1:{next(addresses)}",
        upstreams,
        flags=re.MULTILINE,
    )
    temp = "\n".join(
        f"{kind}_temp_path {directory / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (directory / "upstreams.conf").write_text(f"{upstreams}\n{temp}\n")
    conf, count = re.subn(r"listen\s+8080;", f"listen 127.0.0.1:{listen};", NGINX_CONF.read_text())
    assert count == 1
    path = directory / "nginx.conf"
    path.write_text(conf)
    return path


def nginx_command(directory: Path, conf: Path, *extra: str, foreground: bool = False) -> list[str]:
    """nginx with the test's pid file and error log (nginx reads only one -g option)."""
    directives = f"pid {directory / 'nginx.pid'};"
    if foreground:
        directives += " daemon off;"
    if os.geteuid() == 0:
        directives += " user root;"  # workers may then use the test's private temp directories
    return [
        nginx_binary(),
        "-p",
        f"{directory}/",
        "-c",
        str(conf),
        "-e",
        str(directory / "error.log"),
        "-g",
        directives,
        *extra,
    ]


def spawn_nginx(directory: Path, conf: Path) -> subprocess.Popen[bytes]:
    """nginx in the foreground; what it writes (access log, errors) goes to output.log."""
    with (directory / "output.log").open("wb") as output:
        return subprocess.Popen(
            nginx_command(directory, conf, foreground=True),
            stdout=output,
            stderr=subprocess.STDOUT,
        )


def stop_nginx(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@contextlib.asynccontextmanager
async def running_nginx(directory: Path, ports: list[int]) -> AsyncIterator[str]:
    """nginx with the shipped config, in front of ``ports``; yields its URL."""
    listen = free_port()
    conf = prepare_nginx(directory, ports, listen)
    process = spawn_nginx(directory, conf)
    url = f"http://127.0.0.1:{listen}"
    try:
        deadline = time.monotonic() + 10
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as http:
            while True:
                assert process.poll() is None, (directory / "output.log").read_text()
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(f"{url}/nginx-health") as response:
                        if response.status == 200:
                            assert await response.json() == {"status": "ok"}
                            break
                assert time.monotonic() < deadline, "nginx did not start within 10 s"
                await asyncio.sleep(0.05)
        yield url
    finally:
        await asyncio.to_thread(stop_nginx, process)
