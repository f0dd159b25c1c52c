"""What ``surgeflow tune`` changes and models: the cache's expected hit ratio (checked against a
real gateway cache), each knob's ``apply`` and ``snippet``, the run queue it builds, and the CPU
stretch of the run simulation."""

import math
from pathlib import Path

import msgspec
import pytest

from surgeflow.config import Settings, load_settings
from surgeflow.errors import ConfigError
from surgeflow.server import running_gateway
from surgeflow.service import Service
from surgeflow.tuning.bench import run_bench
from surgeflow.tuning.knobs import (
    EVENTS_POLL_S,
    KNOBS,
    CacheTTL,
    Candidate,
    MaxConcurrency,
    MaxInFlight,
    WorkerConcurrency,
    Workers,
    expected_hit_ratio,
    knob_named,
    run_queue,
)
from surgeflow.tuning.results import LoadSettings
from surgeflow.tuning.runsim import simulate_runs
from surgeflow.tuning.scenario import RunQueue, ServiceTime
from surgeflow.tuning.targets import TargetSettings
from tests.gateway.conftest import API_KEY
from tests.tuning.configs import sim_config

TTL_S = 1


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(sim_config(tmp_path, other_model=True, cache={"ttl_s": 7}), env={})


# -- expected_hit_ratio against the gateway's cache ---------------------------------------------


@pytest.mark.slow
async def test_expected_hit_ratio_matches_the_gateway_cache(tmp_path: Path) -> None:
    hit_ratio, prompts, rate = 0.5, 50, 200.0
    settings = load_settings(sim_config(tmp_path, other_model=True, cache={"ttl_s": TTL_S}), env={})
    async with (
        Service(settings, workflows={}, api_keys=[API_KEY]) as service,
        running_gateway(service) as url,
    ):
        target = TargetSettings(
            kind="chat", url=f"{url}/v1", model="sim", hit_ratio=hit_ratio, prompts=prompts
        )
        load = LoadSettings(arrival="poisson", rate_rps=rate, duration_s=8, warmup_s=3, seed=1)
        result = await run_bench(target, load, api_key=API_KEY)
    statuses = result.cache_statuses
    answered = sum(statuses.values())
    hits = sum(statuses.get(s, 0) for s in ("hit", "stale", "semantic"))
    measured = hits / answered
    expected = expected_hit_ratio(hit_ratio, prompts, rate, float(TTL_S))
    print(f"cache statuses {statuses}: measured {measured:.4f}, expected {expected:.4f}")
    assert result.counts.errors == {}
    assert answered == result.counts.ok
    assert set(statuses) <= {"hit", "stale", "miss", "bypass"}
    assert expected == pytest.approx(1 / 3, abs=0.001)
    assert measured == pytest.approx(expected, abs=0.05)


# -- expected_hit_ratio, the formula ------------------------------------------------------------


def test_no_repeats_no_rate_no_hits() -> None:
    assert expected_hit_ratio(0.0, 50, 200, 60) == 0.0
    assert expected_hit_ratio(0.5, 50, 0, 60) == 0.0
    assert expected_hit_ratio(0.0, 50, 200, 60, stale_s=30) == 0.0


@pytest.mark.parametrize("hit_ratio", [0.1, 0.5, 1.0])
def test_a_long_ttl_answers_every_repeat(hit_ratio: float) -> None:
    ratios = [expected_hit_ratio(hit_ratio, 100, 50, ttl) for ttl in (1, 10, 100, 1e4, 1e7)]
    assert ratios == sorted(ratios)
    assert all(r < hit_ratio for r in ratios)
    assert ratios[-1] == pytest.approx(hit_ratio, rel=1e-4)


@pytest.mark.parametrize(
    ("hit_ratio", "prompts", "rate", "ttl_s"),
    [(0.5, 50, 200, 1.0), (0.2, 1000, 30, 60), (1.0, 1, 1, 0.5), (0.9, 7, 123, 3)],
)
def test_without_a_stale_window_it_is_the_renewal_ratio(
    hit_ratio: float, prompts: int, rate: float, ttl_s: float
) -> None:
    x = rate * hit_ratio / prompts * ttl_s
    assert expected_hit_ratio(hit_ratio, prompts, rate, ttl_s) == pytest.approx(
        hit_ratio * x / (1 + x)
    )
    assert expected_hit_ratio(hit_ratio, prompts, rate, ttl_s, 0.0) == pytest.approx(
        hit_ratio * x / (1 + x)
    )


