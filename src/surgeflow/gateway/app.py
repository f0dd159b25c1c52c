"""The gateway's ASGI app: routing, authentication and error translation around the handlers.

Written against ASGI directly rather than on a framework: the chat route is the hot path, and every
layer on it costs throughput (see docs/decisions/0002-gateway-on-raw-asgi.md).
"""

from __future__ import annotations

import logging
import math
import re
import secrets
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from surgeflow import errors, logs
from surgeflow.cache.keys import validate_tags
from surgeflow.gateway import chat, dashboard, runs
from surgeflow.gateway.http import (
    ClientGone,
    HTTPError,
    Message,
    Receive,
    Request,
    Scope,
    Send,
    http_error,
    lifespan,
    send_bytes,
    send_error,
    send_json,
)
from surgeflow.gateway.openapi import openapi_document
from surgeflow.limits import Decision
from surgeflow.metrics import METRICS_CONTENT_TYPE

if TYPE_CHECKING:
    from surgeflow.service import Service

log = logging.getLogger("surgeflow.gateway")

Handler = Callable[["Service", Request, Send], Awaitable[None]]

_BEARER = b"bearer "


class Gateway:
    """The ASGI application of ``surgeflow serve``."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.auth_enabled = service.settings.auth.enabled
        self._exact: dict[tuple[str, str], Handler] = {
            ("POST", "/v1/chat/completions"): chat.completions,
            ("GET", "/v1/models"): chat.models,
            ("GET", "/v1/workflows"): runs.list_workflows,
            ("GET", "/v1/admin/endpoints"): _admin_endpoints,
            ("DELETE", "/v1/admin/cache"): _admin_clear_cache,
        }
        self._public: dict[tuple[str, str], Handler] = {
            ("GET", "/healthz"): _healthz,
            ("GET", "/readyz"): _readyz,
            ("GET", "/openapi.json"): _openapi,
            ("GET", "/metrics"): _metrics,
        }
        if service.settings.server.dashboard:
            self._public[("GET", "/dashboard")] = dashboard.page
            self._public[("GET", "/dashboard/data")] = dashboard.data
        # The route label of each handler's requests in the metrics: a template, never a path
        # with an id in it.
        self._templates: dict[Handler, str] = {
            handler: path for (_, path), handler in (self._exact | self._public).items()
        }
        self._templates.update(
            {
                runs.invoke: "/v1/workflows/{name}/invoke",
                runs.submit: "/v1/workflows/{name}/runs",
                runs.get_run: "/v1/runs/{run_id}",
                runs.cancel_run: "/v1/runs/{run_id}",
                runs.run_events: "/v1/runs/{run_id}/events",
            }
        )
        self._stats = service.metrics.requests if service.settings.server.metrics else None
        self._access = service.settings.log.access
        self._max_in_flight = service.settings.server.max_in_flight
        self._in_flight = 0  # for admission control, counted whether or not metrics are on
        self._limiter = service.limiter if service.limiter.enabled else None

    def __repr__(self) -> str:
        return f"<Gateway auth={'on' if self.auth_enabled else 'off'} service={self.service!r}>"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await lifespan(receive, send)
            return
        request = Request(scope, receive)
        request_id = _request_id(request)
        sent = _ResponseTracker(send, request_id)
        context = logs.bind_request(request_id)
        stats = self._stats
        if stats is not None:
            stats.in_flight += 1
        self._in_flight += 1
        started = time.perf_counter()
        route = "unmatched"
        try:
            handler = self._route(request)
            if handler is None:
                return await send_error(sent, self._no_route(request))
            route = self._templates.get(handler, "other")
            if request.key_id is None:
                if self._max_in_flight is not None and self._in_flight > self._max_in_flight:
                    return await send_error(sent, self._overloaded())
                if self.auth_enabled:
                    handler = self._authenticate(request, handler)
                if self._limiter is not None:
                    decision = await self._limiter.acquire(request.key_id or "anonymous")
                    if not decision.allowed:
                        return await send_error(sent, _rate_limited(decision))
            await handler(self.service, request, sent)
        except HTTPError as exc:
            if not sent.started:
                await send_error(sent, exc)
        except ClientGone:
            pass
        except errors.SurgeflowError as exc:
            if not sent.started:
                await send_error(sent, http_error(exc))
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if not sent.started:
                await send_error(
                    sent,
                    HTTPError(500, "internal_error", "the gateway failed; the error was logged"),
                )
        finally:
            # 499: the client went away before a response started (nginx's convention).
            status = sent.status or 499
            elapsed = time.perf_counter() - started
            self._in_flight -= 1
            if stats is not None:
                stats.in_flight -= 1
                stats.observe(route, scope["method"], status, elapsed)
                key_id = request.key_id
                if key_id is not None and key_id != "public":
                    stats.by_key[key_id] = stats.by_key.get(key_id, 0) + 1
            if self._access:
                logs.access(
                    f"{scope['method']} {scope['path']} {status}",
                    {"route": route, "status": status, "duration_ms": elapsed * 1000},
                )
            logs.unbind(context)

    def route_template(self, scope: Scope) -> str | None:
        """The route template a request matches (``/v1/runs/{run_id}``), None if none does."""
        handler = self._route(Request(scope, _no_receive))
        return None if handler is None else self._templates.get(handler, "other")

    def _route(self, request: Request) -> Handler | None:
        method: str = request.scope["method"]
        path: str = request.scope["path"]
        handler = self._exact.get((method, path))
        if handler is not None:
            return handler
        handler = self._public.get((method, path))
        if handler is not None:
            request.key_id = "public"
            return handler
        parts = path.strip("/").split("/")
        if len(parts) == 4 and parts[:2] == ["v1", "workflows"]:
            request.params["name"] = parts[2]
            if parts[3] == "invoke" and method == "POST":
                return runs.invoke
            if parts[3] == "runs" and method == "POST":
                return runs.submit
        elif len(parts) in (3, 4) and parts[:2] == ["v1", "runs"]:
            request.params["run_id"] = parts[2]
            if len(parts) == 3 and method == "GET":
                return runs.get_run
            if len(parts) == 3 and method == "DELETE":
                return runs.cancel_run
            if len(parts) == 4 and parts[3] == "events" and method == "GET":
                return runs.run_events
        return None

    def _no_route(self, request: Request) -> HTTPError:
        method, path = request.scope["method"], request.scope["path"]
        request.params.clear()
        for other in ("GET", "POST", "DELETE"):
            if other != method:
                probe = Request({**request.scope, "method": other}, request.receive)
                if self._route(probe) is not None:
                    return HTTPError(
                        405,
                        "method_not_allowed",
                        f"{method} is not allowed on {path}; try {other}",
                        headers=[(b"allow", other.encode())],
                    )
        return HTTPError(404, "not_found", f"no route {method} {path}; see GET /openapi.json")

    def _overloaded(self) -> HTTPError:
        """Admission control: refuse at once, before the request costs anything upstream."""
        if self._stats is not None:
            self._stats.admission_rejections += 1
        return HTTPError(
            503,
            "overloaded",
            f"the gateway has {self._max_in_flight} requests in flight (server.max_in_flight);"
            " retry shortly",
            headers=[(b"retry-after", b"1")],
        )

    def _authenticate(self, request: Request, handler: Handler) -> Handler:
        header = request.header(b"authorization")
        if header is None:
            raise HTTPError(
                401,
                "authentication_error",
                "missing API key: send 'Authorization: Bearer <key>' "
                "(create one with `surgeflow keys create`)",
            )
        if header[:7].lower() != _BEARER:
            raise HTTPError(
                401, "authentication_error", "the Authorization header must be 'Bearer <key>'"
            )
        key_id = self.service.keys.lookup(header[7:].strip().decode("latin-1"))
        if key_id is None:
            raise HTTPError(401, "authentication_error", "unknown or revoked API key")
        request.key_id = key_id
        logs.bind(key_id=key_id)
        return handler


def _rate_limited(decision: Decision) -> HTTPError:
    which = "this API key's" if decision.scope == "key" else "the service's"
    wait_s = max(1, math.ceil(decision.retry_after_s))
    return HTTPError(
        429,
        "rate_limited",
        f"{which} rate limit is reached (limits.{decision.scope}_rps); retry in {wait_s} s",
        headers=[(b"retry-after", str(wait_s).encode())],
    )


class _ResponseTracker:
    """Wraps ``send`` to know whether the response has started (then no error body can follow)
    and with which status."""

    __slots__ = ("_request_id", "_send", "started", "status")

    def __init__(self, send: Send, request_id: bytes) -> None:
        self._send = send
        self._request_id = request_id
        self.started = False
        self.status = 0

    async def __call__(self, message: Message) -> None:
        if not self.started:
            self.started = True
            self.status = message.get("status", 0)
            # Every response names its request, as the log lines about it do.
            headers = [*message.get("headers", ()), (b"x-request-id", self._request_id)]
            message = {**message, "headers": headers}
        await self._send(message)


async def _no_receive() -> Message:
    raise RuntimeError("a routing probe reads no body")


def _request_id(request: Request) -> bytes:
    """The caller's X-Request-Id when it is a sane token, else a new one."""
    given = request.header(b"x-request-id")
    if given is not None and 0 < len(given) <= 64 and _TOKEN.fullmatch(given):
        return given
    return secrets.token_hex(8).encode()


