"""OpenTelemetry tracing (the ``tracing`` extra): the only module that imports opentelemetry.

A `Service` with ``tracing.enabled`` owns one `Tracing`: its own ``TracerProvider`` (never the
global one, so services in one process do not mix), a ``ParentBased(TraceIdRatioBased)`` sampler
and a ``BatchSpanProcessor`` in front of the chosen exporter. The parts that trace are handed its
`Tracer`; where tracing is off they are handed ``None`` and skip every span on a single ``is None``
test, so a gateway without tracing makes no span objects and touches no context.

Spans (names and attributes are defined here, as metric names are in `surgeflow.metrics`):

- ``POST /v1/chat/completions`` (server): one gateway request, joined to the caller's trace when it
  sends ``traceparent`` (`surgeflow.gateway.tracing`);
- ``cache lookup``: the exact (and semantic) chat cache, with the status it answered;
- ``chat <model>`` (client): one attempt against one endpoint; HTTP endpoints receive
  ``traceparent`` (and ``tracestate``) with this span as parent;
- ``queue wait`` and ``run <workflow>``: a durable run's time in the queue and its execution,
  joined to the trace of the request that submitted it;
- ``step <key>``: one attempt of one workflow step.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from surgeflow.config import TracingSettings
from surgeflow.errors import ConfigError

if TYPE_CHECKING:
    from contextvars import Token

    from opentelemetry.context import Context as Context
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.trace import Span as Span

INSTALL_HINT = "pip install 'surgeflow[tracing]'"

# Span attribute names, in one place. OpenTelemetry's semantic conventions where one fits.
HTTP_METHOD = "http.method"
HTTP_ROUTE = "http.route"
HTTP_STATUS_CODE = "http.status_code"
URL_PATH = "url.path"
REQUEST_ID = "surgeflow.request_id"
GEN_AI_OPERATION = "gen_ai.operation.name"
GEN_AI_MODEL = "gen_ai.request.model"
GEN_AI_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
CACHE_STATUS = "surgeflow.cache.status"  # hit | stale | semantic | miss
ENDPOINT = "surgeflow.endpoint"
ATTEMPT = "surgeflow.attempt"  # 1 for the first call, 2 for the first retry …
HEDGE = "surgeflow.hedge"  # true on the hedged second call of an attempt
OUTCOME = "surgeflow.outcome"  # ok | rate_limited | timeout | unavailable | overloaded | error …
UPSTREAM_STATUS = "surgeflow.upstream.status_code"
STREAM = "surgeflow.stream"
WORKFLOW = "surgeflow.workflow"
STEP = "surgeflow.step"
STEP_KEY = "surgeflow.step.key"
RUN_ID = "surgeflow.run.id"
RUN_ATTEMPT = "surgeflow.run.attempt"
RUN_STATUS = "surgeflow.run.status"

# The W3C trace context headers a carrier may hold (lower case, as ASGI and aiohttp give them).
_TRACE_HEADERS = (b"traceparent", b"tracestate")

SpanKind = Literal["internal", "server", "client"]
Attributes = Mapping[str, str | bool | int | float]


class Tracer:
    """What surgeflow's parts trace with: spans, and W3C trace context in and out of carriers."""

    __slots__ = (
        "_attach",
        "_current",
        "_detach",
        "_error",
        "_kinds",
        "_propagator",
        "_set_span",
        "_status",
        "_tracer",
        "_use_span",
    )

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace import SpanKind as Kind
        from opentelemetry.trace import Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._tracer = provider.get_tracer("surgeflow")
        # W3C trace context only, whatever the process-wide propagator is set to: the contract
        # with model endpoints and callers is `traceparent`.
        self._propagator = TraceContextTextMapPropagator()
        self._use_span = trace.use_span
        self._set_span = trace.set_span_in_context
        self._attach = context.attach
        self._detach = context.detach
        self._current = trace.get_current_span
        self._kinds = {"internal": Kind.INTERNAL, "server": Kind.SERVER, "client": Kind.CLIENT}
        self._status = Status
        self._error = StatusCode.ERROR

    def __repr__(self) -> str:
        return "<Tracer surgeflow>"

    def span(
        self,
        name: str,
        attributes: Attributes | None = None,
        *,
        kind: SpanKind = "internal",
        parent: Context | None = None,
    ) -> _CurrentSpan:
        """A span, current inside the ``with`` block (its children and outgoing calls see it).

        An exception that leaves the block marks the span failed, unless the block already set
        an error status; a cancellation ends it without one. ``parent``: an extracted context
        (default: the current span, if any).

        Inside a trace that is not sampled the block gets the current (non-recording) span:
        the sampler would drop a child anyway, and the trace context still propagates.
        """
        if parent is None and self._unsampled():
            return _CurrentSpan(self, self._current(), unsampled=True)
        span = self._tracer.start_span(
            name,
            parent,
            self._kinds[kind],
            attributes,
            record_exception=False,
            set_status_on_exception=False,
        )
        return _CurrentSpan(self, span, unsampled=False)

    @contextlib.contextmanager
    def activate(self, span: Span) -> Iterator[None]:
        """Make ``span`` current inside the block (it is not ended on leaving)."""
        with self._use_span(span, record_exception=False, set_status_on_exception=False):
            yield

    def start(
        self,
        name: str,
        attributes: Attributes | None = None,
        *,
        kind: SpanKind = "internal",
        parent: Context | None = None,
        start_time_s: float | None = None,
    ) -> Span:
        """A span that is not made current; the caller ends it (``span.end()``). In a trace that
        is not sampled, the current non-recording span (ending it does nothing)."""
        if parent is None and self._unsampled():
            return self._current()
        return self._tracer.start_span(
            name,
            parent,
            self._kinds[kind],
            attributes,
            start_time=None if start_time_s is None else _ns(start_time_s),
            record_exception=False,
            set_status_on_exception=False,
        )

    def record(
        self,
        name: str,
        start_s: float,
        end_s: float,
        attributes: Attributes | None = None,
        *,
        parent: Context | None = None,
    ) -> None:
        """A span of something already over, from its Unix start and end times (in seconds)."""
        span = self.start(name, attributes, parent=parent, start_time_s=start_s)
        span.end(end_time=_ns(max(start_s, end_s)))

    def _unsampled(self) -> bool:
        """Inside a trace that is not sampled, where the sampler drops every child span."""
        current = self._current()
        return not current.is_recording() and current.get_span_context().is_valid

    def fail(self, span: Span, error: BaseException | str) -> None:
        """Mark ``span`` failed: error status, and the exception as an event when there is one."""
        if isinstance(error, BaseException):
            span.record_exception(error)
            text = str(error)
            error = f"{type(error).__name__}: {text}" if text else type(error).__name__
        span.set_status(self._status(self._error, error))

    def annotate(self, attributes: Attributes, *, error: str | None = None) -> None:
        """Add to the current span (a no-op outside one); ``error`` marks it failed."""
        span = self._current()
        if not span.is_recording():
            return
        span.set_attributes(attributes)
        if error is not None:
            self.fail(span, error)

    def inject(self, headers: Mapping[str, str]) -> dict[str, str]:
        """``headers`` plus ``traceparent`` (and ``tracestate``) of the current span, if any."""
        carrier = dict(headers)
        self._propagator.inject(carrier)
        return carrier

    def carrier(self) -> dict[str, str]:
        """The current span's trace context as headers (empty outside a span), to carry along."""
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier)
        return carrier

    def extract(self, carrier: Mapping[str, Any] | None) -> Context | None:
        """The remote parent in ``carrier``'s ``traceparent``, or None when it holds none (or a
        malformed one: then the span starts a trace of its own)."""
        if not carrier:
            return None
        found = {
            name: value
            for name in ("traceparent", "tracestate")
            if isinstance(value := carrier.get(name), str)
        }
        if "traceparent" not in found:
            return None
        return self._propagator.extract(found)

    def extract_headers(self, headers: Iterable[tuple[bytes, bytes]]) -> Context | None:
        """`extract` from raw ASGI headers (lower-case names)."""
        found = {
            name.decode(): value.decode("latin-1")
            for name, value in headers
            if name in _TRACE_HEADERS
        }
        return self.extract(found)


