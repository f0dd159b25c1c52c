"""``surgeflow demo``: the embedded service under a burst of concurrent traffic, over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
import tempfile
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from surgeflow.config import Settings, StoreSettings
from surgeflow.server import running_gateway
from surgeflow.service import Service

CUSTOMER_MESSAGES = [
    "Where is my order? It was supposed to arrive yesterday.",
    "How do I get a refund for a damaged blender?",
    "Can I return shoes I bought three weeks ago?",
    "How long does shipping to Canada take?",
    "My card was charged twice for the same order!",
    "I forgot my password and cannot log in.",
    "Is the X200 headphone compatible with iPhone?",
    "This is the third time my parcel is late, I am furious and want to speak to a manager.",
    "Do you ship internationally?",
    "How can I change the delivery address of my order?",
    "Which payment methods do you accept?",
    "asdf qwerty zxcv",
]


def _profile_ids() -> list[str]:
    data = resources.files("surgeflow.agents").joinpath("data/profiles.json").read_text("utf-8")
    return [profile["id"] for profile in json.loads(data)]


@dataclass
class Tally:
    """Outcomes and latencies of one agent's requests."""

    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    sample: Any = None
    sample_input: Any = None

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def _workload(requests: int) -> list[tuple[str, dict[str, Any]]]:
    users = itertools.cycle(_profile_ids())
    messages = itertools.cycle(CUSTOMER_MESSAGES)
    work: list[tuple[str, dict[str, Any]]] = []
    for _ in range(requests):
        work.append(("customer_service", {"message": next(messages)}))
        work.append(("recommendation", {"user_id": next(users), "limit": 3}))
    return work


async def run_demo(
    console: Console,
    *,
    requests: int = 200,
    concurrency: int = 32,
    runs: int = 25,
    serve: bool = False,
    port: int = 0,
) -> None:
    """Start the embedded service, drive it over HTTP, print what happened."""
    with tempfile.TemporaryDirectory(prefix="surgeflow-demo-") as tmp:
        settings = Settings(store=StoreSettings(url=f"sqlite:///{Path(tmp) / 'demo.db'}"))
        api_key = "sf-demo-" + secrets.token_urlsafe(16)
        service = Service(settings, api_keys=[api_key])
        console.print(
            f"[bold]surgeflow demo[/bold]: embedded service, models {service.models.models()}, "
            f"workflows {sorted(service.workflows)}"
        )
        async with service, running_gateway(service, port=port) as url:
            headers = {"Authorization": f"Bearer {api_key}"}
            connector = aiohttp.TCPConnector(limit=concurrency)
            async with aiohttp.ClientSession(url, headers=headers, connector=connector) as http:
                tallies, elapsed_s = await _burst(console, http, requests, concurrency)
                durable = await _durable(console, http, runs) if runs else None
            _summary(console, tallies, elapsed_s, durable)
            if serve:
                console.print(
                    f"\nserving on [bold]{url}[/bold] with API key [bold]{api_key}[/bold]"
                )
                console.print(f"try: curl -H 'Authorization: Bearer {api_key}' {url}/v1/workflows")
                console.print(f"live dashboard: {url}/dashboard   metrics: {url}/metrics")
                console.print("Ctrl-C to stop")
                await _wait_forever()


async def _burst(
    console: Console, http: aiohttp.ClientSession, requests: int, concurrency: int
) -> tuple[dict[str, Tally], float]:
    work = _workload(requests)
    tallies = {"customer_service": Tally(), "recommendation": Tally()}
    queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
    for item in work:
        queue.put_nowait(item)
    progress = Progress(
        TextColumn("invoking agents"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>7.1f} req/s"),
        TimeElapsedColumn(),
        console=console,
    )
    started = time.perf_counter()
    with progress:
        task = progress.add_task("burst", total=len(work), rate=0.0)

        async def client() -> None:
            while not queue.empty():
                agent, payload = queue.get_nowait()
                tally = tallies[agent]
                sent = time.perf_counter()
                try:
                    async with http.post(
                        f"/v1/workflows/{agent}/invoke", json={"input": payload}
                    ) as response:
                        body = await response.json()
                    ok = response.status == 200 and body.get("status") == "succeeded"
                except aiohttp.ClientError:
                    ok, body = False, None
                tally.latencies_ms.append((time.perf_counter() - sent) * 1000)
                if not ok:
                    tally.errors += 1
                elif tally.sample is None and _interesting(agent, body["output"]):
                    tally.sample, tally.sample_input = body["output"], payload
                done = sum(len(t.latencies_ms) for t in tallies.values())
                progress.update(task, completed=done, rate=done / (time.perf_counter() - started))

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return tallies, time.perf_counter() - started


