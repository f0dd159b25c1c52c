"""Durable runs/s, submit → completed through HTTP, with 1 → 2 worker processes and 1 → 2
gateway processes, in the scaled-out configuration: PostgreSQL store, Redis queue and Redis
event notices.

Every measurement (one configuration, one round) gets a fresh database on a private PostgreSQL
cluster (``tests/postgres.py``), a flushed private redis-server (``tests/services.py``), and
fresh processes, each started as its own CLI with one config YAML:

- gateways: ``surgeflow serve --port P`` (1), or ``surgeflow serve --workers 2 --port P`` (2: the
  shipped way, one port, two processes under a supervisor; the kernel hands each connection to
  one of them);
- workers: ``surgeflow worker --concurrency 64``, one or two processes;
- ``worker.embedded: false``, ``log.access: false``, ``queue.lease_s`` its default.

The harness (this process) submits a warm-up of 50 runs and waits for them, then ``N`` runs of
the workflow (``benchmarks/scaling_workflows.py``) with ``POST /v1/workflows/{name}/runs`` from
64 concurrent tasks over one aiohttp session (64 connections; httpx cost the harness ~9 CPU ms a
request and became the bottleneck), and polls PostgreSQL every 0.2 s until no run is queued or
running. runs/s = N / (the last run's ``finished_at`` − the first submit). CPU seconds over the
timed window from /proc/<pid>/stat: each gateway and worker process tree, redis-server, the
PostgreSQL cluster (postmaster, its live backends and the backends it reaped), and the harness.

Rounds are interleaved: every round runs every configuration, the order rotating. Then a model
(the tuning kit's `RunQueue` and `simulate_runs`) takes the CPU per run measured with one
gateway and one worker and predicts capacity with G gateways and W workers on C cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import httpx
import uvloop
import yaml
from _common import _stop, median, print_table, write_results
from queue_peers._drive import cpu_seconds, tree_cpu_seconds
from redis import Redis
from scaling_workflows import WAIT_S

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # for tests.postgres and tests.services

from tests.postgres import fresh_database, postgres_admin_urls  # noqa: E402
from tests.services import RedisServer, free_port  # noqa: E402

from surgeflow.store.base import RunStatus  # noqa: E402
from surgeflow.store.postgres import PostgresStore  # noqa: E402
from surgeflow.tuning.runsim import simulate_runs  # noqa: E402
from surgeflow.tuning.scenario import RunQueue, ServiceTime  # noqa: E402

KEY = "sk-bench"
WARMUP = 50
CLIENTS = 64  # concurrent HTTP submitters
CONCURRENCY = 64  # per worker process
POLL_S = 0.2
UNFINISHED = frozenset({RunStatus.QUEUED, RunStatus.RUNNING})
CONFIGS = [(1, 1), (1, 2), (2, 1), (2, 2)]  # (gateways, workers)
PARTS = ("gateway", "worker", "redis", "postgres", "client")


# --- processes -------------------------------------------------------------------------------


@contextlib.contextmanager
def private_postgres() -> Iterator[str]:
    """A private PostgreSQL cluster's superuser URL (tests/postgres.py), stopped afterwards."""
    urls = postgres_admin_urls()
    try:
        yield next(urls)
    finally:
        urls.close()


@contextlib.contextmanager
def private_redis() -> Iterator[RedisServer]:
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as tmp:
        server = RedisServer(Path(tmp))
        server.start()
        try:
            yield server
        finally:
            server.stop()


