"""Workflow routes: list, invoke inline, submit durable runs, read, cancel and follow them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import msgspec

from surgeflow import errors
from surgeflow.events import TERMINAL_EVENTS
from surgeflow.gateway.http import SSE_HEADERS, HTTPError, Request, Send, send_bytes, send_json
from surgeflow.store.base import Run

if TYPE_CHECKING:
    from surgeflow.service import Service

_encode = msgspec.json.encode
_KEEPALIVE_S = 15.0
_POLL_S = 1.0  # how often a follower re-reads the store when no in-process notice arrives


class RunBody(msgspec.Struct, forbid_unknown_fields=True):
    """The body of invoke and submit: ``{"input": {...}}``."""

    input: dict[str, Any] = msgspec.field(default_factory=dict)


def run_view(run: Run) -> dict[str, Any]:
    """A run as clients see it."""
    return {
        "id": run.id,
        "object": "workflow.run",
        "workflow": run.workflow,
        "status": run.status.value,
        "input": run.input,
        "output": run.output,
        "error": run.error,
        "attempts": run.attempts,
        "cancel_requested": run.cancel_requested,
        "created_at": run.created_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
    }


async def list_workflows(service: Service, request: Request, send: Send) -> None:
    data = [
        {
            "name": workflow.name,
            "description": workflow.description,
            "steps": list(workflow.steps),
            "input_schema": workflow.input_schema(),
        }
        for workflow in service.workflows.values()
    ]
    await send_json(send, 200, {"object": "list", "data": data})


async def invoke(service: Service, request: Request, send: Send) -> None:
    workflow = service.workflow(request.params["name"])
    body: RunBody = await request.json(service.settings.server.max_body_bytes, RunBody)
    parsed = workflow.parse_input(body.input)
    timeout_s = service.settings.server.invoke_timeout_s
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            output = await service.invoke(workflow, parsed)
    except TimeoutError:
        raise HTTPError(
            504,
            "timeout",
            f"workflow {workflow.name!r} did not finish within {timeout_s} s; "
            f"submit it as a durable run (POST /v1/workflows/{workflow.name}/runs) instead",
        ) from None
    except errors.StepError as exc:
        result: dict[str, Any] = {"status": "failed", "output": None, "error": str(exc)}
    else:
        result = {"status": "succeeded", "output": output, "error": None}
    result = {
        "object": "workflow.invocation",
        "workflow": workflow.name,
        **result,
        "duration_ms": round((time.perf_counter() - started) * 1000, 3),
    }
    await send_json(send, 200, result)


async def submit(service: Service, request: Request, send: Send) -> None:
    workflow = service.workflow(request.params["name"])
    body: RunBody = await request.json(service.settings.server.max_body_bytes, RunBody)
    workflow.parse_input(body.input)  # reject bad input now, not in a worker minutes later
    key = request.header(b"idempotency-key")
    if key is not None and not 0 < len(key) <= 255:
        raise HTTPError(400, "invalid_request_error", "Idempotency-Key must be 1 to 255 bytes")
    run, created = await service.submit(
        workflow.name,
        body.input,
        idempotency_key=key.decode("latin-1") if key is not None else None,
        key_id=request.key_id,
    )
    location = f"/v1/runs/{run.id}".encode()
    headers = [(b"content-type", b"application/json"), (b"location", location)]
    await send_bytes(send, 202 if created else 200, _encode(run_view(run)), headers)


async def get_run(service: Service, request: Request, send: Send) -> None:
    run = await service.store.get_run(request.params["run_id"])
    await send_json(send, 200, run_view(run))


async def cancel_run(service: Service, request: Request, send: Send) -> None:
    run = await service.cancel(request.params["run_id"])
    await send_json(send, 202 if not run.status.terminal else 200, run_view(run))


async def run_events(service: Service, request: Request, send: Send) -> None:
    """Server-sent events: every past event of the run, then new ones until the run ends."""
    run_id = request.params["run_id"]
    await service.store.get_run(run_id)  # 404 before the stream starts
    after = _last_event_id(request)
    await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
    disconnected = asyncio.ensure_future(_wait_disconnect(request))
    try:
        async for payload in _follow(service, run_id, after, disconnected):
            await send({"type": "http.response.body", "body": payload, "more_body": True})
    finally:
        disconnected.cancel()
        await asyncio.gather(disconnected, return_exceptions=True)
        await send({"type": "http.response.body", "body": b""})


async def _follow(
    service: Service, run_id: str, after: int, disconnected: asyncio.Future[None]
) -> AsyncIterator[bytes]:
    idle_s = 0.0
    quiet_after_end = 0
    timed_out = False
    while not disconnected.done():
        # Subscribe before reading, so an event written in between still wakes us.
        notified = service.hub.subscribe(run_id)
        try:
            events = await service.store.list_events(run_id, after_seq=after)
            for event in events:
                after = event.seq
                yield b"id: %d\nevent: %s\ndata: %s\n\n" % (
                    event.seq,
                    event.type.encode(),
                    _encode(event),
                )
                if event.type in TERMINAL_EVENTS:
                    return
            if events:
                idle_s = 0.0
                quiet_after_end = 0
            elif timed_out:
                # A run ends with a terminal event, written just after its terminal status; one
                # whose writer died in between still ends the stream once the store has said
                # that it is over at two polls in a row with no event between them.
                run = await service.store.get_run(run_id)
                quiet_after_end = quiet_after_end + 1 if run.status.terminal else 0
                if quiet_after_end >= 2:
                    return
            if idle_s >= _KEEPALIVE_S:
                yield b": keepalive\n\n"
                idle_s = 0.0
            waited = time.monotonic()
            done, _ = await asyncio.wait(
                [disconnected, notified], timeout=_POLL_S, return_when=asyncio.FIRST_COMPLETED
            )
            timed_out = not done
            idle_s += time.monotonic() - waited
        finally:
            service.hub.unsubscribe(run_id, notified)


def _last_event_id(request: Request) -> int:
    raw = request.header(b"last-event-id") or (request.query("after") or "").encode()
    return int(raw) if raw.isdigit() else 0


async def _wait_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
