"""Endpoint health: outlier detection with a half-open breaker, panic mode, active checks."""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from surgeflow.config import ActiveCheckSettings, BreakerSettings

if TYPE_CHECKING:
    from surgeflow.routing.endpoint import Endpoint

log = logging.getLogger("surgeflow.routing")

# The failure window is kept as this many buckets, so it slides in steps of a tenth of window_s.
_WINDOW_BUCKETS = 10


class HealthState(enum.Enum):
    HEALTHY = "healthy"
    EJECTED = "ejected"
    PROBING = "probing"  # half-open: a few trial calls decide


class EjectionBudget:
    """How many of one model's endpoints may be ejected at once (Envoy's max_ejection_percent).

    An ejection is allowed while the ejected share, this one included, stays at or below
    ``max_ejected_percent``: with 2 endpoints and 50 %, one may be out; with 1 endpoint, none.
    """

    __slots__ = ("ejected", "max_ejected_percent", "total_endpoints")

    def __init__(self, total_endpoints: int, max_ejected_percent: float) -> None:
        if total_endpoints < 0 or not 0 <= max_ejected_percent <= 100:
            raise ValueError("need total_endpoints >= 0 and 0 <= max_ejected_percent <= 100")
        self.total_endpoints = total_endpoints
        self.max_ejected_percent = max_ejected_percent
        self.ejected = 0

    def try_eject(self) -> bool:
        """Take one ejection if the cap allows it."""
        # Compared in whole-percent units with a little slack, so 1 of 3 at 33.34 % is not lost
        # to rounding.
        allowed = (self.ejected + 1) * 100 <= self.max_ejected_percent * self.total_endpoints + 1e-9
        if allowed:
            self.ejected += 1
        return allowed

    def release(self) -> None:
        """Give back an ejection taken with `try_eject`."""
        if self.ejected <= 0:
            raise RuntimeError("EjectionBudget.release() without a matching try_eject()")
        self.ejected -= 1

    def __repr__(self) -> str:
        return (
            f"<EjectionBudget ejected={self.ejected}/{self.total_endpoints} "
            f"max={self.max_ejected_percent:g}%>"
        )


class _OutcomeWindow:
    """Successes and failures of the last ``window_s``, counted in time buckets."""

    __slots__ = ("_buckets", "_width_s", "failures", "total")

    def __init__(self, window_s: float) -> None:
        self._width_s = window_s / _WINDOW_BUCKETS
        self._buckets: deque[list[int]] = deque()  # [bucket index, total, failures]
        self.total = 0
        self.failures = 0

    def add(self, now: float, *, failed: bool) -> None:
        index = self._expire(now)
        if not self._buckets or self._buckets[-1][0] != index:
            self._buckets.append([index, 0, 0])
        bucket = self._buckets[-1]
        bucket[1] += 1
        bucket[2] += failed
        self.total += 1
        self.failures += failed

    def counts(self, now: float) -> tuple[int, int]:
        """(outcomes, failures) in the window ending at ``now``."""
        self._expire(now)
        return self.total, self.failures

    def clear(self) -> None:
        self._buckets.clear()
        self.total = self.failures = 0

    def _expire(self, now: float) -> int:
        index = math.floor(now / self._width_s)
        while self._buckets and self._buckets[0][0] <= index - _WINDOW_BUCKETS:
            _, total, failures = self._buckets.popleft()
            self.total -= total
            self.failures -= failures
        return index