def postgres_cpu_seconds(postmaster: int) -> float:
    """CPU seconds of the cluster: the postmaster, its live processes, and the reaped ones (the
    postmaster's cutime + cstime), so a backend that exits mid-window is still counted."""
    try:
        fields = Path(f"/proc/{postmaster}/stat").read_text("ascii").rpartition(")")[2].split()
    except OSError:
        return 0.0
    reaped = (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
    return tree_cpu_seconds(postmaster) + reaped


async def postmaster_pid(admin_url: str) -> int:
    """The cluster's postmaster, from the first line of postmaster.pid in its data directory."""
    conn = await asyncpg.connect(admin_url, timeout=10)
    try:
        data = await conn.fetchval("SHOW data_directory")
    finally:
        await conn.close()
    text = await asyncio.to_thread(Path(data, "postmaster.pid").read_text)
    return int(text.split()[0])


class Processes:
    """Gateways and workers, each a real ``surgeflow`` CLI in its own session, logs to files."""

    def __init__(self, directory: Path, config: Path) -> None:
        self.directory = directory
        self.config = config
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SURGEFLOW_")}
        self.env.update(PYTHONPATH=str(REPO), SURGEFLOW_API_KEYS=KEY)
        self.started: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        with (self.directory / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "surgeflow", *args, "--config", str(self.config)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=REPO,
            )
        self.started.append((name, proc))
        return proc

    def pids(self, prefix: str) -> list[int]:
        return [p.pid for name, p in self.started if name.startswith(prefix)]

    def dead(self) -> list[str]:
        return [f"{name} ({p.returncode})" for name, p in self.started if p.poll() is not None]

    def stop_all(self) -> None:
        for _, proc in self.started:
            _stop(proc)

    def logs(self) -> str:
        parts = []
        for path in sorted(self.directory.glob("*.log")):
            text = path.read_text(errors="replace")
            parts.append(f"--- {path.name}\n{text[-1500:]}")
        return "\n".join(parts)


@contextlib.asynccontextmanager
async def cluster(
    tmp: Path, gateways: int, workers: int, db_url: str, redis_url: str
) -> AsyncIterator[tuple[str, Processes]]:
    config = tmp / "surgeflow.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "store": {"url": db_url},
                "queue": {"url": redis_url},
                "events": {"url": redis_url},
                "worker": {"embedded": False, "concurrency": CONCURRENCY},
                "log": {"access": False, "level": "warning"},
                "workflows": ["benchmarks.scaling_workflows:workflows"],
                "models": [],
            }
        ),
        encoding="utf-8",
    )
    processes = Processes(tmp, config)
    port = free_port()
    try:
        serve = ["serve", "--host", "127.0.0.1", "--port", str(port)]
        if gateways > 1:
            serve += ["--workers", str(gateways)]
        processes.start("gateway", *serve)
        for index in range(workers):
            processes.start(f"worker-{index}", "worker", "--concurrency", str(CONCURRENCY))
        yield f"http://127.0.0.1:{port}", processes
    finally:
        await asyncio.to_thread(processes.stop_all)


async def wait_ready(url: str, processes: Processes, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=2) as http:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(f"{url}/readyz")).status_code == 200:
                    return
            if processes.dead() or time.monotonic() > deadline:
                raise RuntimeError(f"not ready ({processes.dead()}):\n{processes.logs()}")
            await asyncio.sleep(0.1)


# --- load ------------------------------------------------------------------------------------


async def submit(http: aiohttp.ClientSession, workflow: str, count: int) -> float:
    """Submit ``count`` runs from `CLIENTS` tasks; the time of the first submit."""
    numbers = iter(range(count))
    first: list[float] = []
    body = b'{"input": {}}'
    headers = {"Content-Type": "application/json"}

    async def client() -> None:
        for _ in numbers:
            if not first:
                first.append(time.time())
            path = f"/v1/workflows/{workflow}/runs"
            async with http.post(path, data=body, headers=headers) as response:
                text = await response.read()
                if response.status not in (200, 201, 202):
                    raise RuntimeError(f"submit: {response.status} {text[:300]!r}")

    await asyncio.gather(*(client() for _ in range(min(CLIENTS, count))))
    return first[0]


