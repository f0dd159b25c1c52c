"""What ``surgeflow bench`` writes (``--output result.json``) and how other code reads it back.

Times are seconds from the run's start unless a name says otherwise; latencies are milliseconds.
``latency`` runs from when a request was *meant* to be sent (its place in the schedule) to its
response; ``service_latency`` from when it was actually sent. Both cover the successful requests
of the measured window (those meant to be sent after the warm-up); errors are counted by kind.
Histograms are HdrHistogram's compressed base64 encoding (microseconds, 1 µs to 1 h, 3
significant digits), so results can be merged: `decode_histogram`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import msgspec
from hdrh.histogram import HdrHistogram

from surgeflow.errors import ValidationError
from surgeflow.tuning.arrivals import ArrivalKind
from surgeflow.tuning.targets import TargetSettings

RESULT_VERSION = 1
LOWEST_US = 1
HIGHEST_US = 3600 * 1_000_000
SIGNIFICANT_DIGITS = 3


def new_histogram() -> HdrHistogram:
    """An empty latency histogram: microseconds, 1 µs to 1 h, 3 significant digits."""
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


def decode_histogram(encoded: str) -> HdrHistogram:
    """A histogram from its encoding; ``h.add(decode_histogram(...))`` merges results."""
    histogram = new_histogram()
    if encoded:
        histogram.decode_and_add(encoded.encode("ascii"))
    return histogram


class LoadSettings(msgspec.Struct, kw_only=True, frozen=True):
    """How load was offered. Open loop: a rate profile (``rate_rps``, ``ramp_rps`` or
    ``steps_rps``); closed loop: ``concurrency`` virtual users."""

    mode: Literal["open", "closed"] = "open"  # set by the bench from the fields below
    arrival: ArrivalKind = "constant"
    rate_rps: float | None = None
    ramp_rps: tuple[float, float] | None = None
    steps_rps: tuple[float, ...] | None = None
    step_s: float = 10.0
    concurrency: int | None = None
    think_ms: float = 0.0
    duration_s: float = 10.0
    warmup_s: float = 0.0
    requests: int | None = None
    max_in_flight: int = 10_000
    timeout_s: float = 30.0
    seed: int = 0


class Latency(msgspec.Struct, kw_only=True, frozen=True):
    """A latency distribution in milliseconds (``None`` when nothing was measured)."""

    count: int
    mean_ms: float | None
    min_ms: float | None
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    p999_ms: float | None
    max_ms: float | None
    histogram: str  # HdrHistogram encode(), base64


def summarize(histogram: HdrHistogram) -> Latency:
    count = int(histogram.get_total_count())
    encoded = histogram.encode().decode("ascii")
    if count == 0:
        return Latency(
            count=0,
            mean_ms=None,
            min_ms=None,
            p50_ms=None,
            p90_ms=None,
            p99_ms=None,
            p999_ms=None,
            max_ms=None,
            histogram=encoded,
        )

    def ms(value_us: float) -> float:
        return round(value_us / 1000, 3)

    def at(percentile: float) -> float:
        return ms(histogram.get_value_at_percentile(percentile))

    return Latency(
        count=count,
        mean_ms=ms(histogram.get_mean_value()),
        min_ms=ms(histogram.get_min_value()),
        p50_ms=at(50),
        p90_ms=at(90),
        p99_ms=at(99),
        p999_ms=at(99.9),
        max_ms=ms(histogram.get_max_value()),
        histogram=encoded,
    )


class Counts(msgspec.Struct, kw_only=True, frozen=True):
    """Requests meant to be sent in the measured window, by how they ended."""

    offered: int  # the schedule's requests: sent + dropped
    sent: int
    ok: int
    errors: dict[str, int]  # by kind: status_503, timeout, connection, run.failed …
    dropped: int  # not sent: --max-in-flight requests were already in flight
    unfinished: int  # still in flight when the run ended (cancelled)

    @property
    def failed(self) -> int:
        return sum(self.errors.values())


class Window(msgspec.Struct, kw_only=True, frozen=True):
    """The measured window, from the end of the warm-up to the end of the load."""

    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return max(self.end_s - self.start_s, 0.0)


class Second(msgspec.Struct, kw_only=True, frozen=True):
    """One second of the run (``t_s`` is its start; the warm-up included)."""

    t_s: int
    offered: int  # requests the schedule meant to send in this second
    sent: int
    dropped: int
    ok: int  # responses that arrived in this second
    errors: int
    in_flight: int  # at the end of the second
    p50_ms: float | None  # of the latencies of the ok responses that arrived in this second
    p99_ms: float | None


class SumCount(msgspec.Struct, kw_only=True, frozen=True):
    """The increase of a Prometheus histogram's ``_count`` and ``_sum`` during the run."""

    count: float
    sum_s: float

    @property
    def mean_s(self) -> float | None:
        return self.sum_s / self.count if self.count else None


