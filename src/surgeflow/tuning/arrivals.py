"""When an open-loop load generator means to send: rate profiles and arrival schedules.

A profile is a request rate over time, piecewise linear: a fixed rate, a linear ramp, or steps.
A schedule turns it into send times, as offsets in seconds from the start of the run. Both kinds
of schedule come from the profile's cumulative rate Λ(t) (how many requests are due by t):
``constant`` sends the k-th request when Λ(t) = k; ``poisson`` when Λ(t) reaches the sum of k
unit exponential draws, which is a (non-homogeneous) Poisson process of rate λ(t). Every time is
computed from the start, never by adding up gaps after sleeps, so no drift accumulates.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from surgeflow.errors import ConfigError

ArrivalKind = Literal["constant", "poisson"]
ARRIVAL_KINDS: tuple[ArrivalKind, ...] = ("constant", "poisson")


@dataclass(frozen=True, slots=True)
class Segment:
    """The rate goes linearly from ``start_rps`` to ``end_rps`` over ``[start_s, end_s)``."""

    start_s: float
    end_s: float  # math.inf for the last segment: its rate holds from then on
    start_rps: float
    end_rps: float

    @property
    def slope(self) -> float:
        if math.isinf(self.end_s) or self.end_s == self.start_s:
            return 0.0
        return (self.end_rps - self.start_rps) / (self.end_s - self.start_s)

    def rate(self, t_s: float) -> float:
        return self.start_rps + self.slope * (t_s - self.start_s)

    def count(self, t_s: float) -> float:
        """Requests due in this segment by ``t_s`` (its own share of Λ)."""
        dt = min(t_s, self.end_s) - self.start_s
        return self.start_rps * dt + self.slope * dt * dt / 2

    def time_of(self, count: float) -> float:
        """When this segment's share of Λ reaches ``count`` (may lie past ``end_s``)."""
        a, b = self.slope / 2, self.start_rps
        # The root of a·dt² + b·dt = count, in the form that is stable when a is 0 or tiny.
        root = math.sqrt(max(b * b + 4 * a * count, 0.0))
        denominator = b + root
        return self.start_s + (2 * count / denominator if denominator > 0 else math.inf)


class RateProfile:
    """A request rate over time (requests per second), piecewise linear; the last piece holds."""

    def __init__(self, segments: Sequence[Segment], description: str) -> None:
        if not segments or not math.isinf(segments[-1].end_s):
            raise ValueError("the last segment must be open-ended")
        self.segments = tuple(segments)
        self.description = description

    def __repr__(self) -> str:
        return f"<RateProfile {self.description}>"

    @classmethod
    def fixed(cls, rate_rps: float) -> RateProfile:
        _check_rates([rate_rps])
        return cls([Segment(0.0, math.inf, rate_rps, rate_rps)], f"{rate_rps:g} req/s")

    @classmethod
    def ramp(cls, start_rps: float, end_rps: float, over_s: float) -> RateProfile:
        """From ``start_rps`` to ``end_rps`` linearly over ``over_s`` seconds, then ``end_rps``."""
        _check_rates([start_rps, end_rps])
        if over_s <= 0:
            raise ConfigError(f"a ramp needs a duration > 0 s, not {over_s:g}")
        segments = [
            Segment(0.0, over_s, start_rps, end_rps),
            Segment(over_s, math.inf, end_rps, end_rps),
        ]
        return cls(segments, f"ramp {start_rps:g}→{end_rps:g} req/s over {over_s:g} s")

    @classmethod
    def steps(cls, rates_rps: Sequence[float], step_s: float) -> RateProfile:
        """Each rate for ``step_s`` seconds in turn; the last one holds."""
        _check_rates(rates_rps)
        if step_s <= 0:
            raise ConfigError(f"--step-s must be > 0, not {step_s:g}")
        segments = [
            Segment(i * step_s, (i + 1) * step_s, rate, rate) for i, rate in enumerate(rates_rps)
        ]
        last = rates_rps[-1]
        segments[-1] = Segment((len(rates_rps) - 1) * step_s, math.inf, last, last)
        rates = ",".join(f"{rate:g}" for rate in rates_rps)
        return cls(segments, f"steps {rates} req/s, {step_s:g} s each")

    def delayed(self, lead_s: float) -> RateProfile:
        """This profile starting ``lead_s`` later, at its initial rate until then (a warm-up)."""
        if lead_s <= 0:
            return self
        first = self.segments[0].start_rps
        shifted = [
            Segment(s.start_s + lead_s, s.end_s + lead_s, s.start_rps, s.end_rps)
            for s in self.segments
        ]
        return RateProfile([Segment(0.0, lead_s, first, first), *shifted], self.description)

    def rate(self, t_s: float) -> float:
        """The rate at ``t_s`` seconds."""
        for segment in self.segments:
            if t_s < segment.end_s:
                return segment.rate(t_s)
        raise AssertionError("unreachable: the last segment is open-ended")

    def cumulative(self, t_s: float) -> float:
        """Λ(t): how many requests are due in ``[0, t_s)``."""
        total = 0.0
        for segment in self.segments:
            if t_s <= segment.start_s:
                break
            total += segment.count(t_s)
        return total

    def times(self, counts: Iterator[float]) -> Iterator[float]:
        """Λ⁻¹ of each of ``counts`` (which must not decrease)."""
        index, before = 0, 0.0  # Λ at the start of segment ``index``
        for count in counts:
            while True:
                segment = self.segments[index]
                if math.isinf(segment.end_s):
                    break
                full = segment.count(segment.end_s)
                if count - before < full:
                    break
                before += full
                index += 1
            yield segment.time_of(count - before)


def arrival_times(
    profile: RateProfile, kind: ArrivalKind, until_s: float, seed: int = 0
) -> Iterator[float]:
    """Send times in ``[0, until_s)``, in order, as offsets in seconds from the start."""
    if kind == "constant":
        counts: Iterator[float] = (float(k) for k in _naturals())
    elif kind == "poisson":
        counts = _exponential_sums(random.Random(seed))
    else:
        raise ConfigError(f"unknown arrival process {kind!r}: use one of {ARRIVAL_KINDS}")
    for t_s in profile.times(counts):
        if t_s >= until_s:
            return
        yield t_s


def _naturals() -> Iterator[int]:
    k = 0
    while True:
        yield k
        k += 1


def _exponential_sums(rng: random.Random) -> Iterator[float]:
    total = 0.0
    while True:
        total += rng.expovariate(1.0)
        yield total


def _check_rates(rates_rps: Sequence[float]) -> None:
    if not rates_rps:
        raise ConfigError("give at least one rate")
    for rate in rates_rps:
        if not rate > 0 or math.isinf(rate):
            raise ConfigError(f"a request rate must be > 0 req/s, not {rate:g}")