async def until_done(store: PostgresStore, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not await store.list_runs(statuses=UNFINISHED, limit=1):
            return True
        await asyncio.sleep(POLL_S)
    return False


def cpu_snapshot(processes: Processes, redis_pid: int, postmaster: int) -> dict[str, float]:
    return {
        "gateway": sum(tree_cpu_seconds(p) for p in processes.pids("gateway")),
        "worker": sum(tree_cpu_seconds(p) for p in processes.pids("worker")),
        "redis": cpu_seconds(redis_pid),
        "postgres": postgres_cpu_seconds(postmaster),
        "client": time.process_time(),
    }


async def measure(
    gateways: int,
    workers: int,
    workflow: str,
    admin_url: str,
    postmaster: int,
    redis: RedisServer,
    args: argparse.Namespace,
) -> dict[str, Any]:
    Redis.from_url(redis.url).flushall()
    redis_pid = redis._process.pid  # type: ignore[union-attr]
    result: dict[str, Any] = {"gateways": gateways, "workers": workers, "runs": args.runs}
    async with fresh_database(admin_url) as db_url:
        with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp_name:
            tmp = Path(tmp_name)
            async with cluster(tmp, gateways, workers, db_url, redis.url) as (url, processes):
                await wait_ready(url, processes, args.startup_s)
                async with (
                    aiohttp.ClientSession(
                        base_url=url,
                        headers={"Authorization": f"Bearer {KEY}"},
                        connector=aiohttp.TCPConnector(limit=CLIENTS),
                        timeout=aiohttp.ClientTimeout(total=30),
                    ) as http,
                    PostgresStore(db_url) as store,
                ):
                    await submit(http, workflow, WARMUP)
                    if not await until_done(store, args.startup_s):
                        return {**result, "error": "warm-up not done", "logs": processes.logs()}
                    before = cpu_snapshot(processes, redis_pid, postmaster)
                    started = await submit(http, workflow, args.runs)
                    submitted = time.time()
                    finished = await until_done(store, args.timeout_s)
                    after = cpu_snapshot(processes, redis_pid, postmaster)
                    runs = await store.list_runs(limit=args.runs + WARMUP + 10)
                dead = processes.dead()
                logs = processes.logs() if dead or not finished else ""
    timed = sorted(runs, key=lambda r: r.created_at)[WARMUP:]
    ok = [r for r in timed if r.status == RunStatus.SUCCEEDED and r.finished_at is not None]
    last = max((r.finished_at or 0.0) for r in ok) if ok else started
    result.update(
        completed=len(ok),
        elapsed_s=last - started,
        submit_s=submitted - started,
        cpu_s={part: after[part] - before[part] for part in PARTS},
    )
    if not finished:
        result["error"] = f"not all runs terminal after {args.timeout_s:g} s"
    elif dead:
        result["error"] = f"exited: {', '.join(dead)}"
    elif len(ok) != args.runs:
        result["error"] = f"{len(ok)}/{args.runs} succeeded"
    if "error" in result:
        result["logs"] = logs
    else:
        result["runs_per_s"] = args.runs / result["elapsed_s"]
    return result


def describe(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"FAILED: {result['error'][:300]}"
    cpu = result["cpu_s"]
    per_run = "  ".join(f"{p} {1000 * cpu[p] / result['runs']:.2f}" for p in PARTS)
    return (
        f"{result['runs_per_s']:6,.0f} runs/s (submit {result['submit_s']:.2f} s,"
        f" elapsed {result['elapsed_s']:.2f} s; CPU ms/run: {per_run})"
    )


# --- the model -------------------------------------------------------------------------------


def predict(cpu_ms: dict[str, float], g: int, w: int, cores: int, wait_ms: float) -> dict:
    """Capacity with ``g`` gateways and ``w`` workers on ``cores`` cores: each process is one
    event loop (one core at most), and everything shares the cores:

        min(g·1000/gateway_ms, w·1000/worker_ms, cores·1000/Σ ms, slots/run time)

    The last two terms are the tuning kit's `RunQueue` capacity (its CPU term and its
    ``workers × concurrency`` slots)."""
    shared = sum(cpu_ms[p] for p in ("gateway", "worker", "redis", "postgres"))
    runs = RunQueue(
        rate=1.0,
        service=ServiceTime(mean_ms=wait_ms + cpu_ms["worker"], dist="constant"),
        workers=w,
        concurrency=CONCURRENCY,
        cpu_ms=shared,
        cpu_servers=cores,
    )
    terms = {
        "gateways": g * 1000 / cpu_ms["gateway"],
        "workers": w * 1000 / cpu_ms["worker"],
        "cores": runs.cpu_servers * 1000 / runs.cpu_ms,
        "slots": runs.workers * runs.concurrency / runs.service.mean_s,
    }
    bound = min(terms, key=terms.__getitem__)
    capacity = terms[bound]
    # At 80 % of that, what a run takes (the kit's simulation of the slots, CPU stretch
    # included): a sanity check that the capacity is reachable with 64 slots per worker.
    loaded = RunQueue(
        rate=0.8 * capacity,
        service=runs.service,
        workers=w,
        concurrency=CONCURRENCY,
        cpu_ms=shared,
        cpu_servers=cores,
    )
    try:
        stats = simulate_runs(loaded, count=20_000)
        p99_ms = stats.p99_s * 1000
    except ValueError:
        p99_ms = float("nan")
    return {"capacity": capacity, "bound": bound, "terms": terms, "p99_ms_at_80pct": p99_ms}


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        model = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if "model name" in ln), "")
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": Path("/proc/loadavg").read_text().strip(),
    }


