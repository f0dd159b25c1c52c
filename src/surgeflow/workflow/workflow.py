"""A named workflow: its graph, its input schema and how to run it."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from surgeflow.errors import ValidationError
from surgeflow.workflow.context import Context
from surgeflow.workflow.nodes import Node, Step, as_sequence, iter_steps
from surgeflow.workflow.runner import CheckpointHandler, EventHandler, Execution

if TYPE_CHECKING:
    from surgeflow.cache.base import Cache
    from surgeflow.models.client import ModelClient
    from surgeflow.tracing import Tracer


class Workflow:
    """A graph of async steps, run with ``await workflow.run(input)``.

    ``input`` is a msgspec Struct type that validates and decodes the run's input (a plain ``dict``
    when omitted); ``output`` picks the run's result from the context (by default the output of the
    last step that ran).
    """

    def __init__(
        self,
        name: str,
        nodes: Node | Sequence[Node],
        *,
        input: type[Any] | None = None,
        output: Callable[[Context], Any] | None = None,
        description: str = "",
    ) -> None:
        self.name = name
        self.nodes = as_sequence(nodes)
        if not self.nodes:
            raise ValueError(f"workflow {name!r} has no steps")
        self.input_type = input
        self.output = output
        self.description = description
        self.steps = _unique_steps(name, self.nodes)

    def input_schema(self) -> dict[str, Any]:
        """The JSON Schema of the input."""
        if self.input_type is None:
            return {"type": "object"}
        return msgspec.json.schema(self.input_type)

    def parse_input(self, raw: Any) -> Any:
        """Validate and decode a raw input (JSON object), or raise `ValidationError`."""
        if self.input_type is None:
            if not isinstance(raw, dict):
                raise ValidationError("input must be a JSON object")
            return raw
        try:
            return msgspec.convert(raw, self.input_type)
        except msgspec.ValidationError as exc:
            raise ValidationError(f"invalid input for workflow {self.name!r}: {exc}") from None

    async def run(
        self,
        input: Any,
        *,
        models: ModelClient | None = None,
        services: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        checkpoints: Mapping[str, bytes] | None = None,
        on_event: EventHandler | None = None,
        on_checkpoint: CheckpointHandler | None = None,
        cache: Cache | None = None,
        cache_ttl_s: float | None = None,
        tracer: Tracer | None = None,
    ) -> Any:
        """Run to the end and return the output.

        Steps found in ``checkpoints`` are not run again (resume); ``on_checkpoint`` is awaited
        with each finished step's JSON output before the next step starts; ``on_event`` is called
        for every step event. With a ``tracer`` each step attempt is a span (children of the
        current one). Cancel the awaiting task to cancel the run.
        """
        ctx = Context(
            workflow=self.name,
            input=self.parse_input(input),
            run_id=run_id or f"local_{secrets.token_hex(6)}",
            models=models,
            services=services,
        )
        execution = Execution(
            self.name,
            checkpoints=checkpoints,
            on_event=on_event,
            on_checkpoint=on_checkpoint,
            cache=cache,
            cache_ttl_s=cache_ttl_s,
            tracer=tracer,
        )
        await execution.run(self.nodes, ctx)
        return self.output(ctx) if self.output is not None else ctx.results[_last_step(self, ctx)]

    def __repr__(self) -> str:
        return f"<Workflow {self.name} steps={len(self.steps)}>"


def _unique_steps(workflow: str, nodes: Sequence[Node]) -> dict[str, Step]:
    steps: dict[str, Step] = {}
    for step in iter_steps(nodes):
        if step.name in steps and steps[step.name] is not step:
            raise ValueError(f"workflow {workflow!r} has two different steps named {step.name!r}")
        if "/" in step.name or "#" in step.name or "[" in step.name:
            raise ValueError(f"step name {step.name!r} may not contain '/', '#' or '['")
        steps[step.name] = step
    return steps


def _last_step(workflow: Workflow, ctx: Context) -> str:
    """The name of the last step in definition order that produced an output."""
    for step in reversed(list(iter_steps(workflow.nodes))):
        if step.name in ctx.results:
            return step.name
    raise RuntimeError(f"workflow {workflow.name!r} ran no step")
