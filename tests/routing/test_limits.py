"""Endpoint limits: token buckets, slots and their bounded FIFO queue, budgets, 429 cooldown."""

from __future__ import annotations

import asyncio
import math
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from surgeflow.config import EndpointSettings, SimulatedSettings
from surgeflow.errors import Overloaded
from surgeflow.routing.limits import EndpointLimits, TokenBucket
from tests.routing.clock import FakeClock


def limits(clock: FakeClock | None = None, **fields: Any) -> EndpointLimits:
    settings = EndpointSettings(name="ep", simulated=SimulatedSettings(), **fields)
    return EndpointLimits(settings, clock=clock or FakeClock())


async def until_waiting(lim: EndpointLimits, n: int) -> None:
    for _ in range(100):
        if lim.waiting == n:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"expected {n} waiters, saw {lim.waiting}")


# -- TokenBucket --------------------------------------------------------------------------------


def test_token_bucket_takes_refills_and_caps_at_its_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(2.0, 4.0, clock=clock)

    assert bucket.try_take(3)
    assert not bucket.try_take(2)
    assert bucket.time_until(2) == pytest.approx(0.5)
    clock.advance(0.5)
    assert bucket.time_until(2) == 0.0
    assert bucket.try_take(2)
    clock.advance(100)
    assert bucket.tokens == 4.0
    bucket.give_back(10)
    assert bucket.tokens == 4.0
    assert bucket.time_until(5) == math.inf


def test_token_bucket_debt_is_paid_off_first() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1.0, 2.0, clock=clock)

    bucket.take(5)

    assert bucket.tokens == -3.0
    assert bucket.time_until(1) == pytest.approx(4.0)
    assert "TokenBucket" in repr(bucket)


@given(
    schedule=st.lists(
        st.tuples(st.floats(0, 3), st.floats(0.1, 5), st.booleans()), min_size=1, max_size=60
    )
)
def test_token_bucket_never_gives_more_than_burst_plus_rate_times_time(
    schedule: list[tuple[float, float, bool]],
) -> None:
    clock = FakeClock()
    start = clock.now
    bucket = TokenBucket(2.0, 5.0, clock=clock)
    taken = 0.0
    for dt, n, give_back in schedule:
        clock.advance(dt)
        if bucket.try_take(n):
            taken += n
            if give_back:
                bucket.give_back(n)
                taken -= n
        assert -1e-9 <= bucket.tokens <= 5.0
    assert taken <= 5.0 + 2.0 * (clock.now - start) + 1e-6


# -- slots --------------------------------------------------------------------------------------


async def test_a_free_slot_is_taken_at_once_and_released() -> None:
    lim = limits(max_concurrency=2, max_queue=0)
    async with lim.slot(), lim.slot():
        assert lim.inflight == 2
        assert not lim.available()
        assert lim.retry_after_s() is None  # a slot frees when a call ends: unknown when
        with pytest.raises(Overloaded) as info:
            async with lim.slot():
                pass  # pragma: no cover
        assert "2 concurrent calls" in str(info.value)
        assert info.value.retry_after_s is None
    assert lim.inflight == 0
    assert lim.available()
    assert lim.retry_after_s() == 0.0
    assert (lim.admitted, lim.rejected) == (2, 1)


async def test_slot_is_released_when_the_body_raises() -> None:
    lim = limits(max_concurrency=1)
    with pytest.raises(ZeroDivisionError):
        async with lim.slot():
            1 / 0  # noqa: B018
    assert lim.inflight == 0


async def test_waiters_get_slots_in_arrival_order() -> None:
    lim = limits(max_concurrency=1, max_queue=10)
    order: list[int] = []
    release = asyncio.Event()

    async def call(i: int) -> None:
        async with lim.slot():
            order.append(i)
            await release.wait()

    holder = asyncio.create_task(call(0))
    await asyncio.sleep(0)
    tasks = []
    for i in range(1, 6):
        tasks.append(asyncio.create_task(call(i)))
        await until_waiting(lim, i)
    assert lim.available()  # room in the queue
    release.set()
    await asyncio.gather(holder, *tasks)

    assert order == [0, 1, 2, 3, 4, 5]
    assert (lim.inflight, lim.waiting) == (0, 0)


