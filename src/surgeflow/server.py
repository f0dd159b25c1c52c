"""Run the gateway (or any ASGI app) on uvicorn (uvloop + httptools) next to an open service."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import uvicorn

from surgeflow.gateway import Gateway
from surgeflow.gateway.http import send_bytes, send_json
from surgeflow.gateway.tracing import TracedGateway
from surgeflow.metrics import METRICS_CONTENT_TYPE
from surgeflow.service import Service
from surgeflow.worker import Worker, WorkerState

log = logging.getLogger("surgeflow.server")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # signals belong to the caller, who drains the worker as well as the server


ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]


def _config(
    app: ASGIApp, host: str, port: int, graceful_timeout_s: int, fd: int | None = None
) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        fd=fd,  # a listening socket shared by several processes (serve --workers N)
        loop="none",  # the caller's loop (uvloop when started through `surgeflow`)
        http="httptools",
        lifespan="off",
        access_log=False,  # one line per request through logging costs more than the request
        log_level="warning",
        server_header=False,
        timeout_graceful_shutdown=graceful_timeout_s,
    )


@contextlib.asynccontextmanager
async def running_app(
    app: ASGIApp,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    graceful_timeout_s: int = 10,
    fd: int | None = None,
) -> AsyncIterator[str]:
    """Serve ``app`` in the background; yields its base URL (``port=0`` picks a free port; a
    listening socket's ``fd`` replaces host and port).

    On exit it stops accepting, then waits up to ``graceful_timeout_s`` for requests under way.
    """
    server = _Server(_config(app, host, port, graceful_timeout_s, fd))
    task = asyncio.create_task(server.serve(), name=type(app).__name__)
    while not server.started:
        if task.done():
            task.result()  # raises why it could not start (port in use …)
            raise RuntimeError(f"{type(app).__name__} stopped before it started")
        await asyncio.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()
    try:
        yield f"http://{bound[0]}:{bound[1]}"
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def running_gateway(
    service: Service, host: str = "127.0.0.1", port: int = 0, *, fd: int | None = None
) -> AsyncIterator[str]:
    """Serve ``service`` in the background; yields its base URL (``port=0`` picks a free port)."""
    async with running_app(gateway_app(service), host, port, fd=fd) as url:
        yield url


def gateway_app(service: Service) -> ASGIApp:
    """The service's gateway; with tracing on, inside its request span (off: nothing around it)."""
    gateway = Gateway(service)
    tracer = service.tracer
    return gateway if tracer is None else TracedGateway(gateway, tracer)


class WorkerApp:
    """The little HTTP a `surgeflow worker` process answers (``--metrics-port``), for the
    places a worker shares no ``metrics_dir`` with a gateway (a Kubernetes pod):

    - ``GET /metrics``: this process's figures (runs, steps, queue), as a gateway's are;
    - ``GET /healthz``: 200 while the worker leases or drains runs, 503 once it stopped;
    - ``GET /readyz``: whether the store and the queue answer, as on a gateway.
    """

    def __init__(self, service: Service, worker: Worker) -> None:
        self.service = service
        self.worker = worker

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if method not in ("GET", "HEAD"):
            await send_json(send, 405, {"error": f"{method} is not allowed here"})
        elif path == "/metrics":
            body = await self.service.metrics.exposition()
            headers = [(b"content-type", METRICS_CONTENT_TYPE.encode())]
            await send_bytes(send, 200, body, headers)
        elif path == "/healthz":
            alive = self.worker.state is not WorkerState.STOPPED
            state = {"status": "ok" if alive else "stopped", "worker": self.worker.state.value}
            await send_json(send, 200 if alive else 503, state)
        elif path == "/readyz":
            ready, checks = await self.service.readiness()
            await send_json(send, 200 if ready else 503, {"ready": ready, "checks": checks})
        else:
            await send_json(send, 404, {"error": f"no route {path}: try /metrics, /healthz"})


async def serve_forever(
    service: Service, host: str, port: int, *, fd: int | None = None, quiet: bool = False
) -> None:
    """Serve until SIGINT or SIGTERM, then stop taking requests and drain the worker
    (``quiet``: one of several processes on a shared socket; the supervisor speaks)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with running_gateway(service, host, port, fd=fd) as url:
        log.warning("surgeflow gateway listening on %s", url)
        if not quiet:
            print(f"surgeflow is serving on {url}  (Ctrl-C to stop)", flush=True)
            if service.settings.server.dashboard:
                print(f"live dashboard: {url}/dashboard", flush=True)
        await stop.wait()
        if not quiet:
            print("stopping: draining requests and runs …", flush=True)