class EndpointHealth:
    """One endpoint's passive health: outlier detection and a circuit breaker in one state machine.

    HEALTHY → EJECTED after ``consecutive_failures`` failures in a row, or when at least
    ``min_requests`` calls of the last ``window_s`` failed in a ratio of ``failure_ratio`` or more
    — if the shared `EjectionBudget` allows; otherwise it stays HEALTHY and ``ejections_skipped``
    counts the refusal (the next failure asks again). The n-th ejection in a row lasts
    ``base_ejection_s × 2**(n-1)``, at most ``max_ejection_s``; the count behind the doubling
    drops by one for each ``max_ejection_s`` spent HEALTHY, so a past offender is forgiven
    gradually. When the ejection expires the endpoint is PROBING (half-open): up to
    ``half_open_requests`` trial calls at once; a trial success makes it HEALTHY (and gives its
    ejection back to the budget), a trial failure ejects it again, for longer.

    The caller reports each call: ``on_start()`` before it, then exactly one of ``on_success``,
    ``on_failure`` or ``on_cancel``. ``on_start()`` returns whether the call is a trial; passing
    that back as ``trial=`` attributes outcomes exactly. Without it, an outcome while trials are in
    flight is taken as a trial's, which can only misjudge a call that started before the
    ejection and ended after it. Outcomes of calls that are not trials are ignored unless HEALTHY.
    Not thread-safe: use it from one event loop.
    """

    def __init__(
        self,
        settings: BreakerSettings,
        budget: EjectionBudget,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.budget = budget
        self._clock = clock
        self._state = HealthState.HEALTHY
        self._window = _OutcomeWindow(settings.window_s)
        self._trials = 0
        self._holds_budget = False
        self._forced = False
        # Ejections in a row, behind the doubling; decays while HEALTHY (see _level_at).
        self._level = 0
        self._max_level = max(
            0, math.ceil(math.log2(settings.max_ejection_s / settings.base_ejection_s))
        )
        self._healthy_since = clock()
        self.reason: str | None = None
        self.consecutive_failures = 0
        self.ejections = 0
        self.ejections_skipped = 0
        self.ejected_until: float | None = None  # clock time; inf while an active check holds it
        self.successes = 0
        self.failures = 0
        self.last_latency_s: float | None = None

    # -- what the router asks -------------------------------------------------------------------

    @property
    def state(self) -> HealthState:
        """The state now: an ejection that has run out reads as PROBING."""
        if (
            self._state is HealthState.EJECTED
            and self.ejected_until is not None
            and self._clock() >= self.ejected_until
        ):
            self._state = HealthState.PROBING
        return self._state

    @property
    def trials_inflight(self) -> int:
        return self._trials

    @property
    def force_ejected(self) -> bool:
        """Held out by an active check, until one passes."""
        return self._forced

    def admits(self) -> bool:
        """Whether a new call may be sent here now."""
        state = self.state
        if state is HealthState.HEALTHY:
            return True
        return state is HealthState.PROBING and self._trials < self.settings.half_open_requests

    # -- what the router reports ----------------------------------------------------------------

    def on_start(self) -> bool:
        """A call is about to be sent; returns True when it is a half-open trial."""
        if self.state is HealthState.PROBING and self._trials < self.settings.half_open_requests:
            self._trials += 1
            return True
        return False

    def on_success(self, latency_s: float, *, trial: bool | None = None) -> None:
        """The call answered, in ``latency_s`` seconds."""
        state, trial = self.state, self._end(trial)
        self.successes += 1
        self.last_latency_s = latency_s
        if state is HealthState.HEALTHY:
            self.consecutive_failures = 0
            self._window.add(self._clock(), failed=False)
        elif state is HealthState.PROBING and trial:
            self._recover()

    def on_failure(self, *, trial: bool | None = None) -> None:
        """The call failed in a way that says the endpoint is unwell."""
        state, trial = self.state, self._end(trial)
        self.failures += 1
        now = self._clock()
        if state is HealthState.HEALTHY:
            self.consecutive_failures += 1
            self._window.add(now, failed=True)
            self._maybe_eject(now)
        elif state is HealthState.PROBING and trial:
            # Already counted against the budget since its first ejection: no new permission.
            self._eject(now, "a trial call failed")

    def on_cancel(self, *, trial: bool | None = None) -> None:
        """The call ended saying nothing about the endpoint (cancelled, or the request was bad)."""
        self._end(trial)

    # -- what active checks and operators do ----------------------------------------------------

    def force_eject(self, reason: str) -> None:
        """Keep the endpoint out until `mark_healthy` or `probe_now`, whatever the budget says.

        As with Envoy's active health checks, the ejection budget bounds passive ejections only;
        panic mode is what protects the model when active checks fail everywhere.
        """
        self.reason = f"active check: {reason}"
        if self._forced:
            return
        if self.state is HealthState.HEALTHY:
            self._eject(self._clock(), self.reason)
        self._state = HealthState.EJECTED
        self.ejected_until = math.inf
        self._forced = True

    def mark_healthy(self) -> None:
        """Trust the endpoint again at once, whatever its state."""
        if self._state is not HealthState.HEALTHY:
            self._recover()

    def probe_now(self) -> None:
        """End an ejection early: let trial calls decide (an active check passed)."""
        if self.state is HealthState.EJECTED:
            self._state = HealthState.PROBING
            self.ejected_until = self._clock()
            self._forced = False

    # -- reporting ------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The live state, for the admin API."""
        now = self._clock()
        state = self.state
        total, failed = self._window.counts(now)
        ejected_for_s: float | None = None
        if state is HealthState.EJECTED and self.ejected_until is not None:
            remaining = self.ejected_until - now
            ejected_for_s = None if math.isinf(remaining) else round(remaining, 3)
        return {
            "state": state.value,
            "reason": self.reason,
            "admits": self.admits(),
            "consecutive_failures": self.consecutive_failures,
            "window_calls": total,
            "window_failures": failed,
            "ejections": self.ejections,
            "ejections_skipped": self.ejections_skipped,
            "ejected_for_s": ejected_for_s,
            "force_ejected": self._forced,
            "trials_inflight": self._trials,
            "successes": self.successes,
            "failures": self.failures,
        }

    def __repr__(self) -> str:
        state = self.state
        extra = ""
        if state is HealthState.EJECTED and self.ejected_until is not None:
            remaining = self.ejected_until - self._clock()
            extra = " until=checked" if math.isinf(remaining) else f" for={remaining:.1f}s"
        elif state is HealthState.PROBING:
            extra = f" trials={self._trials}/{self.settings.half_open_requests}"
        return (
            f"<EndpointHealth {state.value}{extra} "
            f"consecutive_failures={self.consecutive_failures} ejections={self.ejections} "
            f"skipped={self.ejections_skipped}>"
        )

    # -- transitions ----------------------------------------------------------------------------

    def _end(self, trial: bool | None) -> bool:
        """Close the call's trial slot, if it held one; whether it was a trial."""
        if trial is None:
            trial = self._trials > 0
        if trial and self._trials > 0:
            self._trials -= 1
        return trial

    def _maybe_eject(self, now: float) -> None:
        settings = self.settings
        reason = None
        if self.consecutive_failures >= settings.consecutive_failures:
            reason = f"{self.consecutive_failures} consecutive failures"
        else:
            total, failed = self._window.counts(now)
            if total >= settings.min_requests and failed >= settings.failure_ratio * total:
                reason = f"{failed} of {total} calls failed in {settings.window_s:g} s"
        if reason is None:
            return
        if not self.budget.try_eject():
            self.ejections_skipped += 1
            return
        self._holds_budget = True
        self._eject(now, reason)

    def _eject(self, now: float, reason: str) -> None:
        level = self._level_at(now)
        duration_s = min(self.settings.max_ejection_s, self.settings.base_ejection_s * 2.0**level)
        self._level = min(level + 1, self._max_level)
        self._state = HealthState.EJECTED
        self.ejected_until = now + duration_s
        self.ejections += 1
        self.reason = reason

    def _level_at(self, now: float) -> int:
        if self._state is not HealthState.HEALTHY:
            return self._level
        forgiven = int((now - self._healthy_since) // self.settings.max_ejection_s)
        return max(0, self._level - forgiven)

    def _recover(self) -> None:
        if self._holds_budget:
            self.budget.release()
            self._holds_budget = False
        self._state = HealthState.HEALTHY
        self._healthy_since = self._clock()
        self._forced = False
        self._window.clear()
        self.consecutive_failures = 0
        self.ejected_until = None
        self.reason = None


def panic(endpoints_health: Sequence[EndpointHealth], threshold_percent: float) -> bool:
    """Whether fewer than ``threshold_percent`` of the endpoints admit calls (Envoy's panic mode).

    In panic the router spreads calls over all endpoints, ejected or not: a few survivors taking
    everything would fail too.
    """
    if not endpoints_health:
        return False
    admitting = sum(1 for health in endpoints_health if health.admits())
    return admitting * 100 < threshold_percent * len(endpoints_health)


class _Lifecycle(enum.Enum):
    UNSTARTED = "unstarted"
    RUNNING = "running"
    CLOSED = "closed"


_Ping = Callable[..., Awaitable[object]]


class ActiveChecker:
    """Pings every endpoint whose backend has ``ping(timeout_s=...)``, every ``interval_s``.

    A failed ping ejects the endpoint until a ping passes (`EndpointHealth.force_eject`); a
    passing ping makes an endpoint the checks ejected healthy again, and lets one that calls
    ejected be probed at once (a ping proves the server is up, not that its calls succeed).
    Endpoints without a ping or without health are skipped. ``start()`` does nothing when the
    settings are not ``enabled``.
    """

    def __init__(self, endpoints: Sequence[Endpoint], settings: ActiveCheckSettings) -> None:
        self.endpoints = list(endpoints)
        self.settings = settings
        self._state = _Lifecycle.UNSTARTED
        self._task: asyncio.Task[None] | None = None
        self.rounds = 0
        self.failed_pings = 0

    def start(self) -> None:
        """Start the background task (in the running loop)."""
        if self._state is not _Lifecycle.UNSTARTED:
            raise RuntimeError(f"ActiveChecker is {self._state.value}; start() it once")
        self._state = _Lifecycle.RUNNING
        if self.settings.enabled:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="surgeflow-active-checks"
            )

    async def check_once(self) -> None:
        """Ping every checkable endpoint concurrently and act on the answers."""
        targets: list[tuple[Endpoint, EndpointHealth, _Ping]] = []
        for endpoint in self.endpoints:
            ping = getattr(endpoint.backend, "ping", None)
            if ping is not None and endpoint.health is not None:
                targets.append((endpoint, endpoint.health, ping))
        errors = await asyncio.gather(*(self._ping(ping) for _, _, ping in targets))
        for (endpoint, health, _), error in zip(targets, errors, strict=True):
            self._apply(endpoint, health, error)
        self.rounds += 1

    async def aclose(self) -> None:
        """Stop checking; waits for the background task to end."""
        self._state = _Lifecycle.CLOSED
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # wait() neither raises the task's CancelledError nor swallows our own cancellation.
            await asyncio.wait({task})

    def __repr__(self) -> str:
        return (
            f"<ActiveChecker {self._state.value} endpoints={len(self.endpoints)} "
            f"every={self.settings.interval_s:g}s rounds={self.rounds} "
            f"failed_pings={self.failed_pings}>"
        )

    async def _run(self) -> None:
        while True:
            try:
                await self.check_once()
            except Exception:
                # A bug in one round must not end health checking for the process's lifetime.
                log.exception("active health check round failed")
            await asyncio.sleep(self.settings.interval_s)

    async def _ping(self, ping: _Ping) -> Exception | None:
        timeout_s = self.settings.timeout_s
        try:
            # The backend should honour timeout_s; this bounds one that does not.
            async with asyncio.timeout(timeout_s):
                await ping(timeout_s=timeout_s)
        except Exception as exc:
            return exc
        return None

    def _apply(self, endpoint: Endpoint, health: EndpointHealth, error: Exception | None) -> None:
        if error is not None:
            self.failed_pings += 1
            if not health.force_ejected:
                log.warning("endpoint %s failed its health check: %s", endpoint.name, error)
            health.force_eject(str(error) or type(error).__name__)
        elif health.force_ejected:
            log.info("endpoint %s passed its health check again", endpoint.name)
            health.mark_healthy()
        else:
            health.probe_now()
