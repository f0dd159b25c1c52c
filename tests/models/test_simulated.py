"""SimulatedBackend: deterministic replies, the latency model, injected failures, run-time knobs."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from surgeflow.errors import (
    ConfigError,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from surgeflow.models import ChatChunk, ChatRequest, Message, ModelBackend, SimulatedBackend
from surgeflow.models.simulated import Knobs, compose_reply, count_tokens

from .conftest import collect


def request(
    text: str = "How should caching work for agent workflows?", **fields: Any
) -> ChatRequest:
    return ChatRequest(model="sim", messages=[Message(role="user", content=text)], **fields)


def instant(name: str = "sim", **options: Any) -> SimulatedBackend:
    return SimulatedBackend(name, ttft_ms=0, tokens_per_s=0, **options)


def text_of(chunks: list[ChatChunk]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every ``asyncio.sleep`` delay requested during the test (the sleeps still happen)."""
    recorded: list[float] = []
    real_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    async def sleep(delay: float) -> None:
        recorded.append(delay)
        await real_sleep(delay)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    return recorded


def test_is_a_model_backend() -> None:
    assert isinstance(instant(), ModelBackend)


async def test_same_prompt_same_reply_on_any_replica() -> None:
    first = await instant("a", seed=1).chat(request("Explain vector database indexing"))
    second = await instant("b", seed=2).chat(request("Explain vector database indexing"))

    assert first.text == second.text
    assert first.text.startswith("Regarding vector database indexing:")


async def test_different_prompts_differ() -> None:
    backend = instant()
    texts = {
        (await backend.chat(request(f"Question number {i} about queues"))).text for i in range(50)
    }

    assert len(texts) == 50


async def test_usage_counts_whitespace_words() -> None:
    reply = await instant().chat(request("one two three four"))

    assert reply.usage is not None
    assert reply.usage.prompt_tokens == 4
    assert reply.usage.completion_tokens == len(reply.text.split())
    assert reply.usage.total_tokens == 4 + reply.usage.completion_tokens
    assert reply.choices[0].finish_reason == "stop"


async def test_max_tokens_caps_the_reply() -> None:
    reply = await instant(reply_tokens=(40, 40)).chat(request(max_tokens=5))

    assert len(reply.text.split()) == 5
    assert reply.choices[0].finish_reason == "length"


@given(
    text=st.text(max_size=200),
    bounds=st.tuples(st.integers(1, 300), st.integers(0, 300)).map(lambda b: (b[0], b[0] + b[1])),
)
def test_compose_reply_respects_bounds_and_is_deterministic(
    text: str, bounds: tuple[int, int]
) -> None:
    messages = [Message(role="system", content="Be brief."), Message(role="user", content=text)]

    words = compose_reply(messages, *bounds)

    assert bounds[0] <= len(words) <= bounds[1]
    assert all(word and not any(c.isspace() for c in word) for word in words)
    assert words == compose_reply(messages, *bounds)
    assert count_tokens([Message(role="assistant", content=" ".join(words))]) == len(words)


async def test_stream_reassembles_to_the_chat_text() -> None:
    backend = instant()
    req = request(stream_options={"include_usage": True})

    reply = await backend.chat(req)
    chunks = [chunk async for chunk in backend.stream(req)]

    assert text_of(chunks) == reply.text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage == reply.usage
    assert len({chunk.id for chunk in chunks}) == 1


async def test_stream_without_include_usage_has_no_usage_chunk() -> None:
    chunks = [chunk async for chunk in instant().stream(request())]

    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(chunk.usage is None for chunk in chunks)


async def test_zero_latency_never_sleeps(sleeps: list[float]) -> None:
    backend = instant()

    await backend.chat(request())
    _ = [chunk async for chunk in backend.stream(request())]

    assert sleeps == []


async def test_chat_takes_ttft_plus_tokens_over_rate() -> None:
    backend = SimulatedBackend("sim", ttft_ms=50, tokens_per_s=200, reply_tokens=(20, 20))
    started = time.perf_counter()

    await backend.chat(request())

    elapsed_s = time.perf_counter() - started
    assert 0.14 <= elapsed_s < 0.5  # 0.05 + 20 / 200 = 0.15 s


