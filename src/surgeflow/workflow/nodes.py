"""The building blocks of a workflow graph: steps and the nodes that compose them."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, overload

from surgeflow.cache.keys import validate_tags

if TYPE_CHECKING:
    from surgeflow.workflow.context import Context

StepFn = Callable[["Context"], Awaitable[Any]]
Condition = Callable[["Context"], bool]


class Step:
    """An async function ``fn(ctx) -> output`` with its execution policy.

    The output is stored under ``ctx[name]`` and, in durable runs, checkpointed as JSON, so it must
    be encodable by msgspec (dicts, lists, scalars, Structs, dataclasses). The return annotation,
    when present, is used to decode a checkpoint back into the same type on resume. A failed
    attempt is retried up to ``retries`` times with exponential backoff and jitter, except for
    errors another attempt cannot fix (surgeflow's `ValidationError`, `NotFound` and the like).
    With ``cache``, an output is kept for ``cache_ttl_s`` (None: the run's default) and can be
    invalidated by any of ``cache_tags``.
    """

    __slots__ = (
        "backoff_s",
        "cache",
        "cache_key",
        "cache_tags",
        "cache_ttl_s",
        "fn",
        "max_backoff_s",
        "name",
        "output_type",
        "retries",
        "timeout_s",
    )

    def __init__(
        self,
        fn: StepFn,
        *,
        name: str | None = None,
        timeout_s: float | None = None,
        retries: int = 0,
        backoff_s: float = 0.1,
        max_backoff_s: float = 10.0,
        cache: bool = False,
        cache_key: Callable[[Context], Any] | None = None,
        cache_ttl_s: float | None = None,
        cache_tags: Sequence[str] = (),
    ) -> None:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"step {fn!r} must be an async function taking one context argument")
        if retries < 0:
            raise ValueError("retries must be >= 0")
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        if cache_ttl_s is not None and cache_ttl_s <= 0:
            raise ValueError("cache_ttl_s must be > 0")
        if isinstance(cache_tags, str):
            raise TypeError("cache_tags must be a sequence of tags, e.g. ('faq',), not a string")
        self.fn = fn
        self.name = name or fn.__name__
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        # Saying how to cache a step's output is asking for it to be cached.
        self.cache = cache or cache_key is not None or cache_ttl_s is not None or bool(cache_tags)
        self.cache_key = cache_key
        self.cache_ttl_s = cache_ttl_s
        self.cache_tags = validate_tags(cache_tags)
        self.output_type = _return_type(fn)

    def __repr__(self) -> str:
        return f"<Step {self.name} retries={self.retries} timeout_s={self.timeout_s}>"


def _return_type(fn: StepFn) -> Any:
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references: fall back to plain JSON
        return Any
    return hints.get("return", Any)


@overload
def step(fn: StepFn, /) -> Step: ...


@overload
def step(
    *,
    name: str | None = None,
    timeout_s: float | None = None,
    retries: int = 0,
    backoff_s: float = 0.1,
    max_backoff_s: float = 10.0,
    cache: bool = False,
    cache_key: Callable[[Context], Any] | None = None,
    cache_ttl_s: float | None = None,
    cache_tags: Sequence[str] = (),
) -> Callable[[StepFn], Step]: ...


def step(
    fn: StepFn | None = None,
    /,
    *,
    name: str | None = None,
    timeout_s: float | None = None,
    retries: int = 0,
    backoff_s: float = 0.1,
    max_backoff_s: float = 10.0,
    cache: bool = False,
    cache_key: Callable[[Context], Any] | None = None,
    cache_ttl_s: float | None = None,
    cache_tags: Sequence[str] = (),
) -> Step | Callable[[StepFn], Step]:
    """Make an async function a workflow step: ``@step`` or ``@step(timeout_s=5, retries=2)``."""

    def wrap(f: StepFn) -> Step:
        return Step(
            f,
            name=name,
            timeout_s=timeout_s,
            retries=retries,
            backoff_s=backoff_s,
            max_backoff_s=max_backoff_s,
            cache=cache,
            cache_key=cache_key,
            cache_ttl_s=cache_ttl_s,
            cache_tags=cache_tags,
        )

    return wrap(fn) if fn is not None else wrap


class Parallel:
    """Run several nodes at once (fan-out); continue when all have finished (fan-in)."""

    __slots__ = ("nodes",)

    def __init__(self, *nodes: Node) -> None:
        if len(nodes) < 2:
            raise ValueError("Parallel needs at least two nodes")
        self.nodes: tuple[Node, ...] = nodes

    def __repr__(self) -> str:
        return f"Parallel({', '.join(map(repr, self.nodes))})"


class Map:
    """Run one step for every item ``over(ctx)`` returns, at most ``concurrency`` at a time.

    The step sees its item as ``ctx.item`` (and its position as ``ctx.index``); its outputs are
    stored as a list, in item order, under the step's name.
    """

    __slots__ = ("concurrency", "over", "step")

    def __init__(
        self, step: Step, *, over: Callable[[Context], Iterable[Any]], concurrency: int = 16
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.step = step
        self.over = over
        self.concurrency = concurrency

    def __repr__(self) -> str:
        return f"Map({self.step.name}, concurrency={self.concurrency})"


class Branch:
    """Run ``then`` when ``when(ctx)`` is true, otherwise ``otherwise`` (which may be empty)."""

    __slots__ = ("otherwise", "then", "when")

    def __init__(
        self,
        when: Condition,
        *,
        then: Node | Sequence[Node],
        otherwise: Node | Sequence[Node] = (),
    ) -> None:
        self.when = when
        self.then = as_sequence(then)
        self.otherwise = as_sequence(otherwise)

    def __repr__(self) -> str:
        return f"Branch(then={list(self.then)}, otherwise={list(self.otherwise)})"


class Loop:
    """Repeat ``body`` until ``until(ctx)`` is true after an iteration, at most ``max_iterations``.

    A tool-using agent is a loop: think, act, observe, until the model answers. The bound is part of
    the definition on purpose: a loop that never ends is a run that never ends.
    """

    __slots__ = ("body", "max_iterations", "name", "until")

    def __init__(
        self,
        body: Node | Sequence[Node],
        *,
        until: Condition,
        max_iterations: int,
        name: str = "loop",
    ) -> None:
        if max_iterations < 1:
            raise ValueError("max_iterations must be >= 1")
        self.body = as_sequence(body)
        self.until = until
        self.max_iterations = max_iterations
        self.name = name

    def __repr__(self) -> str:
        return f"Loop({self.name}, max_iterations={self.max_iterations})"


Node = Step | Parallel | Map | Branch | Loop


def as_sequence(nodes: Node | Sequence[Node]) -> tuple[Node, ...]:
    if isinstance(nodes, Step | Parallel | Map | Branch | Loop):
        return (nodes,)
    return tuple(nodes)


def iter_steps(nodes: Iterable[Node]) -> Iterable[Step]:
    """Every step in the graph, depth first."""
    for node in nodes:
        if isinstance(node, Step):
            yield node
        elif isinstance(node, Map):
            yield node.step
        elif isinstance(node, Parallel):
            yield from iter_steps(node.nodes)
        elif isinstance(node, Branch):
            yield from iter_steps(node.then)
            yield from iter_steps(node.otherwise)
        else:
            yield from iter_steps(node.body)
