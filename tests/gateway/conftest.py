import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from surgeflow.config import ServerSettings, Settings, StoreSettings, WorkerSettings
from surgeflow.server import running_gateway
from surgeflow.service import Service
from surgeflow.workflow import Context, Workflow, step

API_KEY = "sf-test-key"


@step
async def greet(ctx: Context) -> str:
    return f"hello {ctx.input['name']}"


@step
async def nap(ctx: Context) -> str:
    await asyncio.sleep(float(ctx.input.get("seconds", 0.2)))
    return "rested"


@step
async def explode(ctx: Context) -> None:
    raise RuntimeError("this step always fails")


TEST_WORKFLOWS = {
    "greet": Workflow("greet", greet, description="says hello"),
    "nap": Workflow("nap", nap),
    "explode": Workflow("explode", explode),
}


def make_service(tmp_path: Path, **settings_overrides: object) -> Service:
    defaults: dict[str, object] = {
        "store": StoreSettings(url=f"sqlite:///{tmp_path / 'gateway.db'}"),
        "server": ServerSettings(max_body_bytes=64 * 1024, invoke_timeout_s=2.0),
        "worker": WorkerSettings(poll_interval_s=0.05),
    }
    settings = Settings(**(defaults | settings_overrides))  # type: ignore[arg-type]
    return Service(settings, workflows=TEST_WORKFLOWS, api_keys=[API_KEY])


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    async with make_service(tmp_path) as service:
        yield service


@pytest.fixture
async def base_url(service: Service) -> AsyncIterator[str]:
    async with running_gateway(service) as url:
        yield url


@pytest.fixture
async def http(base_url: str) -> AsyncIterator[aiohttp.ClientSession]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with aiohttp.ClientSession(base_url, headers=headers) as session:
        yield session
