"""The workflow of the scale-out chaos test: three steps, the middle one with a side effect.

The side effect is a charge recorded in PostgreSQL (``CHAOS_EFFECTS_URL``) under the step's
idempotency key: every attempt is written to ``chaos_attempts``, and the receiving system
applies the charge once per key (``chaos_effects``, primary key), as a payment service does.
"""

import asyncio
import os

import asyncpg

from surgeflow import Workflow, step
from surgeflow.workflow import Context

_pool: asyncpg.Pool | None = None

SCHEMA = """
CREATE TABLE IF NOT EXISTS chaos_attempts (key text NOT NULL, at timestamptz DEFAULT now());
CREATE TABLE IF NOT EXISTS chaos_effects (key text PRIMARY KEY, at timestamptz DEFAULT now());
"""


async def _connections() -> asyncpg.Pool:
    global _pool
    if _pool is None:
        _pool = await asyncpg.create_pool(os.environ["CHAOS_EFFECTS_URL"], min_size=1, max_size=4)
    return _pool


@step
async def prepare(ctx: Context) -> int:
    await asyncio.sleep(0.02)
    return int(ctx.input["n"])


@step(retries=5, backoff_s=0.05)
async def charge(ctx: Context) -> str:
    pool = await _connections()
    async with pool.acquire() as connection:
        key = ctx.idempotency_key
        await connection.execute("INSERT INTO chaos_attempts (key) VALUES ($1)", key)
        await connection.execute(
            "INSERT INTO chaos_effects (key) VALUES ($1) ON CONFLICT DO NOTHING", key
        )
    await asyncio.sleep(0.05)  # long enough that a killed worker is often inside it
    return "charged"


@step
async def finish(ctx: Context) -> str:
    await asyncio.sleep(0.02)
    return f"run {ctx['prepare']} done"


workflows = {"chaos": Workflow("chaos", [prepare, charge, finish])}