async def test_stream_paces_tokens_and_batches_its_sleeps(sleeps: list[float]) -> None:
    backend = SimulatedBackend("sim", ttft_ms=30, tokens_per_s=1000, reply_tokens=(100, 100))
    started = time.perf_counter()
    arrivals: list[float] = []

    async for _ in backend.stream(request()):
        arrivals.append(time.perf_counter() - started)

    assert 0.025 <= arrivals[0] < 0.3  # the role chunk waits for the first token's time
    assert 0.125 <= arrivals[-1] < 0.5  # 0.03 + 100 / 1000 = 0.13 s
    # 100 tokens over 100 ms: one sleep per ~10 ms tick, not one per token.
    assert len(sleeps) <= 15


async def test_slow_rate_sleeps_between_tokens() -> None:
    backend = SimulatedBackend("sim", ttft_ms=0, tokens_per_s=50, reply_tokens=(5, 5))
    started = time.perf_counter()

    chunks = [chunk async for chunk in backend.stream(request())]

    assert len(chunks) == 7
    assert 0.095 <= time.perf_counter() - started < 0.5  # 5 / 50 = 0.1 s


@pytest.mark.parametrize("latency", ["exponential", "lognormal"])
def test_random_ttft_has_the_configured_mean(latency: Any) -> None:
    backend = SimulatedBackend("sim", ttft_ms=80, latency=latency, jitter=0.6, seed=3)

    draws_s = [backend._draw_ttft_s() for _ in range(20_000)]

    assert statistics.fmean(draws_s) == pytest.approx(0.080, rel=0.05)
    assert statistics.pstdev(draws_s) > 0.02


async def test_timeout_cuts_a_slow_answer() -> None:
    backend = SimulatedBackend("sim", ttft_ms=2000)
    started = time.perf_counter()

    with pytest.raises(UpstreamTimeout):
        await backend.chat(request(), timeout_s=0.05)
    with pytest.raises(UpstreamTimeout):
        _ = [chunk async for chunk in backend.stream(request(), timeout_s=0.05)]

    assert time.perf_counter() - started < 0.5
    assert backend.inflight == 0


async def test_error_rate_is_seeded() -> None:
    async def statuses(backend: SimulatedBackend) -> list[int]:
        outcomes = []
        for _ in range(200):
            try:
                await backend.chat(request())
            except UpstreamError as exc:
                outcomes.append(exc.status)
            else:
                outcomes.append(200)
        return outcomes

    first = await statuses(instant(error_rate=0.3, seed=7))
    again = await statuses(instant(error_rate=0.3, seed=7))
    other = await statuses(instant(error_rate=0.3, seed=8))

    assert first == again
    assert first != other
    assert set(first) == {200, 500}
    assert 0.2 < first.count(500) / len(first) < 0.4


async def test_error_rate_one_fails_streams_too() -> None:
    with pytest.raises(UpstreamError):
        _ = [chunk async for chunk in instant(error_rate=1.0).stream(request())]


async def test_rate_limit_raises_with_a_retry_after() -> None:
    backend = instant(rate_limit_rps=20)
    for _ in range(20):  # the bucket holds one second's worth
        await backend.chat(request())

    with pytest.raises(RateLimited) as caught:
        await backend.chat(request())

    retry_after_s = caught.value.retry_after_s
    assert retry_after_s is not None
    assert 0 < retry_after_s <= 0.05
    assert caught.value.status == 429
    await asyncio.sleep(retry_after_s + 0.01)
    await backend.chat(request())


async def test_cancellation_leaves_nothing_in_flight() -> None:
    backend = SimulatedBackend("sim", ttft_ms=5000)
    task = asyncio.create_task(backend.chat(request()))
    await asyncio.sleep(0.01)
    assert backend.inflight == 1
    assert "inflight=1" in repr(backend)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert backend.inflight == 0


async def test_closed_backend_refuses_calls() -> None:
    backend = instant()
    await backend.aclose()

    with pytest.raises(UpstreamUnavailable):
        await backend.chat(request())


