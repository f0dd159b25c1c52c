"""Per-endpoint limits: slots with a bounded FIFO queue, per-minute budgets, a 429 cooldown."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from surgeflow.config import EndpointSettings
from surgeflow.errors import Overloaded

# How long an endpoint rests after a 429 that gave no Retry-After.
DEFAULT_COOLDOWN_S = 1.0


class TokenBucket:
    """``rate_per_s`` tokens a second, at most ``burst`` saved up; starts full.

    `take` may leave a debt (a negative balance) that later refills pay off first.
    """

    __slots__ = ("_at", "_clock", "_tokens", "burst", "rate_per_s")

    def __init__(
        self, rate_per_s: float, burst: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate_per_s <= 0 or burst <= 0:
            raise ValueError("rate_per_s and burst must be > 0")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._at = clock()

    @property
    def tokens(self) -> float:
        """The balance now (negative while in debt)."""
        self._refill()
        return self._tokens

    def try_take(self, n: float) -> bool:
        """Take ``n`` tokens if there are that many."""
        self._refill()
        if self._tokens < n:
            return False
        self._tokens -= n
        return True

    def take(self, n: float) -> None:
        """Take ``n`` tokens even if that leaves a debt."""
        self._refill()
        self._tokens -= n

    def time_until(self, n: float) -> float:
        """Seconds until ``n`` tokens are there: 0 if now, inf if ``n`` exceeds the burst."""
        self._refill()
        if self._tokens >= n:
            return 0.0
        if n > self.burst:
            return math.inf
        return (n - self._tokens) / self.rate_per_s

    def give_back(self, n: float) -> None:
        """Return ``n`` tokens (never beyond the burst)."""
        self._refill()
        self._tokens = min(self.burst, self._tokens + n)

    def _refill(self) -> None:
        now = self._clock()
        elapsed = max(0.0, now - self._at)
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate_per_s)
        self._at = now

    def __repr__(self) -> str:
        return f"<TokenBucket {self.tokens:.1f}/{self.burst:g} +{self.rate_per_s:g}/s>"


class EndpointLimits:
    """What one endpoint may take now: slots, a bounded queue, per-minute budgets, a cooldown.

    ``max_concurrency`` calls hold a slot at once; up to ``max_queue`` more wait for one in
    arrival order, each at most ``queue_timeout_s``. A call reserves one request and its
    ``tokens`` from the per-minute budgets (each may burst to a whole minute's worth) before it
    waits; the reservation is returned if it never gets a slot. After an upstream 429 the
    endpoint takes nothing until the cooldown ends. Every refusal raises `Overloaded`. A slot is
    handed straight from the call that frees it to the first waiter, so a newcomer never jumps
    the queue. Not thread-safe: use it from one event loop.
    """

    def __init__(
        self, settings: EndpointSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.name = settings.name or settings.url or "endpoint"
        self.max_concurrency = settings.max_concurrency
        self.max_queue = settings.max_queue
        self.queue_timeout_s = settings.queue_timeout_s
        self.requests_per_min = settings.requests_per_min
        self.tokens_per_min = settings.tokens_per_min
        self._clock = clock
        self._requests = _per_minute(settings.requests_per_min, clock)
        self._tokens = _per_minute(settings.tokens_per_min, clock)
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.cooldown_until = -math.inf
        self.inflight = 0
        self.admitted = 0
        self.rejected = 0
        self.rate_limited = 0

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    # -- asking ---------------------------------------------------------------------------------

    def available(self, tokens: int = 0) -> bool:
        """Whether a call of ``tokens`` would be let in (to a slot or the queue) now."""
        return self._has_room() and self._blocked(tokens) is None

    def retry_after_s(self, tokens: int = 0) -> float | None:
        """Seconds until a call of ``tokens`` could be let in: 0 if now, None if unknown or never.

        Unknown: the slots and the queue are full, and a slot frees when some call ends.
        """
        blocked = self._blocked(tokens)
        if blocked is not None:
            wait_s = blocked[0]
            return None if math.isinf(wait_s) else wait_s
        return 0.0 if self._has_room() else None

    # -- taking ---------------------------------------------------------------------------------

    def slot(self, tokens: int = 0) -> AbstractAsyncContextManager[None]:
        """Hold one slot for a call of ``tokens``; raises `Overloaded` when it cannot have one.

        The slot is freed on exit however the block ends, cancellation included; a waiter
        cancelled in the queue leaves it and gives its reservation back.
        """
        return _Slot(self, tokens)

    async def acquire(self, tokens: int = 0) -> None:
        """Take one slot (waiting in the queue if need be); pair with `release`, in a finally.

        `slot` is the same as a context manager; this pair is for the hot path, where a
        context manager's generator machinery costs more than the work it wraps.
        """
        self._reserve(tokens)
        try:
            await self._acquire()
        except BaseException:
            self._unreserve(tokens)
            raise
        self.admitted += 1

    def release(self) -> None:
        """Give back a slot taken with `acquire`."""
        self._release()

    def settle(self, reserved_tokens: int, actual_tokens: int) -> None:
        """Correct the token budget once the answer reports what the call really used."""
        if self._tokens is None:
            return
        if actual_tokens > reserved_tokens:
            self._tokens.take(actual_tokens - reserved_tokens)
        else:
            self._tokens.give_back(reserved_tokens - actual_tokens)

    def on_rate_limited(self, retry_after_s: float | None) -> None:
        """The endpoint answered 429: send it nothing for ``retry_after_s`` (None: 1 s)."""
        self.rate_limited += 1
        rest_s = DEFAULT_COOLDOWN_S if retry_after_s is None else max(0.0, retry_after_s)
        self.cooldown_until = max(self.cooldown_until, self._clock() + rest_s)

    # -- reporting ------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The live state, for the admin API."""
        return {
            "inflight": self.inflight,
            "max_concurrency": self.max_concurrency,
            "waiting": self.waiting,
            "max_queue": self.max_queue,
            "admitted": self.admitted,
            "rejected": self.rejected,
            "rate_limited": self.rate_limited,
            "cooldown_s": round(self._cooldown_s(), 3),
            "requests_left": None if self._requests is None else int(self._requests.tokens),
            "tokens_left": None if self._tokens is None else int(self._tokens.tokens),
        }

    def __repr__(self) -> str:
        return (
            f"<EndpointLimits {self.name} inflight={self.inflight}/{self.max_concurrency} "
            f"waiting={self.waiting}/{self.max_queue} rejected={self.rejected} "
            f"cooldown={self._cooldown_s():.1f}s>"
        )

    # -- internals ------------------------------------------------------------------------------

    def _has_room(self) -> bool:
        return self.inflight < self.max_concurrency or len(self._waiters) < self.max_queue

    def _cooldown_s(self) -> float:
        return max(0.0, self.cooldown_until - self._clock())

    def _blocked(self, tokens: int) -> tuple[float, str] | None:
        """How long until cooldown and budgets let ``tokens`` through, and why; None if now."""
        if self.cooldown_until == -math.inf and self._requests is None and self._tokens is None:
            return None  # the common case, on every pick: no 429 seen, no budgets configured
        waits: list[tuple[float, str]] = []
        if (cooldown_s := self._cooldown_s()) > 0:
            waits.append((cooldown_s, "is cooling down after a 429"))
        if self._requests is not None and (wait_s := self._requests.time_until(1)) > 0:
            waits.append((wait_s, f"has used its {self.requests_per_min:g} requests/min"))
        if self._tokens is not None and tokens and (wait_s := self._tokens.time_until(tokens)) > 0:
            if math.isinf(wait_s):
                why = f"cannot take {tokens} tokens: its budget is {self.tokens_per_min:g}/min"
            else:
                why = f"has used its {self.tokens_per_min:g} tokens/min"
            waits.append((wait_s, why))
        return max(waits) if waits else None

    def _reserve(self, tokens: int) -> None:
        blocked = self._blocked(tokens)
        if blocked is not None:
            wait_s, why = blocked
            self.rejected += 1
            if math.isinf(wait_s):
                raise Overloaded(f"{self.name} {why}")
            raise Overloaded(f"{self.name} {why}; retry after {wait_s:.2f} s", retry_after_s=wait_s)
        if not self._has_room():
            self.rejected += 1
            raise Overloaded(
                f"{self.name} is at its {self.max_concurrency} concurrent calls with "
                f"{self.max_queue} more waiting; retry later or raise max_concurrency/max_queue"
            )
        if self._requests is not None:
            self._requests.take(1)
        if self._tokens is not None and tokens:
            self._tokens.take(tokens)

    def _unreserve(self, tokens: int) -> None:
        if self._requests is not None:
            self._requests.give_back(1)
        if self._tokens is not None and tokens:
            self._tokens.give_back(tokens)

    async def _acquire(self) -> None:
        if self.inflight < self.max_concurrency and not self._waiters:
            self.inflight += 1
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        # The timer and _release both settle the future, whichever is first, so a slot that
        # arrives as the wait runs out is never lost between them.
        timer = loop.call_later(self.queue_timeout_s, self._expire, waiter)
        try:
            await waiter
        except BaseException:
            if not waiter.done() or waiter.cancelled():
                self._discard(waiter)
            elif waiter.exception() is None:
                self._release()  # handed a slot, then cancelled before using it: pass it on
            raise
        finally:
            timer.cancel()

    def _expire(self, waiter: asyncio.Future[None]) -> None:
        if waiter.done():
            return
        self._discard(waiter)
        self.rejected += 1
        waiter.set_exception(
            Overloaded(
                f"{self.name} had no free slot within its {self.queue_timeout_s:g} s queue "
                "timeout; retry later or raise max_concurrency"
            )
        )

    def _release(self) -> None:
        # Hand the slot to the first live waiter; inflight stays the same.
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.inflight -= 1

    def _discard(self, waiter: asyncio.Future[None]) -> None:
        with contextlib.suppress(ValueError):  # already skipped by _release
            self._waiters.remove(waiter)


class _Slot:
    """`EndpointLimits.slot` as a plain class: cheaper than a generator-based context manager."""

    __slots__ = ("_limits", "_tokens")

    def __init__(self, limits: EndpointLimits, tokens: int) -> None:
        self._limits = limits
        self._tokens = tokens

    async def __aenter__(self) -> None:
        await self._limits.acquire(self._tokens)

    async def __aexit__(self, *exc_info: object) -> None:
        self._limits.release()


def _per_minute(per_min: float | None, clock: Callable[[], float]) -> TokenBucket | None:
    if per_min is None:
        return None
    # A minute's worth, but at least one: 0.5 requests/min means one every two minutes, not none.
    return TokenBucket(per_min / 60.0, max(per_min, 1.0), clock=clock)
