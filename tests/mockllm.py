"""Start ``surgeflow mock-llm`` servers for tests: as a real subprocess, or in this event loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp

from surgeflow.mockllm import DRAIN_S, running_mock
from surgeflow.mockllm import MockLLM as MockLLMApp
from surgeflow.models.simulated import SimulatedBackend

# Knobs the command line takes; any other (reply_tokens, unhealthy) is set through /admin/config.
_CLI_KNOBS = frozenset(
    {
        "ttft_ms",
        "tokens_per_s",
        "latency",
        "jitter",
        "error_rate",
        "rate_429",
        "retry_after_s",
        "hang_rate",
        "slow_factor",
        "rate_limit_rps",
    }
)
_URL_LINE = re.compile(rb"serving models? .* on (http://\S+)")


class MockLLM:
    """A running mock-llm: ``url`` is the OpenAI base URL (``…/v1``), ``root`` the server's."""

    def __init__(
        self,
        root: str,
        http: aiohttp.ClientSession,
        *,
        process: asyncio.subprocess.Process | None = None,
        app: MockLLMApp | None = None,
    ) -> None:
        self.root = root
        self.url = f"{root}/v1"
        self.http = http
        self.process = process
        self.app = app

    def __repr__(self) -> str:
        where = f"pid={self.process.pid}" if self.process else "in-process"
        return f"<MockLLM {self.url} {where}>"

    async def configure(self, **knobs: Any) -> dict[str, Any]:
        """Change knobs at run time (``POST /admin/config``); returns them all.

        Raises ``ValueError`` with the server's message when it refuses a knob.
        """
        async with self.http.post(f"{self.root}/admin/config", json=knobs) as response:
            body: dict[str, Any] = await response.json()
        if response.status != 200:
            raise ValueError(body["error"]["message"])
        return body

    async def config(self) -> dict[str, Any]:
        """Every knob and its value (``GET /admin/config``)."""
        return await self._get("/admin/config")

    async def stats(self) -> dict[str, Any]:
        """Requests per route, in flight, and injected failures (``GET /admin/stats``)."""
        return await self._get("/admin/stats")

    async def _get(self, path: str) -> dict[str, Any]:
        async with self.http.get(f"{self.root}{path}") as response:
            response.raise_for_status()
            body: dict[str, Any] = await response.json()
            return body


@contextlib.asynccontextmanager
async def mock_llm(
    *,
    model: str | Sequence[str] = "mock",
    api_key: str | None = None,
    seed: int = 0,
    start_timeout_s: float = 20.0,
    stop_timeout_s: float = DRAIN_S + 5.0,
    **knobs: Any,
) -> AsyncIterator[MockLLM]:
    """Run ``python -m surgeflow mock-llm --port 0`` as a subprocess with these knobs.

    On exit: SIGTERM, then SIGKILL if it has not stopped within ``stop_timeout_s``; asserts the
    process is gone. Its exit status is left in ``mock.process.returncode``.
    """
    argv = [sys.executable, "-m", "surgeflow", "mock-llm", "--port", "0", "--seed", str(seed)]
    for name in [model] if isinstance(model, str) else model:
        argv += ["--model", name]
    if api_key is not None:
        argv += ["--api-key", api_key]
    later = {name: value for name, value in knobs.items() if name not in _CLI_KNOBS}
    for name, value in knobs.items():
        if name in _CLI_KNOBS and value is not None:
            argv += [f"--{name.replace('_', '-')}", str(value)]
    # stderr is inherited: pytest captures it and shows it when a test fails.
    process = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)
    try:
        root = await asyncio.wait_for(_read_url(process), start_timeout_s)
        async with aiohttp.ClientSession() as http:
            mock = MockLLM(root, http, process=process)
            if later:
                await mock.configure(**later)
            yield mock
    finally:
        await _stop(process, stop_timeout_s)


async def _read_url(process: asyncio.subprocess.Process) -> str:
    assert process.stdout is not None
    seen = b""
    while line := await process.stdout.readline():
        seen += line
        if found := _URL_LINE.search(line):
            return found.group(1).decode()
    raise RuntimeError(f"mock-llm exited ({await process.wait()}) before serving: {seen!r}")


async def _stop(process: asyncio.subprocess.Process, timeout_s: float) -> None:
    if process.returncode is None:
        process.terminate()
    try:
        # communicate() reads stdout to its end, so the pipe is closed, not leaked.
        await asyncio.wait_for(process.communicate(), timeout_s)
    except TimeoutError:
        process.kill()
        await process.communicate()
    assert process.returncode is not None
    try:
        os.kill(process.pid, 0)
    except ProcessLookupError:
        pass  # reaped: nothing left running
    else:
        raise AssertionError(f"mock-llm pid {process.pid} is still running")


@contextlib.asynccontextmanager
async def mock_llm_in_process(
    *,
    model: str | Sequence[str] = "mock",
    api_key: str | None = None,
    seed: int = 0,
    **knobs: Any,
) -> AsyncIterator[MockLLM]:
    """Serve the mock-llm app from this event loop (uvicorn, a free port): fast to start.

    ``mock.app`` is the `surgeflow.mockllm.MockLLM` itself, for tests that look inside.
    """
    app = MockLLMApp(
        SimulatedBackend("mock", seed=seed),
        models=[model] if isinstance(model, str) else model,
        api_key=api_key,
    )
    app.configure(**knobs)
    async with running_mock(app) as root, aiohttp.ClientSession() as http:
        yield MockLLM(root, http, app=app)
