"""``surgeflow mock-llm`` as a real process, driven by the openai package and raw HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
import pytest_asyncio

from surgeflow.mockllm import DRAIN_S
from tests.mockllm import MockLLM, mock_llm, mock_llm_in_process

# One server process for the module (starting one costs most of a second); each test resets its
# knobs, and reads the stats as differences.
pytestmark = pytest.mark.asyncio(loop_scope="module")

MESSAGES: list[Any] = [{"role": "user", "content": "How should a gateway balance replicas?"}]
CHAT = {"model": "mock", "messages": MESSAGES}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared() -> AsyncIterator[MockLLM]:
    async with mock_llm(ttft_ms=5, tokens_per_s=5000, seed=1) as mock:
        yield mock


@pytest_asyncio.fixture(loop_scope="module")
async def mock(shared: MockLLM) -> AsyncIterator[MockLLM]:
    defaults = await shared.config()
    yield shared
    await shared.configure(**defaults)


def client(mock: MockLLM, timeout_s: float = 10.0) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=mock.url, api_key="any-key-will-do", max_retries=0, timeout=timeout_s
    )


async def post_chat(mock: MockLLM, **fields: Any) -> tuple[int, dict[str, Any]]:
    async with mock.http.post(f"{mock.url}/chat/completions", json={**CHAT, **fields}) as response:
        return response.status, await response.json()


async def wait_for_stats(mock: MockLLM, done: Any, polls: int = 150) -> dict[str, Any]:
    """The server's stats once ``done(stats)``, or after ``polls`` polls 20 ms apart."""
    for _ in range(polls):
        stats = await mock.stats()
        if done(stats):
            break
        await asyncio.sleep(0.02)
    return stats


async def stream_text(openai_client: openai.AsyncOpenAI) -> str:
    stream = await openai_client.chat.completions.create(
        model="mock", messages=MESSAGES, stream=True
    )
    return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])


def route(stats: dict[str, Any], name: str = "POST /v1/chat/completions") -> dict[str, Any]:
    empty = {"requests": 0, "inflight": 0, "client_gone": 0, "statuses": {}}
    found: dict[str, Any] = stats["routes"].get(name, empty)
    return found


async def test_the_openai_package_chats_streams_and_lists_models(mock: MockLLM) -> None:
    async with client(mock) as openai_client:
        reply = await openai_client.chat.completions.create(model="mock", messages=MESSAGES)
        stream = await openai_client.chat.completions.create(
            model="mock", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
        models = [model.id async for model in openai_client.models.list()]

    text = reply.choices[0].message.content
    assert text is not None
    assert text.startswith("Regarding gateway balance replicas:")
    assert reply.usage is not None
    assert reply.usage.completion_tokens == len(text.split())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].usage == reply.usage
    assert models == ["mock"]


async def test_error_rate_one_answers_500_with_an_openai_error(mock: MockLLM) -> None:
    await mock.configure(error_rate=1.0)

    async with client(mock) as openai_client:
        with pytest.raises(openai.InternalServerError) as caught:
            await openai_client.chat.completions.create(model="mock", messages=MESSAGES)
    status, body = await post_chat(mock, stream=True)

    assert caught.value.status_code == 500
    assert caught.value.response.json()["error"]["type"] == "server_error"
    assert status == 500  # a stream that fails before its first chunk gets a status too
    assert "simulated upstream failure" in body["error"]["message"]


async def test_rate_429_answers_with_retry_after(mock: MockLLM) -> None:
    await mock.configure(rate_429=1.0, retry_after_s=2)

    async with mock.http.post(f"{mock.url}/chat/completions", json=CHAT) as response:
        body = await response.json()
    async with client(mock) as openai_client:
        with pytest.raises(openai.RateLimitError):
            await openai_client.chat.completions.create(model="mock", messages=MESSAGES)

    assert response.status == 429
    assert response.headers["Retry-After"] == "2"
    assert response.headers["retry-after-ms"] == "2000"
    assert body["error"]["type"] == "rate_limit_exceeded"


async def test_a_hang_times_the_client_out_and_frees_the_call(mock: MockLLM) -> None:
    before = await mock.stats()
    await mock.configure(hang_rate=1.0)

    async with client(mock, timeout_s=0.3) as openai_client:
        with pytest.raises(openai.APITimeoutError):
            await openai_client.chat.completions.create(model="mock", messages=MESSAGES)
        with pytest.raises(openai.APITimeoutError):
            await stream_text(openai_client)

    # The clients hung up; the server notices and cancels the calls rather than hold them.
    after = await wait_for_stats(mock, lambda s: s["inflight"] == 0)
    assert after["inflight"] == 0
    assert after["backend"]["inflight"] == 0
    assert after["injected"]["hangs"] - before["injected"]["hangs"] == 2
    assert route(after)["client_gone"] - route(before)["client_gone"] == 2


async def test_knobs_change_at_run_time(mock: MockLLM) -> None:
    assert (await post_chat(mock))[0] == 200

    config = await mock.configure(error_rate=1.0)
    assert config["error_rate"] == 1.0
    assert (await post_chat(mock))[0] == 500

    await mock.configure(error_rate=0.0)
    assert (await post_chat(mock))[0] == 200


async def test_healthz_answers_503_while_unhealthy(mock: MockLLM) -> None:
    async def health() -> int:
        async with mock.http.get(f"{mock.root}/healthz") as response:
            return response.status

    assert await health() == 200
    await mock.configure(unhealthy=True)
    assert await health() == 503
    assert (await post_chat(mock))[0] == 200  # unhealthy is what the probe sees, nothing else
    await mock.configure(unhealthy=False)
    assert await health() == 200


