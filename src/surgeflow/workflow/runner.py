"""Executes a workflow graph: steps, fan-out, branches, loops, retries, checkpoints and events."""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from surgeflow import tracing
from surgeflow.cache.base import Cache, default_ttl_s, pack_entry, unpack_entry
from surgeflow.errors import AuthError, ConfigError, Conflict, NotFound, StepError, ValidationError
from surgeflow.workflow.context import Context
from surgeflow.workflow.nodes import Branch, Loop, Map, Node, Parallel, Step

if TYPE_CHECKING:
    from surgeflow.tracing import Tracer


class StepEvent(msgspec.Struct, omit_defaults=True):
    """What happened to a step: started, finished, retrying, failed or cached."""

    type: str
    step: str
    attempt: int = 1
    duration_ms: float | None = None
    delay_s: float | None = None
    error: str | None = None

    def data(self) -> dict[str, Any]:
        """The event's details, without its type and step."""
        data: dict[str, Any] = {"attempt": self.attempt}
        if self.duration_ms is not None:
            data["duration_ms"] = round(self.duration_ms, 3)
        if self.delay_s is not None:
            data["delay_s"] = round(self.delay_s, 3)
        if self.error is not None:
            data["error"] = self.error
        return data


EventHandler = Callable[[StepEvent], None]
CheckpointHandler = Callable[[str, bytes], Awaitable[None]]

_encode = msgspec.json.encode
# Errors that another attempt cannot fix: the step fails at once, whatever its retries.
_PERMANENT = (ValidationError, NotFound, ConfigError, AuthError, Conflict)