_TOKEN = re.compile(rb"[A-Za-z0-9._:-]+")


def _require_admin(service: Service, request: Request) -> None:
    if service.settings.auth.enabled and not service.keys.is_admin(request.key_id or ""):
        raise HTTPError(
            403,
            "permission_error",
            "this route needs an admin key (`surgeflow keys create --admin`)",
        )


async def _admin_endpoints(service: Service, request: Request, send: Send) -> None:
    _require_admin(service, request)
    await send_json(send, 200, {"object": "list", "data": service.models.snapshot()})


async def _admin_clear_cache(service: Service, request: Request, send: Send) -> None:
    """Invalidate cached answers: one by ``?key=``, those stored with ``?tag=``, those whose key
    starts with ``?prefix=`` (``chat:<key id>:`` for one tenant, ``chat:<key id>:<model>:`` for
    one of its models), or, with none of them, all."""
    _require_admin(service, request)
    query: dict[str, list[str]] = {}
    for pair in request.scope.get("query_string", b"").decode("latin-1").split("&"):
        name, _, value = pair.partition("=")  # unquoted as before: a '+' stays a '+'
        query.setdefault(urllib.parse.unquote(name), []).append(urllib.parse.unquote(value))
    given = [name for name in ("key", "tag", "prefix") if name in query]
    if len(given) > 1 or any(len(query[name]) > 1 for name in given):
        raise HTTPError(
            400,
            "invalid_request_error",
            "give exactly one of ?key=, ?tag= or ?prefix= (or none, to clear everything)",
        )
    selector = given[0] if given else "prefix"
    value = query[selector][0] if given else ""
    if selector == "key":
        deleted = int(await service.cache.delete(value))
    elif selector == "tag":
        try:
            validate_tags((value,))
        except ValueError as exc:
            raise HTTPError(400, "invalid_request_error", str(exc)) from None
        deleted = await service.cache.invalidate_tag(value)
    else:
        deleted = await service.cache.clear(value)
    await send_json(send, 200, {"object": "cache.cleared", selector: value, "deleted": deleted})


async def _metrics(service: Service, request: Request, send: Send) -> None:
    """Prometheus text exposition of this service's metrics (no key: keep the port private)."""
    body = await service.metrics.exposition()
    await send_bytes(send, 200, body, [(b"content-type", METRICS_CONTENT_TYPE.encode())])


async def _healthz(service: Service, request: Request, send: Send) -> None:
    await send_json(send, 200, {"status": "ok"})


async def _readyz(service: Service, request: Request, send: Send) -> None:
    ready, checks = await service.readiness()
    await send_json(send, 200 if ready else 503, {"ready": ready, "checks": checks})


async def _openapi(service: Service, request: Request, send: Send) -> None:
    await send_json(send, 200, openapi_document(service))
