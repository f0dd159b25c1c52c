"""Run events: recorded in order off the step's critical path, and followed live."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

from surgeflow.store.base import Store
from surgeflow.workflow.runner import StepEvent

TERMINAL_EVENTS = frozenset({"run.succeeded", "run.failed", "run.cancelled", "run.dead"})


class EventHub:
    """Wakes the followers of a run in this process when its events were written.

    With ``publish`` set (a `surgeflow.eventbus.RedisEventBus`), it also tells every other
    process sharing that Redis; without it, followers in other processes re-read the store
    every second.
    """

    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self.publish: Callable[[str], None] | None = None

    def notify(self, run_id: str) -> None:
        """Events of ``run_id`` were written here: wake its followers, here and elsewhere."""
        self.notify_local(run_id)
        if self.publish is not None:
            self.publish(run_id)

    def notify_local(self, run_id: str) -> None:
        """Wake the followers of ``run_id`` in this process only."""
        for waiter in self._waiters.pop(run_id, ()):
            if not waiter.done():
                waiter.set_result(None)

    def subscribe(self, run_id: str) -> asyncio.Future[None]:
        """A future resolved by the next ``notify(run_id)``.

        Subscribe before reading the store, so that a write between the read and the wait is not
        missed; `unsubscribe` when done with it.
        """
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(run_id, set()).add(waiter)
        return waiter

    def unsubscribe(self, run_id: str, waiter: asyncio.Future[None]) -> None:
        waiter.cancel()
        waiters = self._waiters.get(run_id)
        if waiters is not None:
            waiters.discard(waiter)
            if not waiters:
                del self._waiters[run_id]

    def __repr__(self) -> str:
        return f"<EventHub runs_followed={len(self._waiters)}>"


class RunRecorder:
    """Appends one run's events to the store in the order they happened.

    ``emit`` never waits: a single writer task drains the backlog, so a step does not pay a store
    round-trip for its events. ``flush`` waits until everything emitted so far is written.
    """

    def __init__(self, store: Store, run_id: str, hub: EventHub | None = None) -> None:
        self._store = store
        self._run_id = run_id
        self._hub = hub
        self._backlog: deque[tuple[str, str | None, dict[str, Any] | None]] = deque()
        self._writer: asyncio.Task[None] | None = None

    def emit(
        self, type: str, *, step: str | None = None, data: dict[str, Any] | None = None
    ) -> None:
        self._backlog.append((type, step, data))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain())

    def step_event(self, event: StepEvent) -> None:
        """An `EventHandler` for `Workflow.run`."""
        self.emit(event.type, step=event.step, data=event.data())

    async def _drain(self) -> None:
        while self._backlog:
            # Everything emitted meanwhile goes in one write (a quick step's started and
            # finished events, say), in order.
            batch = list(self._backlog)
            self._backlog.clear()
            if len(batch) == 1:
                type, step, data = batch[0]
                await self._store.append_event(self._run_id, type, step=step, data=data)
            else:
                await self._store.append_events(self._run_id, batch)
            if self._hub is not None:
                self._hub.notify(self._run_id)

    async def flush(self) -> None:
        # Shielded: a run being cancelled still records why it stopped.
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)
        if self._writer is not None and self._writer.done() and not self._writer.cancelled():
            self._writer.result()