class Execution:
    """One run through the graph.

    A step whose key is in ``checkpoints`` is not executed again: its saved output is decoded and
    the run goes on from there. Keys are paths that stay the same on replay: ``draft``,
    ``score[3]`` (the fourth item of a Map), ``agent#2/act`` (the third round of loop ``agent``).
    With a ``tracer``, each attempt of a step is a span, ``step <key>``.
    """

    __slots__ = (
        "cache",
        "cache_ttl_s",
        "checkpoints",
        "on_checkpoint",
        "on_event",
        "tracer",
        "workflow",
    )

    def __init__(
        self,
        workflow: str,
        *,
        checkpoints: Mapping[str, bytes] | None = None,
        on_event: EventHandler | None = None,
        on_checkpoint: CheckpointHandler | None = None,
        cache: Cache | None = None,
        cache_ttl_s: float | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.workflow = workflow
        self.checkpoints: Mapping[str, bytes] = checkpoints or {}
        self.on_event = on_event
        self.on_checkpoint = on_checkpoint
        self.cache = cache
        self.cache_ttl_s = cache_ttl_s
        self.tracer = tracer

    async def run(self, nodes: Sequence[Node], ctx: Context, prefix: str = "") -> None:
        for node in nodes:
            if type(node) is Step:
                ctx.results[node.name] = await self.step(node, ctx, prefix + node.name)
            else:
                await self._compound(node, ctx, prefix)

    async def _compound(self, node: Node, ctx: Context, prefix: str) -> None:
        if isinstance(node, Step):
            ctx.results[node.name] = await self.step(node, ctx, prefix + node.name)
        elif isinstance(node, Branch):
            await self.run(node.then if node.when(ctx) else node.otherwise, ctx, prefix)
        elif isinstance(node, Loop):
            for iteration in range(node.max_iterations):
                ctx.iteration = iteration
                await self.run(node.body, ctx, f"{prefix}{node.name}#{iteration}/")
                if node.until(ctx):
                    break
        elif isinstance(node, Parallel):
            await _all(self.run((child,), ctx.child(), prefix) for child in node.nodes)
        else:
            await self._map(node, ctx, prefix)

    async def _map(self, node: Map, ctx: Context, prefix: str) -> None:
        items = list(node.over(ctx))
        outputs: list[Any] = [None] * len(items)
        limit = asyncio.Semaphore(node.concurrency)
        name = node.step.name

        async def one(index: int, item: Any) -> None:
            child = ctx.child()
            child.item = item
            child.index = index
            async with limit:
                outputs[index] = await self.step(node.step, child, f"{prefix}{name}[{index}]")

        await _all(one(i, item) for i, item in enumerate(items))
        ctx.results[name] = outputs

    async def step(self, step: Step, ctx: Context, key: str) -> Any:
        """Run one step with its timeout and retries; checkpoint and report its output."""
        saved = self.checkpoints.get(key)
        if saved is not None:
            return msgspec.json.decode(saved, type=step.output_type)
        cache_key = None
        if step.cache and self.cache is not None:
            cache_key = self._cache_key(step, ctx)
            cached = await self._cached(cache_key, step)
            if cached is not None:
                output, encoded = cached
                await self._finished(key, output, encoded, StepEvent("step.cached", key))
                return output
        emit = self.on_event
        attempt = 0
        while True:
            attempt += 1
            ctx.attempt = attempt
            ctx.step = key
            if emit is not None:
                emit(StepEvent("step.started", key, attempt))
            started = time.perf_counter()
            try:
                if self.tracer is not None:
                    output = await self._traced_call(step, ctx, key, attempt)
                elif step.timeout_s is None:
                    output = await step.fn(ctx)
                else:
                    async with asyncio.timeout(step.timeout_s):
                        output = await step.fn(ctx)
            except Exception as exc:
                message = _describe(exc, step)
                if attempt > step.retries or isinstance(exc, _PERMANENT):
                    if emit is not None:
                        duration_ms = (time.perf_counter() - started) * 1000
                        emit(StepEvent("step.failed", key, attempt, duration_ms, error=message))
                    if isinstance(exc, StepError):
                        raise
                    raise StepError(key, message) from exc
                delay_s = _backoff(step, attempt)
                if emit is not None:
                    emit(StepEvent("step.retrying", key, attempt, delay_s=delay_s, error=message))
                await asyncio.sleep(delay_s)
                continue
            duration_ms = (time.perf_counter() - started) * 1000
            if self.on_checkpoint is None and cache_key is None:
                if emit is not None:
                    emit(StepEvent("step.finished", key, attempt, duration_ms))
                return output
            encoded = _encode(output)
            if cache_key is not None and self.cache is not None:
                ttl_s = step.cache_ttl_s or self.cache_ttl_s or default_ttl_s(self.cache)
                entry = pack_entry(
                    encoded, stored_at=time.time(), ttl_s=ttl_s, tags=step.cache_tags
                )
                await self.cache.set(cache_key, entry, ttl_s=ttl_s, tags=step.cache_tags)
            await self._finished(
                key, output, encoded, StepEvent("step.finished", key, attempt, duration_ms)
            )
            return output

    async def _traced_call(self, step: Step, ctx: Context, key: str, attempt: int) -> Any:
        """One attempt of ``step`` in its span (current: model calls in the step nest under it)."""
        assert self.tracer is not None
        attributes: tracing.Attributes = {
            tracing.WORKFLOW: self.workflow,
            tracing.STEP: step.name,
            tracing.STEP_KEY: key,
            tracing.ATTEMPT: attempt,
        }
        with self.tracer.span(f"step {key}", attributes) as span:
            try:
                if step.timeout_s is None:
                    return await step.fn(ctx)
                async with asyncio.timeout(step.timeout_s):
                    return await step.fn(ctx)
            except Exception as exc:
                self.tracer.fail(span, _describe(exc, step))
                raise

    async def _cached(self, cache_key: str, step: Step) -> tuple[Any, bytes] | None:
        """A cached output of ``step`` and its JSON; an entry that does not decode is dropped."""
        assert self.cache is not None
        raw = await self.cache.get(cache_key)
        if raw is None:
            return None
        entry = unpack_entry(raw)
        if entry is not None and time.time() < entry.expires_at():
            try:
                return msgspec.json.decode(entry.value, type=step.output_type), entry.value
            except msgspec.DecodeError:
                pass
        await self.cache.delete(cache_key)
        return None

    async def _finished(self, key: str, output: Any, encoded: bytes, event: StepEvent) -> None:
        if self.on_checkpoint is not None:
            await self.on_checkpoint(key, encoded)
        if self.on_event is not None:
            self.on_event(event)

    def _cache_key(self, step: Step, ctx: Context) -> str:
        basis: Any
        if step.cache_key is not None:
            basis = step.cache_key(ctx)
        else:  # everything the step can see that may change its output
            basis = [ctx.input, ctx.item, ctx.results]
        digest = hashlib.sha256(_encode([self.workflow, step.name, basis])).hexdigest()
        return f"step:{self.workflow}:{step.name}:{digest}"


def _backoff(step: Step, attempt: int) -> float:
    """Exponential backoff with equal jitter: half fixed, half random, capped."""
    ceiling = min(step.max_backoff_s, step.backoff_s * 2 ** (attempt - 1))
    return float(ceiling / 2 + random.uniform(0, ceiling / 2))


def _describe(exc: Exception, step: Step) -> str:
    if isinstance(exc, TimeoutError) and step.timeout_s is not None:
        return f"timed out after {step.timeout_s} s"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def _all(coros: Any) -> None:
    """Run coroutines concurrently; the first failure cancels the rest and is raised as itself."""
    pending: list[Coroutine[Any, Any, None]] = list(coros)
    if len(pending) == 1:
        await pending[0]
        return
    try:
        async with asyncio.TaskGroup() as group:
            for coro in pending:
                group.create_task(coro)
    except BaseExceptionGroup as group_error:
        raise _first_leaf(group_error) from None


def _first_leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error
