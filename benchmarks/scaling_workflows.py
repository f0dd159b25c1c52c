"""The workflows `scaling.py` runs: ``model`` (a step that waits like a model call, then a small
CPU step) and ``noop`` (one step that does nothing: the CPU-bound case).

Loaded by the gateway and worker processes from their config
(``workflows: ["benchmarks.scaling_workflows:workflows"]``, with the repo root on
``PYTHONPATH``).
"""

from __future__ import annotations

import asyncio

from surgeflow.workflow import Context, Workflow, step

WAIT_S = 0.05  # what a model call might take, spent waiting, not computing
WORK = 2_000  # the CPU step: a sum over this many squares (a few hundred µs)


@step
async def call_model(ctx: Context) -> int:
    await asyncio.sleep(WAIT_S)
    return WORK


@step
async def compute(ctx: Context) -> int:
    return sum(i * i for i in range(int(ctx["call_model"])))


@step
async def noop(ctx: Context) -> None:
    return None


workflows = {
    "model": Workflow("model", [call_model, compute]),
    "noop": Workflow("noop", noop),
}
