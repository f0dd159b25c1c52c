"""Scenarios from configs, predictions, the largest rate for an SLO, the cheapest change."""

import math
from pathlib import Path

import msgspec
import pytest

from surgeflow.config import EndpointSettings, ModelSettings, Settings
from surgeflow.errors import ConfigError
from surgeflow.tuning.network import analyze
from surgeflow.tuning.planner import cheapest_change, max_rate, meets, predict, violations
from surgeflow.tuning.scenario import (
    SLO,
    Costs,
    EndpointGroup,
    GatewayTier,
    ModelTier,
    Scenario,
    ServiceTime,
)

SMALL = 15_000  # requests per simulation in these tests
EXAMPLES = Path(__file__).parents[2] / "examples" / "plan"


def test_from_settings_derives_the_default_simulated_endpoints() -> None:
    scenario = Scenario.from_settings(Settings(), rate=50)
    assert scenario.rate == 50
    assert scenario.model.policy == "p2c_ewma"
    assert scenario.model.deadline_s == 60.0
    assert [g.name for g in scenario.model.endpoints] == ["sim-a", "sim-b"]
    for group in scenario.model.endpoints:
        assert (group.max_concurrency, group.max_queue, group.queue_timeout_s) == (256, 256, 5.0)
        assert group.capacity is None  # the simulated backend serves every call at once
        service = group.service
        assert (service.ttft_ms, service.tokens_per_s, service.latency, service.jitter) == (
            60.0,
            300.0,
            "lognormal",
            0.3,
        )
        # ttft 60 ms + (16 + 64) / 2 tokens at 300/s.
        assert service.mean_s == pytest.approx(0.060 + 40 / 300)
        variance = 0.060**2 * math.expm1(0.3**2) + ((64 - 16 + 1) ** 2 - 1) / 12 / 300**2
        assert service.scv_value == pytest.approx(variance / service.mean_s**2)
    assert scenario.gateway.replicas == 1
    assert scenario.cache.hit_ratio == 0.0


def test_from_settings_needs_a_service_time_for_http_endpoints() -> None:
    settings = Settings(
        models=[
            ModelSettings(
                name="chat",
                policy="least_connections",
                endpoints=[EndpointSettings(url="http://10.0.0.5:8000/v1", max_concurrency=8)],
            )
        ]
    )
    with pytest.raises(ConfigError, match="HTTP endpoint"):
        Scenario.from_settings(settings)
    with pytest.raises(ConfigError, match="no model 'other'"):
        Scenario.from_settings(settings, model="other")
    scenario = Scenario.from_settings(settings, service=ServiceTime.distribution(400, scv=0.5))
    (group,) = scenario.model.endpoints
    assert group.name == "chat-0"  # as the router names it
    assert group.max_concurrency == 8
    assert group.service.mean_s == pytest.approx(0.4)
    assert scenario.model.policy == "least_connections"


def test_a_scenario_file_round_trips() -> None:
    scenario = Scenario.from_yaml(EXAMPLES / "sim-small.yaml")
    assert scenario.name == "sim-small"
    assert scenario.slo == SLO(p99_ms=400, max_error_ratio=0.01)
    derived = Scenario.from_settings(Settings(), rate=scenario.rate)
    assert analyze(scenario).mean_ms == pytest.approx(analyze(derived).mean_ms)
    fleet = Scenario.from_yaml(EXAMPLES / "vllm-fleet.yaml")
    assert fleet.runs is not None
    assert fleet.model.endpoints[0].capacity == 32


def test_a_bad_scenario_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        Scenario.from_yaml("no/such/file.yaml")
    with pytest.raises(ConfigError, match="model"):
        Scenario.from_dict({"rate": 10})
    with pytest.raises(ConfigError, match="exactly one of"):
        Scenario.from_dict({"model": {"endpoints": [{"service": {"mean_ms": 5, "ttft_ms": 5}}]}})


def test_an_unstable_gateway_is_reported_and_caps_throughput() -> None:
    scenario = Scenario(
        rate=5000,
        # Capacity 3,333 req/s; all the CPU before the model call, so that what completes in a
        # finite run is what the CPU can do.
        gateway=GatewayTier(cpu_hit_ms=0.3, cpu_miss_ms=0.3, miss_cpu_after=0),
        model=ModelTier(endpoints=(EndpointGroup(service=ServiceTime.distribution(10)),)),
    )
    analysis = analyze(scenario)
    gateway = analysis.stations[0]
    assert gateway.utilisation == pytest.approx(1.5)
    assert gateway.state == "unstable"
    assert gateway.wait_ms is None
    assert not analysis.stable
    assert analysis.mean_ms is None
    assert analysis.throughput_rps == pytest.approx(1000 / 0.3)
    assert analysis.bottleneck == "gateway"
    prediction = predict(scenario, requests=SMALL)
    assert not prediction.stable
    assert any("grows without bound" in note for note in prediction.notes)
    assert prediction.throughput_rps == pytest.approx(1000 / 0.3, rel=0.05)
    assert violations(SLO(p99_ms=1e9), prediction)  # no SLO holds on an unstable system


