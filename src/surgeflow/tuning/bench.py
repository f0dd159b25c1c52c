"""``surgeflow bench``: a load generator that does not lie.

Open loop (the default): one scheduler task computes every request's *intended* send time from
the start of the run (`surgeflow.tuning.arrivals`) and launches each request as its own task, so
a slow response never delays the next request. A request's ``latency`` runs from its intended
time, so when the generator itself falls behind (a pause, a saturated CPU) the delay is counted,
not hidden: there is no coordinated omission. ``service_latency`` runs from the actual send; the
gap between the two shows how late the generator was. At most ``max_in_flight`` requests are in
flight; a request due beyond that is *dropped* and counted, never silently sent late.

Closed loop (``concurrency``): N virtual users, each sending its next request when its last one
returned (plus ``think_ms``). Its latency is service time by construction; its throughput is
what shows saturation.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import aiohttp
import msgspec
from hdrh.histogram import HdrHistogram

from surgeflow import __version__
from surgeflow.errors import ConfigError
from surgeflow.tuning.arrivals import RateProfile, arrival_times
from surgeflow.tuning.results import (
    HIGHEST_US,
    LOWEST_US,
    BenchResult,
    Counts,
    LoadSettings,
    Second,
    ServerFigures,
    Window,
    iso_utc,
    new_histogram,
    summarize,
)
from surgeflow.tuning.scrape import figures, scrape
from surgeflow.tuning.targets import OK, Target, TargetSettings, check_url, make_target

MAX_DURATION_S = 3600.0
# When the scheduler is behind, it yields to the loop after this many launches in a row, so
# the requests it launched can start while it catches up.
_BURST = 64


def rate_profile(load: LoadSettings) -> RateProfile | None:
    """The open-loop rate profile of ``load`` (``None`` in closed loop); `ConfigError` if bad."""
    given = [
        name
        for name, value in (
            ("--rate", load.rate_rps),
            ("--ramp", load.ramp_rps),
            ("--steps", load.steps_rps),
            ("--concurrency", load.concurrency),
        )
        if value is not None
    ]
    if len(given) != 1:
        raise ConfigError(
            f"give exactly one of --rate, --ramp, --steps and --concurrency, not {given or 'none'}"
        )
    if not 0 < load.duration_s <= MAX_DURATION_S:
        raise ConfigError(
            f"--duration-s must be > 0 and ≤ {MAX_DURATION_S:g}, not {load.duration_s:g}"
        )
    if not 0 <= load.warmup_s < MAX_DURATION_S:
        raise ConfigError(f"--warmup-s must be ≥ 0, not {load.warmup_s:g}")
    if load.requests is not None and load.requests < 1:
        raise ConfigError(f"--requests must be ≥ 1, not {load.requests}")
    if load.max_in_flight < 1:
        raise ConfigError(f"--max-in-flight must be ≥ 1, not {load.max_in_flight}")
    if not load.timeout_s > 0:
        raise ConfigError(f"--timeout-s must be > 0, not {load.timeout_s:g}")
    if load.think_ms < 0:
        raise ConfigError(f"--think-ms must be ≥ 0, not {load.think_ms:g}")
    if load.concurrency is not None:
        if not 1 <= load.concurrency <= load.max_in_flight:
            raise ConfigError(
                f"--concurrency must be within 1..{load.max_in_flight}, not {load.concurrency}"
            )
        return None
    if load.rate_rps is not None:
        return RateProfile.fixed(load.rate_rps)
    if load.ramp_rps is not None:
        return RateProfile.ramp(*load.ramp_rps, over_s=load.duration_s)
    assert load.steps_rps is not None
    return RateProfile.steps(load.steps_rps, load.step_s)


@dataclass(slots=True)
class _Tally:
    sent: int = 0
    dropped: int = 0
    ok: int = 0
    errors: int = 0
    in_flight: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The run so far, for the live view: rates and percentiles of the last whole second."""

    elapsed_s: float
    total_s: float
    warming_up: bool
    offered_rps: float
    achieved_rps: float
    in_flight: int
    p50_ms: float | None
    p99_ms: float | None
    overall_p50_ms: float | None
    overall_p99_ms: float | None
    ok: int
    errors: dict[str, int]
    dropped: int


class _State(enum.Enum):
    UNSTARTED = "unstarted"
    RUNNING = "running"
    DRAINING = "draining"
    DONE = "done"


