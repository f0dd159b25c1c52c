"""OpenTelemetry tracing: the span tree of real requests through the gateway to a real upstream."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from surgeflow.config import (
    EndpointSettings,
    HedgeSettings,
    ModelSettings,
    RetrySettings,
    ServerSettings,
    Settings,
    StoreSettings,
    TracingSettings,
    WorkerSettings,
)
from surgeflow.errors import ConfigError
from surgeflow.gateway import Gateway
from surgeflow.gateway.http import Message, Receive, Scope, Send
from surgeflow.logs import Logging
from surgeflow.mockllm import MockLLM
from surgeflow.models.client import ModelClient
from surgeflow.models.simulated import SimulatedBackend
from surgeflow.server import gateway_app, running_app, running_gateway
from surgeflow.service import Service
from surgeflow.tracing import Tracing
from surgeflow.workflow import Context, Workflow, step

API_KEY = "sf-test-key"
MODEL = "m"
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


@step
async def greet(ctx: Context) -> str:
    return f"hello {ctx.input['name']}"


@step
async def explode(ctx: Context) -> None:
    raise RuntimeError("this step always fails")


WORKFLOWS = {"greet": Workflow("greet", greet), "explode": Workflow("explode", explode)}


@dataclass
class Upstream:
    """surgeflow's mock-llm on loopback, behind a wrapper that records each chat call's headers
    and answers the first ``fail_first`` of them with a 503."""

    app: MockLLM
    url: str = ""
    fail_first: int = 0
    headers: list[dict[str, str]] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/v1/chat/completions":
            self.headers.append({k.decode(): v.decode() for k, v in scope["headers"]})
            if len(self.headers) <= self.fail_first:
                await _answer_503(send)
                return
        await self.app(scope, receive, send)

    def traceparents(self) -> list[str | None]:
        return [h.get("traceparent") for h in self.headers]


async def _answer_503(send: Send) -> None:
    body = b'{"error": {"message": "replica restarting", "type": "server_error"}}'
    start: Message = {
        "type": "http.response.start",
        "status": 503,
        "headers": [(b"content-type", b"application/json")],
    }
    await send(start)
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    backend = SimulatedBackend("mock", ttft_ms=0, tokens_per_s=0, seed=1)
    recorder = Upstream(MockLLM(backend, models=[MODEL]))
    async with running_app(recorder) as root:
        recorder.url = f"{root}/v1"
        yield recorder


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def traced(exporter: InMemorySpanExporter, **settings: Any) -> Tracing:
    """Tracing that exports nothing itself and hands every ended span to ``exporter``."""
    options = TracingSettings(enabled=True, exporter="none", **settings)
    return Tracing(options, processors=[SimpleSpanProcessor(exporter)])


def make_service(
    tmp_path: Path, upstream: Upstream, tracing: Tracing | None, **tracing_settings: Any
) -> Service:
    settings = Settings(
        store=StoreSettings(url=f"sqlite:///{tmp_path / 'tracing.db'}"),
        server=ServerSettings(invoke_timeout_s=5.0),
        worker=WorkerSettings(poll_interval_s=0.02),
        models=[
            ModelSettings(
                name=MODEL,
                endpoints=[EndpointSettings(name="up", url=upstream.url)],
                retry=RetrySettings(backoff_s=0.001, max_backoff_s=0.001),
            )
        ],
        tracing=TracingSettings(**tracing_settings),
    )
    return Service(settings, workflows=WORKFLOWS, api_keys=[API_KEY], tracing=tracing)


@contextlib.asynccontextmanager
async def serving(service: Service) -> AsyncIterator[aiohttp.ClientSession]:
    """The service's gateway on loopback and a client for it. On exit the gateway has stopped,
    so every request's span has ended; the service itself is closed."""
    async with service, running_gateway(service) as url:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with aiohttp.ClientSession(url, headers=headers) as http:
            yield http


def chat_body(**overrides: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "where is my parcel?"}],
        "temperature": 0,
        **overrides,
    }


