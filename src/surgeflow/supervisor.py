"""``surgeflow serve --workers N``: N gateway processes on one port.

The supervisor binds the listening socket itself and starts N ``surgeflow serve`` processes
that inherit it (the kernel hands each new connection to one of them), the way gunicorn and
uvicorn's own ``--workers`` do: one event loop per core, no home-made protocol between them.
It restarts a process that dies (at most `MAX_RESTARTS` a minute), and on SIGTERM or SIGINT
passes the signal on and waits for every process to drain (stop accepting, finish requests,
hand back or finish runs), killing one only after ``drain_s``.

Each process keeps its own figures; unless the config names a ``server.metrics_dir``, the
supervisor gives them a private one, so ``GET /metrics`` on any of them sums all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

log = logging.getLogger("surgeflow.supervisor")

MAX_RESTARTS = 5  # per process and minute; beyond that the supervisor gives up and stops
RESTART_DELAY_S = 1.0


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket that child processes can inherit."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class Supervisor:
    """Starts, watches and stops the gateway processes."""

    def __init__(
        self,
        *,
        workers: int,
        host: str,
        port: int,
        config: Path | None,
        drain_s: float,
        metrics_dir: str | None,
    ) -> None:
        self.workers = workers
        self.host = host
        self.port = port
        self.config = config
        self.drain_s = drain_s
        self.metrics_dir = metrics_dir
        self._stopping = asyncio.Event()
        self._processes: dict[int, asyncio.subprocess.Process] = {}
        self._restarts: dict[int, deque[float]] = {}

    async def run(self) -> int:
        """Serve until a signal (exit code 0) or until a process keeps dying (exit code 1)."""
        with contextlib.ExitStack() as stack:
            sock = stack.enter_context(bind(self.host, self.port))
            metrics_dir = self.metrics_dir or stack.enter_context(
                tempfile.TemporaryDirectory(prefix="surgeflow-metrics-")
            )
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._stopping.set)
            bound = sock.getsockname()
            url = f"http://{bound[0]}:{bound[1]}"
            print(
                f"surgeflow is serving on {url} with {self.workers} processes  (Ctrl-C to stop)",
                flush=True,
            )
            watchers = [
                asyncio.create_task(self._keep(index, sock.fileno(), metrics_dir))
                for index in range(self.workers)
            ]
            await asyncio.wait(
                [asyncio.ensure_future(self._stopping.wait()), *watchers],
                return_when=asyncio.FIRST_COMPLETED,
            )
            failed = not self._stopping.is_set()
            self._stopping.set()
            print("stopping: draining every process …", flush=True)
            await asyncio.gather(*(self._stop(p) for p in list(self._processes.values())))
            for watcher in watchers:
                watcher.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
            return 1 if failed else 0

    async def _keep(self, index: int, fd: int, metrics_dir: str) -> None:
        """Run process ``index``; start it again when it dies, unless it dies too often."""
        restarts = self._restarts.setdefault(index, deque())
        while not self._stopping.is_set():
            process = await self._start(fd, metrics_dir)
            self._processes[index] = process
            code = await process.wait()
            if self._stopping.is_set():
                return
            now = time.monotonic()
            restarts.append(now)
            while restarts and now - restarts[0] > 60:
                restarts.popleft()
            if len(restarts) > MAX_RESTARTS:
                log.error("gateway process %d keeps dying (exit code %s): stopping", index, code)
                return
            log.warning("gateway process %d exited with code %s: starting it again", index, code)
            await asyncio.sleep(RESTART_DELAY_S)

    async def _start(self, fd: int, metrics_dir: str) -> asyncio.subprocess.Process:
        command = [sys.executable, "-m", "surgeflow", "serve", "--fd", str(fd)]
        if self.config is not None:
            command += ["--config", str(self.config)]
        env = {**os.environ, "SURGEFLOW_SERVER__METRICS_DIR": metrics_dir}
        return await asyncio.create_subprocess_exec(*command, pass_fds=(fd,), env=env)

    async def _stop(self, process: asyncio.subprocess.Process) -> None:
        if process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), self.drain_s)
        except TimeoutError:
            log.error("a gateway process did not drain within %.0f s: killing it", self.drain_s)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