def test_prediction_is_json() -> None:
    prediction = predict(Scenario.from_settings(Settings(), rate=100), requests=SMALL)
    document = msgspec.json.decode(prediction.to_json())
    assert document["rate_rps"] == 100
    assert document["p99_ms"] > document["p50_ms"] > 0
    assert {s["name"] for s in document["stations"]} >= {"gateway", "sim-a slots"}


def _tight() -> Scenario:
    """Two endpoints of 4 slots, 100 ms calls: the slots saturate at 80 req/s."""
    return Scenario(
        rate=60,
        gateway=GatewayTier(cpu_hit_ms=0.05, cpu_miss_ms=0.2),
        model=ModelTier(
            policy="least_connections",
            endpoints=(
                EndpointGroup(
                    name="e",
                    count=2,
                    max_concurrency=4,
                    max_queue=64,
                    queue_timeout_s=2.0,
                    service=ServiceTime.distribution(100, "gamma", 0.5),
                ),
            ),
        ),
    )


def test_max_rate_meets_the_slo_and_grows_with_it() -> None:
    scenario = _tight()
    # The calls alone have a p99 of about 330 ms (gamma, shape 2, mean 100 ms).
    strict = max_rate(scenario, SLO(p99_ms=450), requests=SMALL)
    loose = max_rate(scenario, SLO(p99_ms=700), requests=SMALL)
    assert 0 < strict.rate_rps < loose.rate_rps <= loose.bound_rps
    assert loose.bound_rps == pytest.approx(80, rel=0.01)
    for search, slo in ((strict, SLO(p99_ms=450)), (loose, SLO(p99_ms=700))):
        assert search.prediction is not None
        assert meets(slo, search.prediction)
        above = predict(scenario, search.rate_rps * 1.1, requests=SMALL)
        assert not meets(slo, above)
    impossible = max_rate(scenario, SLO(p99_ms=200), requests=SMALL)  # below the calls' own
    assert impossible.rate_rps == 0
    assert impossible.reason


def test_cheapest_change_makes_the_slo_pass() -> None:
    scenario = _tight()
    slo = SLO(p99_ms=500, max_error_ratio=0.01)
    plan = cheapest_change(scenario, slo, rate=90, requests=SMALL)
    assert not plan.passes_now
    assert plan.violations
    assert plan.best is not None
    assert [o.cost for o in plan.options] == sorted(o.cost for o in plan.options)
    knobs = {o.knob: o for o in plan.options}
    assert {"slots", "endpoints"} <= set(knobs)
    # More slots (8 → …) cost 0.02 per slot per endpoint: the cheapest by default.
    assert plan.best.knob == "slots"
    assert meets(slo, plan.best.prediction)
    # Applying the change and predicting again passes too (same seed, same answer).
    groups = scenario.model.endpoints
    changed = msgspec.structs.replace(
        scenario,
        rate=90,
        model=msgspec.structs.replace(
            scenario.model,
            endpoints=(msgspec.structs.replace(groups[0], max_concurrency=int(plan.best.after)),),
        ),
    )
    assert meets(slo, predict(changed, requests=SMALL))
    # One slot fewer fails: the change is the smallest.
    smaller = msgspec.structs.replace(
        changed,
        model=msgspec.structs.replace(
            changed.model,
            endpoints=(
                msgspec.structs.replace(groups[0], max_concurrency=int(plan.best.after) - 1),
            ),
        ),
    )
    assert not meets(slo, predict(smaller, requests=SMALL))
    # With slots made expensive, another knob wins.
    costly = cheapest_change(
        scenario, slo, rate=90, requests=SMALL, costs=Costs(slot=100.0, endpoint=1.0)
    )
    assert costly.best is not None
    assert costly.best.knob != "slots"


def test_cheapest_change_when_the_slo_already_holds() -> None:
    plan = cheapest_change(_tight(), SLO(p99_ms=2000), rate=40, requests=SMALL)
    assert plan.passes_now
    assert plan.best is None
    assert not plan.options
