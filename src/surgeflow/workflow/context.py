"""What a step sees: the run's input, earlier steps' outputs and the services it may call."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from surgeflow.models.client import ModelClient


class Context:
    """The run as a step sees it.

    ``ctx["classify"]`` is the output of the step named ``classify`` (the latest one inside a
    loop); ``ctx.input`` the decoded workflow input; ``ctx.models`` the model client; ``ctx.item``
    and ``ctx.index`` the element a `Map` step works on; ``ctx.iteration`` the loop round (0-based);
    ``ctx.step`` the key of the step running (``name``, ``loop#2.name``, ``map[3]`` …) and
    ``ctx.attempt`` its attempt.
    """

    __slots__ = (
        "attempt",
        "index",
        "input",
        "item",
        "iteration",
        "models",
        "results",
        "run_id",
        "services",
        "step",
        "workflow",
    )

    def __init__(
        self,
        *,
        workflow: str,
        input: Any,
        run_id: str,
        models: ModelClient | None = None,
        services: Mapping[str, Any] | None = None,
        results: dict[str, Any] | None = None,
    ) -> None:
        self.workflow = workflow
        self.input = input
        self.run_id = run_id
        self.models = models
        self.services: Mapping[str, Any] = services or {}
        self.results: dict[str, Any] = results if results is not None else {}
        self.item: Any = None
        self.index = 0
        self.iteration = 0
        self.attempt = 1
        self.step = ""

    @property
    def idempotency_key(self) -> str:
        """The same for every attempt of this step in this run, on any worker, and different
        for every other step or run: give it to a side effect (a payment, an email) so that
        the system receiving it applies it once, however often a crash makes the step run."""
        return f"{self.run_id}:{self.step}"

    def __getitem__(self, step_name: str) -> Any:
        return self.results[step_name]

    def __contains__(self, step_name: object) -> bool:
        return step_name in self.results

    def get(self, step_name: str, default: Any = None) -> Any:
        return self.results.get(step_name, default)

    @property
    def model_client(self) -> ModelClient:
        """The model client, or an error that says the run was started without one."""
        if self.models is None:
            raise RuntimeError(f"workflow {self.workflow!r} calls a model but was run without one")
        return self.models

    def child(self) -> Context:
        """A copy that shares input, results and services (for one branch of a fan-out)."""
        ctx = Context.__new__(Context)
        ctx.workflow = self.workflow
        ctx.input = self.input
        ctx.run_id = self.run_id
        ctx.models = self.models
        ctx.services = self.services
        ctx.results = self.results
        ctx.item = self.item
        ctx.index = self.index
        ctx.iteration = self.iteration
        ctx.attempt = 1
        ctx.step = self.step
        return ctx

    def __repr__(self) -> str:
        return (
            f"<Context workflow={self.workflow} run={self.run_id} steps_done={len(self.results)}>"
        )