async def test_a_newcomer_does_not_jump_the_queue() -> None:
    lim = limits(max_concurrency=1, max_queue=10)
    order: list[str] = []
    holder = lim.slot()
    await holder.__aenter__()

    async def call(name: str) -> None:
        async with lim.slot():
            order.append(name)

    first = asyncio.create_task(call("queued"))
    await until_waiting(lim, 1)
    await holder.__aexit__(None, None, None)  # hands the slot to "queued" ...
    late = asyncio.create_task(call("newcomer"))  # ... before "queued" has even resumed
    await asyncio.gather(first, late)

    assert order == ["queued", "newcomer"]


async def test_a_full_queue_refuses_at_once() -> None:
    lim = limits(max_concurrency=1, max_queue=1)
    async with lim.slot():
        waiter = asyncio.create_task(lim.slot().__aenter__())
        await until_waiting(lim, 1)
        assert not lim.available()
        with pytest.raises(Overloaded):
            async with lim.slot():
                pass  # pragma: no cover
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
    assert (lim.inflight, lim.waiting, lim.rejected) == (0, 0, 1)


async def test_a_waiter_times_out_with_overloaded() -> None:
    lim = limits(max_concurrency=1, max_queue=5, queue_timeout_s=0.05, requests_per_min=10)
    async with lim.slot():
        with pytest.raises(Overloaded) as info:
            async with lim.slot():
                pass  # pragma: no cover
        assert "0.05 s queue timeout" in str(info.value)
        assert lim.waiting == 0
    assert lim.inflight == 0
    assert lim.snapshot()["requests_left"] == 9  # the timed-out call's request was given back


async def test_a_cancelled_waiter_leaves_the_queue_and_the_slot_goes_on() -> None:
    lim = limits(max_concurrency=1, max_queue=5, tokens_per_min=100)
    got: list[str] = []

    async def call(name: str) -> None:
        async with lim.slot(10):
            got.append(name)

    holder = lim.slot(10)
    await holder.__aenter__()
    doomed = asyncio.create_task(call("doomed"))
    await until_waiting(lim, 1)
    survivor = asyncio.create_task(call("survivor"))
    await until_waiting(lim, 2)

    doomed.cancel()
    await asyncio.gather(doomed, return_exceptions=True)

    assert lim.waiting == 1
    assert lim.snapshot()["tokens_left"] == 80  # the holder's and the survivor's
    await holder.__aexit__(None, None, None)
    await survivor
    assert got == ["survivor"]
    assert (lim.inflight, lim.waiting) == (0, 0)


async def test_a_waiter_cancelled_just_as_it_is_handed_the_slot_passes_it_on() -> None:
    lim = limits(max_concurrency=1, max_queue=5)
    got: list[str] = []

    async def call(name: str) -> None:
        async with lim.slot():
            got.append(name)

    holder = lim.slot()
    await holder.__aenter__()
    unlucky = asyncio.create_task(call("unlucky"))
    await until_waiting(lim, 1)
    next_in_line = asyncio.create_task(call("next"))
    await until_waiting(lim, 2)

    await holder.__aexit__(None, None, None)  # the slot is now unlucky's ...
    unlucky.cancel()  # ... but it is cancelled before it resumes
    await asyncio.gather(unlucky, next_in_line, return_exceptions=True)

    assert unlucky.cancelled()
    assert got == ["next"]
    assert (lim.inflight, lim.waiting) == (0, 0)


async def test_a_cancelled_holder_releases_its_slot() -> None:
    lim = limits(max_concurrency=1)
    entered = asyncio.Event()

    async def call() -> None:
        async with lim.slot():
            entered.set()
            await asyncio.sleep(math.inf)

    task = asyncio.create_task(call())
    await entered.wait()
    assert lim.inflight == 1
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

    assert lim.inflight == 0


