"""The worker: leases queued runs, resumes them from their checkpoints, records the outcome."""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from surgeflow import logs, tracing
from surgeflow.errors import NotFound, StepError, ValidationError
from surgeflow.events import EventHub, RunRecorder
from surgeflow.queue.base import Job, Queue
from surgeflow.store.base import Run, RunStatus, Store
from surgeflow.workflow import Workflow
from surgeflow.workflow.runner import EventHandler

if TYPE_CHECKING:
    from surgeflow.cache.base import Cache
    from surgeflow.metrics import WorkflowStats
    from surgeflow.models.client import ModelClient
    from surgeflow.tracing import Tracer

log = logging.getLogger("surgeflow.worker")


class WorkerState(enum.Enum):
    IDLE = "idle"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


class _Active:
    """A run this worker holds: its lease, its task, why it would be cancelled, and (once
    loaded) its workflow and when this attempt started, for the metrics."""

    __slots__ = ("cancel_reason", "job", "started", "task", "workflow")

    def __init__(self, job: Job, task: asyncio.Task[None]) -> None:
        self.job = job
        self.task = task
        self.cancel_reason: str | None = None
        self.workflow: str | None = None
        self.started: float | None = None


class Worker:
    """Executes queued runs, at most ``concurrency`` at a time.

    Delivery is at least once: a run whose worker dies is leased again when the lease expires,
    and resumes after its last checkpointed step. ``stop()`` drains: no new leases, running runs
    get ``drain_timeout_s`` to finish, the rest are handed back to the queue untried.
    """

    def __init__(
        self,
        *,
        store: Store,
        queue: Queue,
        workflows: Mapping[str, Workflow],
        models: ModelClient | None = None,
        cache: Cache | None = None,
        hub: EventHub | None = None,
        concurrency: int = 64,
        lease_s: float = 30.0,
        poll_interval_s: float = 0.5,
        drain_timeout_s: float = 30.0,
        retry_backoff_s: float = 1.0,
        worker_id: str | None = None,
        stats: WorkflowStats | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.store = store
        self.queue = queue
        self.workflows = workflows
        self.models = models
        self.cache = cache
        self.hub = hub
        self.concurrency = concurrency
        self.lease_s = lease_s
        self.poll_interval_s = poll_interval_s
        self.drain_timeout_s = drain_timeout_s
        self.retry_backoff_s = retry_backoff_s
        self.stats = stats
        self.tracer = tracer
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.state = WorkerState.IDLE
        self.completed = 0
        self._active: dict[str, _Active] = {}
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._queue_warned_at = -1e9

    def __repr__(self) -> str:
        return (
            f"<Worker {self.id} state={self.state.value} active={len(self._active)}"
            f"/{self.concurrency} completed={self.completed}>"
        )

    @property
    def active_runs(self) -> list[str]:
        return list(self._active)

    async def run(self, *, burst: bool = False) -> None:
        """Work until `stop()`; with ``burst``, until the queue has nothing ready, then return."""
        self.state = WorkerState.RUNNING
        heartbeat = asyncio.create_task(self._heartbeat(), name=f"heartbeat-{self.id}")
        try:
            while not self._stopping.is_set():
                free = self.concurrency - len(self._active)
                if free <= 0:  # every slot busy: only a run finishing (or stop) matters now
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                try:
                    jobs = await self.queue.get(self.id, lease_s=self.lease_s, limit=free)
                except Exception as exc:  # the queue is down: keep the runs here going, retry
                    self._queue_failed("get", exc)
                    await self._sleep(min(2.0, self.poll_interval_s * 4))
                    continue
                for job in jobs:
                    self._start(job)
                if jobs:
                    continue
                if burst and not self._active:
                    break
                await self._sleep(self.poll_interval_s)
            await self._drain()
        finally:
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
            self.state = WorkerState.STOPPED

    def stop(self) -> None:
        """Begin draining (safe to call from a signal handler)."""
        self._stopping.set()
        self._wake.set()

    async def cancel(self, run_id: str) -> bool:
        """Cancel a run this worker is executing; ``False`` if it holds no such run."""
        active = self._active.get(run_id)
        if active is None:
            return False
        active.cancel_reason = "cancelled on request"
        active.task.cancel()
        return True

    async def _sleep(self, timeout_s: float) -> None:
        self._wake.clear()
        waiters = [
            asyncio.ensure_future(self._wake.wait()),
            asyncio.ensure_future(self.queue.wait(timeout_s)),
        ]
        try:
            await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)

    def _start(self, job: Job) -> None:
        task = asyncio.create_task(self._process(job), name=f"run-{job.run_id}")
        self._active[job.run_id] = _Active(job, task)
        task.add_done_callback(lambda _: self._finished(job.run_id))

    def _finished(self, run_id: str) -> None:
        self._active.pop(run_id, None)
        self.completed += 1
        self._wake.set()

    async def _heartbeat(self) -> None:
        """Extend the leases of running runs and notice cancellations made elsewhere."""
        interval_s = max(self.lease_s / 3, 0.01)
        while True:
            await asyncio.sleep(interval_s)
            for run_id, active in list(self._active.items()):
                try:
                    held = await self.queue.extend(active.job, self.id, lease_s=self.lease_s)
                except Exception as exc:  # unknown: keep running, and ask again next time
                    self._queue_failed("extend", exc)
                    continue
                if not held:
                    log.warning("lost the lease of run %s; stopping it here", run_id)
                    active.cancel_reason = "lease lost"
                    active.task.cancel()
                    continue
                try:
                    run = await self.store.get_run(run_id)
                except NotFound:
                    continue
                if run.cancel_requested and active.cancel_reason is None:
                    active.cancel_reason = "cancelled on request"
                    active.task.cancel()

    async def _drain(self) -> None:
        if not self._active:
            return
        self.state = WorkerState.DRAINING
        log.info("draining %d runs (up to %.0f s)", len(self._active), self.drain_timeout_s)
        tasks = [active.task for active in self._active.values()]
        _, pending = await asyncio.wait(tasks, timeout=self.drain_timeout_s)
        for active in list(self._active.values()):
            if active.task in pending:
                active.cancel_reason = "drain"
                active.task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def _queue_failed(self, what: str, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._queue_warned_at >= 10:
            self._queue_warned_at = now
            log.warning("the queue failed (%s: %s); carrying on and retrying", what, exc)

    async def _process(self, job: Job) -> None:
        logs.bind(run_id=job.run_id)  # this task's log lines name the run
        try:
            await self._process_job(job)
        except Exception:
            # The store or the queue failed around the run: whatever was recorded stays, and
            # the job's lease expires (or the reconciler finds the run), so it is tried again.
            log.exception("run %s: could not finish handling it; it will be retried", job.run_id)

    async def _process_job(self, job: Job) -> None:
        recorder = RunRecorder(self.store, job.run_id, self.hub)
        checkpoints: dict[str, bytes] = {}
        try:
            if job.exhausted:  # no attempt begins: read the run without starting it
                run = await self.store.get_run(job.run_id)
            else:  # the run as it begins this attempt, and what earlier attempts saved
                run, checkpoints = await self.store.start_run(
                    job.run_id, started_event=functools.partial(self._started_event, job)
                )
        except NotFound:
            await self.queue.ack(job, self.id)
            return
        if run.status.terminal:
            await self.queue.ack(job, self.id)
            return
        self._active[job.run_id].workflow = run.workflow
        if run.cancel_requested:
            await self._conclude(job, recorder, RunStatus.CANCELLED, error="cancelled on request")
            return
        if job.exhausted:
            error = f"gave up after {job.max_attempts} attempts"
            await self._conclude(job, recorder, RunStatus.DEAD, error=error, bury=True)
            return
        workflow = self.workflows.get(run.workflow)
        if workflow is None:
            error = f"no workflow named {run.workflow!r} is registered on this worker"
            await self._conclude(job, recorder, RunStatus.FAILED, error=error)
            return
        if self.tracer is None:
            await self._execute(job, run, workflow, recorder, checkpoints)
        else:
            await self._traced_execute(job, run, workflow, recorder, checkpoints)

    def _started_event(
        self, job: Job, run: Run, checkpoints: dict[str, bytes]
    ) -> dict[str, Any] | None:
        """The ``run.started`` event `start_run` writes with the start, if this attempt will
        execute the run (not for one to be cancelled, or whose workflow is unknown here)."""
        if run.cancel_requested or run.workflow not in self.workflows:
            return None
        return {"attempt": job.attempts, "worker": self.id, "resumed_steps": len(checkpoints)}

    async def _traced_execute(
        self,
        job: Job,
        run: Run,
        workflow: Workflow,
        recorder: RunRecorder,
        checkpoints: dict[str, bytes],
    ) -> None:
        """`_execute` in a ``run <workflow>`` span, after a ``queue wait`` span (first attempt:
        from submission to its start); both join the trace of the request that submitted it."""
        assert self.tracer is not None
        parent = self.tracer.extract(await self._submitted_trace(run.id))
        attributes: tracing.Attributes = {tracing.WORKFLOW: run.workflow, tracing.RUN_ID: run.id}
        if job.attempts == 1:  # the wait ends when this attempt started the run
            taken_at = run.started_at or time.time()
            self.tracer.record("queue wait", run.created_at, taken_at, attributes, parent=parent)
        attributes = {**attributes, tracing.RUN_ATTEMPT: job.attempts}
        with self.tracer.span(f"run {run.workflow}", attributes, parent=parent):
            await self._execute(job, run, workflow, recorder, checkpoints)

    async def _submitted_trace(self, run_id: str) -> dict[str, Any] | None:
        """The trace context `Service.submit` put in the run's ``run.queued`` event, if any."""
        for event in await self.store.list_events(run_id):
            if event.type == "run.queued":
                return event.data
        return None

    async def _execute(
        self,
        job: Job,
        run: Run,
        workflow: Workflow,
        recorder: RunRecorder,
        checkpoints: dict[str, bytes],
    ) -> None:
        on_event: EventHandler = recorder.step_event
        if self.stats is not None:
            if job.attempts == 1:
                self.stats.run_started(run.workflow, time.time() - run.created_at)
            on_event = self.stats.step_observer(run.workflow, on_event)
        if self.hub is not None:  # run.started was written with the start
            self.hub.notify(run.id)
        started = self._active[run.id].started = time.perf_counter()

        async def save(key: str, output: bytes) -> None:
            await self.store.save_checkpoint(run.id, key, output)

        try:
            output = await workflow.run(
                run.input,
                models=self.models,
                run_id=run.id,
                checkpoints=checkpoints,
                on_event=on_event,
                on_checkpoint=save,
                cache=self.cache,
                tracer=self.tracer,
            )
        except asyncio.CancelledError:
            await asyncio.shield(self._cancelled(job, recorder))
            if self._active[run.id].cancel_reason is None:
                raise  # cancelled from outside (loop shutdown): let it propagate
            return
        except (StepError, ValidationError) as exc:
            await self._conclude(job, recorder, RunStatus.FAILED, error=str(exc))
            return
        except Exception as exc:
            await self._retry_later(job, recorder, exc)
            return
        duration_ms = round((time.perf_counter() - started) * 1000, 3)
        await self._conclude(
            job, recorder, RunStatus.SUCCEEDED, output=output, data={"duration_ms": duration_ms}
        )

    async def _cancelled(self, job: Job, recorder: RunRecorder) -> None:
        reason = self._active[job.run_id].cancel_reason
        if reason == "cancelled on request":
            await self._conclude(job, recorder, RunStatus.CANCELLED, error=reason)
        elif reason == "drain":
            recorder.emit("run.released", data={"reason": "worker draining"})
            await recorder.flush()
            await self.queue.release(job, self.id)
        else:  # the lease is gone: another worker owns the run now
            recorder.emit("run.released", data={"reason": reason or "worker stopped"})
            await recorder.flush()

    async def _retry_later(self, job: Job, recorder: RunRecorder, exc: Exception) -> None:
        error = f"{type(exc).__name__}: {exc}"
        log.warning("run %s attempt %d failed: %s", job.run_id, job.attempts, error)
        delay_s = self.retry_backoff_s * 2 ** (job.attempts - 1) * random.uniform(0.5, 1.0)
        if await self.queue.nack(job, self.id, delay_s=delay_s, error=error):
            recorder.emit("run.retrying", data={"attempt": job.attempts, "delay_s": delay_s})
            await recorder.flush()
        else:
            await self._conclude(job, recorder, RunStatus.DEAD, error=error, dequeued=True)

    async def _conclude(
        self,
        job: Job,
        recorder: RunRecorder,
        status: RunStatus,
        *,
        output: Any = None,
        error: str | None = None,
        data: dict[str, Any] | None = None,
        bury: bool = False,
        dequeued: bool = False,
    ) -> None:
        """Record the run's last step events, then its terminal status and terminal event
        together, then let go of the job, in that order: a follower that sees the status finds
        every event written, and a crash leaves the run either live or ended with its event."""
        await recorder.flush()
        event_data = dict(data or {})
        if error is not None:
            event_data["error"] = error
        _, ended = await self.store.finish_run(
            job.run_id, status, output=output, error=error, event_data=event_data or None
        )
        if not ended:
            # Another worker ended it first (this one had lost its lease and ran it too): the
            # run has its one terminal event already; only let go of the job.
            log.warning("run %s was already ended elsewhere; not ending it again", job.run_id)
            if not dequeued:
                await self.queue.ack(job, self.id)
            return
        if self.hub is not None:
            self.hub.notify(job.run_id)
        if self.tracer is not None:  # on the run's span, when this is inside one
            failed = status in (RunStatus.FAILED, RunStatus.DEAD)
            outcome = {tracing.RUN_STATUS: status.value}
            self.tracer.annotate(outcome, error=error if failed else None)
        active = self._active.get(job.run_id)
        if self.stats is not None and active is not None and active.workflow is not None:
            seconds = None if active.started is None else time.perf_counter() - active.started
            self.stats.run_finished(active.workflow, status.value, seconds)
        if bury:
            await self.queue.bury(job, self.id, error=error or status.value)
        elif not dequeued:
            await self.queue.ack(job, self.id)
