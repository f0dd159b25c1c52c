"""Routing under trouble: a slow replica (p2c_ewma vs round_robin) and a failing one (retries).

Three ``surgeflow mock-llm`` processes on loopback serve the model. Load is open-loop: requests
start on a Poisson schedule at ``--rate`` per second whatever the answers do, and each latency is
measured from the request's intended start. Every round runs every variant once, interleaved.

1. slow: one endpoint answers 5× slower, so it saturates first. p2c_ewma vs round_robin:
   throughput, p50, p99.
2. failing: one endpoint fails 30 % of calls. Client-visible error rate with retries, and the
   extra upstream load the retries cost, against the retry budget (``budget_ratio``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
from _common import PYTHON, child_process, free_port, machine, median, print_table, write_results

from surgeflow.config import EndpointSettings, ModelSettings, RetrySettings
from surgeflow.models.client import ModelClient
from surgeflow.models.openai_http import OpenAIHTTPBackend
from surgeflow.models.types import ChatRequest, Message

# Each replica serves 4 calls at once (its batch slots); more wait in its queue, as on a real
# model server. A fast replica answers in about 35 ms, so it serves about 110 calls/s; the slow one
# (5× slower) about 22.
MOCK_ARGS = [
    "--ttft-ms",
    "20",
    "--tokens-per-s",
    "2000",
    "--latency",
    "constant",
    "--capacity",
    "4",
]


async def _stats(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/admin/stats") as response:
        stats: dict[str, Any] = await response.json()
        return stats


def _client(urls: Sequence[str], policy: str, retry: RetrySettings) -> ModelClient:
    backends = [OpenAIHTTPBackend(f"ep{i}", f"{url}/v1") for i, url in enumerate(urls)]
    settings = ModelSettings(
        name="mock",
        endpoints=[EndpointSettings(url=f"{url}/v1", name=f"ep{i}") for i, url in enumerate(urls)],
        policy=policy,  # type: ignore[arg-type]
        retry=retry,
    )
    return ModelClient({"mock": backends}, settings={"mock": settings})


async def _load(client: ModelClient, rate: float, duration_s: float, seed: int) -> dict[str, Any]:
    """Open-loop Poisson arrivals; latency counted from each request's scheduled start."""
    rng = random.Random(seed)
    latencies: list[float] = []
    errors = 0
    tasks: list[asyncio.Task[None]] = []

    async def one(scheduled: float, n: int) -> None:
        nonlocal errors
        request = ChatRequest(
            model="mock", messages=[Message(role="user", content=f"question number {n}")]
        )
        try:
            await client.chat(request, timeout_s=10)
        except Exception:
            errors += 1
            return
        latencies.append(time.monotonic() - scheduled)

    start = time.monotonic()
    scheduled = start
    n = 0
    while scheduled < start + duration_s:
        scheduled += rng.expovariate(rate)
        delay = scheduled - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(scheduled, n)))
        n += 1
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - start
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0

    return {
        "requests": n,
        "errors": errors,
        "throughput": len(latencies) / elapsed,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
    }


async def _slow_round(urls: Sequence[str], args: argparse.Namespace, seed: int) -> dict[str, Any]:
    results = {}
    for policy in ("round_robin", "p2c_ewma"):
        async with _client(urls, policy, RetrySettings(attempts=1)) as client:
            results[policy] = await _load(client, args.rate, args.duration_s, seed)
    return results


async def _failing_round(
    urls: Sequence[str], args: argparse.Namespace, seed: int
) -> dict[str, Any]:
    before = [(await _stats(url))["requests"] for url in urls]
    retry = RetrySettings(attempts=3, backoff_s=0.005, budget_ratio=0.2, min_per_s=10)
    async with _client(urls, "round_robin", retry) as client:
        outcome = await _load(client, args.rate, args.duration_s, seed)
        router = client.routers["mock"]
        outcome["retries"] = router.retries
    after = [(await _stats(url))["requests"] for url in urls]
    upstream = sum(a - b for a, b in zip(after, before, strict=True))
    outcome["upstream_requests"] = upstream
    outcome["extra_load"] = upstream / outcome["requests"] - 1
    outcome["error_rate"] = outcome["errors"] / outcome["requests"]
    return outcome


async def _configure(url: str, **knobs: Any) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{url}/admin/config", json=knobs) as response,
    ):
        response.raise_for_status()


async def main_async(args: argparse.Namespace, urls: Sequence[str]) -> dict[str, Any]:
    slow_rounds, failing_rounds = [], []
    for round_no in range(args.rounds):
        await _configure(urls[0], slow_factor=5.0, error_rate=0.0)
        slow_rounds.append(await _slow_round(urls, args, seed=round_no))
        await _configure(urls[0], slow_factor=1.0, error_rate=0.3)
        failing_rounds.append(await _failing_round(urls, args, seed=round_no))
        print(f"  round {round_no + 1}/{args.rounds} done", flush=True)

    def med(rounds: list[dict[str, Any]], *path: str) -> float:
        values = []
        for r in rounds:
            value: Any = r
            for part in path:
                value = value[part]
            values.append(float(value))
        return median(values)

    slow = {
        policy: {m: med(slow_rounds, policy, m) for m in ("throughput", "p50_ms", "p99_ms")}
        for policy in ("round_robin", "p2c_ewma")
    }
    ratios = [r["round_robin"]["p99_ms"] / r["p2c_ewma"]["p99_ms"] for r in slow_rounds]
    failing = {
        m: med(failing_rounds, m)
        for m in ("requests", "errors", "error_rate", "retries", "upstream_requests", "extra_load")
    }
    return {
        "slow": slow,
        "p99_ratio_rr_over_p2c": median(ratios),
        "failing": failing,
        "raw": {"slow": slow_rounds, "failing": failing_rounds},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=120.0, help="requests per second")
    parser.add_argument("--duration-s", type=float, default=8.0)
    args = parser.parse_args()
    ports = [free_port() for _ in range(3)]
    with contextlib.ExitStack() as stack:
        urls = []
        for i, port in enumerate(ports):
            command = [PYTHON, "-m", "surgeflow", "mock-llm", "--port", str(port), "--seed", str(i)]
            stack.enter_context(child_process(f"mock-llm {i}", [*command, *MOCK_ARGS], port=port))
            urls.append(f"http://127.0.0.1:{port}")
        results = asyncio.run(main_async(args, urls))
    slow = results["slow"]
    print_table(
        ["slow replica", "req/s", "p50 ms", "p99 ms"],
        [
            [p, f"{v['throughput']:.1f}", f"{v['p50_ms']:.1f}", f"{v['p99_ms']:.1f}"]
            for p, v in slow.items()
        ],
    )
    print(f"p99 round_robin / p2c_ewma (median of rounds): {results['p99_ratio_rr_over_p2c']:.2f}×")
    f = results["failing"]
    print(
        f"failing replica (30 %): error rate {f['error_rate'] * 100:.3f} % "
        f"({f['errors']:.0f}/{f['requests']:.0f}), retries {f['retries']:.0f}, "
        f"extra upstream load {f['extra_load'] * 100:.1f} % (budget 20 % + 10/s)"
    )
    payload = {"benchmark": "routing_resilience", "machine": machine(), "settings": vars(args)}
    path = write_results("routing_resilience", {**payload, **results})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