class _CurrentSpan:
    """`Tracer.span`'s block: a class, not a generator, as it is on every traced call.
    ``unsampled``: ``span`` is the current, non-recording one, left as it is."""

    __slots__ = ("_span", "_token", "_tracer", "_unsampled")
    _token: Token[Context]

    def __init__(self, tracer: Tracer, span: Span, *, unsampled: bool) -> None:
        self._tracer = tracer
        self._span = span
        self._unsampled = unsampled

    def __enter__(self) -> Span:
        if self._unsampled:
            return self._span
        tracer = self._tracer
        self._token = tracer._attach(tracer._set_span(self._span))
        return self._span

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._unsampled:
            return
        span, tracer = self._span, self._tracer
        tracer._detach(self._token)
        if isinstance(exc, Exception) and not _has_error(span):
            tracer.fail(span, exc)
        span.end()


class Tracing:
    """One service's tracer provider: its sampler, exporter and span processors.

    ``processors`` are added after the exporter's own (tests add an in-memory one, with
    ``exporter: none``). `aclose` flushes what is buffered and stops the export thread.
    """

    def __init__(
        self, settings: TracingSettings, *, processors: Sequence[SpanProcessor] = ()
    ) -> None:
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

            exporter = None if settings.exporter == "none" else _exporter(settings)
        except ImportError as exc:
            raise ConfigError(
                f"tracing.enabled needs the tracing extra: {INSTALL_HINT} ({exc})"
            ) from None
        self.settings = settings
        sampler = ParentBased(TraceIdRatioBased(settings.sample_ratio))
        self.provider = TracerProvider(
            sampler=sampler,
            resource=Resource.create({"service.name": settings.service_name}),
            shutdown_on_exit=False,  # the service shuts it down; atexit would keep it alive
        )
        if exporter is not None:
            self.provider.add_span_processor(BatchSpanProcessor(exporter))
        for processor in processors:
            self.provider.add_span_processor(processor)
        self.tracer = Tracer(self.provider)
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<Tracing exporter={self.settings.exporter} "
            f"sample_ratio={self.settings.sample_ratio:g} state={state}>"
        )

    def force_flush(self, timeout_s: float = 5.0) -> bool:
        """Export every ended span now (blocks); False if that did not finish in time."""
        return self.provider.force_flush(int(timeout_s * 1000))

    async def aclose(self) -> None:
        """Flush and stop the exporter, off the event loop (its last batch may take a while)."""
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self.provider.shutdown)


def build_tracing(settings: TracingSettings) -> Tracing | None:
    """The service's tracing, or None when ``tracing.enabled`` is off (nothing is imported)."""
    return Tracing(settings) if settings.enabled else None


def _exporter(settings: TracingSettings) -> Any:
    if settings.exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter(service_name=settings.service_name)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    # None: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else http://localhost:4318/v1/traces.
    return OTLPSpanExporter(endpoint=settings.endpoint)


def _has_error(span: Span) -> bool:
    status = getattr(span, "status", None)  # the SDK's spans have one; non-recording ones do not
    return status is not None and status.status_code.name == "ERROR"


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)
