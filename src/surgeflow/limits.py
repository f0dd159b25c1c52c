"""Admission by rate: a token bucket per API key and one for the whole service.

A bucket holds up to ``burst`` tokens and refills at ``rate`` per second; a request takes one
token or is refused with 429 and the time until a token is back (Retry-After). With
``limits.url`` unset the buckets live in this process; with ``redis://…`` every gateway that
names the same Redis shares them, so N gateways enforce one limit: one Lua script checks and
takes from the key's bucket and the global one atomically, on Redis's clock. When Redis is
slow or down, each gateway falls back to its own buckets (counted and logged), so a limit
degrades to per-process instead of vanishing or failing requests.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import msgspec
from prometheus_client.core import CounterMetricFamily, Metric

from surgeflow.config import LimitSettings
from surgeflow.errors import ConfigError

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("surgeflow.limits")

KEY_PREFIX = "surgeflow:limit:"
GLOBAL = "*"  # the bucket every request also takes from

# KEYS: the key's bucket, the global bucket ("" when unused). ARGV: per bucket rate and burst.
# Returns {1, 0, 0} when every bucket had a token (each took one), else {0, ms until the emptiest
# has one, its position in KEYS}.
_TAKE = """
local now_s, now_us = unpack(redis.call('TIME'))
local now = tonumber(now_s) + tonumber(now_us) / 1e6
local function level(key, rate, burst)
  local state = redis.call('HMGET', key, 't', 'at')
  local tokens, at = tonumber(state[1]), tonumber(state[2])
  if tokens == nil then return burst end
  return math.min(burst, tokens + (now - at) * rate)
end
local wait, worst = 0, 0
local levels = {}
for i = 1, #KEYS do
  local rate, burst = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  local tokens = level(KEYS[i], rate, burst)
  levels[i] = tokens
  if tokens < 1 and (1 - tokens) / rate > wait then wait, worst = (1 - tokens) / rate, i end
end
if wait > 0 then return {0, math.ceil(wait * 1000), worst} end
for i = 1, #KEYS do
  local rate, burst = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  redis.call('HSET', KEYS[i], 't', levels[i] - 1, 'at', now)
  redis.call('PEXPIRE', KEYS[i], math.ceil(burst / rate * 1000) + 1000)
