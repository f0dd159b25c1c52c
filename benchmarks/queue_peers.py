"""No-op jobs per second, submit → completed, one worker process: surgeflow against arq, Celery
and taskiq.

Systems (each worker its own process, started as its own CLI, against one private Redis):

- ``surgeflow-sqlite``: ``python -m surgeflow worker --config cfg``, store and queue in one
  SQLite file; ``surgeflow-redis``: the same with ``queue.url: redis://…`` (Redis Streams queue;
  the store stays SQLite); ``surgeflow-rabbitmq``: ``queue.url: amqp://…`` (the machine's
  RabbitMQ, ``--rabbitmq-url``) with the queue's index in PostgreSQL (``--index-url``, the
  machine's server); its "broker CPU" is RabbitMQ's (PostgreSQL's is not counted). The
  harness submits through ``Service(settings, embedded_worker=False).submit("noop", {})`` from
  64 tasks, and polls the store every 20 ms
  until no run is queued or running. The job is a durable run of a one-step no-op workflow
  (``benchmarks/queue_peers/noop.py``).
- ``arq``, ``celery``, ``taskiq`` (``ListQueueBroker``), ``taskiq-stream``
  (``RedisStreamBroker``): the driver ``benchmarks/queue_peers/<lib>_job.py`` runs in the peers'
  environment (``--peer-python``), submits as fast as the library allows and polls the result
  keys (one MGET of up to 1,000 keys every 20 ms) until all exist.

Every measurement starts a fresh worker (and, for surgeflow, a fresh database) on a flushed
Redis, submits a warm-up of 50 jobs and waits for them, then times N jobs from the first submit
to the last completion. A tuning pass first runs each system's candidate settings once
(``--tune-jobs``) and keeps the fastest; then ``--rounds`` rounds run every system in turn, the
order rotating each round. Figures: medians over rounds; CPU seconds from /proc (worker: its
process tree; the broker, Redis or RabbitMQ; the submitting client) over the timed window.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvloop
import yaml
from _common import _stop, child_process, free_port, median, print_table, write_results
from queue_peers._drive import cpu_seconds, tree_cpu_seconds
from queue_peers.noop import workflows as NOOP_WORKFLOWS
from redis import Redis

from surgeflow.config import load_settings
from surgeflow.errors import ConfigError
from surgeflow.service import Service
from surgeflow.store.base import RunStatus

REPO = Path(__file__).resolve().parent.parent
WORKFLOW = "noop"
WARMUP = 50
SUBMITTERS = 64  # surgeflow: concurrent Service.submit tasks
POLL_S = 0.02
UNFINISHED = frozenset({RunStatus.QUEUED, RunStatus.RUNNING})


@dataclass
class System:
    name: str
    # Each candidate: a label and its settings (env for the peers' workers, config for surgeflow).
    candidates: list[tuple[str, dict[str, Any]]]
    chosen: tuple[str, dict[str, Any]] | None = None
    tuning: list[dict[str, Any]] = field(default_factory=list)


def systems(names: list[str]) -> list[System]:
    every = [
        System(
            "surgeflow-sqlite",
            [(f"concurrency {c}", {"queue": None, "concurrency": c}) for c in (16, 64, 256)],
        ),
        System(
            "surgeflow-redis",
            [(f"concurrency {c}", {"queue": "redis", "concurrency": c}) for c in (16, 64, 256)],
        ),
        System(
            "surgeflow-rabbitmq",
            [(f"concurrency {c}", {"queue": "rabbitmq", "concurrency": c}) for c in (16, 64, 256)],
        ),
        System(
            "arq",
            [
                ("max_jobs 10, poll_delay 0.5 (defaults)", {"QP_ARQ_MAX_JOBS": "10"}),
                (
                    "max_jobs 64, poll_delay 0.05",
                    {"QP_ARQ_MAX_JOBS": "64", "QP_ARQ_POLL_DELAY": "0.05"},
                ),
                (
                    "max_jobs 256, poll_delay 0.05",
                    {"QP_ARQ_MAX_JOBS": "256", "QP_ARQ_POLL_DELAY": "0.05"},
                ),
            ],
        ),
        System(
            "celery",
            [(f"prefetch ×{p}", {"QP_CELERY_PREFETCH": str(p)}) for p in (4, 64, 256)],
        ),
        System(
            "taskiq",
            [
                (f"max-async-tasks {t}", {"QP_TASKIQ_BROKER": "list", "max_async_tasks": t})
                for t in (16, 100, 256)
            ],
        ),
        System(
            "taskiq-stream",
            [
                (f"max-async-tasks {t}", {"QP_TASKIQ_BROKER": "stream", "max_async_tasks": t})
                for t in (16, 100, 256)
            ],
        ),
    ]
    return [s for s in every if s.name in names]


# --- processes -------------------------------------------------------------------------------


@contextlib.contextmanager
def redis_server() -> Iterator[tuple[str, int]]:
    """A private redis-server on a free loopback port, no persistence: its URL and pid."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not on PATH (apt-get install redis-server)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as tmp:
        command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        command += ["--appendonly", "no", "--dir", tmp]
        with child_process("redis-server", command, port=port) as proc:
            yield f"redis://127.0.0.1:{port}/0", proc.pid


