"""The discrete-event simulation: against the closed forms, and the routing it imitates."""

import pytest

from surgeflow.config import RetrySettings
from surgeflow.tuning import queueing as q
from surgeflow.tuning.network import analyze
from surgeflow.tuning.scenario import (
    CacheStage,
    EndpointGroup,
    GatewayTier,
    ModelTier,
    PolicyName,
    RunQueue,
    Scenario,
    ServiceTime,
)
from surgeflow.tuning.simulate import SimResult, StationStats, simulate, simulate_runs

NO_CPU = GatewayTier(cpu_hit_ms=0, cpu_miss_ms=0)


def one_station(
    service: ServiceTime,
    slots: int,
    rate: float,
    *,
    policy: PolicyName = "round_robin",
    count: int = 1,
    max_queue: int = 1_000_000,
    timeout_s: float = 1e6,
    retry: RetrySettings | None = None,
) -> Scenario:
    return Scenario(
        rate=rate,
        gateway=NO_CPU,
        model=ModelTier(
            policy=policy,
            endpoints=(
                EndpointGroup(
                    service=service,
                    count=count,
                    max_concurrency=slots,
                    max_queue=max_queue,
                    queue_timeout_s=timeout_s,
                ),
            ),
            retry=retry or RetrySettings(),
        ),
    )


def station(result: SimResult, kind: str) -> StationStats:
    return next(s for s in result.stations if s.kind == kind)


@pytest.mark.parametrize(
    ("dist", "servers", "rate", "expected_s"),
    [
        ("exponential", 1, 80.0, q.mm1_wait_s(80, 0.01)),  # M/M/1: ρ/(μ−λ) = 40 ms
        ("constant", 1, 80.0, q.mg1_wait_s(80, 0.01, 0.0)),  # M/D/1: P-K, 20 ms
        ("exponential", 4, 320.0, q.mmc_wait_s(320, 0.01, 4)),  # M/M/4: Erlang C
    ],
)
def test_simulated_wait_matches_the_closed_form(
    dist: str, servers: int, rate: float, expected_s: float
) -> None:
    scenario = one_station(ServiceTime.distribution(10, dist), servers, rate)  # type: ignore[arg-type]
    result = simulate(scenario, requests=120_000, seed=7)
    endpoint = station(result, "endpoint")
    assert endpoint.mean_wait_ms == pytest.approx(expected_s * 1000, rel=0.05)
    assert endpoint.utilisation == pytest.approx(rate * 0.01 / servers, rel=0.02)
    # End to end: the wait plus the 10 ms service, and the analysis agrees.
    assert result.mean_ms == pytest.approx(expected_s * 1000 + 10, rel=0.05)
    assert analyze(scenario).mean_ms == pytest.approx(expected_s * 1000 + 10, rel=1e-6)


def test_simulated_md_c_is_near_allen_cunneen() -> None:
    scenario = one_station(ServiceTime.distribution(100, "constant"), 4, 32.0)
    result = simulate(scenario, requests=80_000, seed=3)
    expected = q.allen_cunneen_wait_s(32, 0.1, 4, ca2=1.0, cs2=0.0)
    assert station(result, "endpoint").mean_wait_ms == pytest.approx(expected * 1000, rel=0.1)


def test_gateway_cpu_is_an_md1_queue() -> None:
    # Every request is a hit: one constant CPU visit of 1 ms at 700 req/s on one replica.
    scenario = Scenario(
        rate=700,
        gateway=GatewayTier(cpu_hit_ms=1.0, cpu_miss_ms=1.0),
        cache=CacheStage(hit_ratio=1.0),
        model=ModelTier(endpoints=(EndpointGroup(service=ServiceTime.distribution(5)),)),
    )
    result = simulate(scenario, requests=100_000, seed=5)
    expected_ms = q.mg1_wait_s(700, 0.001, 0.0) * 1000
    assert station(result, "gateway").mean_wait_ms == pytest.approx(expected_ms, rel=0.05)
    gateway = analyze(scenario).stations[0]
    assert gateway.wait_ms == pytest.approx(expected_ms)
    assert gateway.utilisation == pytest.approx(0.7)


def test_the_same_seed_gives_the_same_answer() -> None:
    scenario = one_station(ServiceTime.simulated(60, 300), 8, 30.0, policy="p2c_ewma", count=2)
    first = simulate(scenario, requests=5_000, seed=11)
    again = simulate(scenario, requests=5_000, seed=11)
    other = simulate(scenario, requests=5_000, seed=12)
    assert first == again
    assert first.p99_ms != other.p99_ms


def test_least_connections_waits_less_than_round_robin() -> None:
    """Two endpoints of two slots each at ρ = 0.8: round robin sends every other call to an
    endpoint whatever its load; least connections sends it where a slot is free."""
    service = ServiceTime.distribution(100, "exponential")
    results = {
        policy: simulate(one_station(service, 2, 32.0, policy=policy, count=2), requests=40_000)
        for policy in ("round_robin", "least_connections")
    }
    round_robin, least = results["round_robin"], results["least_connections"]
    assert least.mean_ms is not None
    assert round_robin.mean_ms is not None
    assert least.mean_ms < round_robin.mean_ms * 0.95
    assert station(least, "endpoint").mean_wait_ms < station(round_robin, "endpoint").mean_wait_ms


