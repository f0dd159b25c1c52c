"""One trial of ``surgeflow tune``: start a candidate deployment, offer it load, stop it.

The gateway (and with it the embedded worker) runs in this process; `Workers` trials start real
``surgeflow worker`` processes beside it, on the trial's own SQLite store. Nothing is shared with
a real deployment: each trial gets a fresh store in a temporary directory, no metrics directory,
no alerts and no tracing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import secrets
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import msgspec
import yaml

from surgeflow.errors import SurgeflowError
from surgeflow.tuning.bench import run_bench
from surgeflow.tuning.knobs import Candidate, Workload
from surgeflow.tuning.results import BenchResult, LoadSettings, decode_histogram
from surgeflow.tuning.scenario import ServiceTime
from surgeflow.tuning.targets import TargetSettings

WORKER_START_S = 30.0  # a worker process that has not said it started by then failed to
WORKER_STOP_S = 10.0  # after SIGTERM; then SIGKILL


class TrialError(SurgeflowError):
    """A trial could not run (a worker process did not start, say)."""


def isolated(candidate: Candidate, *, seed: int, store: Path) -> Candidate:
    """``candidate`` as a trial runs it: every simulated endpoint seeded from ``seed`` (each
    its own stream), a fresh SQLite store at ``store``, and nothing shared with a real
    deployment."""
    settings = candidate.settings
    streams = iter(range(1, 1_000_000))
    models = [
        msgspec.structs.replace(
            m,
            endpoints=[
                e
                if e.simulated is None
                else msgspec.structs.replace(
                    e,
                    simulated=msgspec.structs.replace(
                        e.simulated, seed=seed * 1000 + next(streams)
                    ),
                )
                for e in m.endpoints
            ],
        )
        for m in settings.models
    ]
    settings = msgspec.structs.replace(
        settings,
        models=models,
        store=msgspec.structs.replace(settings.store, url=f"sqlite:///{store}"),
        queue=msgspec.structs.replace(settings.queue, url=None),
        server=msgspec.structs.replace(settings.server, metrics_dir=None),
        alerts=msgspec.structs.replace(settings.alerts, enabled=False),
        tracing=msgspec.structs.replace(settings.tracing, enabled=False),
    )
    return msgspec.structs.replace(candidate, settings=settings)


def target_for(workload: Workload, url: str) -> TargetSettings:
    if workload.kind == "runs":
        return TargetSettings(
            kind="runs", url=url, workflow=workload.workflow, input=workload.input
        )
    return TargetSettings(
        kind="chat",
        url=url,
        model=workload.model,
        hit_ratio=workload.hit_ratio or None,
        prompts=workload.prompts if workload.hit_ratio else None,
    )


async def run_trial(
    candidate: Candidate,
    workload: Workload,
    load: LoadSettings,
    *,
    workdir: Path,
    scrape: bool = False,
    on_worker_cpu: Callable[[float], None] | None = None,
) -> BenchResult:
    """Start ``candidate`` (already `isolated`), offer it ``load`` of ``workload``, stop it;
    with ``scrape``, the result has the gateway's own figures; ``on_worker_cpu`` is given the
    CPU seconds the worker processes used during the load."""
    from surgeflow.server import running_gateway
    from surgeflow.service import Service

    key = "sk-tune-" + secrets.token_hex(12)
    embedded = workload.kind == "runs" and candidate.workers is None
    async with (
        Service(candidate.settings, api_keys=[key], embedded_worker=embedded) as service,
        running_gateway(service) as url,
        worker_processes(candidate, workdir) as pids,
    ):
        before = [_process_cpu_s(pid) for pid in pids]
        result = await run_bench(
            target_for(workload, url), load, api_key=key, scrape_metrics=scrape
        )
        if on_worker_cpu is not None and pids:
            after = [_process_cpu_s(pid) for pid in pids]
            if None not in before and None not in after:
                on_worker_cpu(sum(a or 0.0 for a in after) - sum(b or 0.0 for b in before))
        return result


def _process_cpu_s(pid: int) -> float | None:
    """The CPU time process ``pid`` has used (Linux's /proc; None elsewhere)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state is field 3
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


@contextlib.asynccontextmanager
async def worker_processes(candidate: Candidate, workdir: Path) -> AsyncIterator[list[int]]:
    """``candidate.workers`` ``surgeflow worker`` processes on its config, started (each has
    said so) before the block and stopped (SIGTERM, then SIGKILL) after it; yields their pids."""
    count = candidate.workers or 0
    if count == 0:
        yield []
        return
    config = workdir / "worker.yaml"
    document = msgspec.to_builtins(candidate.settings)
    config.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    # The workers import what this process imports (a workflow module on a test's path, say).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    processes: list[asyncio.subprocess.Process] = []
    try:
        for index in range(count):
            with (workdir / f"worker-{index}.log").open("ab") as log:
                process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "surgeflow",
                    "worker",
                    "--config",
                    str(config),
                    stdout=asyncio.subprocess.PIPE,
                    stderr=log,
                    env=env,
                )
            processes.append(process)
        await asyncio.wait_for(
            asyncio.gather(*(_started(p, workdir, i) for i, p in enumerate(processes))),
            WORKER_START_S,
        )
        yield [p.pid for p in processes]
    except TimeoutError:
        raise TrialError(
            f"a worker process did not start within {WORKER_START_S:g} s (its log: {workdir})"
        ) from None
    finally:
        await asyncio.gather(*(_stop(p) for p in processes))