def test_a_stale_window_raises_it() -> None:
    fresh = expected_hit_ratio(0.5, 50, 200, 1.0)
    ratios = [expected_hit_ratio(0.5, 50, 200, 1.0, stale_s) for stale_s in (0.1, 1, 10, 1000)]
    assert fresh < ratios[0]
    assert ratios == sorted(ratios)
    assert ratios[-1] == pytest.approx(0.5)  # every cycle is renewed by a stale answer
    # One cycle: λ·ttl hits and one request that misses with probability e^(−λ·stale).
    per_prompt = 200 * 0.5 / 50
    missed = math.exp(-per_prompt * 1.0) / (1 + per_prompt * 1.0)
    assert ratios[1] == pytest.approx(0.5 * (1 - missed))


# -- the knobs ----------------------------------------------------------------------------------


def changed_paths(before: object, after: object, path: str = "") -> list[str]:
    """Where two (nested) builtin structures differ, as dotted paths."""
    if isinstance(before, dict) and isinstance(after, dict):
        return [
            p
            for key in sorted(before.keys() | after.keys())
            for p in changed_paths(before.get(key), after.get(key), f"{path}.{key}")
        ]
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [
            p
            for i, (b, a) in enumerate(zip(before, after, strict=True))
            for p in changed_paths(b, a, f"{path}[{i}]")
        ]
    return [] if before == after else [path]


def diff(before: Candidate, after: Candidate) -> list[str]:
    return changed_paths(msgspec.to_builtins(before), msgspec.to_builtins(after))


def test_max_concurrency_sets_every_endpoint_of_the_model(settings: Settings) -> None:
    candidate = Candidate(settings=settings)
    knob = MaxConcurrency()
    changed = knob.apply(candidate, "sim", 5)
    assert diff(candidate, changed) == [
        ".settings.models[0].endpoints[0].max_concurrency",
        ".settings.models[0].endpoints[1].max_concurrency",
    ]
    assert knob.current(changed, "sim") == 5
    assert knob.snippet(candidate, "sim", 5) == {
        "models": [
            {
                "name": "sim",
                "endpoints": [
                    {"name": "a", "max_concurrency": 5},
                    {"name": "b", "max_concurrency": 5},
                ],
            }
        ]
    }


def test_max_in_flight_sets_the_servers_admission_limit(settings: Settings) -> None:
    candidate = Candidate(settings=settings)
    knob = MaxInFlight()
    changed = knob.apply(candidate, "sim", 77)
    assert diff(candidate, changed) == [".settings.server.max_in_flight"]
    assert changed.settings.server.max_in_flight == 77
    assert knob.current(changed, "sim") == 77
    assert knob.snippet(candidate, "sim", 77) == {"server": {"max_in_flight": 77}}


def test_cache_ttl_sets_the_models_ttl(settings: Settings) -> None:
    candidate = Candidate(settings=settings)
    knob = CacheTTL()
    assert knob.current(candidate, "sim") == 7
    changed = knob.apply(candidate, "sim", 30)
    assert diff(candidate, changed) == [".settings.models[0].cache.ttl_s"]
    assert changed.settings.models[0].cache.ttl_s == 30.0
    assert knob.current(changed, "sim") == 30
    assert knob.snippet(candidate, "sim", 30) == {
        "models": [{"name": "sim", "cache": {"ttl_s": 30}}]
    }
    # The other model keeps the global TTL.
    assert changed.settings.models[1].cache == candidate.settings.models[1].cache
    assert knob.current(changed, "other") == math.ceil(settings.cache.ttl_s)


def test_worker_concurrency_sets_the_workers_slots(settings: Settings) -> None:
    candidate = Candidate(settings=settings)
    knob = WorkerConcurrency()
    changed = knob.apply(candidate, "sim", 9)
    assert diff(candidate, changed) == [".settings.worker.concurrency"]
    assert knob.current(changed, "sim") == 9
    assert knob.snippet(candidate, "sim", 9) == {"worker": {"concurrency": 9}}


def test_workers_sets_the_worker_processes(settings: Settings) -> None:
    candidate = Candidate(settings=settings)
    knob = Workers()
    assert knob.current(candidate, "sim") == 1  # the embedded worker
    changed = knob.apply(candidate, "sim", 4)
    assert diff(candidate, changed) == [".workers"]
    assert changed.workers == 4
    assert changed.settings is candidate.settings
    assert knob.snippet(candidate, "sim", 4) == {"worker": {"embedded": False}}
    assert "4 `surgeflow worker` processes" in knob.advice(4)
    assert "1 `surgeflow worker` process " in knob.advice(1)