def test_queue_timeouts_reject_the_excess_at_overload() -> None:
    # Capacity 2 endpoints × 2 slots / 0.1 s = 40 calls/s, offered 60/s: a third must go.
    scenario = one_station(
        ServiceTime.distribution(100, "exponential"),
        2,
        60.0,
        policy="least_connections",
        count=2,
        max_queue=256,
        timeout_s=0.5,
    )
    result = simulate(scenario, requests=30_000, seed=2)
    assert result.reasons.get("queue_timeout", 0) > 0
    assert result.retries > 0  # a timed-out wait is retried on the other endpoint first
    assert result.error_ratio == pytest.approx(1 / 3, abs=0.03)
    assert result.throughput_rps == pytest.approx(40, rel=0.05)
    # Waits are bounded: three attempts of at most 0.5 s each, backoffs and the call.
    assert result.p99_ms is not None
    assert result.p99_ms < 3 * 500 + 1000
    analysis = analyze(scenario)
    assert analysis.rejection_ratio == pytest.approx(1 / 3, abs=0.01)
    assert analysis.stations[-1].state == "saturated"


def test_a_full_queue_refuses_at_once() -> None:
    scenario = one_station(
        ServiceTime.distribution(100, "constant"), 1, 30.0, max_queue=0, timeout_s=5
    )
    result = simulate(scenario, requests=20_000, seed=2)
    assert set(result.reasons) == {"overloaded"}
    # No queue: Erlang B blocking, the M/M/c/c loss formula (insensitive to the service law).
    assert result.error_ratio == pytest.approx(q.erlang_b(1, 3.0), abs=0.02)


def test_max_in_flight_refuses_at_the_door() -> None:
    # server.max_in_flight = 5 in front of 100 ms calls at 80 req/s (8 in flight on average).
    scenario = Scenario(
        rate=80,
        gateway=GatewayTier(cpu_hit_ms=0, cpu_miss_ms=0, max_in_flight=5),
        model=ModelTier(
            endpoints=(EndpointGroup(service=ServiceTime.distribution(100, "constant")),)
        ),
    )
    result = simulate(scenario, requests=20_000, seed=1)
    assert set(result.reasons) == {"admission"}
    # With no queue behind the door, it is an Erlang loss system of 5 servers.
    assert result.error_ratio == pytest.approx(q.erlang_b(5, 8.0), abs=0.02)


def test_a_backend_capacity_is_shared_by_the_gateways() -> None:
    # Three replicas, each may send 8 calls at once, but the server runs only 4 at once.
    scenario = Scenario(
        rate=30,
        gateway=GatewayTier(replicas=3, cpu_hit_ms=0, cpu_miss_ms=0),
        model=ModelTier(
            endpoints=(
                EndpointGroup(
                    service=ServiceTime.distribution(100, "exponential"),
                    max_concurrency=8,
                    capacity=4,
                ),
            )
        ),
    )
    result = simulate(scenario, requests=40_000, seed=4)
    backend = station(result, "backend")
    assert backend.utilisation == pytest.approx(0.75, rel=0.03)
    expected = q.mmc_wait_s(30, 0.1, 4) * 1000
    assert backend.mean_wait_ms == pytest.approx(expected, rel=0.1)


def test_many_gateways_are_simulated_as_a_slice() -> None:
    scenario = Scenario(
        rate=100_000,
        gateway=GatewayTier(replicas=1000, cpu_hit_ms=8.0, cpu_miss_ms=8.0, miss_cpu_after=0),
        cache=CacheStage(hit_ratio=0.9),
        model=ModelTier(
            policy="random",
            endpoints=(
                EndpointGroup(
                    service=ServiceTime.distribution(50, "constant"),
                    count=500,
                    max_concurrency=None,
                    capacity=2,
                ),
            ),
        ),
    )
    result = simulate(scenario, requests=40_000, seed=1)
    assert result.slice_note is not None
    assert "of 1000 gateway replicas" in result.slice_note
    assert result.throughput_rps == pytest.approx(100_000, rel=0.03)  # scaled back up
    assert station(result, "gateway").utilisation == pytest.approx(0.8, rel=0.03)
    assert station(result, "backend").utilisation == pytest.approx(0.5, rel=0.05)


def test_runs_are_a_pool_of_worker_slots() -> None:
    runs = RunQueue(
        rate=6.0, service=ServiceTime.distribution(1000, "exponential"), workers=2, concurrency=4
    )
    stats = simulate_runs(runs, count=40_000, seed=3)
    assert stats.mean_wait_s == pytest.approx(q.mmc_wait_s(6, 1.0, 8), rel=0.1)
    assert stats.utilisation == pytest.approx(0.75, rel=0.03)