def _interesting(agent: str, output: dict[str, Any]) -> bool:
    # Show a drafted answer rather than an escalation as the customer-service sample.
    return agent != "customer_service" or not output.get("escalated", False)


async def _durable(console: Console, http: aiohttp.ClientSession, runs: int) -> dict[str, Any]:
    """Submit durable runs through the queue and wait until the worker has finished them all."""
    work = _workload(runs)
    started = time.perf_counter()
    ids: list[str] = []
    for agent, payload in work:
        async with http.post(f"/v1/workflows/{agent}/runs", json={"input": payload}) as response:
            ids.append((await response.json())["id"])
    statuses: dict[str, str] = {}
    with console.status(f"waiting for {len(ids)} durable runs …"):
        deadline = time.monotonic() + 60
        while len(statuses) < len(ids) and time.monotonic() < deadline:
            for run_id in ids:
                if run_id in statuses:
                    continue
                async with http.get(f"/v1/runs/{run_id}") as response:
                    run = await response.json()
                if run["status"] in ("succeeded", "failed", "cancelled", "dead"):
                    statuses[run_id] = run["status"]
            await asyncio.sleep(0.1)
    elapsed_s = time.perf_counter() - started
    events: list[str] = []
    async with http.get(f"/v1/runs/{ids[0]}/events") as response:
        async for line in response.content:
            if line.startswith(b"event: "):
                events.append(line[7:].strip().decode())
    return {
        "submitted": len(ids),
        "succeeded": sum(s == "succeeded" for s in statuses.values()),
        "unfinished": len(ids) - len(statuses),
        "elapsed_s": elapsed_s,
        "events": events,
    }


def _summary(
    console: Console, tallies: dict[str, Tally], elapsed_s: float, durable: dict[str, Any] | None
) -> None:
    total = sum(len(t.latencies_ms) for t in tallies.values())
    table = Table(title=f"{total} requests in {elapsed_s:.2f} s = {total / elapsed_s:.1f} req/s")
    for column in ("agent", "requests", "errors", "req/s", "p50 ms", "p95 ms", "p99 ms"):
        table.add_column(column, justify="left" if column == "agent" else "right")
    for agent, tally in tallies.items():
        table.add_row(
            agent,
            str(len(tally.latencies_ms)),
            str(tally.errors),
            f"{len(tally.latencies_ms) / elapsed_s:.1f}",
            f"{tally.percentile(50):.1f}",
            f"{tally.percentile(95):.1f}",
            f"{tally.percentile(99):.1f}",
        )
    console.print(table)
    for agent, tally in tallies.items():
        console.print(f"\n[bold]{agent}[/bold] sample for {tally.sample_input}:")
        console.print(_describe(agent, tally.sample))
    if durable is not None:
        console.print(
            f"\n[bold]durable runs[/bold]: {durable['succeeded']}/{durable['submitted']} succeeded "
            f"through the queue in {durable['elapsed_s']:.2f} s"
            + (f", {durable['unfinished']} unfinished" if durable["unfinished"] else "")
        )
        console.print(f"events of one run: {' → '.join(durable['events'])}")


def _describe(agent: str, output: Any) -> str:
    if output is None:
        return "  (no successful answer)"
    if agent == "customer_service":
        return (
            f"  intent={output.get('intent')} confidence={output.get('confidence', 0):.2f} "
            f"escalated={output.get('escalated')}\n  answer: {output.get('answer')}"
        )
    picks = ", ".join(f"{p.get('name')} ({p.get('score', 0):.2f})" for p in output.get("picks", []))
    return f"  picks: {picks}\n  explanation: {output.get('explanation')}"


async def _wait_forever() -> None:
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.Event().wait()