@dataclass
class _Recorder:
    """Counts and latencies of one run. Times are seconds from the run's start."""

    warmup_s: float
    window_end_s: float
    latency: HdrHistogram = field(default_factory=new_histogram)
    service: HdrHistogram = field(default_factory=new_histogram)
    this_second: HdrHistogram = field(default_factory=new_histogram)
    timeline: list[_Tally] = field(default_factory=list)
    open_second: int = 0
    sent: int = 0
    warmup_sent: int = 0
    dropped: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    unfinished: int = 0
    ok_in_window: int = 0
    cache_statuses: dict[str, int] = field(default_factory=dict)

    def tally(self, second: int) -> _Tally:
        while len(self.timeline) <= second:
            self.timeline.append(_Tally())
        return self.timeline[second]

    def advance(self, now_s: float, in_flight: int) -> None:
        """Close every second before the one ``now_s`` is in."""
        second = int(now_s)
        while self.open_second < second:
            tally = self.tally(self.open_second)
            if self.this_second.get_total_count():
                tally.p50_ms = self.this_second.get_value_at_percentile(50) / 1000
                tally.p99_ms = self.this_second.get_value_at_percentile(99) / 1000
                self.this_second.reset()
            tally.in_flight = in_flight
            self.open_second += 1

    def launched(self, intended_s: float) -> None:
        self.tally(int(intended_s)).sent += 1
        if intended_s >= self.warmup_s:
            self.sent += 1
        else:
            self.warmup_sent += 1

    def dropped_one(self, intended_s: float) -> None:
        self.tally(int(intended_s)).dropped += 1
        if intended_s >= self.warmup_s:
            self.dropped += 1

    def finished(
        self,
        intended_s: float,
        sent_s: float,
        done_s: float,
        kind: str,
        cache: str | None,
        in_flight: int,
    ) -> None:
        self.advance(done_s, in_flight)
        tally = self.tally(int(done_s))
        measured = intended_s >= self.warmup_s
        if kind != OK:
            tally.errors += 1
            if measured:
                self.errors[kind] = self.errors.get(kind, 0) + 1
            return
        tally.ok += 1
        latency_us = _clamp_us(done_s - intended_s)
        self.this_second.record_value(latency_us)
        if self.warmup_s <= done_s <= self.window_end_s:
            self.ok_in_window += 1
        if measured:
            self.ok += 1
            self.latency.record_value(latency_us)
            self.service.record_value(_clamp_us(done_s - sent_s))
            if cache is not None:
                self.cache_statuses[cache] = self.cache_statuses.get(cache, 0) + 1


def _clamp_us(seconds: float) -> int:
    return min(max(round(seconds * 1_000_000), LOWEST_US), HIGHEST_US)


def _ms(histogram: HdrHistogram, percentile: float) -> float | None:
    if not histogram.get_total_count():
        return None
    return float(histogram.get_value_at_percentile(percentile)) / 1000


