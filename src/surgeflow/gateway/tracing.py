"""The gateway's request span: an ASGI wrapper around `Gateway`, there only when tracing is on."""

from __future__ import annotations

from typing import TYPE_CHECKING

from surgeflow import logs, tracing
from surgeflow.gateway.http import Message, Receive, Scope, Send

if TYPE_CHECKING:
    from surgeflow.gateway.app import Gateway
    from surgeflow.tracing import Tracer


class TracedGateway:
    """``gateway`` with one server span per HTTP request, named by its route template
    (``POST /v1/chat/completions``, ``GET /v1/runs/{run_id}``), joined to the caller's trace
    when the request carries a ``traceparent``. A 5xx answer marks the span failed."""

    def __init__(self, gateway: Gateway, tracer: Tracer) -> None:
        self.gateway = gateway
        self.tracer = tracer

    def __repr__(self) -> str:
        return f"<TracedGateway {self.gateway!r}>"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.gateway(scope, receive, send)
        method: str = scope["method"]
        route = self.gateway.route_template(scope)
        attributes = {tracing.HTTP_METHOD: method, tracing.URL_PATH: scope["path"]}
        if route is not None:
            attributes[tracing.HTTP_ROUTE] = route
        tracer = self.tracer
        parent = tracer.extract_headers(scope["headers"])
        name = method if route is None else f"{method} {route}"
        with tracer.span(name, attributes, kind="server", parent=parent) as span:
            status = 0
            context = span.get_span_context()
            if context.is_valid:  # log lines about this request name its trace
                logs.bind(trace_id=f"{context.trace_id:032x}")

            async def traced_send(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message.get("status", 0)
                    for header, value in message.get("headers", ()):
                        if header == b"x-request-id":
                            span.set_attribute(tracing.REQUEST_ID, value.decode("latin-1"))
                await send(message)

            try:
                await self.gateway(scope, receive, traced_send)
            finally:
                # 499: the client went away before a response started, as the gateway counts it.
                status = status or 499
                span.set_attribute(tracing.HTTP_STATUS_CODE, status)
                if status >= 500:
                    tracer.fail(span, f"HTTP {status}")