@contextlib.contextmanager
def worker_process(
    command: list[str], env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """A worker in its own session, output to ``log``; SIGTERM (then SIGKILL) to its group."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            cwd=REPO,
        )
        try:
            yield proc
        finally:
            _stop(proc)


def tail(path: Path) -> str:
    """The start and the end of a worker's log, for an error report."""
    with contextlib.suppress(OSError):
        text = path.read_text(errors="replace")
        return text if len(text) <= 3000 else f"{text[:1500]}\n[…]\n{text[-1500:]}"
    return ""


# --- surgeflow -------------------------------------------------------------------------------


def surgeflow_config(tmp: Path, redis_url: str, settings: dict[str, Any]) -> Path:
    config: dict[str, Any] = {
        "store": {"url": f"sqlite:///{tmp / 'bench.db'}"},
        "workflows": ["benchmarks.queue_peers.noop:workflows"],
        "log": {"access": False, "level": "warning"},
        # poll_interval_s: a worker cannot see another process's SQLite puts, so when idle it
        # polls; 0.05 s like arq's tuned poll_delay (the Redis queue blocks on the stream).
        "worker": {
            "embedded": False,
            "concurrency": settings["concurrency"],
            "poll_interval_s": 0.05,
        },
        "models": [],
    }
    if settings["queue"] == "redis":
        config["queue"] = {"url": redis_url}
    elif settings["queue"] == "rabbitmq":
        config["queue"] = {"url": RABBITMQ["url"], "index_url": RABBITMQ["index_url"]}
    path = tmp / "surgeflow.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


async def _submit(service: Service, count: int) -> None:
    numbers = iter(range(count))

    async def client() -> None:
        for _ in numbers:
            await service.submit(WORKFLOW, {})

    await asyncio.gather(*(client() for _ in range(min(SUBMITTERS, count))))


async def _until_done(service: Service, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not await service.store.list_runs(statuses=UNFINISHED, limit=1):
            return True
        await asyncio.sleep(POLL_S)
    return False


async def _surgeflow_measure(
    config: Path, jobs: int, worker_pid: int, redis_pid: int, args: argparse.Namespace
) -> dict[str, Any]:
    settings = load_settings(config, env={})
    async with Service(
        settings, workflows=NOOP_WORKFLOWS, embedded_worker=False, api_keys=[]
    ) as service:
        await _submit(service, WARMUP)
        if not await _until_done(service, args.startup_s):
            return {"error": f"warm-up: not done in {args.startup_s:g} s"}
        worker_cpu0, redis_cpu0 = tree_cpu_seconds(worker_pid), cpu_seconds(redis_pid)
        client_cpu0 = time.process_time()
        started = time.perf_counter()
        await _submit(service, jobs)
        submitted = time.perf_counter()
        finished = await _until_done(service, args.timeout_s)
        elapsed = time.perf_counter() - started
        result = {
            "jobs": jobs,
            "elapsed_s": elapsed,
            "submit_s": submitted - started,
            "worker_cpu_s": tree_cpu_seconds(worker_pid) - worker_cpu0,
            "redis_cpu_s": cpu_seconds(redis_pid) - redis_cpu0,
            "client_cpu_s": time.process_time() - client_cpu0,
        }
        succeeded = await service.store.list_runs(
            statuses=frozenset({RunStatus.SUCCEEDED}), limit=jobs + WARMUP + 1
        )
        result["completed"] = len(succeeded) - WARMUP
        if not finished:
            result["error"] = f"not all runs terminal after {args.timeout_s:g} s"
    return result


def measure_surgeflow(
    settings: dict[str, Any], jobs: int, redis: tuple[str, int], args: argparse.Namespace
) -> dict[str, Any]:
    url, redis_pid = redis
    with tempfile.TemporaryDirectory(prefix="bench-qp-") as tmp_name:
        tmp = Path(tmp_name)
        config = surgeflow_config(tmp, url, settings)
        env = dict(os.environ, PYTHONPATH=str(REPO))
        env = {k: v for k, v in env.items() if not k.startswith("SURGEFLOW_")}
        command = [sys.executable, "-m", "surgeflow", "worker", "--config", str(config)]
        with worker_process(command, env, tmp / "worker.log") as proc:
            result = uvloop.run(_surgeflow_measure(config, jobs, proc.pid, redis_pid, args))
            if proc.poll() is not None:
                result["error"] = f"worker exited ({proc.returncode}): {tail(tmp / 'worker.log')}"
    return result


RABBITMQ: dict[str, str] = {}  # url, index_url: from the command line


async def _empty_rabbitmq_queue() -> None:
    """Delete the RabbitMQ queue's tickets, dead letters and index rows (the queue is named
    ``runs``, as the service's is)."""
    import aio_pika
    import asyncpg  # type: ignore[import-untyped]

    from surgeflow.queue.rabbitmq import TABLE, queue_names

    connection = await aio_pika.connect(RABBITMQ["url"], timeout=10)
    async with connection:
        channel = await connection.channel()
        for name in queue_names("runs"):
            await channel.queue_delete(name)
    conn = await asyncpg.connect(RABBITMQ["index_url"], timeout=10)
    try:
        with contextlib.suppress(asyncpg.UndefinedTableError):
            await conn.execute(f"DELETE FROM {TABLE} WHERE queue = 'runs'")
    finally:
        await conn.close()


def rabbitmq_pid() -> int:
    """The RabbitMQ node's process (Erlang's beam), for its CPU time."""
    found = subprocess.run(["pgrep", "-o", "beam.smp"], capture_output=True, text=True).stdout
    if not found.strip():
        raise RuntimeError("no RabbitMQ node (beam.smp) is running: rabbitmq-server -detached")
    return int(found.split()[0])


def surgeflow_rabbitmq_supported() -> str | None:
    """Why RabbitMQ cannot be measured here, or None if it can."""
    try:
        rabbitmq_pid()
        asyncio.run(_empty_rabbitmq_queue())
    except Exception as exc:  # any reason at all is reported, and the system skipped
        return f"{type(exc).__name__}: {exc}"
    return None


def surgeflow_redis_supported(redis_url: str) -> str | None:
    """Why the service cannot use a Redis queue yet, or None if it can."""
    with tempfile.TemporaryDirectory(prefix="bench-qp-") as tmp:
        config = surgeflow_config(Path(tmp), redis_url, {"queue": "redis", "concurrency": 1})
        try:
            settings = load_settings(config, env={})
            Service(settings, workflows=NOOP_WORKFLOWS, embedded_worker=False, api_keys=[])
        except (ConfigError, ImportError) as exc:
            return str(exc)
    return None


# --- peers -----------------------------------------------------------------------------------


def peer_command(system: str, settings: dict[str, Any], python: Path) -> list[str]:
    bin_dir = python.parent
    if system == "arq":
        return [str(bin_dir / "arq"), "benchmarks.queue_peers.arq_job.WorkerSettings"]
    if system == "celery":
        return [
            str(bin_dir / "celery"),
            *("-A", "benchmarks.queue_peers.celery_job", "worker", "--pool=solo"),
            *("--without-heartbeat", "--without-gossip", "--without-mingle", "-l", "warning"),
        ]
    return [
        str(bin_dir / "taskiq"),
        *("worker", "benchmarks.queue_peers.taskiq_job:broker", "--workers", "1"),
        *("--log-level", "WARNING", "--max-async-tasks", str(settings["max_async_tasks"])),
    ]


def measure_peer(
    system: str,
    settings: dict[str, Any],
    jobs: int,
    redis: tuple[str, int],
    args: argparse.Namespace,
) -> dict[str, Any]:
    url, redis_pid = redis
    module = "taskiq" if system.startswith("taskiq") else system
    env = dict(os.environ, PYTHONPATH=str(REPO), QP_REDIS_URL=url)
    env.update({k: str(v) for k, v in settings.items() if k.startswith("QP_")})
    with tempfile.TemporaryDirectory(prefix="bench-qp-") as tmp_name:
        log = Path(tmp_name) / "worker.log"
        with worker_process(peer_command(system, settings, args.peer_python), env, log) as proc:
            driver = [
                str(args.peer_python),
                *("-m", f"benchmarks.queue_peers.{module}_job", "enqueue-and-wait", str(jobs)),
                *("--redis", url, "--worker-pid", str(proc.pid), "--redis-pid", str(redis_pid)),
                *("--warmup", str(WARMUP), "--startup-s", str(args.startup_s)),
                *("--timeout-s", str(args.timeout_s), "--interval-s", str(POLL_S)),
            ]
            try:
                done = subprocess.run(
                    driver,
                    capture_output=True,
                    text=True,
                    env=env,
                    cwd=REPO,
                    timeout=args.startup_s + args.timeout_s + 60,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                return {"jobs": jobs, "completed": 0, "error": "driver timed out"}
            lines = done.stdout.strip().splitlines()
            try:
                result: dict[str, Any] = json.loads(lines[-1])
            except (IndexError, json.JSONDecodeError):
                result = {"jobs": jobs, "completed": 0, "error": done.stderr[-1500:]}
            if "error" in result:
                result["worker_log"] = tail(log)
    return result


# --- the run ---------------------------------------------------------------------------------


def measure(
    system: System,
    settings: dict[str, Any],
    jobs: int,
    redis: tuple[str, int],
    args: argparse.Namespace,
) -> dict[str, Any]:
    Redis.from_url(redis[0]).flushall()
    if system.name == "surgeflow-rabbitmq":
        asyncio.run(_empty_rabbitmq_queue())
        result = measure_surgeflow(settings, jobs, (redis[0], rabbitmq_pid()), args)
    elif system.name.startswith("surgeflow"):
        result = measure_surgeflow(settings, jobs, redis, args)
    else:
        result = measure_peer(system.name, settings, jobs, redis, args)
    if result.get("completed") != jobs and "error" not in result:
        result["error"] = f"{result.get('completed')}/{jobs} completed"
    if "error" not in result:
        result["jobs_per_s"] = jobs / result["elapsed_s"]
    return result


def describe(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"FAILED: {result['error'][:300]}"
    jobs = result["jobs"]
    return (
        f"{result['jobs_per_s']:7,.0f} jobs/s  (submit {result['submit_s']:.2f} s, worker"
        f" {1000 * result['worker_cpu_s'] / jobs:.2f} CPU ms/job)"
    )


def versions(python: Path) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
        "('arq', 'celery', 'kombu', 'taskiq', 'taskiq-redis', 'redis', 'hiredis')}))"
    )
    done = subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    found: dict[str, str] = json.loads(done.stdout) if done.returncode == 0 else {}
    server = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, timeout=10, check=False
    )
    found["redis-server"] = server.stdout.split()[2].removeprefix("v=") if server.stdout else ""
    return found


def machine_info() -> dict[str, Any]:
    """Like `_common.machine`, without the code state (this harness runs no git)."""
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        model = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if "model name" in ln), "")
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    all_names = [
        "surgeflow-sqlite",
        "surgeflow-redis",
        "surgeflow-rabbitmq",
        "arq",
        "celery",
        "taskiq",
        "taskiq-stream",
    ]
    parser.add_argument("--jobs", type=int, default=5000, help="jobs per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tune-jobs", type=int, default=2000, help="jobs per tuning trial")
    parser.add_argument("--no-tune", action="store_true", help="each system's last candidate")
    parser.add_argument("--systems", default=",".join(all_names), help="comma-separated")
    parser.add_argument("--peer-python", type=Path, default=Path("/tmp/peerenv/bin/python"))
    parser.add_argument("--startup-s", type=float, default=60.0, help="worker up, warm-up done")
    parser.add_argument("--timeout-s", type=float, default=60.0, help="per measurement")
    parser.add_argument("--quick", action="store_true", help="1,000 jobs, 2 rounds, 500 to tune")
    parser.add_argument("--rabbitmq-url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument(
        "--index-url",
        default="postgresql://postgres@127.0.0.1:5432/test",
        help="PostgreSQL for surgeflow-rabbitmq's queue index",
    )
    args = parser.parse_args()
    RABBITMQ.update(url=args.rabbitmq_url, index_url=args.index_url)
    if args.quick:
        args.jobs, args.rounds, args.tune_jobs = 1000, 2, 500
    chosen = [n.strip() for n in args.systems.split(",") if n.strip()]
    unknown = sorted(set(chosen) - set(all_names))
    if unknown:
        parser.error(f"unknown systems: {', '.join(unknown)} (known: {', '.join(all_names)})")
    logging.basicConfig(level=logging.ERROR)
    info = machine_info()
    info["versions"] = versions(args.peer_python)
    print(f"versions: {info['versions']}", flush=True)
    todo = systems(chosen)
    skipped: dict[str, str] = {}
    started = time.monotonic()
    with redis_server() as redis:
        if any(s.name == "surgeflow-redis" for s in todo):
            reason = surgeflow_redis_supported(redis[0])
            if reason is not None:
                print(f"surgeflow-redis: skipped, the service refuses it: {reason}", flush=True)
                skipped["surgeflow-redis"] = reason
                todo = [s for s in todo if s.name != "surgeflow-redis"]
        if any(s.name == "surgeflow-rabbitmq" for s in todo):
            reason = surgeflow_rabbitmq_supported()
            if reason is not None:
                print(f"surgeflow-rabbitmq: skipped: {reason}", flush=True)
                skipped["surgeflow-rabbitmq"] = reason
                todo = [s for s in todo if s.name != "surgeflow-rabbitmq"]
        for system in todo:
            if args.no_tune or len(system.candidates) == 1:
                system.chosen = system.candidates[-1]
                continue
            best = -1.0
            for label, settings in system.candidates:
                result = measure(system, settings, args.tune_jobs, redis, args)
                result["candidate"] = label
                system.tuning.append(result)
                print(f"  tune {system.name:16} {label:32} {describe(result)}", flush=True)
                if result.get("jobs_per_s", -1.0) > best:
                    best, system.chosen = result["jobs_per_s"], (label, settings)
            if system.chosen is None:
                system.chosen = system.candidates[-1]
        rounds: list[dict[str, Any]] = []
        for index in range(args.rounds):
            shift = index % len(todo)
            order = todo[shift:] + todo[:shift]
            figures: dict[str, Any] = {}
            for system in order:
                assert system.chosen is not None
                result = measure(system, system.chosen[1], args.jobs, redis, args)
                figures[system.name] = result
                print(f"  round {index + 1}/{args.rounds} {system.name:16} {describe(result)}")
            rounds.append(figures)
    wall_s = time.monotonic() - started

    rows, summary = [], {}
    for system in todo:
        ok = [r[system.name] for r in rounds if "error" not in r[system.name]]
        failures = len(rounds) - len(ok)
        per_s = [r["jobs_per_s"] for r in ok]

        def per_job_ms(key: str, ok: list[dict[str, Any]] = ok) -> float:
            return median([1000 * r[key] / r["jobs"] for r in ok if r.get(key) is not None])

        summary[system.name] = {
            "settings": system.chosen[0] if system.chosen else "",
            "jobs_per_s": median(per_s),
            "min_jobs_per_s": min(per_s, default=float("nan")),
            "max_jobs_per_s": max(per_s, default=float("nan")),
            "submit_s": median([r["submit_s"] for r in ok]),
            "worker_cpu_ms_per_job": per_job_ms("worker_cpu_s"),
            "broker_cpu_ms_per_job": per_job_ms("redis_cpu_s"),
            "client_cpu_ms_per_job": per_job_ms("client_cpu_s"),
            "failures": failures,
        }
        s = summary[system.name]
        rows.append(
            [
                system.name,
                s["settings"],
                s["jobs_per_s"],
                f"{s['min_jobs_per_s']:,.0f}–{s['max_jobs_per_s']:,.0f}",
                f"{s['worker_cpu_ms_per_job']:.3f}",
                f"{s['broker_cpu_ms_per_job']:.3f}",
                f"{s['client_cpu_ms_per_job']:.3f}",
                failures,
            ]
        )
    print()
    print(f"{args.jobs:,} no-op jobs, one worker process; median of {args.rounds} rounds")
    print_table(
        [
            "system",
            "settings",
            "jobs/s",
            "range",
            "worker CPU ms/job",
            "broker CPU ms/job",
            "client CPU ms/job",
            "failed",
        ],
        rows,
    )
    for name, reason in skipped.items():
        print(f"{name}: not run: {reason}")
    print(f"wall time {wall_s:.0f} s")
    payload: dict[str, Any] = {"benchmark": "queue_peers", "machine": info}
    payload["settings"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    payload.update(
        summary=summary,
        skipped=skipped,
        tuning={s.name: s.tuning for s in todo},
        rounds=rounds,
        wall_s=wall_s,
    )
    name = "queue_peers-quick" if args.quick else "queue_peers"
    print(f"results: {write_results(name, payload)}")
    failed = any(s["failures"] for s in summary.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
