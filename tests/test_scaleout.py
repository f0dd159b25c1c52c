"""Scale-out under fire, with real processes on loopback: nginx in front of 2 gateway processes,
2 worker processes, PostgreSQL and Redis. 2,000 workflow runs are submitted through nginx while
a worker is SIGKILLed mid-run and Redis restarts with its data gone. Every run must end
``succeeded`` exactly once, none lost or finished twice, the side effect applied once per
idempotency key, and each run's event stream readable from either gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg
import httpx
import pytest
import yaml

from surgeflow.store.base import RunStatus
from surgeflow.store.postgres import PostgresStore
from tests.chaos_workflows import SCHEMA
from tests.nginx import nginx_binary, running_nginx
from tests.services import RedisServer, free_port

pytestmark = pytest.mark.slow

RUNS = 2_000
SUBMITTERS = 32  # concurrent clients
KEY = "sk-chaos"
ROOT = Path(__file__).resolve().parent.parent
DEADLINE_S = 300  # for the whole load: submitting and finishing


class Processes:
    """The gateways and workers, each a real `surgeflow` process with its log in a file."""

    def __init__(self, directory: Path, config: Path, env: dict[str, str]) -> None:
        self.directory = directory
        self.config = config
        self.env = env
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        with (self.directory / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "surgeflow", *args, "--config", str(self.config)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.started:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text()[-3000:]}"
            for path in sorted(self.directory.glob("*.log"))
        )


async def until(condition: Callable[[], bool]) -> None:
    """Return once ``condition()`` holds (the caller bounds the wait)."""
    while True:
        if condition():
            return
        await asyncio.sleep(0.05)


async def wait_ready(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=2) as http:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(f"{url}/readyz")).status_code == 200:
                    return
            assert time.monotonic() < deadline, f"{url} not ready in {timeout_s:g} s"
            await asyncio.sleep(0.1)


async def submit_all(base: str, ids: dict[int, str], retries: dict[str, int]) -> None:
    """Submit runs 0..RUNS-1 through nginx, each with its Idempotency-Key, retrying what fails
    (as a careful client does: the key makes a retry return the same run)."""
    headers = {"Authorization": f"Bearer {KEY}"}
    pending = iter(range(RUNS))
    limits = httpx.Limits(max_connections=SUBMITTERS, max_keepalive_connections=SUBMITTERS)

    async def one_client(http: httpx.AsyncClient) -> None:
        for n in pending:
            for attempt in range(40):
                try:
                    response = await http.post(
                        "/v1/workflows/chaos/runs",
                        json={"input": {"n": n}},
                        headers={**headers, "Idempotency-Key": f"chaos-{n}"},
                    )
                except httpx.HTTPError:
                    response = None
                if response is not None and response.status_code in (200, 201, 202):
                    ids[n] = response.json()["id"]
                    break
                kind = "error" if response is None else str(response.status_code)
                retries[kind] = retries.get(kind, 0) + 1
                await asyncio.sleep(min(2.0, 0.05 * 2**attempt))
            else:
                raise AssertionError(f"run {n} could not be submitted")

    async with httpx.AsyncClient(base_url=base, timeout=10, limits=limits) as http:
        await asyncio.gather(*(one_client(http) for _ in range(SUBMITTERS)))


@pytest.mark.timeout(DEADLINE_S + 120)
async def test_runs_survive_a_killed_worker_and_a_redis_restart(
    tmp_path: Path, postgres_url: str, redis_server: RedisServer
) -> None:
    nginx_binary()  # skipped (or failed in CI) before anything starts
    async with asyncpg.create_pool(postgres_url, min_size=1, max_size=2) as pool:
        await pool.execute(SCHEMA)
    config = tmp_path / "surgeflow.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "store": {"url": postgres_url},
                "queue": {
                    "url": redis_server.url,
                    "lease_s": 10,
                    "reconcile_interval_s": 1,
                    "reconcile_grace_s": 5,
                },
                "events": {"url": redis_server.url},
                "worker": {"embedded": False, "concurrency": 32, "poll_interval_s": 0.1},
                "log": {"access": False},
                "workflows": ["tests.chaos_workflows:workflows"],
            }
        )
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SURGEFLOW_API_KEYS": KEY,
        "CHAOS_EFFECTS_URL": postgres_url,
    }
    processes = Processes(tmp_path, config, env)
    ports = [free_port(), free_port()]
    try:
        for index, port in enumerate(ports):
            processes.start(f"gateway-{index}", "serve", "--port", str(port))
        workers = [processes.start(f"worker-{i}", "worker", "--concurrency", "32") for i in (0, 1)]
        gateways = [f"http://127.0.0.1:{port}" for port in ports]
        for url in gateways:
            await wait_ready(url)
        ids: dict[int, str] = {}
        retries: dict[str, int] = {}
        (tmp_path / "nginx").mkdir()
        async with running_nginx(tmp_path / "nginx", ports) as base:
            submitting = asyncio.create_task(submit_all(base, ids, retries))
            async with asyncio.timeout(DEADLINE_S):
                # Mid-run: kill a worker that has runs in flight, and start another.
                await until(lambda: len(ids) >= RUNS * 0.3)
                print(f"{time.strftime('%X')} submitted {len(ids)}: killing worker 0", flush=True)
                workers[0].send_signal(signal.SIGKILL)
                processes.start("worker-2", "worker", "--concurrency", "32")
                # Later: Redis restarts, its streams, leases and pending jobs gone.
                await until(lambda: len(ids) >= RUNS * 0.6)
                print(f"{time.strftime('%X')} submitted {len(ids)}: restarting Redis", flush=True)
                await asyncio.to_thread(redis_server.restart)
                await submitting
                print(f"{time.strftime('%X')} all submitted; retries {retries}", flush=True)
                finished = await wait_finished(postgres_url, set(ids.values()))
        assert len(ids) == RUNS
        assert len(set(ids.values())) == RUNS  # retried submissions returned the same run
        await check_outcomes(postgres_url, finished, gateways)
    except BaseException:
        print(processes.logs())
        raise
    finally:
        await asyncio.to_thread(processes.stop_all)


async def wait_finished(url: str, run_ids: set[str]) -> dict[str, RunStatus]:
    async with PostgresStore(url) as store:
        reported = time.monotonic()
        while True:
            waiting = await store.list_runs(
                statuses=frozenset({RunStatus.QUEUED, RunStatus.RUNNING}), limit=RUNS
            )
            if not waiting:
                break
            if time.monotonic() - reported > 10:
                reported = time.monotonic()
                counts: dict[str, int] = {}
                for run in waiting:
                    counts[run.status.value] = counts.get(run.status.value, 0) + 1
                print(f"{time.strftime('%X')} still waiting: {counts}", flush=True)
            await asyncio.sleep(0.5)
        return {run.id: run.status for run in await store.list_runs(limit=RUNS * 2)}


async def check_outcomes(url: str, statuses: dict[str, RunStatus], gateways: list[str]) -> None:
    assert len(statuses) == RUNS  # no run lost, none created twice
    assert set(statuses.values()) == {RunStatus.SUCCEEDED}
    resumed = 0
    async with PostgresStore(url) as store:
        for run_id in statuses:
            events = await store.list_events(run_id)
            terminal = [e.type for e in events if e.type in _ENDS]
            assert terminal == ["run.succeeded"], (run_id, [e.type for e in events])
            resumed += sum(e.type == "run.started" for e in events) > 1
    print(f"runs started more than once (a lease lost or expired): {resumed}", flush=True)
    assert resumed > 0  # the killed worker's runs were taken over, so the chaos did bite
    async with asyncpg.create_pool(url, min_size=1, max_size=2) as pool:
        effects = {row["key"] for row in await pool.fetch("SELECT key FROM chaos_effects")}
        attempts = await pool.fetchval("SELECT count(*) FROM chaos_attempts")
    assert effects == {f"{run_id}:charge" for run_id in statuses}  # once per idempotency key
    assert attempts >= RUNS
    headers = {"Authorization": f"Bearer {KEY}"}
    sample = sorted(statuses)[:: RUNS // 20]
    async with httpx.AsyncClient(timeout=10, headers=headers) as http:
        for gateway in gateways:
            for run_id in sample:
                text = (await http.get(f"{gateway}/v1/runs/{run_id}/events")).text
                assert text.count("event: run.succeeded") == 1, (gateway, run_id, text[-500:])


_ENDS = frozenset({"run.succeeded", "run.failed", "run.cancelled", "run.dead"})
