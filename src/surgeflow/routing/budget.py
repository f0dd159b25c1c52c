"""The retry budget (as Finagle and Envoy bound retries) and the backoff between attempts."""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from surgeflow.config import RetrySettings
from surgeflow.routing.limits import TokenBucket

# Deposits and withdrawals are kept in this many buckets, so the window slides in tenths.
_WINDOW_BUCKETS = 10


class RetryBudget:
    """How many retries a model may send: a share of its recent requests, plus a small floor.

    Each request (`on_request`, once per call, not per attempt) deposits ``budget_ratio`` of a
    retry; `try_retry` withdraws a whole one. Both expire after ``window_s``, so a calm minute
    does not fund a later storm, and a retry counts against the deposits of its own window:
    retries funded this way never exceed ``budget_ratio`` × requests. On top of that,
    ``min_per_s`` retries a second are always allowed (up to one second's worth saved), so a
    model with little traffic can still retry. Not thread-safe: use it from one event loop.
    """

    def __init__(
        self,
        settings: RetrySettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        window_s: float = 10.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be > 0")
        self.settings = settings
        self.ratio = settings.budget_ratio
        self.window_s = window_s
        self._clock = clock
        self._rng = rng
        self._width_s = window_s / _WINDOW_BUCKETS
        # [bucket index, requests, retries charged to the ratio]; ints, so the bound is exact.
        self._buckets: deque[list[int]] = deque()
        self._deposits = 0
        self._withdrawals = 0
        self._floor = (
            TokenBucket(settings.min_per_s, max(1.0, settings.min_per_s), clock=clock)
            if settings.min_per_s > 0
            else None
        )
        self.requests = 0
        self.retries = 0
        self.refused = 0

    @property
    def balance(self) -> float:
        """Retries the ratio funds now (before the floor)."""
        self._expire(self._clock())
        return self.ratio * self._deposits - self._withdrawals

    def on_request(self) -> None:
        """A new call (not a retry) arrived."""
        self.requests += 1
        self._bucket(self._clock())[1] += 1
        self._deposits += 1

    def try_retry(self) -> bool:
        """Take one retry from the budget; False (and counted in ``refused``) if there is none."""
        # A hair of slack, so that 0.1 × 10 requests funds one retry despite float rounding.
        if self.balance >= 1 - 1e-9:
            self._bucket(self._clock())[2] += 1
            self._withdrawals += 1
        elif self._floor is None or not self._floor.try_take(1):
            self.refused += 1
            return False
        self.retries += 1
        return True

    def backoff_s(self, attempt: int) -> float:
        """The pause before retry number ``attempt`` (1 for the first), per the settings."""
        return backoff_s(
            attempt, self.settings.backoff_s, self.settings.max_backoff_s, rng=self._rng
        )

    def snapshot(self) -> dict[str, Any]:
        """The live state, for the admin API."""
        return {
            "requests": self.requests,
            "retries": self.retries,
            "refused": self.refused,
            "balance": round(self.balance, 3),
            "floor_left": None if self._floor is None else round(self._floor.tokens, 3),
        }

    def __repr__(self) -> str:
        return (
            f"<RetryBudget ratio={self.ratio:g} balance={self.balance:.1f} "
            f"requests={self.requests} retries={self.retries} refused={self.refused}>"
        )

    def _bucket(self, now: float) -> list[int]:
        index = self._expire(now)
        if not self._buckets or self._buckets[-1][0] != index:
            self._buckets.append([index, 0, 0])
        return self._buckets[-1]

    def _expire(self, now: float) -> int:
        index = math.floor(now / self._width_s)
        while self._buckets and self._buckets[0][0] <= index - _WINDOW_BUCKETS:
            _, deposits, withdrawals = self._buckets.popleft()
            self._deposits -= deposits
            self._withdrawals -= withdrawals
        return index


def backoff_s(
    attempt: int, base_s: float, max_s: float, *, rng: Callable[[], float] = random.random
) -> float:
    """The pause before retry number ``attempt`` (1 for the first): exponential, equal jitter.

    ``base_s × 2**(attempt-1)``, capped at ``max_s``; half of it fixed, half random, so retries
    spread out yet never come at once.
    """
    ceiling = min(max_s, base_s * 2.0 ** min(max(attempt - 1, 0), 64))
    return ceiling / 2 + rng() * ceiling / 2
