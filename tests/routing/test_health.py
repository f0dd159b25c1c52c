"""Endpoint health: ejection, the ejection budget, half-open probing, panic, active checks."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from surgeflow.config import ActiveCheckSettings, BreakerSettings
from surgeflow.errors import UpstreamError, UpstreamUnavailable
from surgeflow.models import OpenAIHTTPBackend, SimulatedBackend
from surgeflow.routing.endpoint import Endpoint
from surgeflow.routing.health import (
    ActiveChecker,
    EjectionBudget,
    EndpointHealth,
    HealthState,
    panic,
)
from tests.routing.clock import FakeClock

HEALTHY, EJECTED, PROBING = HealthState.HEALTHY, HealthState.EJECTED, HealthState.PROBING


def breaker(**fields: Any) -> BreakerSettings:
    defaults: dict[str, Any] = {
        "consecutive_failures": 3,
        "min_requests": 10,
        "failure_ratio": 0.5,
        "window_s": 10.0,
        "base_ejection_s": 1.0,
        "max_ejection_s": 8.0,
        "max_ejected_percent": 100.0,
    }
    return BreakerSettings(**(defaults | fields))


def make(clock: FakeClock, budget: EjectionBudget | None = None, **fields: Any) -> EndpointHealth:
    return EndpointHealth(breaker(**fields), budget or EjectionBudget(1, 100.0), clock=clock)


def fail(health: EndpointHealth, times: int = 1) -> None:
    for _ in range(times):
        health.on_start()
        health.on_failure()


def succeed(health: EndpointHealth, times: int = 1) -> None:
    for _ in range(times):
        health.on_start()
        health.on_success(0.01)


def eject(health: EndpointHealth) -> None:
    fail(health, health.settings.consecutive_failures)
    assert health.state is EJECTED


# -- ejection ----------------------------------------------------------------------------------


def test_ejects_after_consecutive_failures_and_a_success_resets_the_count() -> None:
    clock = FakeClock()
    health = make(clock, consecutive_failures=3, min_requests=100)

    fail(health, 2)
    succeed(health)
    fail(health, 2)
    assert health.state is HEALTHY
    assert health.admits()
    assert health.consecutive_failures == 2

    fail(health)

    assert health.state is EJECTED
    assert not health.admits()
    assert health.ejections == 1
    assert health.ejected_until == clock.now + 1.0
    assert health.reason == "3 consecutive failures"


def test_ejects_on_the_failure_ratio_in_the_window() -> None:
    clock = FakeClock()
    health = make(clock, consecutive_failures=100, min_requests=10, failure_ratio=0.5)

    for _ in range(4):  # never two failures in a row
        fail(health)
        succeed(health)
    fail(health)
    assert health.state is HEALTHY  # 5 of 9: below min_requests

    succeed(health)
    assert health.state is HEALTHY  # a success never ejects
    fail(health)

    assert health.state is EJECTED  # 6 of 11
    assert health.reason == "6 of 11 calls failed in 10 s"


def test_failures_older_than_the_window_do_not_count() -> None:
    clock = FakeClock()
    health = make(clock, consecutive_failures=100, min_requests=10, failure_ratio=0.5)
    for _ in range(5):
        fail(health)
        succeed(health)
    clock.advance(4.0)
    succeed(health, 5)
    fail(health, 4)
    assert health.state is HEALTHY  # 9 of 19 so far: under half

    clock.advance(7.0)  # the first ten outcomes leave the window
    fail(health)

    assert health.state is EJECTED  # 5 of 10, all recent
    assert health.snapshot()["window_calls"] == 10


def test_failures_from_before_an_ejection_are_forgotten_on_recovery() -> None:
    clock = FakeClock()
    health = make(clock, consecutive_failures=100, min_requests=4, failure_ratio=0.5)
    for _ in range(2):
        succeed(health)
        fail(health)
    assert health.state is EJECTED
    clock.advance(1.0)
    succeed(health)  # the trial passes

    fail(health)  # 1 of 1 now, not 3 of 5

    assert health.state is HEALTHY


def test_outcomes_reported_while_ejected_change_nothing() -> None:
    clock = FakeClock()
    health = make(clock)
    eject(health)
    until = health.ejected_until

    succeed(health, 3)  # calls that started before the ejection
    fail(health, 3)

    assert health.state is EJECTED
    assert health.ejected_until == until
    assert health.ejections == 1


# -- the ejection budget ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "percent", "allowed"),
    [(2, 50, 1), (1, 50, 0), (1, 100, 1), (3, 34, 1), (3, 33.34, 1), (3, 66.67, 2), (10, 10, 1),
     (10, 0, 0), (4, 100, 4), (0, 50, 0)],
)  # fmt: skip
def test_ejection_budget_caps_the_ejected_share(total: int, percent: float, allowed: int) -> None:
    budget = EjectionBudget(total, percent)

    granted = sum(budget.try_eject() for _ in range(total + 2))

    assert granted == allowed
    assert budget.ejected == allowed


@given(total=st.integers(0, 50), percent=st.floats(0, 100))
def test_ejection_budget_never_exceeds_its_percentage(total: int, percent: float) -> None:
    budget = EjectionBudget(total, percent)
    for _ in range(total + 1):
        budget.try_eject()
    assert budget.ejected * 100 <= percent * total + 1e-6
    assert (budget.ejected + 1) * 100 > percent * total - 1e-6  # and it lets that many go


def test_ejection_budget_release_frees_a_place_and_cannot_underflow() -> None:
    budget = EjectionBudget(2, 50)
    assert budget.try_eject()
    assert not budget.try_eject()

    budget.release()

    assert budget.try_eject()
    budget.release()
    with pytest.raises(RuntimeError):
        budget.release()


def test_endpoints_are_never_ejected_beyond_the_budget() -> None:
    clock = FakeClock()
    budget = EjectionBudget(4, 50)
    fleet = [make(clock, budget) for _ in range(4)]

    for health in fleet:
        fail(health, 3)

    assert [h.state for h in fleet] == [EJECTED, EJECTED, HEALTHY, HEALTHY]
    assert budget.ejected == 2
    assert fleet[2].ejections_skipped == 1
    fail(fleet[2], 2)
    assert fleet[2].ejections_skipped == 3  # asked again at each failure past the threshold

    # The first comes back: its place in the budget goes to the next failing endpoint.
    clock.advance(1.0)
    succeed(fleet[0])
    assert fleet[0].state is HEALTHY
    fail(fleet[2])
    assert fleet[2].state is EJECTED
    assert budget.ejected == 2


@given(
    ops=st.lists(
        st.tuples(
            st.integers(0, 4), st.sampled_from(["start", "ok", "fail", "cancel", "tick", "force"])
        ),
        max_size=200,
    )
)
def test_budget_and_trials_add_up_under_any_sequence(ops: list[tuple[int, str]]) -> None:
    clock = FakeClock()
    budget = EjectionBudget(5, 40)
    fleet = [make(clock, budget, consecutive_failures=2, half_open_requests=2) for _ in range(5)]
    calls: list[list[bool]] = [[] for _ in fleet]  # open calls: whether each is a trial
    for index, op in ops:
        health = fleet[index]
        if op == "tick":
            clock.advance(0.7)
        elif op == "force" and health.force_ejected:
            health.mark_healthy()
        elif op == "force":
            health.force_eject("down")
        elif op == "start":
            calls[index].append(health.on_start())
        else:
            trial = calls[index].pop(0) if calls[index] else health.on_start()
            if op == "ok":
                health.on_success(0.01, trial=trial)
            elif op == "fail":
                health.on_failure(trial=trial)
            else:
                health.on_cancel(trial=trial)
        assert budget.ejected == sum(h._holds_budget for h in fleet) <= 2
        for h, open_calls in zip(fleet, calls, strict=True):
            assert h.trials_inflight == sum(open_calls) <= 2


# -- ejection times -------------------------------------------------------------------------


def test_repeat_ejections_last_longer_up_to_the_cap() -> None:
    clock = FakeClock()
    health = make(clock, base_ejection_s=1.0, max_ejection_s=5.0)
    eject(health)
    durations = []
    for _ in range(5):
        durations.append(health.ejected_until - clock.now)  # type: ignore[operator]
        clock.now = health.ejected_until  # type: ignore[assignment]
        assert health.state is PROBING
        fail(health)  # the trial fails
        assert health.state is EJECTED

    assert durations == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert health.ejections == 6


def test_the_doubling_is_forgiven_one_step_per_max_ejection_s_healthy() -> None:
    clock = FakeClock()
    health = make(clock, base_ejection_s=1.0, max_ejection_s=8.0)
    for _ in range(3):  # ejected for 1, 2, then 4 s
        eject(health)
        clock.now = health.ejected_until  # type: ignore[assignment]
        succeed(health)  # the trial passes
    assert health.state is HEALTHY

    clock.advance(8.0)  # one step forgiven: the next lasts 4 s, not 8
    eject(health)
    assert health.ejected_until == clock.now + 4.0
    clock.now = health.ejected_until
    succeed(health)

    clock.advance(100.0)  # fully forgiven
    eject(health)
    assert health.ejected_until == clock.now + 1.0


# -- half-open ----------------------------------------------------------------------------------


def test_probing_admits_exactly_half_open_requests_trials() -> None:
    clock = FakeClock()
    health = make(clock, half_open_requests=2)
    eject(health)
    clock.advance(0.999)
    assert health.state is EJECTED
    clock.advance(0.001)

    assert health.state is PROBING
    assert health.admits()
    assert health.on_start() is True
    assert health.admits()
    assert health.on_start() is True
    assert not health.admits()
    assert health.on_start() is False  # e.g. sent anyway in panic mode: not a trial
    assert health.trials_inflight == 2


def test_a_trial_success_closes_the_breaker_and_gives_the_budget_back() -> None:
    clock = FakeClock()
    budget = EjectionBudget(2, 50)
    health = make(clock, budget)
    eject(health)
    assert budget.ejected == 1
    clock.advance(1.0)

    assert health.on_start()
    health.on_success(0.02)

    assert health.state is HEALTHY
    assert health.ejected_until is None
    assert health.consecutive_failures == 0
    assert budget.ejected == 0
    assert health.trials_inflight == 0


def test_a_trial_failure_ejects_again_for_longer_keeping_its_budget() -> None:
    clock = FakeClock()
    budget = EjectionBudget(2, 50)
    health = make(clock, budget)
    eject(health)
    clock.advance(1.0)

    assert health.on_start()
    health.on_failure()

    assert health.state is EJECTED
    assert health.ejected_until == clock.now + 2.0
    assert health.reason == "a trial call failed"
    assert budget.ejected == 1
    assert health.trials_inflight == 0


def test_a_cancelled_trial_frees_its_slot_and_decides_nothing() -> None:
    clock = FakeClock()
    health = make(clock, half_open_requests=1)
    eject(health)
    clock.advance(1.0)
    assert health.on_start()
    assert not health.admits()

    health.on_cancel()

    assert health.state is PROBING
    assert health.admits()
    assert health.trials_inflight == 0


def test_a_call_older_than_the_ejection_is_not_taken_for_a_trial_when_told() -> None:
    clock = FakeClock()
    health = make(clock)
    assert health.on_start() is False  # a long call starts while healthy
    fail(health, 3)
    clock.advance(1.0)
    trial = health.on_start()

    health.on_success(30.0, trial=False)  # the old call ends

    assert health.state is PROBING
    assert health.trials_inflight == 1
    health.on_success(0.01, trial=trial)
    assert health.state is HEALTHY


def test_trial_slots_do_not_leak_when_the_state_changes_under_them() -> None:
    clock = FakeClock()
    health = make(clock, half_open_requests=1)
    eject(health)
    clock.advance(1.0)
    health.on_start()  # a trial in flight ...
    health.force_eject("connection refused")  # ... when an active check fails
    health.on_failure()  # the trial ends while ejected
    assert health.trials_inflight == 0

    health.probe_now()

    assert health.admits()


# -- active-check controls ----------------------------------------------------------------------


def test_force_eject_holds_until_marked_healthy_and_ignores_the_budget() -> None:
    clock = FakeClock()
    budget = EjectionBudget(2, 0)
    health = make(clock, budget)

    health.force_eject("HTTP 500")
    clock.advance(1e6)

    assert health.state is EJECTED
    assert health.force_ejected
    assert health.reason == "active check: HTTP 500"
    assert budget.ejected == 0
    assert health.snapshot()["ejected_for_s"] is None
    assert "until=checked" in repr(health)
    health.force_eject("again")  # a still-failing check does not count a new ejection
    assert health.ejections == 1

    health.mark_healthy()

    assert health.state is HEALTHY
    assert not health.force_ejected


def test_probe_now_cuts_a_passive_ejection_short() -> None:
    clock = FakeClock()
    health = make(clock, base_ejection_s=60.0, max_ejection_s=60.0)
    eject(health)

    health.probe_now()

    assert health.state is PROBING
    assert health.admits()


# -- panic --------------------------------------------------------------------------------------


def test_panic_when_too_few_endpoints_admit_calls() -> None:
    clock = FakeClock()
    fleet = [make(clock, EjectionBudget(4, 100)) for _ in range(4)]
    assert not panic(fleet, 50)
    eject(fleet[0])
    eject(fleet[1])
    assert not panic(fleet, 50)  # 2 of 4 admit: exactly the threshold is not panic

    eject(fleet[2])

    assert panic(fleet, 50)
    assert not panic(fleet, 0)
    assert not panic([], 50)
    clock.advance(1.0)  # probing endpoints with room admit calls again
    assert not panic(fleet, 50)


# -- reporting ----------------------------------------------------------------------------------


def test_repr_and_snapshot_show_live_state() -> None:
    clock = FakeClock()
    health = make(clock, half_open_requests=2)
    fail(health, 3)

    assert repr(health) == (
        "<EndpointHealth ejected for=1.0s consecutive_failures=3 ejections=1 skipped=0>"
    )
    snapshot = health.snapshot()
    assert snapshot["state"] == "ejected"
    assert snapshot["ejected_for_s"] == 1.0
    assert snapshot["admits"] is False
    assert snapshot["failures"] == 3
    clock.advance(1.0)
    health.on_start()
    assert "probing trials=1/2" in repr(health)


# -- active checks ------------------------------------------------------------------------------


class Upstream:
    """A loopback OpenAI-compatible server whose /v1/models answers ``status``."""

    def __init__(self) -> None:
        self.status = 200
        self.hits = 0
        self.url = ""

    async def models(self, request: web.Request) -> web.Response:
        self.hits += 1
        return web.json_response({"object": "list", "data": []}, status=self.status)


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    fake = Upstream()
    app = web.Application()
    app.router.add_get("/v1/models", fake.models)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    fake.url = f"http://{host}:{port}/v1"
    try:
        yield fake
    finally:
        await runner.cleanup()


async def wait_for(condition: Callable[[], bool], timeout_s: float = 1.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def checked(backend: Any, settings: BreakerSettings | None = None) -> Endpoint:
    endpoint = Endpoint(backend)
    endpoint.health = EndpointHealth(settings or breaker(), EjectionBudget(1, 100))
    return endpoint


async def test_ping_raises_surgeflow_errors(upstream: Upstream) -> None:
    backend = OpenAIHTTPBackend("up", upstream.url)
    try:
        await backend.ping(timeout_s=1.0)
        upstream.status = 503
        with pytest.raises(UpstreamError) as info:
            await backend.ping(timeout_s=1.0)
        assert info.value.status == 503
    finally:
        await backend.aclose()


async def test_ping_of_an_unreachable_endpoint(unused_tcp_port: int) -> None:
    backend = OpenAIHTTPBackend("gone", f"http://127.0.0.1:{unused_tcp_port}/v1")
    try:
        with pytest.raises(UpstreamUnavailable):
            await backend.ping(timeout_s=1.0)
    finally:
        await backend.aclose()


async def test_active_checks_eject_a_failing_endpoint_and_restore_it(upstream: Upstream) -> None:
    backend = OpenAIHTTPBackend("up", upstream.url)
    endpoint = checked(backend)
    health = endpoint.health
    assert health is not None
    checker = ActiveChecker([endpoint], ActiveCheckSettings(enabled=True, interval_s=0.05))
    checker.start()
    try:
        await wait_for(lambda: checker.rounds >= 2)
        assert health.state is HEALTHY

        upstream.status = 500
        await wait_for(lambda: health.state is EJECTED)
        assert health.force_ejected
        assert "500" in (health.reason or "")
        hits = upstream.hits
        await wait_for(lambda: upstream.hits >= hits + 2)
        assert health.state is EJECTED  # still failing: still out

        upstream.status = 200
        await wait_for(lambda: health.state is HEALTHY)
        assert health.admits()
    finally:
        await checker.aclose()
        await backend.aclose()
    assert "closed" in repr(checker)


async def test_a_passing_check_lets_a_passively_ejected_endpoint_probe(upstream: Upstream) -> None:
    backend = OpenAIHTTPBackend("up", upstream.url)
    endpoint = checked(backend, breaker(base_ejection_s=60, max_ejection_s=60))
    health = endpoint.health
    assert health is not None
    eject(health)
    checker = ActiveChecker([endpoint], ActiveCheckSettings(enabled=True, interval_s=10))
    try:
        await checker.check_once()
    finally:
        await backend.aclose()

    assert health.state is PROBING  # a ping is not a call: a trial decides


class Flaky:
    """A backend whose ping raises something odd, then hangs."""

    name = "flaky"

    def __init__(self) -> None:
        self.pings = 0

    async def ping(self, *, timeout_s: float) -> None:
        self.pings += 1
        if self.pings == 1:
            raise KeyError("not a surgeflow error")
        await asyncio.sleep(math.inf)


async def test_checks_survive_odd_errors_and_hangs_and_skip_backends_without_ping() -> None:
    flaky = Flaky()
    quiet = checked(SimulatedBackend("sim", ttft_ms=0, tokens_per_s=0))
    unwatched = Flaky()
    endpoints = [checked(flaky), quiet, Endpoint(cast(Any, unwatched))]  # no health: skipped
    settings = ActiveCheckSettings(enabled=True, interval_s=0.01, timeout_s=0.05)
    checker = ActiveChecker(endpoints, settings)
    checker.start()
    try:
        await wait_for(lambda: checker.rounds >= 2)
    finally:
        await checker.aclose()

    assert flaky.pings >= 2
    assert checker.failed_pings == checker.rounds  # one failing endpoint per round
    assert endpoints[0].health is not None
    assert endpoints[0].health.force_ejected
    assert quiet.health is not None
    assert quiet.health.state is HEALTHY
    assert unwatched.pings == 0


async def test_checker_lifecycle() -> None:
    disabled = ActiveChecker([], ActiveCheckSettings(enabled=False))
    disabled.start()  # nothing to run
    assert "running" in repr(disabled)
    await disabled.aclose()

    checker = ActiveChecker([], ActiveCheckSettings(enabled=True, interval_s=0.01))
    checker.start()
    with pytest.raises(RuntimeError):
        checker.start()
    task = checker._task
    await checker.aclose()
    assert task is not None
    assert task.done()
    await checker.aclose()  # twice is fine
