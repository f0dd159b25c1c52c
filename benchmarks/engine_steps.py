"""Workflow engine overhead: µs per no-op step, no persistence, against the cost of bare awaits.

Each variant runs its workflow in a loop (``await wf.run({})``); every round measures every
variant once, interleaved, after a warm-up that also sizes the loop to about ``--round-s``.
Reported: the median over rounds of µs per step (run time / steps per run). The floors are what
Python itself charges: awaiting 5 coroutines in turn, and starting 5 tasks in a TaskGroup (what a
fan-out cannot avoid). ``--langgraph-python`` runs an equivalent 5-node LangGraph StateGraph in
another interpreter (a throwaway venv, never a project dependency) once per round.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from _common import machine, median, print_table, write_results

from surgeflow.workflow import Context, Map, Parallel, Step, StepEvent, Workflow

STEPS = 5
Bench = Callable[[], Awaitable[Any]]


async def noop(ctx: Context) -> None:
    return None


def _steps(prefix: str) -> list[Step]:
    return [Step(noop, name=f"{prefix}{i}") for i in range(STEPS)]


async def _bare(_: None) -> None:
    return None


def variants() -> dict[str, Bench]:
    sequential = Workflow("sequential", _steps("s"))
    mapped = Workflow("map", Map(Step(noop, name="m"), over=lambda ctx: range(STEPS)))
    parallel = Workflow("parallel", Parallel(*_steps("p")))
    seen: list[StepEvent] = []

    def on_event(event: StepEvent) -> None:
        seen.append(event)
        if len(seen) > 1000:
            seen.clear()

    async def floor_await() -> None:
        for _ in range(STEPS):
            await _bare(None)

    async def floor_taskgroup() -> None:
        async with asyncio.TaskGroup() as group:
            for _ in range(STEPS):
                group.create_task(_bare(None))

    return {
        "floor: await 5 coroutines": floor_await,
        "floor: TaskGroup of 5 tasks": floor_taskgroup,
        "sequential 5 steps": lambda: sequential.run({}),
        "sequential + on_event": lambda: sequential.run({}, on_event=on_event),
        "Map over 5 items": lambda: mapped.run({}),
        "Parallel of 5 steps": lambda: parallel.run({}),
    }


async def per_call_ns(bench: Bench, iterations: int) -> float:
    gc.collect()
    started = time.perf_counter_ns()
    for _ in range(iterations):
        await bench()
    return (time.perf_counter_ns() - started) / iterations


async def measure(rounds: int, round_s: float, on_round: Callable[[int], None]) -> dict[str, Any]:
    benches = variants()
    sizes: dict[str, int] = {}
    for name, bench in benches.items():  # warm-up, and size each loop to ~round_s
        await per_call_ns(bench, 200)
        sizes[name] = max(100, int(round_s * 1e9 / await per_call_ns(bench, 1000)))
    samples: dict[str, list[float]] = {name: [] for name in benches}
    for index in range(rounds):
        for name, bench in benches.items():
            samples[name].append(await per_call_ns(bench, sizes[name]) / 1000 / STEPS)
        on_round(index)
    return {"us_per_step": samples, "iterations": sizes}


LANGGRAPH = """
import asyncio, json, sys, time
from typing import TypedDict
from langgraph.graph import END, START, StateGraph
try:
    import uvloop
except ImportError:
    uvloop = None

class State(TypedDict, total=False):
    x: int

async def noop(state):
    return {}

graph = StateGraph(State)
previous = START
for i in range(5):
    graph.add_node(f"s{i}", noop)
    graph.add_edge(previous, f"s{i}")
    previous = f"s{i}"
graph.add_edge(previous, END)
app = graph.compile()

async def main():
    round_s = float(sys.argv[1])
    for _ in range(50):
        await app.ainvoke({"x": 0})
    started = time.perf_counter()
    for _ in range(200):
        await app.ainvoke({"x": 0})
    n = max(50, int(round_s / ((time.perf_counter() - started) / 200)))
    started = time.perf_counter_ns()
    for _ in range(n):
        await app.ainvoke({"x": 0})
    us = (time.perf_counter_ns() - started) / n / 1000 / 5
    import langgraph
    version = getattr(langgraph, "__version__", None)
    if version is None:
        from importlib.metadata import version as v
        version = v("langgraph")
    print(json.dumps({"us_per_step": us, "iterations": n, "langgraph": version,
                      "loop": "uvloop" if uvloop else "asyncio"}))

(uvloop.run if uvloop else asyncio.run)(main())
"""


def langgraph_round(python: str, round_s: float) -> dict[str, Any]:
    done = subprocess.run(
        [python, "-c", LANGGRAPH, str(round_s)],
        capture_output=True,
        text=True,
        timeout=120 + 10 * round_s,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"LangGraph run failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--round-s", type=float, default=0.5, help="time per variant per round")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--target-us", type=float, default=20.0)
    parser.add_argument(
        "--langgraph-python", help="interpreter of a venv with langgraph (e.g. /tmp/peers-venv)"
    )
    args = parser.parse_args()
    langgraph: list[dict[str, Any]] = []

    def on_round(index: int) -> None:
        if args.langgraph_python:
            langgraph.append(langgraph_round(args.langgraph_python, args.round_s))
        print(f"  round {index + 1}/{args.rounds} done", flush=True)

    info = machine()
    if args.loop == "uvloop":
        import uvloop

        raw = uvloop.run(measure(args.rounds, args.round_s, on_round))
    else:
        raw = asyncio.run(measure(args.rounds, args.round_s, on_round))
    samples: dict[str, list[float]] = raw["us_per_step"]
    floor = samples["floor: await 5 coroutines"]
    summary = {name: median(values) for name, values in samples.items()}
    rows: list[list[object]] = []
    for name, values in samples.items():
        ratios = [v / f for v, f in zip(values, floor, strict=True)]
        rows.append([name, summary[name], f"{median(ratios):.0f}x"])
    result: dict[str, Any] = {"benchmark": "engine_steps", "machine": info}
    result.update(settings=vars(args), loop=args.loop, median_us_per_step=summary, raw=raw)
    ratio = float("nan")
    if langgraph:
        lg = [r["us_per_step"] for r in langgraph]
        ours = samples["sequential 5 steps"]
        ratio = median([theirs / mine for theirs, mine in zip(lg, ours, strict=True)])
        rows.append([f"LangGraph {langgraph[0]['langgraph']} StateGraph 5 nodes", median(lg), ""])
        result["langgraph"] = {"runs": langgraph, "median_us_per_step": median(lg)}
        result["langgraph"]["ratio_langgraph_over_sequential"] = ratio
    print()
    print(f"µs per step, median of {args.rounds} rounds, loop: {args.loop}")
    print_table(["variant", "µs/step", "vs floor"], rows)
    sequential = summary["sequential 5 steps"]
    verdict = "meets" if sequential <= args.target_us else "MISSES"
    print(f"sequential: {sequential:.2f} µs/step ({verdict} the ≤ {args.target_us:g} µs target)")
    if langgraph:
        print(f"LangGraph / surgeflow (sequential): {ratio:.1f}x")
    print(f"results: {write_results('engine_steps', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
