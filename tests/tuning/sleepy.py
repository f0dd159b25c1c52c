"""A workflow whose one step waits, as a call to a remote model does, and costs no CPU: the
time it holds a worker slot is what `surgeflow tune` tunes worker slots and processes for."""

import asyncio

from surgeflow import Workflow, step

WAIT_S = 0.05


@step
async def wait(ctx: object) -> str:
    await asyncio.sleep(WAIT_S)
    return "done"


workflows = {"sleepy": Workflow("sleepy", wait)}
