"""PostgreSQL store calls per second with and without asyncpg's reset query on pool release.

asyncpg's pool sends ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` whenever a
connection goes back to the pool: one more round trip per pooled call. `PooledConnection` skips
it (surgeflow leaves no session state on a connection). This measures ``get_run`` from 8
concurrent tasks, both ways, alternating, in one process against one server.

    .venv/bin/python benchmarks/pg_pool.py --url postgresql://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

import asyncpg  # type: ignore[import-untyped]

from surgeflow.store import postgres

TASKS = 8


async def calls_per_s(url: str, *, reset: bool, calls: int) -> float:
    if reset:  # asyncpg's own behaviour, for the comparison
        postgres.PooledConnection.get_reset_query = asyncpg.Connection.get_reset_query  # type: ignore[method-assign]
    else:
        postgres.PooledConnection.get_reset_query = lambda self: ""  # type: ignore[method-assign]
    async with postgres.PostgresStore(url) as store:
        run, _ = await store.create_run("bench", {"n": 1})
        for _ in range(200):  # warm the pool and the statement cache
            await store.get_run(run.id)

        async def task() -> None:
            for _ in range(calls // TASKS):
                await store.get_run(run.id)

        started = time.perf_counter()
        await asyncio.gather(*(task() for _ in range(TASKS)))
        return calls / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    figures: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.rounds):
        for reset in (True, False):
            figures[reset].append(asyncio.run(calls_per_s(args.url, reset=reset, calls=args.calls)))
    with_reset, without = statistics.median(figures[True]), statistics.median(figures[False])
    print(f"get_run/s, {TASKS} tasks, median of {args.rounds} rounds")
    for label, median, rounds in (
        ("asyncpg's reset on release ", with_reset, figures[True]),
        ("no reset (PooledConnection)", without, figures[False]),
    ):
        print(f"  {label} {median:8,.0f}   rounds: {', '.join(f'{x:,.0f}' for x in rounds)}")
    print(f"  ratio: {without / with_reset:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
