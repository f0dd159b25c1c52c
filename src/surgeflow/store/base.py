"""The Store protocol: runs, step checkpoints, run events and API keys."""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import msgspec


class RunStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DEAD = "dead"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.DEAD})


class Run(msgspec.Struct, kw_only=True):
    """A durable workflow run. Times are Unix seconds (float)."""

    id: str
    workflow: str
    status: RunStatus
    input: dict[str, Any]
    output: Any = None
    error: str | None = None
    idempotency_key: str | None = None
    key_id: str | None = None
    cancel_requested: bool = False
    attempts: int = 0
    created_at: float
    updated_at: float
    started_at: float | None = None
    finished_at: float | None = None


class RunEvent(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One thing that happened to a run; ``seq`` counts from 1 per run."""

    run_id: str
    seq: int
    type: str
    at: float
    step: str | None = None
    data: dict[str, Any] | None = None


class ApiKey(msgspec.Struct, kw_only=True):
    """A stored API key: its public id and the SHA-256 of its secret (never the secret)."""

    id: str
    name: str
    hash: str
    created_at: float
    revoked_at: float | None = None
    admin: bool = False  # may call the /v1/admin routes
    cache: bool = True  # False: this key's requests never read or write the response cache


# The data of a run's run.started event, from the run as it starts and its checkpoints (or None).
StartedEvent = Callable[[Run, dict[str, bytes]], dict[str, Any] | None]


class Store(Protocol):
    """Durable state. Every method is safe to call concurrently from many tasks."""

    async def create_run(
        self,
        workflow: str,
        input: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        key_id: str | None = None,
        queued_event: dict[str, Any] | None = None,
    ) -> tuple[Run, bool]:
        """Create a queued run; with a known idempotency key return that run and ``False``.
        With ``queued_event``, the new run's first event, ``run.queued`` with that data, is
        written with it (one write instead of two)."""
        ...

    async def get_run(self, run_id: str) -> Run:
        """The run, or `NotFound`."""
        ...

    async def list_runs(
        self,
        *,
        statuses: frozenset[RunStatus] | None = None,
        limit: int = 100,
        before: str | None = None,
    ) -> list[Run]:
        """Runs, newest first, optionally only those in ``statuses``; with ``before`` (the id of
        the last run of the previous page), the page after it. Pages by key, so runs created
        meanwhile never shift a page."""
        ...

    async def start_run(
        self, run_id: str, *, started_event: StartedEvent | None = None
    ) -> tuple[Run, dict[str, bytes]]:
        """Mark a live run running (``attempts`` + 1, ``started_at`` kept from the first start)
        and return it with its checkpoints, in one round trip; a terminal run comes back
        unchanged, with no checkpoints. `NotFound` for an unknown run.

        ``started_event(run, checkpoints)``, called once the run started, gives the data of a
        ``run.started`` event appended with it (``None``: no event)."""
        ...

    async def finish_run(
        self,
        run_id: str,
        status: RunStatus,
        *,
        output: Any = None,
        error: str | None = None,
        event_data: dict[str, Any] | None = None,
    ) -> tuple[Run, bool]:
        """Move a run to a terminal status and append its terminal event (``run.<status>``,
        with ``event_data``) in one transaction: the run, and whether this call ended it. A run
        that is already terminal is left as it is and gets no event (``False``): of two workers
        that both executed a run (one had lost its lease), exactly one ends it, and a crash
        can never leave a run ended without its terminal event."""
        ...

    async def request_cancel(self, run_id: str) -> Run:
        """Cancel a queued run at once; flag a running one (``cancel_requested``)."""
        ...

    async def save_checkpoint(self, run_id: str, key: str, output: bytes) -> None:
        """Remember the JSON output of the finished step ``key`` (overwrites)."""
        ...

    async def load_checkpoints(self, run_id: str) -> dict[str, bytes]:
        """Every saved step output of the run, by step key."""
        ...

    async def append_event(
        self,
        run_id: str,
        type: str,
        *,
        step: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> RunEvent:
        """Append an event; its ``seq`` is one more than the run's last."""
        ...

    async def append_events(
        self, run_id: str, events: Sequence[tuple[str, str | None, dict[str, Any] | None]]
    ) -> list[RunEvent]:
        """Append ``events`` (type, step, data), in order, in one write."""
        ...

    async def list_events(self, run_id: str, *, after_seq: int = 0) -> list[RunEvent]:
        """The run's events with ``seq > after_seq``, in order."""
        ...

    async def add_api_key(self, key: ApiKey) -> None: ...

    async def list_api_keys(self) -> list[ApiKey]: ...

    async def revoke_api_key(self, key_id: str) -> ApiKey:
        """Mark a key revoked, or `NotFound`."""
        ...

    async def aclose(self) -> None: ...