async def chat(http: aiohttp.ClientSession, headers: dict[str, str] | None = None) -> str:
    async with http.post("/v1/chat/completions", json=chat_body(), headers=headers) as response:
        assert response.status == 200, await response.text()
        await response.read()
        return response.headers["x-surgeflow-cache"]


ATTEMPT_KEYS = (
    "gen_ai.operation.name",
    "gen_ai.request.model",
    "surgeflow.endpoint",
    "surgeflow.attempt",
    "surgeflow.outcome",
)


def times(span: ReadableSpan) -> tuple[int, int]:
    """Start and end, in ns."""
    assert span.start_time is not None
    assert span.end_time is not None
    return span.start_time, span.end_time


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


def one(spans: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    found = by_name(spans, name)
    assert len(found) == 1, f"{len(found)} spans named {name!r} in {[s.name for s in spans]}"
    return found[0]


def parsed(traceparent: str | None) -> tuple[str, str, bool]:
    """(trace id, parent span id, sampled) of a W3C traceparent."""
    assert traceparent is not None
    version, trace_id, parent_id, flags = traceparent.split("-")
    assert version == "00"
    return trace_id, parent_id, bool(int(flags, 16) & 1)


def ids(span: ReadableSpan) -> tuple[str, str]:
    assert span.context is not None
    return f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"


def parent_id(span: ReadableSpan) -> str | None:
    return None if span.parent is None else f"{span.parent.span_id:016x}"


async def test_a_chat_request_is_a_tree_of_gateway_cache_and_attempt_spans(
    tmp_path: Path, upstream: Upstream, exporter: InMemorySpanExporter
) -> None:
    async with serving(make_service(tmp_path, upstream, traced(exporter))) as http:
        assert await chat(http) == "miss"
    spans = exporter.get_finished_spans()
    request = one(spans, "POST /v1/chat/completions")
    lookup = one(spans, "cache lookup")
    attempt = one(spans, f"chat {MODEL}")
    assert request.kind is SpanKind.SERVER
    assert request.parent is None  # the caller sent no traceparent: a trace of its own
    assert request.attributes is not None
    assert request.attributes["http.method"] == "POST"
    assert request.attributes["http.route"] == "/v1/chat/completions"
    assert request.attributes["http.status_code"] == 200
    assert request.status.status_code is StatusCode.UNSET
    trace_id, request_span = ids(request)
    assert parent_id(lookup) == request_span
    assert dict(lookup.attributes or {})["surgeflow.cache.status"] == "miss"
    assert parent_id(attempt) == request_span
    assert attempt.kind is SpanKind.CLIENT
    attributes = dict(attempt.attributes or {})
    assert {name: attributes[name] for name in ATTEMPT_KEYS} == {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": MODEL,
        "surgeflow.endpoint": "up",
        "surgeflow.attempt": 1,
        "surgeflow.outcome": "ok",
    }
    assert attributes["gen_ai.usage.output_tokens"] > 0  # type: ignore[operator]
    # The lookup is over before the upstream call starts; both lie inside the request.
    assert times(request)[0] <= times(lookup)[0]
    assert times(lookup)[1] <= times(attempt)[0]
    assert times(attempt)[1] <= times(request)[1]
    # The upstream was told the trace, with the attempt as the parent of its own spans.
    assert parsed(upstream.traceparents()[0]) == (trace_id, ids(attempt)[1], True)


async def test_a_cache_hit_makes_a_lookup_span_and_no_attempt(
    tmp_path: Path, upstream: Upstream, exporter: InMemorySpanExporter
) -> None:
    async with serving(make_service(tmp_path, upstream, traced(exporter))) as http:
        assert await chat(http) == "miss"
        exporter.clear()
        assert await chat(http) == "hit"
    spans = exporter.get_finished_spans()
    assert sorted(s.name for s in spans) == ["POST /v1/chat/completions", "cache lookup"]
    assert dict(one(spans, "cache lookup").attributes or {})["surgeflow.cache.status"] == "hit"
    assert len(upstream.headers) == 1


async def test_a_retried_call_makes_one_span_per_attempt(
    tmp_path: Path, upstream: Upstream, exporter: InMemorySpanExporter
) -> None:
    upstream.fail_first = 1
    async with serving(make_service(tmp_path, upstream, traced(exporter))) as http:
        assert await chat(http) == "miss"
    spans = exporter.get_finished_spans()
    first, second = sorted(by_name(spans, f"chat {MODEL}"), key=lambda s: s.start_time or 0)
    request = one(spans, "POST /v1/chat/completions")
    for number, attempt in enumerate((first, second), start=1):
        assert parent_id(attempt) == ids(request)[1]
        assert dict(attempt.attributes or {})["surgeflow.attempt"] == number
    assert dict(first.attributes or {})["surgeflow.outcome"] == "error"
    assert dict(first.attributes or {})["surgeflow.upstream.status_code"] == 503
    assert first.status.status_code is StatusCode.ERROR
    assert "503" in (first.status.description or "")
    assert dict(second.attributes or {})["surgeflow.outcome"] == "ok"
    assert second.status.status_code is StatusCode.UNSET
    assert request.status.status_code is StatusCode.UNSET  # the retry saved the request
    # Each call upstream named its own attempt as its parent.
    sent = [parsed(tp) for tp in upstream.traceparents()]
    assert [trace for trace, _, _ in sent] == [ids(request)[0]] * 2
    assert [parent for _, parent, _ in sent] == [ids(first)[1], ids(second)[1]]


async def test_an_incoming_traceparent_is_honoured(
    tmp_path: Path, upstream: Upstream, exporter: InMemorySpanExporter
) -> None:
    caller = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01", "tracestate": "vendor=1"}
    async with serving(make_service(tmp_path, upstream, traced(exporter))) as http:
        await chat(http, headers=caller)
    spans = exporter.get_finished_spans()
    request = one(spans, "POST /v1/chat/completions")
    assert ids(request)[0] == CALLER_TRACE
    assert parent_id(request) == CALLER_SPAN
    assert request.parent is not None
    assert request.parent.is_remote
    assert {ids(span)[0] for span in spans} == {CALLER_TRACE}
    trace_id, parent, _ = parsed(upstream.traceparents()[0])
    assert (trace_id, parent) == (CALLER_TRACE, ids(one(spans, f"chat {MODEL}"))[1])
    assert upstream.headers[0]["tracestate"] == "vendor=1"


async def test_a_malformed_traceparent_starts_a_trace_of_its_own(
    tmp_path: Path, upstream: Upstream, exporter: InMemorySpanExporter
) -> None:
    async with serving(make_service(tmp_path, upstream, traced(exporter))) as http:
        await chat(http, headers={"traceparent": "00-not-a-trace-01"})
    request = one(exporter.get_finished_spans(), "POST /v1/chat/completions")
    assert request.parent is None
    assert parsed(upstream.traceparents()[0])[0] == ids(request)[0]


async def test_a_caller_that_samples_nothing_is_followed_and_still_propagated(
    tmp_path: Path, upstream: Upstream, exporter: InMemorySpanExporter
) -> None:
    caller = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-00"}  # not sampled
    async with serving(make_service(tmp_path, upstream, traced(exporter))) as http:
        await chat(http, headers=caller)
    assert exporter.get_finished_spans() == ()
    trace_id, _, sampled = parsed(upstream.traceparents()[0])
    assert (trace_id, sampled) == (CALLER_TRACE, False)


async def test_sample_ratio_zero_records_nothing(
    tmp_path: Path, upstream: Upstream, exporter: InMemorySpanExporter
) -> None:
    tracing = traced(exporter, sample_ratio=0.0)
    async with serving(make_service(tmp_path, upstream, tracing)) as http:
        await chat(http)
    assert exporter.get_finished_spans() == ()
    assert parsed(upstream.traceparents()[0])[2] is False


async def test_a_streamed_answer_has_its_attempt_span_until_the_stream_ends(
    tmp_path: Path, upstream: Upstream, exporter: InMemorySpanExporter
) -> None:
    async with serving(make_service(tmp_path, upstream, traced(exporter))) as http:
        body = chat_body(stream=True)
        async with http.post("/v1/chat/completions", json=body) as response:
            assert response.status == 200
            assert (await response.read()).endswith(b"data: [DONE]\n\n")
    spans = exporter.get_finished_spans()
    request = one(spans, "POST /v1/chat/completions")
    attempt = one(spans, f"chat {MODEL}")
    attributes = dict(attempt.attributes or {})
    assert (attributes["surgeflow.stream"], attributes["surgeflow.outcome"]) == (True, "ok")
    assert parent_id(attempt) == ids(request)[1]
    assert dict(one(spans, "cache lookup").attributes or {})["surgeflow.cache.status"] == "miss"
    trace_id, parent, _ = parsed(upstream.traceparents()[0])
    assert (trace_id, parent) == (ids(request)[0], ids(attempt)[1])


async def test_a_hedge_is_a_second_span_of_the_same_attempt(
    exporter: InMemorySpanExporter,
) -> None:
    backends = [
        SimulatedBackend(name, ttft_ms=150, tokens_per_s=0, latency="constant", jitter=0)
        for name in ("a", "b")
    ]
    settings = ModelSettings(
        name=MODEL,
        endpoints=[EndpointSettings(name=b.name, url=f"backend:{b.name}") for b in backends],
        policy="round_robin",
        hedge=HedgeSettings(enabled=True, after_s=0.02),
    )
    tracing = traced(exporter)
    client = ModelClient({MODEL: backends}, settings={MODEL: settings}, tracer=tracing.tracer)
    async with client:
        assert await client.complete(MODEL, "hi", temperature=0.5)
    first, hedge = sorted(
        by_name(exporter.get_finished_spans(), f"chat {MODEL}"), key=lambda s: s.start_time or 0
    )
    assert dict(first.attributes or {})["surgeflow.outcome"] == "ok"
    assert dict(hedge.attributes or {})["surgeflow.hedge"] is True
    assert dict(hedge.attributes or {})["surgeflow.attempt"] == 1
    assert dict(hedge.attributes or {})["surgeflow.outcome"] == "cancelled"  # it lost the race
    assert hedge.status.status_code is StatusCode.UNSET
    await tracing.aclose()


async def test_gateway_spans_are_named_by_route_template_and_fail_on_5xx(
    tmp_path: Path, upstream: Upstream, exporter: InMemorySpanExporter
) -> None:
    service = make_service(tmp_path, upstream, traced(exporter))
    async with serving(service) as http:
        async with http.get("/v1/runs/run_missing") as response:
            assert response.status == 404
        async with http.get("/no/such/route") as response:
            assert response.status == 404
        upstream.fail_first = 10  # every attempt fails: the gateway answers 502
        body = chat_body(messages=[{"role": "user", "content": "fail me"}])
        async with http.post("/v1/chat/completions", json=body) as response:
            assert response.status >= 500
    spans = exporter.get_finished_spans()
    run = one(spans, "GET /v1/runs/{run_id}")
    assert dict(run.attributes or {})["http.route"] == "/v1/runs/{run_id}"
    assert dict(run.attributes or {})["url.path"] == "/v1/runs/run_missing"
    assert run.status.status_code is StatusCode.UNSET  # a 404 is the caller's error
    unmatched = one(spans, "GET")
    assert "http.route" not in dict(unmatched.attributes or {})
    failed = one(spans, "POST /v1/chat/completions")
    assert failed.status.status_code is StatusCode.ERROR
    assert dict(failed.attributes or {})["http.status_code"] >= 500  # type: ignore[operator]
    assert len(by_name(spans, f"chat {MODEL}")) == 3  # retry.attempts


async def test_invoked_workflow_steps_are_spans_under_the_request(
    tmp_path: Path, upstream: Upstream, exporter: InMemorySpanExporter
) -> None:
    async with serving(make_service(tmp_path, upstream, traced(exporter))) as http:
        for name in ("greet", "explode"):
            path = f"/v1/workflows/{name}/invoke"
            async with http.post(path, json={"input": {"name": "ada"}}) as response:
                assert response.status == 200
    spans = exporter.get_finished_spans()
    requests = by_name(spans, "POST /v1/workflows/{name}/invoke")
    assert len(requests) == 2
    greet, explode = one(spans, "step greet"), one(spans, "step explode")
    assert {parent_id(greet), parent_id(explode)} == {ids(r)[1] for r in requests}
    assert dict(greet.attributes or {}) == {
        "surgeflow.workflow": "greet",
        "surgeflow.step": "greet",
        "surgeflow.step.key": "greet",
        "surgeflow.attempt": 1,
    }
    assert greet.status.status_code is StatusCode.UNSET
    assert explode.status.status_code is StatusCode.ERROR
    assert explode.status.description == "RuntimeError: this step always fails"


async def test_each_step_attempt_is_a_span_and_model_calls_nest_in_it(
    upstream: Upstream, exporter: InMemorySpanExporter, tmp_path: Path
) -> None:
    calls = 0

    @step(retries=1, backoff_s=0.001)
    async def flaky(ctx: Context) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("first try fails")
        assert ctx.models is not None
        return await ctx.models.complete(MODEL, "hello", temperature=0.5)

    tracing = traced(exporter)
    service = make_service(tmp_path, upstream, tracing)
    async with service:
        output = await Workflow("wf", flaky).run({}, models=service.models, tracer=service.tracer)
    assert isinstance(output, str)
    spans = exporter.get_finished_spans()
    first, second = sorted(by_name(spans, "step flaky"), key=lambda s: s.start_time or 0)
    assert [dict(s.attributes or {})["surgeflow.attempt"] for s in (first, second)] == [1, 2]
    assert first.status.status_code is StatusCode.ERROR
    assert first.status.description == "ConnectionError: first try fails"
    assert second.status.status_code is StatusCode.UNSET
    assert parent_id(one(spans, f"chat {MODEL}")) == ids(second)[1]
    assert first.parent is None
    assert second.parent is None


async def test_a_durable_run_joins_the_submitting_request_trace(
    tmp_path: Path, upstream: Upstream, exporter: InMemorySpanExporter
) -> None:
    async with serving(make_service(tmp_path, upstream, traced(exporter))) as http:
        async with http.post("/v1/workflows/greet/runs", json={"input": {"name": "ada"}}) as resp:
            assert resp.status == 202
            run_id = (await resp.json())["id"]
        run = await wait_succeeded(http, run_id)
        async with http.get(f"/v1/runs/{run_id}/events") as response:
            events = await read_events(response)
    spans = exporter.get_finished_spans()
    submit = one(spans, "POST /v1/workflows/{name}/runs")
    wait, execution = one(spans, "queue wait"), one(spans, "run greet")
    trace_id, submit_span = ids(submit)
    assert {ids(wait)[0], ids(execution)[0], ids(one(spans, "step greet"))[0]} == {trace_id}
    assert parent_id(wait) == parent_id(execution) == submit_span
    assert parent_id(one(spans, "step greet")) == ids(execution)[1]
    expected = {"surgeflow.workflow": "greet", "surgeflow.run.id": run_id}
    assert dict(wait.attributes or {}) == expected
    assert dict(execution.attributes or {})["surgeflow.run.status"] == "succeeded"
    assert dict(execution.attributes or {})["surgeflow.run.attempt"] == 1
    # The wait runs from the run's creation to the moment the worker took it up.
    start_ns, end_ns = times(wait)
    assert abs(start_ns - run["created_at"] * 1e9) < 1e6
    assert start_ns <= end_ns <= times(execution)[0]
    assert end_ns <= run["started_at"] * 1e9 + 1e6
    assert (end_ns - start_ns) / 1e9 < 5.0
    # The submitting request's trace travels in the run's first event.
    queued = next(e for e in events if e["type"] == "run.queued")
    assert parsed(queued["data"]["traceparent"])[:2] == (trace_id, submit_span)


async def wait_succeeded(http: aiohttp.ClientSession, run_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        async with http.get(f"/v1/runs/{run_id}") as response:
            run: dict[str, Any] = await response.json()
        if run["status"] == "succeeded":
            return run
        await asyncio.sleep(0.02)
    raise AssertionError(f"run {run_id} did not succeed: {run}")


async def read_events(response: aiohttp.ClientResponse) -> list[dict[str, Any]]:
    events = []
    async for line in response.content:
        if line.startswith(b"data: "):
            events.append(json.loads(line[6:]))
    return events


def block_opentelemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every ``import opentelemetry…`` fail, as without the extra."""
    for name in [n for n in sys.modules if n == "opentelemetry" or n.startswith("opentelemetry.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)


async def test_disabled_tracing_needs_no_opentelemetry_and_sends_no_traceparent(
    tmp_path: Path, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    block_opentelemetry(monkeypatch)  # any span, context or propagation would now fail
    service = make_service(tmp_path, upstream, None)
    assert service.tracing is None
    assert service.tracer is None
    assert type(gateway_app(service)) is Gateway  # no wrapper around the app
    assert service.models.router(MODEL).tracer is None
    caller = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"}
    async with serving(service) as http:
        assert await chat(http, headers=caller) == "miss"
        async with http.post("/v1/workflows/greet/runs", json={"input": {"name": "ada"}}) as resp:
            run_id = (await resp.json())["id"]
        await wait_succeeded(http, run_id)
        async with http.get(f"/v1/runs/{run_id}/events") as response:
            queued = next(e for e in await read_events(response) if e["type"] == "run.queued")
    assert upstream.traceparents() == [None]
    assert "tracestate" not in upstream.headers[0]
    assert queued["data"] == {"workflow": "greet"}


async def test_enabling_tracing_without_the_extra_says_what_to_install(
    tmp_path: Path, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    block_opentelemetry(monkeypatch)
    with pytest.raises(ConfigError, match=r"pip install 'surgeflow\[tracing\]'"):
        make_service(tmp_path, upstream, None, enabled=True)


async def test_the_service_flushes_and_closes_its_tracing(
    tmp_path: Path, upstream: Upstream
) -> None:
    exporter = InMemorySpanExporter()
    tracing = traced(exporter)
    service = make_service(tmp_path, upstream, tracing)
    assert service.tracing is tracing
    async with serving(service) as http:
        await chat(http)
    assert repr(tracing).endswith("state=closed>")
    assert exporter.get_finished_spans()


def test_tracing_settings_build_each_exporter() -> None:
    for exporter in ("otlp", "console", "none"):
        tracing = Tracing(TracingSettings(enabled=True, exporter=exporter))
        assert f"exporter={exporter}" in repr(tracing)
        tracing.provider.shutdown()


async def test_log_lines_of_a_traced_request_name_its_trace(
    tmp_path: Path, upstream: Upstream, exporter: InMemorySpanExporter
) -> None:
    stream = io.StringIO()
    logging_ = Logging(level="info", format="json", stream=stream)
    logging_.start()
    try:
        async with serving(make_service(tmp_path, upstream, traced(exporter))) as http:
            await chat(http)
    finally:
        logging_.stop()
    access = [
        line
        for line in map(json.loads, stream.getvalue().splitlines())
        if line["logger"] == "surgeflow.access" and line.get("route") == "/v1/chat/completions"
    ]
    [line] = access
    request = one(exporter.get_finished_spans(), "POST /v1/chat/completions")
    assert line["trace_id"] == ids(request)[0]
    assert line["request_id"]  # still there, next to it