end
return {1, 0, 0}
"""


class Bucket:
    """One token bucket in this process."""

    __slots__ = ("at", "burst", "rate", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.at = now

    def level(self, now: float) -> float:
        return min(self.burst, self.tokens + (now - self.at) * self.rate)

    def take(self, now: float) -> None:
        self.tokens = self.level(now) - 1
        self.at = now


class Decision(msgspec.Struct, frozen=True):
    allowed: bool
    retry_after_s: float = 0.0
    scope: str = ""  # "key" or "global": whose limit refused it


class Limiter:
    """The buckets of one service: `acquire(key_id)` before a request does any work."""

    def __init__(
        self,
        settings: LimitSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        redis: Redis | None = None,
    ) -> None:
        self.settings = settings
        self.key_rate = settings.key_rps
        self.key_burst = _burst(settings.key_rps, settings.key_burst)
        self.global_rate = settings.global_rps
        self.global_burst = _burst(settings.global_rps, settings.global_burst)
        self._clock = clock
        self._buckets: dict[str, Bucket] = {}
        self._redis = redis
        self._script: Any = None
        self.refused = {"key": 0, "global": 0}
        self.fallbacks = 0  # decisions taken locally because Redis failed
        self._warned_at = -math.inf

    @property
    def enabled(self) -> bool:
        return self.key_rate is not None or self.global_rate is not None

    @property
    def shared(self) -> bool:
        return self._redis is not None

    async def start(self) -> None:
        url = self.settings.url
        if url is None or self._redis is not None or not self.enabled:
            return
        try:
            from redis.asyncio import Redis

            from surgeflow._redis import packing_in_c
        except ImportError:
            raise ConfigError(
                f"limits URL {url!r} needs the redis extra: pip install 'surgeflow[redis]'"
            ) from None
        timeout = self.settings.timeout_s
        self._redis = packing_in_c(
            Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=max(timeout, 0.5))
        )

    async def aclose(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def ping(self) -> bool:
        """Whether the shared Redis answers (True when there is none to ask)."""
        if self._redis is None:
            return True
        try:
            return bool(await self._redis.ping())
        except Exception:
            return False

    async def acquire(self, key_id: str) -> Decision:
        """Take a token from ``key_id``'s bucket and the global one, or say how long to wait."""
        if self._redis is not None:
            try:
                decision = await self._acquire_shared(key_id)
            except Exception as exc:  # a slow or dead Redis: decide here instead
                self._fell_back(exc)
            else:
                return self._counted(decision)
        return self._counted(self.acquire_local(key_id))

    def acquire_local(self, key_id: str) -> Decision:
        now = self._clock()
        buckets: list[tuple[str, Bucket]] = []
        if self.key_rate is not None:
            buckets.append(("key", self._bucket(key_id, self.key_rate, self.key_burst, now)))
        if self.global_rate is not None:
            rate, burst = self.global_rate, self.global_burst
            buckets.append(("global", self._bucket(GLOBAL, rate, burst, now)))
        worst: tuple[float, str] = (0.0, "")
        for scope, bucket in buckets:
            tokens = bucket.level(now)
            if tokens < 1:
                worst = max(worst, ((1 - tokens) / bucket.rate, scope))
        if worst[0] > 0:
            return Decision(False, worst[0], worst[1])
        for _, bucket in buckets:
            bucket.take(now)
        return Decision(True)

    async def _acquire_shared(self, key_id: str) -> Decision:
        assert self._redis is not None
        if self._script is None:
            self._script = self._redis.register_script(_TAKE)
        keys: list[str] = []
        scopes: list[str] = []
        args: list[float] = []
        if self.key_rate is not None:
            keys.append(KEY_PREFIX + "key:" + key_id)
            scopes.append("key")
            args += [self.key_rate, self.key_burst]
        if self.global_rate is not None:
            keys.append(KEY_PREFIX + "global")
            scopes.append("global")
            args += [self.global_rate, self.global_burst]
        allowed, wait_ms, worst = await self._script(keys=keys, args=args)
        if allowed:
            return Decision(True)
        return Decision(False, int(wait_ms) / 1000, scopes[int(worst) - 1])

    def _bucket(self, name: str, rate: float, burst: float, now: float) -> Bucket:
        bucket = self._buckets.get(name)
        if bucket is None:
            if len(self._buckets) >= 100_000:  # keys come and go: never grow without bound
                self._buckets.clear()
            bucket = self._buckets[name] = Bucket(rate, burst, now)
        return bucket

    def _counted(self, decision: Decision) -> Decision:
        if not decision.allowed:
            self.refused[decision.scope] = self.refused.get(decision.scope, 0) + 1
        return decision

    def _fell_back(self, exc: Exception) -> None:
        self.fallbacks += 1
        now = self._clock()
        if now - self._warned_at >= 10:
            self._warned_at = now
            log.warning(
                "rate limits: Redis failed (%s); each gateway enforces its own limits until it is"
                " back",
                exc,
            )

    def collect(self) -> Iterator[Metric]:
        """For GET /metrics: refusals by the limit that refused, and local fallbacks."""
        refused = CounterMetricFamily(
            "surgeflow_rate_limited",
            "Requests refused with 429 by a rate limit (scope: key or global).",
            labels=["scope"],
        )
        for scope in ("key", "global"):
            refused.add_metric([scope], float(self.refused.get(scope, 0)))
        yield refused
        yield CounterMetricFamily(
            "surgeflow_rate_limit_fallbacks",
            "Rate-limit decisions taken in this process because the shared Redis failed.",
            value=float(self.fallbacks),
        )

    def __repr__(self) -> str:
        where = "redis" if self.shared else "process"
        return (
            f"<Limiter key={self.key_rate}/s burst {self.key_burst:g}"
            f" global={self.global_rate}/s burst {self.global_burst:g} in {where}>"
        )


def _burst(rate: float | None, burst: int | None) -> float:
    if rate is None:
        return 0.0
    return float(burst if burst is not None else max(1, math.ceil(rate)))
