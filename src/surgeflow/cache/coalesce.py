"""Request coalescing: N identical concurrent misses make one upstream call and share its result."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class _Flight(Generic[T]):
    __slots__ = ("task", "waiters")

    def __init__(self, task: asyncio.Task[T]) -> None:
        self.task = task
        self.waiters = 0


class Coalescer(Generic[T]):
    """Runs one call per key at a time; concurrent callers with the same key wait for it.

    The call runs in a task of its own, so the caller that started it can be cancelled without
    stranding the others: the call is cancelled only when every caller waiting on it is gone.
    Every caller gets the call's result, or its exception. ``calls`` counts the calls made (one
    per leader), ``coalesced`` the callers that waited on another's call.
    """

    def __init__(self) -> None:
        self._flights: dict[str, _Flight[T]] = {}
        self.calls = 0
        self.coalesced = 0

    def __repr__(self) -> str:
        return (
            f"<Coalescer in_flight={len(self._flights)} calls={self.calls} "
            f"coalesced={self.coalesced}>"
        )

    def stats(self) -> dict[str, int | float]:
        return {"leaders": self.calls, "coalesced": self.coalesced, "in_flight": len(self._flights)}

    async def run(self, key: str, call: Callable[[], Awaitable[T]]) -> T:
        flight = self._flights.get(key)
        if flight is None:
            self.calls += 1
            flight = _Flight(asyncio.ensure_future(call()))
            self._flights[key] = flight
            flight.task.add_done_callback(lambda _: self._land(key, flight))
        else:
            self.coalesced += 1
        flight.waiters += 1
        try:
            return await asyncio.shield(flight.task)
        finally:
            flight.waiters -= 1
            if flight.waiters == 0 and not flight.task.done():
                flight.task.cancel()  # nobody wants the answer any more

    async def aclose(self) -> None:
        """Cancel every call in flight (its waiters get `asyncio.CancelledError`) and wait."""
        tasks = [flight.task for flight in self._flights.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _land(self, key: str, flight: _Flight[T]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.task.cancelled():
            flight.task.exception()  # retrieved here, so an unawaited failure is not reported