class EndpointFigures(msgspec.Struct, kw_only=True, frozen=True):
    """One model endpoint: calls during the run, and its EWMA latency once it ended."""

    model: str
    endpoint: str
    successes: float
    failures: float
    latency_ewma_s: float | None


class ServerFigures(msgspec.Struct, kw_only=True, frozen=True):
    """What a surgeflow gateway's ``/metrics`` said changed during the run."""

    cache_requests: dict[str, float]  # by X-Surgeflow-Cache status: hit, stale, semantic, miss …
    endpoints: list[EndpointFigures]
    queue_wait: dict[str, SumCount]  # by workflow
    run_duration: dict[str, SumCount]  # by workflow
    http_requests: dict[str, SumCount]  # gateway time by route template

    @property
    def cache_hits(self) -> float:
        return sum(self.cache_requests.get(s, 0.0) for s in ("hit", "stale", "semantic"))

    @property
    def cache_lookups(self) -> float:
        """Requests the cache was asked about (all but ``bypass``)."""
        return sum(v for status, v in self.cache_requests.items() if status != "bypass")

    @property
    def cache_hit_ratio(self) -> float | None:
        lookups = self.cache_lookups
        return self.cache_hits / lookups if lookups else None


class BenchResult(msgspec.Struct, kw_only=True, frozen=True):
    """One ``surgeflow bench`` run."""

    version: int = RESULT_VERSION
    tool: str = "surgeflow bench"
    surgeflow_version: str
    target: TargetSettings
    load: LoadSettings
    profile: str  # the load in words: "100 req/s", "ramp 10→200 req/s over 60 s", "8 users"
    started_at: float  # Unix time
    started: str  # the same, ISO 8601 UTC
    window: Window
    counts: Counts
    warmup_sent: int
    offered_rps: float  # offered / window duration
    achieved_rps: float  # ok responses that arrived in the window / its duration
    error_ratio: float  # errors / (ok + errors)
    latency: Latency  # intended send → response
    service_latency: Latency  # actual send → response
    cache_statuses: dict[str, int]  # X-Surgeflow-Cache of the measured responses
    timeline: list[Second]
    server: ServerFigures | None  # None: no surgeflow /metrics at the target


def iso_utc(unix_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix_s))


def save_result(result: BenchResult, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(msgspec.json.format(msgspec.json.encode(result), indent=1) + b"\n")


def load_result(path: Path | str) -> BenchResult:
    """Read a result written by ``surgeflow bench --output``; `ValidationError` if it is not one."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValidationError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        head = msgspec.json.decode(data, type=dict[str, Any])
    except msgspec.DecodeError as exc:
        raise ValidationError(f"{path} is not JSON: {exc}") from None
    version = head.get("version")
    if head.get("tool") != "surgeflow bench" or not isinstance(version, int):
        raise ValidationError(f"{path} is not a surgeflow bench result")
    if version > RESULT_VERSION:
        raise ValidationError(
            f"{path} is a version {version} result; this surgeflow reads up to "
            f"version {RESULT_VERSION}: upgrade surgeflow"
        )
    try:
        return msgspec.json.decode(data, type=BenchResult)
    except msgspec.ValidationError as exc:
        raise ValidationError(f"{path} is not a valid bench result: {exc}") from None


class ComparedMetric(msgspec.Struct, frozen=True):
    """One row of ``--compare``: a metric's value in each result, and its ratio to the first."""

    name: str
    values: list[float | None]
    ratios: list[float | None]  # value / first value; None where either is missing or 0


def compare(results: list[BenchResult]) -> list[ComparedMetric]:
    rows: list[tuple[str, list[float | None]]] = [
        ("offered req/s", [r.offered_rps for r in results]),
        ("achieved req/s", [r.achieved_rps for r in results]),
        ("p50 ms", [r.latency.p50_ms for r in results]),
        ("p90 ms", [r.latency.p90_ms for r in results]),
        ("p99 ms", [r.latency.p99_ms for r in results]),
        ("p99.9 ms", [r.latency.p999_ms for r in results]),
        ("max ms", [r.latency.max_ms for r in results]),
        ("service p99 ms", [r.service_latency.p99_ms for r in results]),
        ("error ratio", [r.error_ratio for r in results]),
        ("dropped", [float(r.counts.dropped) for r in results]),
    ]
    compared = []
    for name, values in rows:
        first = values[0]
        ratios = [
            None if first is None or value is None or first == 0 else value / first
            for value in values
        ]
        compared.append(ComparedMetric(name, values, ratios))
    return compared