def test_an_unknown_knob_is_refused_naming_the_knobs() -> None:
    assert knob_named("cache_ttl_s") is KNOBS["cache_ttl_s"]
    with pytest.raises(ConfigError, match="nope") as raised:
        knob_named("nope")
    for name in KNOBS:
        assert name in str(raised.value)


# -- run_queue and the CPU stretch --------------------------------------------------------------

SERVICE = ServiceTime.distribution(100.0, "gamma", 1.0)


def test_run_queue_of_the_embedded_worker_has_no_polling(settings: Settings) -> None:
    queue = run_queue(Candidate(settings=settings), 5.0, SERVICE, cores=8)
    assert (queue.workers, queue.poll_interval_s, queue.events_poll_s) == (1, 0.0, 0.0)
    assert queue.cpu_servers == 1
    assert queue.concurrency == settings.worker.concurrency
    assert queue.rate == 5.0


@pytest.mark.parametrize(
    ("workers", "cores", "cpu_servers"),
    [(1, 8, 1), (4, 8, 4), (7, 8, 7), (8, 8, 7), (20, 8, 7), (3, 1, 1), (3, 2, 1), (3, 3, 2)],
)
def test_run_queue_of_separate_workers_polls(
    settings: Settings, workers: int, cores: int, cpu_servers: int
) -> None:
    worker = msgspec.structs.replace(settings.worker, poll_interval_s=0.25, concurrency=12)
    candidate = Candidate(
        settings=msgspec.structs.replace(settings, worker=worker), workers=workers
    )
    queue = run_queue(candidate, 5.0, SERVICE, overhead_ms=3, cpu_ms=2, cores=cores)
    assert queue.workers == workers
    assert queue.concurrency == 12
    assert queue.poll_interval_s == 0.25
    assert queue.events_poll_s == EVENTS_POLL_S
    assert queue.cpu_servers == cpu_servers == max(1, min(workers, cores - 1))
    assert (queue.overhead_ms, queue.cpu_ms) == (3, 2)


@pytest.mark.parametrize("rho", [0.0, 0.3, 0.6, 0.8])
def test_cpu_load_stretches_runs_as_processor_sharing(rho: float) -> None:
    """Runs that are all CPU (constant 10 ms, 10 ms of CPU each) on one event loop: with
    plenty of slots nobody waits for one, and the mean response is 10 ms / (1 − ρ)."""
    service_ms = 10.0
    rate = rho * 1000 / service_ms if rho else 1.0
    cpu_ms = service_ms if rho else 0.0
    queue = RunQueue(
        rate=rate,
        service=ServiceTime.distribution(service_ms, "constant", 0.0),
        concurrency=1024,
        cpu_ms=cpu_ms,
    )
    assert queue.cpu_utilisation == pytest.approx(rho)
    assert queue.stretch == pytest.approx(1 / (1 - rho))
    stats = simulate_runs(queue, count=20_000, seed=3)
    assert stats.mean_wait_s == pytest.approx(0.0, abs=1e-9)
    assert stats.mean_s == pytest.approx(service_ms / 1000 / (1 - rho), rel=0.02)


def test_only_the_cpu_share_of_a_run_stretches() -> None:
    # 100 ms a run, 20 ms of it CPU, at ρ = 0.5: 80 ms + 20 ms × 2 = 120 ms.
    queue = RunQueue(
        rate=25.0,
        service=ServiceTime.distribution(100.0, "constant", 0.0),
        concurrency=1024,
        cpu_ms=20.0,
    )
    assert queue.cpu_utilisation == pytest.approx(0.5)
    assert queue.stretch == pytest.approx(1.2)
    assert simulate_runs(queue, count=20_000).mean_s == pytest.approx(0.120, rel=0.01)


@pytest.mark.parametrize("rate", [100.0, 150.0])
def test_a_saturated_cpu_is_refused(rate: float) -> None:
    queue = RunQueue(
        rate=rate,
        service=ServiceTime.distribution(10.0, "constant", 0.0),
        cpu_ms=10.0,
    )
    assert queue.cpu_utilisation >= 1
    assert math.isinf(queue.stretch)
    with pytest.raises(ValueError, match="saturated"):
        simulate_runs(queue)
