"""The workflow `queue_peers.py` runs through surgeflow: one step that does nothing.

Loaded by the ``surgeflow worker`` process from its config
(``workflows: ["benchmarks.queue_peers.noop:workflows"]``, with the repo root on ``PYTHONPATH``).
"""

from __future__ import annotations

from surgeflow.workflow import Context, Workflow, step


@step
async def noop(ctx: Context) -> None:
    return None


workflows = {"noop": Workflow("noop", noop)}