class Bench:
    """One run of load against one target; `run()` once, `stop()` to end the load early."""

    def __init__(
        self,
        target: TargetSettings,
        load: LoadSettings,
        *,
        allow_remote: Sequence[str] = (),
        api_key: str | None = None,
        on_tick: Callable[[Snapshot], None] | None = None,
        scrape_metrics: bool = True,
    ) -> None:
        self.profile = rate_profile(load)
        self.root = check_url(target.url, allow_remote)
        self.target_settings = msgspec.structs.replace(target, url=self.root)
        self.target: Target = make_target(self.target_settings, seed=load.seed)
        self.load = msgspec.structs.replace(load, mode="closed" if self.profile is None else "open")
        self.api_key = api_key
        self.on_tick = on_tick
        self.scrape_metrics = scrape_metrics
        self.total_s = load.warmup_s + load.duration_s
        self.in_flight = 0
        self.max_in_flight_seen = 0
        self._launched = 0
        self._recorder = _Recorder(load.warmup_s, self.total_s)
        self._state = _State.UNSTARTED
        self._t0 = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._driver: asyncio.Task[None] | None = None
        self._load_ended_s: float | None = None
        self._stopping = False

    def __repr__(self) -> str:
        return (
            f"<Bench {self.target_settings.kind} {self.root} {self.describe()} "
            f"state={self._state.value} in_flight={self.in_flight} sent={self._recorder.sent}>"
        )

    def describe(self) -> str:
        if self.profile is None:
            think = f", {self.load.think_ms:g} ms think time" if self.load.think_ms else ""
            return f"{self.load.concurrency} users{think}"
        return f"{self.load.arrival} {self.profile.description}"

    def now_s(self) -> float:
        return time.perf_counter() - self._t0

    def stop(self) -> None:
        """End the load now; requests in flight still finish and the result is still made."""
        if self._stopping or self._state is not _State.RUNNING:
            return
        self._stopping = True
        self._end_load()
        if self._driver is not None and self.profile is not None:
            self._driver.cancel()  # the scheduler sleeps until its next send time

    def _end_load(self, at_s: float | None = None) -> None:
        if self._load_ended_s is None:
            self._load_ended_s = min(self.now_s() if at_s is None else at_s, self.total_s)
            self._recorder.window_end_s = self._load_ended_s

    async def run(self) -> BenchResult:
        if self._state is not _State.UNSTARTED:
            raise RuntimeError("a Bench runs once")
        self._state = _State.RUNNING
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        # No pool limit: in open loop every request must be able to go out when it is due.
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
        timeout = aiohttp.ClientTimeout(total=None)  # each request is bounded by timeout_s
        async with aiohttp.ClientSession(
            headers=headers, connector=connector, timeout=timeout
        ) as http:
            before = await scrape(http, self.root) if self.scrape_metrics else None
            started_at = time.time()
            self._t0 = time.perf_counter()
            ticker = asyncio.create_task(self._tick(), name="bench-ticker")
            try:
                self._driver = asyncio.create_task(self._drive(http), name="bench-load")
                try:
                    await self._driver
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if not self._stopping or (current is not None and current.cancelling()):
                        raise  # cancelled from outside, not by stop()
                self._end_load()
                self._state = _State.DRAINING
                await self._drain()
            finally:
                self._state = _State.DONE
                ticker.cancel()
                pending = [ticker, *self._tasks]
                if self._driver is not None:
                    pending.append(self._driver)
                    self._driver.cancel()
                for task in self._tasks:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
            self._recorder.advance(self.now_s() + 1, self.in_flight)
            after = await scrape(http, self.root) if before is not None else None
        return self._result(started_at, figures(before, after))

    async def _drive(self, http: aiohttp.ClientSession) -> None:
        if self.profile is None:
            assert self.load.concurrency is not None
            users = [self._user(http, u) for u in range(self.load.concurrency)]
            await asyncio.gather(*users)
        else:
            await self._schedule(http, self.profile)

    async def _schedule(self, http: aiohttp.ClientSession, profile: RateProfile) -> None:
        """Open loop: launch each request at its intended time, or at once when late."""
        load, recorder = self.load, self._recorder
        times = arrival_times(profile.delayed(load.warmup_s), load.arrival, self.total_s, load.seed)
        behind = 0
        for index, intended_s in enumerate(times):
            if load.requests is not None and index >= load.requests:
                self._end_load()  # the window ends with the last request
                return
            delay_s = intended_s - self.now_s()
            if delay_s > 0:
                behind = 0
                await asyncio.sleep(delay_s)
                # uvloop's timers tick in milliseconds and may wake up to ~1 ms early. Sending
                # then, stamped with the actual time, keeps the stamp never later than the send
                # (latency is never understated) without spinning a core until the exact time.
                intended_s = min(intended_s, self.now_s())
            else:
                behind += 1
                if behind % _BURST == 0:
                    await asyncio.sleep(0)
            if self.in_flight >= load.max_in_flight:
                recorder.dropped_one(intended_s)
                continue
            self._launch(http, index, intended_s)
        await asyncio.sleep(max(self.total_s - self.now_s(), 0.0))
        self._end_load(self.total_s)

    def _count_launch(self, intended_s: float) -> None:
        self.in_flight += 1
        self._launched += 1
        self.max_in_flight_seen = max(self.max_in_flight_seen, self.in_flight)
        self._recorder.launched(intended_s)

    def _launch(self, http: aiohttp.ClientSession, index: int, intended_s: float) -> None:
        self._count_launch(intended_s)
        task = asyncio.create_task(self._request(http, index, intended_s))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _user(self, http: aiohttp.ClientSession, user: int) -> None:
        """Closed loop: one virtual user; its requests are meant to go when the last returned."""
        load, think_s = self.load, self.load.think_ms / 1000
        index = user
        while not self._stopping:
            now_s = self.now_s()
            if now_s >= self.total_s:
                break
            if load.requests is not None and self._launched >= load.requests:
                self._end_load()  # the window ends with the last request
                break
            self._count_launch(now_s)
            # No schedule to be late for: the request is meant to go now, and goes now.
            await self._request(http, index, now_s, sent_s=now_s)
            index += load.concurrency or 1
            if think_s:
                await asyncio.sleep(think_s)

    async def _request(
        self,
        http: aiohttp.ClientSession,
        index: int,
        intended_s: float,
        *,
        sent_s: float | None = None,
    ) -> None:
        """One request; ``in_flight`` was counted by the caller and is released here."""
        if sent_s is None:
            sent_s = self.now_s()
        cache: str | None = None
        try:
            async with asyncio.timeout(self.load.timeout_s):
                kind, cache = await self.target.call(http, index)
        except TimeoutError:
            kind = "timeout"
        except aiohttp.ClientConnectionError:
            kind = "connection"
        except aiohttp.ClientPayloadError:
            kind = "payload"
        except aiohttp.ClientError:
            kind = "client"
        except msgspec.MsgspecError:
            kind = "protocol"
        except OSError:
            kind = "os"
        except asyncio.CancelledError:
            self.in_flight -= 1
            if intended_s >= self.load.warmup_s:
                self._recorder.unfinished += 1
            raise
        self.in_flight -= 1
        self._recorder.finished(intended_s, sent_s, self.now_s(), kind, cache, self.in_flight)

    async def _drain(self) -> None:
        """Wait for the requests in flight; each is bounded by timeout_s already."""
        while self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.load.timeout_s + 1.0)
            if self._tasks:
                for task in self._tasks:
                    task.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _tick(self) -> None:
        """Once a second: close the second in the timeline, show the live view."""
        second = 0
        while True:
            second += 1
            await asyncio.sleep(max(second - self.now_s(), 0.0))
            self._recorder.advance(self.now_s(), self.in_flight)
            if self.on_tick is not None:
                self.on_tick(self.snapshot())

    def snapshot(self) -> Snapshot:
        recorder = self._recorder
        now_s = self.now_s()
        last = recorder.timeline[recorder.open_second - 1] if recorder.open_second > 0 else None
        return Snapshot(
            elapsed_s=now_s,
            total_s=self.total_s,
            warming_up=now_s < self.load.warmup_s,
            offered_rps=(last.sent + last.dropped) if last else 0.0,
            achieved_rps=last.ok if last else 0.0,
            in_flight=self.in_flight,
            p50_ms=last.p50_ms if last else None,
            p99_ms=last.p99_ms if last else None,
            overall_p50_ms=_ms(recorder.latency, 50),
            overall_p99_ms=_ms(recorder.latency, 99),
            ok=recorder.ok,
            errors=dict(recorder.errors),
            dropped=recorder.dropped,
        )

    def _result(self, started_at: float, server: ServerFigures | None) -> BenchResult:
        recorder = self._recorder
        window = Window(start_s=self.load.warmup_s, end_s=recorder.window_end_s)
        duration_s = window.duration_s
        offered = recorder.sent + recorder.dropped
        failed = sum(recorder.errors.values())
        finished = recorder.ok + failed
        timeline = [
            Second(
                t_s=second,
                offered=tally.sent + tally.dropped,
                sent=tally.sent,
                dropped=tally.dropped,
                ok=tally.ok,
                errors=tally.errors,
                in_flight=tally.in_flight,
                p50_ms=None if tally.p50_ms is None else round(tally.p50_ms, 3),
                p99_ms=None if tally.p99_ms is None else round(tally.p99_ms, 3),
            )
            for second, tally in enumerate(recorder.timeline)
        ]
        return BenchResult(
            surgeflow_version=__version__,
            target=self.target_settings,
            load=self.load,
            profile=self.describe(),
            started_at=started_at,
            started=iso_utc(started_at),
            window=window,
            counts=Counts(
                offered=offered,
                sent=recorder.sent,
                ok=recorder.ok,
                errors=dict(sorted(recorder.errors.items())),
                dropped=recorder.dropped,
                unfinished=recorder.unfinished,
            ),
            warmup_sent=recorder.warmup_sent,
            offered_rps=_per_s(offered, duration_s),
            achieved_rps=_per_s(recorder.ok_in_window, duration_s),
            error_ratio=failed / finished if finished else 0.0,
            latency=summarize(recorder.latency),
            service_latency=summarize(recorder.service),
            cache_statuses=dict(sorted(recorder.cache_statuses.items())),
            timeline=timeline,
            server=server,
        )


def _per_s(count: int, duration_s: float) -> float:
    return round(count / duration_s, 3) if duration_s > 0 else 0.0


async def run_bench(
    target: TargetSettings,
    load: LoadSettings,
    *,
    allow_remote: Sequence[str] = (),
    api_key: str | None = None,
    on_tick: Callable[[Snapshot], None] | None = None,
    scrape_metrics: bool = True,
) -> BenchResult:
    """Run one bench and return its result (see `Bench`)."""
    bench = Bench(
        target,
        load,
        allow_remote=allow_remote,
        api_key=api_key,
        on_tick=on_tick,
        scrape_metrics=scrape_metrics,
    )
    return await bench.run()
