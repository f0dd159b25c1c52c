"""In-process chat cache: µs per `ModelClient.chat` answered from `MemoryCache`, against a miss.

The miss goes to a zero-latency simulated backend through the router, so it shows what a hit
saves on this side of the wire; a real upstream adds its whole latency on top.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from _common import machine, median, print_table, write_results

from surgeflow.cache import MemoryCache
from surgeflow.models import ChatRequest, Message, ModelClient, SimulatedBackend
from surgeflow.routing import RouteKey


async def _us_per_call(call: Callable[[], Awaitable[Any]], n: int) -> float:
    for _ in range(n // 10):
        await call()
    started = time.perf_counter()
    for _ in range(n):
        await call()
    return (time.perf_counter() - started) / n * 1e6


async def main_async(args: argparse.Namespace) -> dict[str, list[float]]:
    cached = ModelClient(
        {"m": [SimulatedBackend("a", ttft_ms=0, tokens_per_s=0)]}, cache=MemoryCache()
    )
    plain = ModelClient({"m": [SimulatedBackend("b", ttft_ms=0, tokens_per_s=0)]})
    question = [Message(role="user", content="What is the refund window?")]
    request = ChatRequest(model="m", temperature=0, messages=question)
    key = RouteKey(key_id="team-a")
    rounds: dict[str, list[float]] = {"hit": [], "miss": []}
    for _ in range(args.rounds):
        rounds["hit"].append(await _us_per_call(lambda: cached.chat(request, key=key), args.calls))
        rounds["miss"].append(await _us_per_call(lambda: plain.chat(request, key=key), args.calls))
    await cached.aclose()
    await plain.aclose()
    return rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args()
    rounds = asyncio.run(main_async(args))
    hit, miss = median(rounds["hit"]), median(rounds["miss"])
    print_table(
        ["path", "µs per chat"],
        [["cache hit", f"{hit:.1f}"], ["miss (0 ms upstream)", f"{miss:.1f}"]],
    )
    payload = {"benchmark": "cache_hit", "machine": machine(), "settings": vars(args)}
    results = {**payload, "hit_us": hit, "miss_us": miss, "raw": rounds}
    print(f"results: {write_results('cache_hit', results)}")


if __name__ == "__main__":
    main()