async def _started(process: asyncio.subprocess.Process, workdir: Path, index: int) -> None:
    assert process.stdout is not None
    while line := await process.stdout.readline():
        if b"started" in line:
            # Keep reading, so a full pipe never blocks the worker.
            asyncio.get_running_loop().create_task(_drain(process.stdout))
            return
    raise TrialError(
        f"worker process {index} exited with code {await process.wait()} before it started"
        f" (its log: {workdir / f'worker-{index}.log'})"
    )


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.read(65536):
        pass


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), WORKER_STOP_S)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


class RunCalibration(msgspec.Struct, kw_only=True, frozen=True):
    """One run of a workload, measured alone: how long it holds a worker slot (``service``),
    what it takes besides (``overhead_ms``), the CPU it costs the process that serves and
    executes it (``cpu_ms``), and the CPU it costs a separate worker process executing it
    (``worker_cpu_ms``; None: not measured)."""

    service: ServiceTime
    overhead_ms: float
    cpu_ms: float
    runs: int
    worker_cpu_ms: float | None = None

    def describe(self) -> str:
        worker = (
            ""
            if self.worker_cpu_ms is None
            else f" ({self.worker_cpu_ms:,.1f} ms of it in a separate worker process)"
        )
        return (
            f"a run holds a worker slot {self.service.describe()}, takes {self.overhead_ms:,.1f}"
            f" ms more to submit and follow, and costs {self.cpu_ms:,.1f} ms of CPU{worker}"
            f" ({self.runs:,} runs, one at a time)"
        )


async def measure_run_service(
    candidate: Candidate, workload: Workload, *, seed: int, duration_s: float, workdir: Path
) -> RunCalibration:
    """How long one run of ``workload`` takes with nothing else running: a closed loop of one
    run at a time against the embedded worker, for ``duration_s``.

    The worker's own figures (``surgeflow_workflow_run_duration_seconds``) give the time a run
    holds a slot; the rest of the latency the follower saw is overhead; the process's CPU time
    (``getrusage``: the gateway, the worker, the store's thread and the load generator) over
    the runs that ended is the CPU a run costs. The slot time's spread is taken as the
    latency's (an upper bound, since the overhead varies too).
    """
    calibration = msgspec.structs.replace(candidate, workers=None)
    load = LoadSettings(
        concurrency=1,
        duration_s=duration_s,
        warmup_s=min(1.0, duration_s / 4),
        seed=seed,
        timeout_s=60.0,
    )
    before = _cpu_s()
    result = await run_trial(calibration, workload, load, workdir=workdir, scrape=True)
    cpu_s = _cpu_s() - before
    latency = result.latency
    if not latency.count or latency.mean_ms is None:
        errors = ", ".join(f"{kind} {n}" for kind, n in result.counts.errors.items()) or "none"
        raise TrialError(
            f"no run of {workload.workflow!r} succeeded in {duration_s:g} s of calibration"
            f" (errors: {errors})"
        )
    figures = None if result.server is None else result.server.run_duration.get(workload.workflow)
    slot_ms = figures.mean_s * 1000 if figures is not None and figures.mean_s else latency.mean_ms
    histogram = decode_histogram(latency.histogram)
    stddev_ms = histogram.get_stddev() / 1000
    scv = min(4.0, (stddev_ms / slot_ms) ** 2) if slot_ms > 0 else 0.0
    ended = latency.count + result.warmup_sent  # every run of the loop, warm-up too
    return RunCalibration(
        service=ServiceTime.distribution(slot_ms, "gamma", scv),
        overhead_ms=max(0.0, latency.mean_ms - slot_ms),
        cpu_ms=cpu_s * 1000 / max(1, ended),
        runs=latency.count,
    )


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure_worker_cpu(
    candidate: Candidate,
    workload: Workload,
    *,
    rate: float,
    seed: int,
    duration_s: float,
    workdir: Path,
) -> float | None:
    """The CPU milliseconds one run costs a separate ``surgeflow worker`` process: one worker
    process under Poisson runs at ``rate``, its CPU time (/proc) over the runs that ended (None
    where there is no /proc). Under load, not one at a time: an idle worker's polls would
    otherwise be charged to the few runs."""
    used: list[float] = []
    load = LoadSettings(
        arrival="poisson",
        rate_rps=rate,
        duration_s=duration_s,
        warmup_s=min(1.0, duration_s / 4),
        seed=seed,
        timeout_s=60.0,
    )
    result = await run_trial(
        msgspec.structs.replace(candidate, workers=1),
        workload,
        load,
        workdir=workdir,
        on_worker_cpu=used.append,
    )
    ended = result.latency.count + result.warmup_sent
    if not used or not ended:
        return None
    return used[0] * 1000 / ended
