"""Durable runs survive a SIGKILLed worker and a SIGTERM drain, with real worker processes."""

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from surgeflow.config import load_settings
from surgeflow.service import Service
from surgeflow.store.base import RunStatus
from tests.services import free_port

pytestmark = pytest.mark.slow

WORKFLOWS = textwrap.dedent(
    """
    import asyncio, os, pathlib
    from surgeflow import Workflow, step

    DIR = pathlib.Path(os.environ["CRASH_DIR"])

    def note(line):
        with (DIR / "log").open("a") as f:
            f.write(line + "\\n")

    @step
    async def one(ctx) -> str:
        note("one")
        return "1"

    @step
    async def two(ctx) -> str:
        note("two")
        return ctx["one"] + "2"

    @step
    async def three(ctx) -> str:
        note("three")
        if not (DIR / "resume").exists():
            await asyncio.sleep(60)  # the worker is killed in here
        return ctx["two"] + "3"

    @step
    async def slow(ctx) -> str:
        note("slow")
        await asyncio.sleep(float(ctx.input["seconds"]))
        return "done"

    workflows = {
        "crash": Workflow("crash", [one, two, three]),
        "slow": Workflow("slow", slow),
    }
    """
)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "crashwf.py").write_text(WORKFLOWS)
    (tmp_path / "surgeflow.yaml").write_text(
        f"store: {{url: 'sqlite:///{tmp_path / 'runs.db'}'}}\n"
        "queue: {lease_s: 1.0}\n"
        "worker: {poll_interval_s: 0.05, drain_timeout_s: 10}\n"
        "workflows: ['crashwf:workflows']\n"
    )
    return tmp_path


@pytest.fixture
async def service(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Service]:
    monkeypatch.syspath_prepend(str(workdir))
    monkeypatch.setenv("CRASH_DIR", str(workdir))
    settings = load_settings(workdir / "surgeflow.yaml", env={})
    async with Service(settings, embedded_worker=False) as service:
        yield service


def start_worker(workdir: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CRASH_DIR": str(workdir), "PYTHONPATH": str(workdir)}
    command = [sys.executable, "-m", "surgeflow", "worker", "--config", "surgeflow.yaml", *extra]
    return subprocess.Popen(
        command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def log_lines(workdir: Path) -> list[str]:
    path = workdir / "log"
    return path.read_text().split() if path.exists() else []


async def wait_for(condition: object, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out waiting")


async def test_run_of_a_killed_worker_resumes_after_its_last_checkpoint(
    workdir: Path, service: Service
) -> None:
    run, _ = await service.submit("crash", {})
    first = start_worker(workdir)
    try:
        await wait_for(lambda: "three" in log_lines(workdir))
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=10)
    assert (await service.store.get_run(run.id)).status is RunStatus.RUNNING
    assert sorted(await service.store.load_checkpoints(run.id)) == ["one", "two"]

    (workdir / "resume").touch()
    second = start_worker(workdir)
    try:

        async def finished() -> RunStatus:
            return (await service.store.get_run(run.id)).status

        deadline = time.monotonic() + 20
        while (status := await finished()) is not RunStatus.SUCCEEDED:
            assert time.monotonic() < deadline, f"run is still {status}"
            await asyncio.sleep(0.05)
    finally:
        second.send_signal(signal.SIGTERM)
        output = second.communicate(timeout=20)[0].decode()
    assert second.returncode == 0, output

    done = await service.store.get_run(run.id)
    assert done.output == "123"
    assert done.attempts == 2
    assert log_lines(workdir) == ["one", "two", "three", "three"]  # one, two ran once
    starts = [e for e in await service.store.list_events(run.id) if e.type == "run.started"]
    assert [(e.data or {})["resumed_steps"] for e in starts] == [0, 2]


async def test_sigterm_drains_the_run_in_progress(workdir: Path, service: Service) -> None:
    run, _ = await service.submit("slow", {"seconds": 1.0})
    worker = start_worker(workdir)
    await wait_for(lambda: "slow" in log_lines(workdir))
    worker.send_signal(signal.SIGTERM)
    output = worker.communicate(timeout=20)[0].decode()
    assert worker.returncode == 0, output
    done = await service.store.get_run(run.id)
    assert done.status is RunStatus.SUCCEEDED
    assert log_lines(workdir) == ["slow"]


async def test_a_drain_that_times_out_hands_the_run_back(workdir: Path, service: Service) -> None:
    config = workdir / "surgeflow.yaml"
    config.write_text(config.read_text().replace("drain_timeout_s: 10", "drain_timeout_s: 0.2"))
    run, _ = await service.submit("slow", {"seconds": 2.0})
    worker = start_worker(workdir)
    await wait_for(lambda: "slow" in log_lines(workdir))
    worker.send_signal(signal.SIGTERM)
    worker.communicate(timeout=20)
    assert worker.returncode == 0
    events = [e.type for e in await service.store.list_events(run.id)]
    assert events[-1] == "run.released"
    assert not (await service.store.get_run(run.id)).status.terminal

    burst = start_worker(workdir, "--burst")
    output = burst.communicate(timeout=20)[0].decode()
    assert burst.returncode == 0, output
    done = await service.store.get_run(run.id)
    assert done.status is RunStatus.SUCCEEDED
    assert done.attempts == 2


async def test_a_worker_serves_its_metrics_and_health(workdir: Path, service: Service) -> None:
    port = free_port()
    worker = start_worker(workdir, "--metrics-port", str(port))
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=5) as client:
            for _ in range(200):  # until it listens
                with contextlib.suppress(httpx.TransportError):
                    health = await client.get("/healthz")
                    break
                await asyncio.sleep(0.05)
            assert health.status_code == 200
            assert health.json()["status"] == "ok"
            run, _ = await service.submit("slow", {"seconds": 0.05})

            async def succeeded() -> bool:
                return (await service.store.get_run(run.id)).status is RunStatus.SUCCEEDED

            for _ in range(200):
                if await succeeded():
                    break
                await asyncio.sleep(0.05)
            metrics = (await client.get("/metrics")).text
            finished = 'surgeflow_runs_finished_total{status="succeeded",workflow="slow"} 1.0'
            assert finished in metrics
            ready = await client.get("/readyz")
            assert (ready.status_code, ready.json()["ready"]) == (200, True)
            assert (await client.get("/nope")).status_code == 404
            assert (await client.post("/metrics")).status_code == 405
    finally:
        worker.send_signal(signal.SIGTERM)
        output = worker.communicate(timeout=20)[0].decode()
    assert worker.returncode == 0, output
    assert f"worker metrics on http://127.0.0.1:{port}/metrics" in output