async def test_slow_factor_scales_latency(mock: MockLLM) -> None:
    async def fastest_s() -> float:
        timings = []
        for _ in range(3):
            started = time.perf_counter()
            assert (await post_chat(mock))[0] == 200
            timings.append(time.perf_counter() - started)
        return min(timings)

    await mock.configure(ttft_ms=40, tokens_per_s=0)
    normal_s = await fastest_s()
    await mock.configure(slow_factor=5)
    slow_s = await fastest_s()

    # The event loop's timers may fire a little early against perf_counter: a 5 % margin.
    assert normal_s >= 0.038
    assert slow_s >= 0.19  # 5 x 40 ms
    assert slow_s > 2 * normal_s  # 5x in theory; the margin is for a busy machine


async def test_stats_count_what_happened(mock: MockLLM) -> None:
    before = await mock.stats()
    await mock.configure(error_rate=0.5)

    statuses = [(await post_chat(mock))[0] for _ in range(20)]
    async with mock.http.get(f"{mock.root}/healthz"):
        pass

    after = await mock.stats()
    chat_before, chat_after = route(before), route(after)
    assert chat_after["requests"] - chat_before["requests"] == 20
    for status in (200, 500):
        gained = chat_after["statuses"].get(str(status), 0) - chat_before["statuses"].get(
            str(status), 0
        )
        assert gained == statuses.count(status)
    assert 0 < statuses.count(500) < 20
    assert after["injected"]["errors"] - before["injected"]["errors"] == statuses.count(500)
    assert route(after, "GET /healthz")["requests"] == route(before, "GET /healthz")["requests"] + 1
    assert after["requests"] - before["requests"] == 20  # chat completions only
    assert after["inflight"] == 0


async def test_a_bad_knob_is_a_400_and_changes_nothing(mock: MockLLM) -> None:
    before = await mock.config()

    async def post_config(body: bytes) -> tuple[int, str]:
        async with mock.http.post(f"{mock.root}/admin/config", data=body) as response:
            return response.status, (await response.json())["error"]["message"]

    assert await post_config(b'{"error_rate": 0.5, "bogus": 1}') == (
        400,
        "unknown knob 'bogus'; the knobs are capacity, error_rate, hang_rate, jitter, latency, "
        "rate_429, rate_limit_rps, reply_tokens, retry_after_s, slow_factor, tokens_per_s, "
        "ttft_ms, unhealthy",
    )
    status, message = await post_config(b'{"error_rate": 0.5, "hang_rate": 2}')
    assert status == 400
    assert "hang_rate" in message
    assert (await post_config(b'{"latency": "gaussian"}'))[0] == 400
    assert (await post_config(b'{"unhealthy": "yes"}'))[0] == 400
    assert (await post_config(b"[1, 2]"))[0] == 422
    assert (await post_config(b"{nope"))[0] == 400
    with pytest.raises(ValueError, match="slow_factor"):
        await mock.configure(slow_factor=0)
    assert await mock.config() == before


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b'{"model": "mock", "messages": [', 400, "malformed JSON"),
        (b"", 400, "empty"),
        (b'{"model": "mock"}', 422, "messages"),
        (b'{"model": "mock", "messages": [{"role": "robot", "content": "x"}]}', 422, "role"),
        (b'{"model": "mock", "messages": []}', 422, "at least one message"),
    ],
)
async def test_malformed_requests_get_json_errors(
    mock: MockLLM, body: bytes, status: int, says: str
) -> None:
    headers = {"Content-Type": "application/json"}
    async with mock.http.post(f"{mock.url}/chat/completions", data=body, headers=headers) as r:
        error = (await r.json())["error"]

    assert r.status == status
    assert says in error["message"]


async def test_wrong_routes_and_methods(mock: MockLLM) -> None:
    async with mock.http.get(f"{mock.url}/chat/completions") as response:
        assert response.status == 405
        assert response.headers["Allow"] == "POST"
    async with mock.http.get(f"{mock.url}/embeddings") as response:
        assert response.status == 404
        assert "GET /v1/models" in (await response.json())["error"]["message"]


async def test_api_key_when_set_is_required_on_v1_routes_only() -> None:
    async with mock_llm_in_process(api_key="sk-mock", ttft_ms=0, tokens_per_s=0) as mock:

        async def status(path: str, key: str | None) -> int:
            headers = {} if key is None else {"Authorization": f"Bearer {key}"}
            async with mock.http.get(f"{mock.root}{path}", headers=headers) as response:
                return response.status

        assert await status("/v1/models", None) == 401
        assert await status("/v1/models", "sk-wrong") == 401
        assert await status("/v1/models", "sk-mock") == 200
        assert await status("/healthz", None) == 200
        async with openai.AsyncOpenAI(base_url=mock.url, api_key="sk-mock") as openai_client:
            reply = await openai_client.chat.completions.create(model="mock", messages=MESSAGES)
        assert reply.choices[0].message.content


async def test_sigterm_cuts_hung_calls_and_exits_0() -> None:
    async with aiohttp.ClientSession() as http:
        async with mock_llm(hang_rate=1.0, model=["a", "b"]) as mock:
            url = f"{mock.url}/chat/completions"
            pending = asyncio.create_task(http.post(url, json={**CHAT, "model": "any"}))
            await wait_for_stats(mock, lambda s: s["inflight"] == 1)
            stopping = time.monotonic()
        stopped_s = time.monotonic() - stopping
        response = await pending
        async with response:
            body = await response.json()

    assert mock.process is not None
    assert mock.process.returncode == 0
    assert stopped_s < DRAIN_S + 2.5
    assert response.status == 503  # not left hanging: the drain ran out and cut it
    assert "shutting down" in body["error"]["message"]
