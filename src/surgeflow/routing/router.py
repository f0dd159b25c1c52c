"""One model's router: pick an available endpoint, call it within limits, retry, hedge, observe.

Per call: filter the endpoints that health and limits admit (all of them in panic mode), let the
policy pick one, hold one of its slots for the call, record the outcome. A failed attempt is tried
again on another endpoint after a backoff, when the retry budget allows and the deadline leaves
time; a hedge is a second attempt started when the first is slower than the model's recent p95.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from surgeflow import tracing
from surgeflow.config import ModelSettings
from surgeflow.errors import (
    ModelError,
    Overloaded,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from surgeflow.models.base import stream_batches
from surgeflow.models.simulated import count_tokens
from surgeflow.models.types import ChatChunk, ChatRequest, ChatResponse
from surgeflow.routing.base import Policy, RouteKey
from surgeflow.routing.budget import RetryBudget, backoff_s
from surgeflow.routing.endpoint import Endpoint
from surgeflow.routing.health import EjectionBudget, EndpointHealth, panic
from surgeflow.routing.limits import EndpointLimits

if TYPE_CHECKING:
    from surgeflow.tracing import Span, Tracer

_DEFAULT_COMPLETION_TOKENS = 256  # reserved against tokens/min when a request sets no max_tokens


def retryable(exc: BaseException) -> bool:
    """Worth another endpoint: it failed for reasons of its own, not because of the request."""
    if isinstance(exc, RateLimited | UpstreamTimeout | UpstreamUnavailable | Overloaded):
        return True
    return isinstance(exc, UpstreamError) and exc.status >= 500


class LatencyWindow:
    """The last ``size`` call latencies, and their p95 (recomputed every ``every`` samples)."""

    __slots__ = ("_count", "_every", "_p95", "_samples")

    def __init__(self, size: int = 512, every: int = 32) -> None:
        self._samples: deque[float] = deque(maxlen=size)
        self._every = every
        self._count = 0
        self._p95: float | None = None

    def observe(self, latency_s: float) -> None:
        self._samples.append(latency_s)
        self._count += 1
        if self._count % self._every == 0:
            self._p95 = None

    def p95(self) -> float | None:
        """None until there are enough samples to say."""
        if self._p95 is None and len(self._samples) >= 20:
            ordered = sorted(self._samples)
            self._p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
        return self._p95


class ModelRouter:
    """Routes one model's calls across its endpoints; with a ``tracer``, a span per attempt."""

    def __init__(
        self,
        settings: ModelSettings,
        endpoints: Sequence[Endpoint],
        policy: Policy,
        *,
        tracer: Tracer | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError(f"model {settings.name!r} has no endpoints")
        self.name = settings.name
        self.settings = settings
        self.endpoints = list(endpoints)
        self.policy = policy
        self.tracer = tracer
        self.budget = RetryBudget(settings.retry)
        self.latencies = LatencyWindow()
        ejections = EjectionBudget(len(self.endpoints), settings.health.max_ejected_percent)
        for endpoint, endpoint_settings in zip(self.endpoints, settings.endpoints, strict=False):
            endpoint.health = EndpointHealth(settings.health, ejections)
            endpoint.limits = EndpointLimits(endpoint_settings)
        self._parts = [(e, _health(e), _limits(e)) for e in self.endpoints]
        self._needs_tokens = any(e.tokens_per_min for e in settings.endpoints)
        self.requests = 0
        self.prompt_tokens = 0  # as the endpoints reported them (usage), answered calls only
        self.completion_tokens = 0
        self.retries = 0
        self.hedges = 0
        self.hedge_wins = 0
        self.panics = 0

    def __repr__(self) -> str:
        healthy = sum(1 for e in self.endpoints if _health(e).admits())
        inflight = sum(e.inflight for e in self.endpoints)
        return (
            f"<ModelRouter model={self.name} policy={self.policy.name} "
            f"endpoints={len(self.endpoints)} healthy={healthy} inflight={inflight}>"
        )

    # -- choosing -------------------------------------------------------------------------------

    def choose(self, key: RouteKey, tokens: int, exclude: Sequence[Endpoint] = ()) -> Endpoint:
        """The endpoint for the next attempt: available, not in ``exclude`` unless nothing else is.

        Raises `Overloaded` when no endpoint can take the call now.
        """
        admitted = [(e, health) for e, health, limits in self._parts if limits.available(tokens)]
        healthy = [e for e, health in admitted if health.admits()]
        if len(healthy) < len(admitted) and panic(
            [health for _, health, _ in self._parts], self.settings.health.panic_threshold_percent
        ):
            # Too few healthy endpoints: spreading over all of them beats melting the survivors.
            self.panics += 1
            healthy = [e for e, _ in admitted]
        if not healthy:
            raise self._overloaded(tokens)
        fresh = [e for e in healthy if e not in exclude] or healthy
        endpoint = self.policy.pick(fresh, key) if len(fresh) > 1 else fresh[0]
        endpoint.picks += 1
        return endpoint

    def _overloaded(self, tokens: int) -> Overloaded:
        waits = [w for e in self.endpoints if (w := _limits(e).retry_after_s(tokens)) is not None]
        retry_after_s = min(waits) if waits else None
        return Overloaded(
            f"no endpoint of model {self.name!r} can take the call now "
            f"({len(self.endpoints)} endpoints: ejected, at their limits or rate limited)",
            retry_after_s=retry_after_s,
        )

    def tokens_for(self, request: ChatRequest) -> int:
        """The tokens to reserve against tokens/min budgets (0 when no endpoint has one)."""
        if not self._needs_tokens:
            return 0
        completion = request.max_completion_tokens or request.max_tokens
        return count_tokens(request.messages) + (completion or _DEFAULT_COMPLETION_TOKENS)

    # -- calling ------------------------------------------------------------------------------

    async def chat(
        self, request: ChatRequest, key: RouteKey, deadline: float | None
    ) -> ChatResponse:
        """One answer, trying other endpoints on failure within the retry budget and deadline."""
        self.requests += 1
        self.budget.on_request()
        tokens = self.tokens_for(request)
        tried: list[Endpoint] = []
        attempt = 0
        while True:
            attempt += 1
            endpoint = self.choose(key, tokens, tried)
            tried.append(endpoint)
            try:
                if self.settings.hedge.enabled:
                    return await self._hedged(
                        endpoint, request, key, tokens, deadline, tried, attempt
                    )
                if self.tracer is None:
                    return await self._attempt(endpoint, request, tokens, deadline)
                return await self._traced_attempt(endpoint, request, tokens, deadline, attempt)
            except ModelError as exc:
                await self._before_retry(exc, attempt, deadline)

    async def _before_retry(self, exc: ModelError, attempt: int, deadline: float | None) -> None:
        """Return after the backoff if another attempt is allowed; otherwise raise ``exc``."""
        if not retryable(exc) or attempt >= self.settings.retry.attempts:
            raise exc
        retry = self.settings.retry
        delay_s = backoff_s(attempt, retry.backoff_s, retry.max_backoff_s)
        if deadline is not None and time.monotonic() + delay_s >= deadline:
            raise exc
        if not self.budget.try_retry():
            raise exc
        self.retries += 1
        await asyncio.sleep(delay_s)

    async def _attempt(
        self, endpoint: Endpoint, request: ChatRequest, tokens: int, deadline: float | None
    ) -> ChatResponse:
        timeout_s = self._timeout_s(deadline)
        limits, health = _limits(endpoint), _health(endpoint)
        # A call counts against its endpoint from the moment it is routed there, waiting for a
        # slot or running: a policy that saw only the running ones would keep queueing calls
        # behind a saturated endpoint (Envoy counts a request pending in a pool as active too).
        endpoint.inflight += 1
        try:
            await limits.acquire(tokens)
        except BaseException:
            endpoint.inflight -= 1
            raise
        try:
            trial = health.on_start()
            started = time.monotonic()
            try:
                response = await endpoint.backend.chat(request, timeout_s=timeout_s)
            except BaseException as exc:
                self._failed(endpoint, exc, trial)
                raise
            finally:
                endpoint.inflight -= 1
            self._succeeded(endpoint, time.monotonic() - started, trial)
            usage = response.usage
            if usage is not None:
                self.prompt_tokens += usage.prompt_tokens
                self.completion_tokens += usage.completion_tokens
                if tokens:
                    limits.settle(tokens, usage.total_tokens)
            return response
        finally:
            limits.release()

    def _any_attempt(
        self,
        endpoint: Endpoint,
        request: ChatRequest,
        tokens: int,
        deadline: float | None,
        attempt: int,
        hedge: bool = False,
    ) -> Coroutine[Any, Any, ChatResponse]:
        if self.tracer is None:
            return self._attempt(endpoint, request, tokens, deadline)
        return self._traced_attempt(endpoint, request, tokens, deadline, attempt, hedge)

    async def _traced_attempt(
        self,
        endpoint: Endpoint,
        request: ChatRequest,
        tokens: int,
        deadline: float | None,
        attempt: int,
        hedge: bool = False,
    ) -> ChatResponse:
        """`_attempt` in a client span, current while the backend calls (HTTP endpoints send it
        on as ``traceparent``)."""
        tracer = self.tracer
        assert tracer is not None
        attributes = self._span_attributes(endpoint, attempt, hedge)
        with tracer.span(f"chat {self.name}", attributes, kind="client") as span:
            try:
                response = await self._attempt(endpoint, request, tokens, deadline)
            except BaseException as exc:
                _record_outcome(span, exc)
                raise
            span.set_attribute(tracing.OUTCOME, "ok")
            if response.usage is not None:
                span.set_attribute(tracing.GEN_AI_INPUT_TOKENS, response.usage.prompt_tokens)
                span.set_attribute(tracing.GEN_AI_OUTPUT_TOKENS, response.usage.completion_tokens)
            return response

    def _span_attributes(
        self, endpoint: Endpoint, attempt: int, hedge: bool = False, stream: bool = False
    ) -> dict[str, str | int | bool]:
        attributes: dict[str, str | int | bool] = {
            tracing.GEN_AI_OPERATION: "chat",
            tracing.GEN_AI_MODEL: self.name,
            tracing.ENDPOINT: endpoint.name,
            tracing.ATTEMPT: attempt,
        }
        if hedge:
            attributes[tracing.HEDGE] = True
        if stream:
            attributes[tracing.STREAM] = True
        return attributes

    def _succeeded(self, endpoint: Endpoint, latency_s: float, trial: bool) -> None:
        _health(endpoint).on_success(latency_s, trial=trial)
        endpoint.latency.observe(latency_s)
        self.latencies.observe(latency_s)

    def _failed(self, endpoint: Endpoint, exc: BaseException, trial: bool) -> None:
        health = _health(endpoint)
        if isinstance(exc, RateLimited):
            # The endpoint is busy, not broken: let it cool down rather than eject it.
            _limits(endpoint).on_rate_limited(exc.retry_after_s)
            health.on_cancel(trial=trial)
        elif isinstance(exc, ModelError) and retryable(exc):
            health.on_failure(trial=trial)
        else:  # cancelled, or the request itself was bad: says nothing about the endpoint
            health.on_cancel(trial=trial)

    def _timeout_s(self, deadline: float | None) -> float | None:
        per_attempt = self.settings.retry.attempt_timeout_s
        if deadline is None:
            return per_attempt
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise UpstreamTimeout(f"model {self.name!r}: the request's deadline has passed")
        return remaining if per_attempt is None else min(per_attempt, remaining)

    async def _hedged(
        self,
        endpoint: Endpoint,
        request: ChatRequest,
        key: RouteKey,
        tokens: int,
        deadline: float | None,
        tried: list[Endpoint],
        attempt: int = 1,
    ) -> ChatResponse:
        """The first answer of the attempt and, if it is slow, a second on another endpoint."""
        hedge = self.settings.hedge
        delay_s = hedge.after_s or self.latencies.p95()
        first = asyncio.ensure_future(
            self._any_attempt(endpoint, request, tokens, deadline, attempt)
        )
        if delay_s is None:
            return await first
        done, _ = await asyncio.wait({first}, timeout=max(delay_s, hedge.min_after_s))
        if done:
            return first.result()
        try:
            other = self.choose(key, tokens, tried)
        except Overloaded:
            other = endpoint
        if other is endpoint or not self.budget.try_retry():
            return await first
        tried.append(other)
        self.hedges += 1
        second = asyncio.ensure_future(
            self._any_attempt(other, request, tokens, deadline, attempt, hedge=True)
        )
        racers = {first, second}
        try:
            while racers:
                done, racers = await asyncio.wait(racers, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task.exception() is None:
                        self.hedge_wins += task is second
                        return task.result()
                if not racers:
                    raise next(iter(done)).exception()  # type: ignore[misc]
            raise AssertionError("unreachable")
        finally:
            for task in (first, second):
                task.cancel()
            await asyncio.gather(first, second, return_exceptions=True)

    async def stream_batches(
        self, request: ChatRequest, key: RouteKey, deadline: float | None
    ) -> AsyncIterator[list[ChatChunk]]:
        """Chunks from one endpoint, in the batches they arrived in (`models.base.stream_batches`);
        a failure before the first chunk is retried elsewhere."""
        self.requests += 1
        self.budget.on_request()
        tokens = self.tokens_for(request)
        tried: list[Endpoint] = []
        attempt = 0
        while True:
            attempt += 1
            endpoint = self.choose(key, tokens, tried)
            tried.append(endpoint)
            chunks = (
                self._stream_attempt(endpoint, request, tokens, deadline)
                if self.tracer is None
                else self._traced_stream_attempt(endpoint, request, tokens, deadline, attempt)
            )
            try:
                first = await anext(chunks)
            except StopAsyncIteration:
                return
            except ModelError as exc:
                await chunks.aclose()
                await self._before_retry(exc, attempt, deadline)
                continue
            try:
                yield first
                async for batch in chunks:
                    yield batch
            finally:
                await chunks.aclose()
            return

    async def _stream_attempt(
        self, endpoint: Endpoint, request: ChatRequest, tokens: int, deadline: float | None
    ) -> Any:
        timeout_s = self._timeout_s(deadline)
        limits, health = _limits(endpoint), _health(endpoint)
        endpoint.inflight += 1  # from routing on, waiting for a slot or running (`_attempt`)
        try:
            async with limits.slot(tokens):
                trial = health.on_start()
                started = time.monotonic()
                upstream = stream_batches(endpoint.backend, request, timeout_s=timeout_s)
                try:
                    async for batch in upstream:
                        yield batch
                except BaseException as exc:
                    self._failed(endpoint, exc, trial)
                    raise
                finally:
                    await _aclose(upstream)
                self._succeeded(endpoint, time.monotonic() - started, trial)
        finally:
            endpoint.inflight -= 1

    async def _traced_stream_attempt(
        self,
        endpoint: Endpoint,
        request: ChatRequest,
        tokens: int,
        deadline: float | None,
        attempt: int,
    ) -> Any:
        """`_stream_attempt` in a client span that lasts until the stream ends.

        The span is current only while the first chunk is awaited (the request, and its
        ``traceparent``, go out then): a context attached across the generator's yields would
        leak into its reader and could not be detached if the reader closed it elsewhere.
        """
        tracer = self.tracer
        assert tracer is not None
        span = tracer.start(
            f"chat {self.name}",
            self._span_attributes(endpoint, attempt, stream=True),
            kind="client",
        )
        chunks = self._stream_attempt(endpoint, request, tokens, deadline)
        try:
            with tracer.activate(span):
                try:
                    first = await anext(chunks)
                except StopAsyncIteration:
                    span.set_attribute(tracing.OUTCOME, "ok")
                    return
            yield first
            async for batch in chunks:
                yield batch
            span.set_attribute(tracing.OUTCOME, "ok")
        except BaseException as exc:
            _record_outcome(span, exc, tracer)
            raise
        finally:
            await chunks.aclose()
            span.end()

    def snapshot(self) -> dict[str, Any]:
        """The router's state, for the admin API."""
        return {
            "model": self.name,
            "policy": self.policy.name,
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "retries": self.retries,
            "hedges": self.hedges,
            "hedge_wins": self.hedge_wins,
            "panics": self.panics,
            "p95_ms": None if (p95 := self.latencies.p95()) is None else round(p95 * 1000, 3),
            "retry_budget": self.budget.snapshot(),
            "endpoints": [
                {
                    "name": e.name,
                    "weight": e.weight,
                    "inflight": e.inflight,
                    "picks": e.picks,
                    "ewma_ms": round(e.latency.value * 1000, 3),
                    "health": _health(e).snapshot(),
                    "limits": _limits(e).snapshot(),
                }
                for e in self.endpoints
            ],
        }


def _record_outcome(span: Span, exc: BaseException, tracer: Tracer | None = None) -> None:
    """How an attempt ended, on its span; with ``tracer``, a failure also marks it failed (in
    a ``tracer.span`` block the block's exit does that)."""
    outcome = _OUTCOMES.get(type(exc))
    if outcome is None:
        outcome = "error"
        for kind, name in _OUTCOMES.items():
            if isinstance(exc, kind):
                outcome = name
                break
    span.set_attribute(tracing.OUTCOME, outcome)
    if isinstance(exc, UpstreamError):
        span.set_attribute(tracing.UPSTREAM_STATUS, exc.status)
    if tracer is not None and isinstance(exc, Exception):
        tracer.fail(span, exc)


# Also in the span's outcome when a hedge loses (cancelled) or the client leaves.
_OUTCOMES: dict[type[BaseException], str] = {
    RateLimited: "rate_limited",
    UpstreamTimeout: "timeout",
    UpstreamUnavailable: "unavailable",
    Overloaded: "overloaded",
    asyncio.CancelledError: "cancelled",
    GeneratorExit: "closed",
}


def _health(endpoint: Endpoint) -> EndpointHealth:
    assert endpoint.health is not None, "endpoints get their health from their ModelRouter"
    return endpoint.health


def _limits(endpoint: Endpoint) -> EndpointLimits:
    assert endpoint.limits is not None, "endpoints get their limits from their ModelRouter"
    return endpoint.limits


async def _aclose(chunks: AsyncIterator[Any]) -> None:
    close = getattr(chunks, "aclose", None)
    if close is not None:
        await close()