@pytest.mark.parametrize(
    "options",
    [
        {"ttft_ms": -1},
        {"tokens_per_s": -5},
        {"latency": "gaussian"},
        {"reply_tokens": (10, 5)},
        {"reply_tokens": (0, 5)},
        {"error_rate": 1.5},
        {"rate_limit_rps": 0},
        {"jitter": -0.1},
        {"rate_429": 1.5},
        {"hang_rate": -0.1},
        {"retry_after_s": -1},
        {"slow_factor": 0},
    ],
)
def test_bad_options_are_config_errors(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        SimulatedBackend("sim", **options)


def test_reply_restates_the_material_closest_to_the_question() -> None:
    system = (
        "You answer from the policy below.\n\n"
        "[a] Shipping takes five business days to most countries.\n\n"
        "[b] Refunds are paid back to the original card within ten days."
    )
    messages = [
        Message(role="system", content=system),
        Message(role="user", content="When will my refund reach my card?"),
    ]
    words = compose_reply(messages, 10, 40)
    text = " ".join(words)
    assert "Refunds are paid back to the original card within ten days." in text
    assert "Shipping" not in text.split("Refunds")[0]  # the closer passage comes first
    assert "You answer" not in text  # instructions are not material
    assert 10 <= len(words) <= 40


def test_closeness_counts_words_by_their_stems() -> None:
    # The question shares "long" and "take" with [a] as written, but "shipping" -> "ship",
    # "canada" and "takes" -> "take" with [b]: by stems [b] is closer.
    system = (
        "You answer from the policy below.\n\n"
        "[a] How long does delivery take?\nStandard delivery takes three to five business days.\n\n"
        "[b] Do you ship abroad?\nWe ship to Canada and Mexico; international delivery takes "
        "ten days."
    )
    messages = [
        Message(role="system", content=system),
        Message(role="user", content="How long does shipping to Canada take?"),
    ]
    text = " ".join(compose_reply(messages, 10, 20))
    assert text.split(": ", 1)[1].startswith("We ship to Canada and Mexico")  # [b] first


def test_a_cited_title_line_is_matched_but_not_restated() -> None:
    system = (
        "You answer from the policy below.\n\n"
        "[rf-05] My item arrived damaged or broken.\nSend us a photo within 14 days for a refund."
    )
    messages = [
        Message(role="system", content=system),
        Message(role="user", content="The blender arrived broken, what now?"),
    ]
    text = " ".join(compose_reply(messages, 8, 16))
    assert "Send us a photo within 14 days for a refund." in text
    assert "My item arrived" not in text


async def test_knobs_left_at_zero_draw_nothing() -> None:
    # So the new knobs do not shift the draws, and with them the runs, of existing setups.
    backend = instant(rate_429=0.0, hang_rate=0.0, error_rate=0.0)
    state = backend._random.getstate()

    await backend.chat(request())
    _ = [chunk async for chunk in backend.stream(request())]

    assert backend._random.getstate() == state


async def test_rate_429_is_seeded_and_says_when_to_retry() -> None:
    async def outcomes(seed: int) -> list[float | None]:
        backend = instant(rate_429=0.4, retry_after_s=2.5, seed=seed)
        seen: list[float | None] = []
        for _ in range(100):
            try:
                await backend.chat(request())
            except RateLimited as exc:
                seen.append(exc.retry_after_s)
            else:
                seen.append(None)
        assert backend.rate_limited == 100 - seen.count(None)
        assert backend.calls == seen.count(None)  # a 429 is refused, not served
        return seen

    first = await outcomes(5)

    assert first == await outcomes(5)
    assert first != await outcomes(6)
    assert set(first) == {None, 2.5}
    assert 25 < first.count(2.5) < 55


async def test_slow_factor_multiplies_every_latency(sleeps: list[float]) -> None:
    backend = SimulatedBackend("sim", ttft_ms=20, tokens_per_s=500, reply_tokens=(10, 10))

    await backend.chat(request())
    backend.configure(slow_factor=5)
    await backend.chat(request())
    await backend.chat(request(), timeout_s=10)

    assert sleeps == [pytest.approx(0.04), pytest.approx(0.2), pytest.approx(0.2)]


async def test_slow_factor_slows_streams() -> None:
    backend = SimulatedBackend("sim", ttft_ms=10, tokens_per_s=1000, reply_tokens=(20, 20))
    backend.configure(slow_factor=4)
    started = time.perf_counter()

    chunks = [chunk async for chunk in backend.stream(request())]

    assert len(chunks) == 22
    assert 0.115 <= time.perf_counter() - started < 0.6  # 4 x (0.01 + 20 / 1000) = 0.12 s


async def test_a_hung_chat_waits_until_cancelled() -> None:
    backend = instant(hang_rate=1.0)
    task = asyncio.create_task(backend.chat(request()))
    await asyncio.sleep(0.05)

    assert not task.done()
    assert backend.inflight == 1
    assert backend.hangs_injected == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert backend.inflight == 0


async def test_a_hung_call_still_honours_its_timeout() -> None:
    backend = instant(hang_rate=1.0)
    started = time.perf_counter()

    with pytest.raises(UpstreamTimeout):
        await backend.chat(request(), timeout_s=0.05)
    with pytest.raises(UpstreamTimeout):
        _ = [chunk async for chunk in backend.stream(request(), timeout_s=0.05)]

    assert time.perf_counter() - started < 0.5
    assert backend.inflight == 0


async def test_hung_streams_stop_before_the_first_chunk_or_midway() -> None:
    backend = instant(hang_rate=1.0, seed=3)
    received: list[list[ChatChunk]] = [[] for _ in range(40)]

    async def one(into: list[ChatChunk]) -> None:
        with pytest.raises(UpstreamTimeout):
            await collect(backend.stream(request(), timeout_s=0.05), into)

    await asyncio.gather(*(one(into) for into in received))

    before_first = sum(1 for chunks in received if not chunks)
    assert 10 <= before_first <= 30  # about half
    for chunks in received:
        assert all(c.choices[0].finish_reason is None for c in chunks)  # never finished
        if chunks:
            assert chunks[0].choices[0].delta.role == "assistant"
    assert backend.hangs_injected == 40
    assert backend.inflight == 0


async def test_configure_changes_behaviour_at_run_time() -> None:
    backend = instant()
    await backend.chat(request())

    knobs = backend.configure(error_rate=1.0)
    assert isinstance(knobs, Knobs)
    assert knobs.error_rate == 1.0
    assert backend.knobs == knobs
    with pytest.raises(UpstreamError):
        await backend.chat(request())
    assert backend.errors_injected == 1

    backend.configure(error_rate=0.0, reply_tokens=[5, 5])  # a JSON list is fine
    assert len((await backend.chat(request())).text.split()) == 5


async def test_configure_sets_and_lifts_the_rate_limit() -> None:
    backend = instant()
    backend.configure(rate_limit_rps=2)
    await backend.chat(request())
    await backend.chat(request())
    with pytest.raises(RateLimited):
        await backend.chat(request())

    backend.configure(rate_limit_rps=None)
    for _ in range(10):
        await backend.chat(request())


@pytest.mark.parametrize(
    ("knobs", "says"),
    [
        ({"bogus": 1}, "unknown knob 'bogus'; the knobs are capacity, error_rate, hang_rate"),
        ({"seed": 1}, "unknown knob 'seed'"),
        ({"error_rate": 0.1, "hang_rate": 2}, "Expected `float` <= 1.0 - at `$.hang_rate`"),
        ({"slow_factor": 0}, "slow_factor"),
        ({"latency": "gaussian"}, "latency"),
        ({"ttft_ms": "fast"}, "Expected `float`, got `str` - at `$.ttft_ms`"),
        ({"error_rate": True}, "error_rate"),
        ({"reply_tokens": (9, 3)}, "reply_tokens"),
    ],
)
def test_configure_refuses_bad_knobs_and_changes_none(knobs: dict[str, Any], says: str) -> None:
    backend = instant()
    before = backend.knobs

    with pytest.raises(ConfigError) as caught:
        backend.configure(**knobs)

    assert says in str(caught.value)
    assert str(caught.value).startswith("sim: ")
    assert backend.knobs == before


async def test_capacity_queues_calls_beyond_it_in_order() -> None:
    backend = SimulatedBackend("cap", ttft_ms=50, tokens_per_s=0, capacity=2)
    finished: list[int] = []

    async def call(n: int) -> None:
        await backend.chat(
            ChatRequest(model="m", messages=[Message(role="user", content=f"call {n}")])
        )
        finished.append(n)

    started = time.monotonic()
    await asyncio.gather(*(call(n) for n in range(6)))
    elapsed = time.monotonic() - started
    assert elapsed >= 0.14  # three waves of two, 50 ms each
    assert sorted(finished[:2]) == [0, 1]  # first come, first served
    assert backend.serving == 0
    late = ChatRequest(model="m", messages=[Message(role="user", content="late")])
    outcomes = await asyncio.gather(
        *(backend.chat(late, timeout_s=0.06) for _ in range(6)), return_exceptions=True
    )
    assert any("queued past" in str(o) for o in outcomes)  # waiting counts against the timeout
    assert backend.serving == 0
