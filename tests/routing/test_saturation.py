"""Routing once every slot is taken: calls waiting for a slot count against their endpoint."""

from __future__ import annotations

import asyncio

import pytest

from surgeflow.config import EndpointSettings, ModelSettings, Settings, SimulatedSettings
from surgeflow.models import ChatRequest, Message
from surgeflow.service import build_model_client


@pytest.mark.parametrize("policy", ["p2c_ewma", "least_connections"])
async def test_queued_calls_are_spread_over_saturated_endpoints(policy: str) -> None:
    slow = SimulatedSettings(ttft_ms=500, tokens_per_s=0, latency="constant")
    endpoints = [
        EndpointSettings(name=name, max_concurrency=2, max_queue=100, simulated=slow)
        for name in ("a", "b")
    ]
    settings = Settings(models=[ModelSettings(name="m", endpoints=endpoints, policy=policy)])
    client = build_model_client(settings)
    client.start()
    a, b = client.routers["m"].endpoints
    # "a" looks a little faster: a policy that saw only the calls holding slots would send every
    # queued call to it, behind its two running ones, and leave "b"'s queue empty.
    a.latency.observe(0.010)
    b.latency.observe(0.011)
    request = ChatRequest(model="m", messages=[Message(role="user", content="hi")], temperature=1)
    calls = [asyncio.create_task(client.chat(request)) for _ in range(8)]
    try:
        for _ in range(100):
            await asyncio.sleep(0.01)
            if sum(e.limits.waiting for e in (a, b) if e.limits) == 4:
                break
        assert a.limits is not None
        assert b.limits is not None
        assert (a.limits.inflight, b.limits.inflight) == (2, 2)
        assert (a.limits.waiting, b.limits.waiting) == (2, 2)
        assert (a.inflight, b.inflight) == (4, 4)  # running and waiting, as the policies see it
    finally:
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        await client.aclose()
    assert (a.inflight, b.inflight) == (0, 0)  # cancelled waiters and runners both let go