# --- the run ---------------------------------------------------------------------------------


async def run_all(args: argparse.Namespace, admin_url: str, redis: RedisServer) -> list[dict]:
    postmaster = await postmaster_pid(admin_url)
    todo = [(wf, g, w) for wf in args.workflows for g, w in CONFIGS]
    rounds: list[dict[str, Any]] = []
    for index in range(args.rounds):
        shift = index % len(CONFIGS)
        order = [(wf, *c) for wf in args.workflows for c in CONFIGS[shift:] + CONFIGS[:shift]]
        assert sorted(order) == sorted(todo)
        for workflow, g, w in order:
            async with asyncio.timeout(args.startup_s * 2 + args.timeout_s + 60):
                result = await measure(g, w, workflow, admin_url, postmaster, redis, args)
            result.update(workflow=workflow, round=index + 1)
            rounds.append(result)
            print(
                f"  round {index + 1}/{args.rounds} {workflow:5} {g} gw {w} wk  {describe(result)}",
                flush=True,
            )
    return rounds


def summarise(rounds: list[dict], workflows: list[str]) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for workflow in workflows:
        for g, w in CONFIGS:
            mine = [
                r
                for r in rounds
                if r["workflow"] == workflow and (r["gateways"], r["workers"]) == (g, w)
            ]
            ok = [r for r in mine if "error" not in r]
            per_s = [r["runs_per_s"] for r in ok]
            summary[f"{workflow} {g}x{w}"] = {
                "workflow": workflow,
                "gateways": g,
                "workers": w,
                "runs_per_s": median(per_s),
                "min": min(per_s, default=float("nan")),
                "max": max(per_s, default=float("nan")),
                "submit_s": median([r["submit_s"] for r in ok]),
                "cpu_ms_per_run": {
                    p: median([1000 * r["cpu_s"][p] / r["runs"] for r in ok]) for p in PARTS
                },
                "cpu_busy_cores": median(
                    [sum(r["cpu_s"][p] for p in PARTS) / r["elapsed_s"] for r in ok]
                ),
                "failures": len(mine) - len(ok),
            }
    return summary


