"""The worker in process: reconciliation, the dead state, cancellation and burst mode."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from surgeflow.config import QueueSettings, Settings, StoreSettings, WorkerSettings
from surgeflow.queue.reconciler import Reconciler
from surgeflow.service import Service
from surgeflow.store.base import RunStatus
from surgeflow.workflow import Context, Workflow, step

executions: list[str] = []


@step
async def record(ctx: Context) -> str:
    executions.append(ctx.run_id)
    return "ok"


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    executions.clear()
    settings = Settings(
        store=StoreSettings(url=f"sqlite:///{tmp_path / 'w.db'}"),
        queue=QueueSettings(lease_s=0.2, max_attempts=2),
        worker=WorkerSettings(poll_interval_s=0.02),
    )
    workflows = {"record": Workflow("record", record)}
    async with Service(settings, workflows=workflows, embedded_worker=False) as service:
        yield service


async def test_reconcile_enqueues_a_run_the_queue_lost(service: Service) -> None:
    lost, _ = await service.store.create_run("record", {})  # as if the put never happened
    kept, _ = await service.submit("record", {})
    reconciler = Reconciler(service.store, service.queue, grace_s=0)
    assert await reconciler.reconcile_once() == 1
    assert await reconciler.reconcile_once() == 0  # nothing missing any more: no writes
    await service.new_worker().run(burst=True)
    assert sorted(executions) == sorted([lost.id, kept.id])
    for run_id in (lost.id, kept.id):
        assert (await service.store.get_run(run_id)).status is RunStatus.SUCCEEDED


async def test_a_run_whose_workers_keep_dying_ends_dead(service: Service) -> None:
    run, _ = await service.submit("record", {})
    for attempt in range(2):  # two leases that are never acked: two crashed workers
        jobs = await service.queue.get(f"crashed-{attempt}", lease_s=0.01)
        assert [job.run_id for job in jobs] == [run.id]
        await asyncio.sleep(0.02)
    await service.new_worker().run(burst=True)
    dead = await service.store.get_run(run.id)
    assert dead.status is RunStatus.DEAD
    assert dead.error == "gave up after 2 attempts"
    assert executions == []
    assert (await service.queue.stats()).dead == 1
    events = [e.type for e in await service.store.list_events(run.id)]
    assert events == ["run.queued", "run.dead"]


async def test_cancel_reaches_a_run_on_this_worker(service: Service) -> None:
    started = asyncio.Event()

    @step
    async def wait_forever(ctx: Context) -> None:
        started.set()
        await asyncio.sleep(60)

    service.workflows["wait"] = Workflow("wait", wait_forever)
    worker = service.new_worker()
    service.worker = worker
    task = asyncio.create_task(worker.run())
    run, _ = await service.submit("wait", {})
    await asyncio.wait_for(started.wait(), 5)
    await service.cancel(run.id)
    for _ in range(100):
        if (await service.store.get_run(run.id)).status is RunStatus.CANCELLED:
            break
        await asyncio.sleep(0.02)
    assert (await service.store.get_run(run.id)).status is RunStatus.CANCELLED
    for _ in range(100):  # the job is acked just after the status and event are written
        if not worker.active_runs:
            break
        await asyncio.sleep(0.01)
    assert worker.active_runs == []
    worker.stop()
    await task
    assert (await service.queue.stats()).leased == 0  # the job was acked, no lease left held