@pytest.mark.parametrize("seed", range(5))
async def test_limits_hold_under_a_random_storm(seed: int) -> None:
    rng = random.Random(seed)
    lim = limits(max_concurrency=3, max_queue=4, queue_timeout_s=0.02)
    inside = peak = peak_waiting = entered = timeouts = 0
    outcomes = {"done": 0, "overloaded": 0, "cancelled": 0}

    async def call(hold_s: float = 0.0) -> None:
        nonlocal inside, peak, peak_waiting, entered, timeouts
        peak_waiting = max(peak_waiting, lim.waiting)
        try:
            async with lim.slot():
                inside += 1
                entered += 1
                peak = max(peak, inside)
                # A slot handed to a waiter that has not resumed yet is held but not entered.
                assert inside <= lim.inflight <= 3
                try:
                    for _ in range(rng.randrange(4)):
                        await asyncio.sleep(0)
                    if hold_s or rng.random() < 0.05:
                        await asyncio.sleep(hold_s or 0.03)  # long enough for waiters to time out
                finally:
                    inside -= 1
        except Overloaded as exc:
            outcomes["overloaded"] += 1
            timeouts += "queue timeout" in str(exc)
            return
        outcomes["done"] += 1

    tasks = [asyncio.create_task(call(hold_s=0.05)) for _ in range(3)]  # so some waits time out
    for _ in range(197):
        tasks.append(asyncio.create_task(call()))
        if rng.random() < 0.5:
            await asyncio.sleep(0)
        if rng.random() < 0.15:
            victim = rng.choice(tasks)
            victim.cancel()
        peak_waiting = max(peak_waiting, lim.waiting)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    outcomes["cancelled"] = sum(isinstance(r, asyncio.CancelledError) for r in results)

    assert peak == 3
    assert peak_waiting <= 4
    assert outcomes["overloaded"] > timeouts > 0
    assert sum(outcomes.values()) == 200
    assert (lim.inflight, lim.waiting, inside) == (0, 0, 0)
    assert lim.admitted == entered >= outcomes["done"]
    assert lim.rejected == outcomes["overloaded"]


# -- budgets ------------------------------------------------------------------------------------


async def test_requests_per_minute() -> None:
    clock = FakeClock()
    lim = limits(clock, requests_per_min=2)
    async with lim.slot():
        pass
    async with lim.slot():
        pass

    assert not lim.available()
    assert lim.retry_after_s() == pytest.approx(30.0)
    with pytest.raises(Overloaded) as info:
        async with lim.slot():
            pass  # pragma: no cover
    assert info.value.retry_after_s == pytest.approx(30.0)
    assert "2 requests/min" in str(info.value)

    clock.advance(30.0)
    assert lim.available()


async def test_less_than_one_request_per_minute_still_allows_one() -> None:
    clock = FakeClock()
    lim = limits(clock, requests_per_min=0.5)
    async with lim.slot():
        pass
    assert lim.retry_after_s() == pytest.approx(120.0)


async def test_tokens_per_minute_and_settle() -> None:
    clock = FakeClock()
    lim = limits(clock, tokens_per_min=100)
    async with lim.slot(60):
        pass
    assert lim.available(40)
    assert not lim.available(60)
    assert lim.retry_after_s(60) == pytest.approx(12.0)  # 20 more tokens at 100/60 a second

    lim.settle(60, 20)  # the call used far less than it reserved
    assert lim.available(60)
    async with lim.slot(60):
        pass
    lim.settle(60, 100)  # and this one more: a debt
    assert lim.snapshot()["tokens_left"] == -20
    assert not lim.available(1)


async def test_a_call_larger_than_the_token_budget_never_fits() -> None:
    lim = limits(tokens_per_min=100)

    assert not lim.available(101)
    assert lim.retry_after_s(101) is None
    with pytest.raises(Overloaded) as info:
        async with lim.slot(101):
            pass  # pragma: no cover
    assert info.value.retry_after_s is None
    assert "101 tokens" in str(info.value)


async def test_a_429_cools_the_endpoint_down() -> None:
    clock = FakeClock()
    lim = limits(clock)

    lim.on_rate_limited(2.5)

    assert not lim.available()
    assert lim.retry_after_s() == pytest.approx(2.5)
    with pytest.raises(Overloaded) as info:
        async with lim.slot():
            pass  # pragma: no cover
    assert "cooling down after a 429" in str(info.value)
    clock.advance(2.5)
    assert lim.available()

    lim.on_rate_limited(None)  # no Retry-After: a second
    lim.on_rate_limited(0.1)  # a shorter one does not cut the rest short
    assert lim.retry_after_s() == pytest.approx(1.0)
    assert lim.rate_limited == 3


def test_repr_and_snapshot_show_live_state() -> None:
    clock = FakeClock()
    lim = limits(clock, max_concurrency=4, max_queue=8, requests_per_min=60)
    lim.on_rate_limited(1.5)

    assert repr(lim) == "<EndpointLimits ep inflight=0/4 waiting=0/8 rejected=0 cooldown=1.5s>"
    assert lim.snapshot() == {
        "inflight": 0,
        "max_concurrency": 4,
        "waiting": 0,
        "max_queue": 8,
        "admitted": 0,
        "rejected": 0,
        "rate_limited": 1,
        "cooldown_s": 1.5,
        "requests_left": 60,
        "tokens_left": None,
    }