def report(summary: dict, workflows: list[str], wait_ms: dict[str, float], cores: int) -> dict:
    model: dict[str, Any] = {}
    for workflow in workflows:
        rows = []
        for g, w in CONFIGS:
            s = summary[f"{workflow} {g}x{w}"]
            cpu = s["cpu_ms_per_run"]
            rows.append(
                [
                    f"{g} gateway{'s' * (g > 1)}, {w} worker{'s' * (w > 1)}",
                    s["runs_per_s"],
                    f"{s['min']:,.0f}–{s['max']:,.0f}",
                    *(f"{cpu[p]:.2f}" for p in PARTS),
                    f"{s['cpu_busy_cores']:.2f}",
                    s["failures"],
                ]
            )
        print(f"\n{workflow}: runs/s, median of rounds; CPU ms per run per process type")
        print_table(["configuration", "runs/s", "range", *PARTS, "cores busy", "failed"], rows)
        base = summary[f"{workflow} 1x1"]["cpu_ms_per_run"]
        if any(v != v for v in base.values()):  # NaN: the 1×1 configuration failed
            continue
        checks = []
        for g, w in CONFIGS:
            s = summary[f"{workflow} {g}x{w}"]
            p = predict(base, g, w, cores, wait_ms[workflow])
            # On this machine the harness's own CPU shares the cores too.
            shared = sum(base[q] for q in ("gateway", "worker", "redis", "postgres", "client"))
            p_client = min(p["terms"]["gateways"], p["terms"]["workers"], cores * 1000 / shared)
            checks.append(
                [
                    f"{g}×{w}",
                    s["runs_per_s"],
                    p["capacity"],
                    p["bound"],
                    f"{s['runs_per_s'] / p['capacity']:.2f}",
                    p_client,
                    f"{s['runs_per_s'] / p_client:.2f}",
                ]
            )
        print(f"\n{workflow}: model (CPU per run from 1 gateway × 1 worker) vs measured, C={cores}")
        print_table(
            [
                "G×W",
                "measured",
                "model",
                "bound",
                "measured/model",
                "model + client CPU",
                "measured/that",
            ],
            checks,
        )
        beyond = []
        predictions = {}
        for g in (1, 2, 4, 8):
            for w in (1, 2, 4, 8):
                p = predict(base, g, w, g + w, wait_ms[workflow])
                predictions[f"{g}x{w}"] = p
                beyond.append(
                    [g, w, g + w, p["capacity"], p["bound"], f"{p['p99_ms_at_80pct']:.0f}"]
                )
        print(f"\n{workflow}: predicted capacity, G gateways + W workers on C = G + W cores")
        print_table(["G", "W", "C", "runs/s", "bound", "run p99 ms at 80 %"], beyond)
        model[workflow] = {"base_cpu_ms": base, "checks": checks, "predictions": predictions}
    return model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3000, help="runs per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workflows", default="model,noop", help="model, noop: comma-separated")
    parser.add_argument("--startup-s", type=float, default=60.0, help="processes up, warm-up")
    parser.add_argument("--timeout-s", type=float, default=120.0, help="per measurement")
    parser.add_argument("--name", default="scaling", help="results/<name>.json")
    args = parser.parse_args()
    args.workflows = [w.strip() for w in args.workflows.split(",") if w.strip()]
    unknown = sorted(set(args.workflows) - {"model", "noop"})
    if unknown:
        parser.error(f"unknown workflows: {', '.join(unknown)}")
    logging.basicConfig(level=logging.ERROR)
    info = machine_info()
    print(f"machine: {info}", flush=True)
    started = time.monotonic()
    with private_postgres() as admin_url, private_redis() as redis:
        rounds = uvloop.run(run_all(args, admin_url, redis))
    wall_s = time.monotonic() - started
    summary = summarise(rounds, args.workflows)
    wait_ms = {"model": WAIT_S * 1000, "noop": 0.0}
    model = report(summary, args.workflows, wait_ms, info["nproc"] or 2)
    info["loadavg_at_end"] = Path("/proc/loadavg").read_text().strip()
    print(f"\nwall time {wall_s:.0f} s; load average at end {info['loadavg_at_end']}")
    payload: dict[str, Any] = {"benchmark": "scaling", "machine": info, "settings": vars(args)}
    payload["settings"].update(
        clients=CLIENTS, worker_concurrency=CONCURRENCY, warmup=WARMUP, poll_s=POLL_S
    )
    payload.update(summary=summary, model=model, rounds=rounds, wall_s=wall_s)
    print(f"results: {write_results(args.name, payload)}")
    return 1 if any(s["failures"] for s in summary.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
