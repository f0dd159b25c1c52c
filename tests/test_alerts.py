"""Alert rules: sliding windows, pending → firing → resolved, webhooks, the export."""

import asyncio
import dataclasses
import json
import logging
import random
import subprocess
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from surgeflow.alerts import Alerts, format_duration, parse_duration, prometheus_rules
from surgeflow.config import AlertRuleSettings, AlertSettings, WebhookSettings
from surgeflow.errors import ConfigError
from surgeflow.metrics import Histogram
from surgeflow.monitor import EndpointFigures, Monitor, Sample
from surgeflow.server import running_gateway
from tests.gateway.conftest import API_KEY, make_service
from tests.tools import require_program

ROUTE = "/v1/chat/completions"


class Traffic:
    """Cumulative figures, advanced second by second, read out as monitor samples."""

    def __init__(self) -> None:
        self.t = 1_000_000.0
        self.requests = 0.0
        self.errors = 0.0
        self.histogram = Histogram()
        self.hits = 0.0
        self.lookups = 0.0
        self.queue_ready = 0.0
        self.queue_age_s = 0.0
        self.endpoints: list[EndpointFigures] = []
        self.keys: dict[str, int] = {}

    def second(
        self,
        requests: int = 0,
        *,
        latency_s: float = 0.05,
        errors: int = 0,
        hits: int = 0,
        misses: int = 0,
        keys: dict[str, int] | None = None,
    ) -> Sample:
        self.t += 1.0
        self.requests += requests
        self.errors += errors
        for _ in range(requests):
            self.histogram.observe(latency_s)
        self.hits += hits
        self.lookups += hits + misses
        for key, count in (keys or {}).items():
            self.keys[key] = self.keys.get(key, 0) + count
        return Sample(
            t=self.t,
            requests={ROUTE: self.requests},
            errors={ROUTE: self.errors},
            durations={ROUTE: list(self.histogram.counts)},
            cache_hits=self.hits,
            cache_lookups=self.lookups,
            in_flight=0,
            queue_ready=self.queue_ready,
            queue_leased=0,
            queue_dead=0,
            queue_age_s=self.queue_age_s,
            tokens_in=0,
            tokens_out=0,
            cost=0,
            endpoints=[dataclasses.replace(e) for e in self.endpoints],
            keys=dict(self.keys),
        )


def watch(*rules: AlertRuleSettings, **settings: Any) -> tuple[Monitor, Alerts]:
    alerts = Alerts(AlertSettings(rules=list(rules), **settings))
    monitor = Monitor(metrics=None, keep_s=7200)  # type: ignore[arg-type]  # fed by hand
    return monitor, alerts


def feed(monitor: Monitor, alerts: Alerts, samples: Sequence[Sample]) -> list[str]:
    """Add each sample and evaluate; the states of the rules' alerts after each one."""
    states = []
    for sample in samples:
        monitor.add(sample)
        alerts.evaluate(monitor)
        states.append(",".join(sorted(a.state for a in alerts.active.values())) or "-")
    return states


def test_durations_read_and_write_like_prometheus() -> None:
    assert parse_duration("30s", "x") == 30
    assert parse_duration("5m", "x") == 300
    assert parse_duration("1.5h", "x") == 5400
    assert parse_duration("250ms", "x") == 0.25
    assert parse_duration(12, "x") == 12
    with pytest.raises(ConfigError, match="say 30s, 5m or 1h"):
        parse_duration("five minutes", "alert rule 'x' for")
    assert [format_duration(s) for s in (300, 90, 3600, 86400, 0.5)] == [
        "5m",
        "90s",
        "1h",
        "1d",
        "500ms",
    ]


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (AlertRuleSettings(name="a", kind="latency"), "needs a threshold"),
        (AlertRuleSettings(name="a", kind="queue_age", threshold=1, route="/x"), "take a route"),
        (AlertRuleSettings(name="a", kind="latency", threshold=1, window=0), "longer than zero"),
        (AlertRuleSettings(name="a", kind="latency", threshold=1, for_="soon"), "a duration"),
    ],
)
def test_a_bad_rule_is_refused_with_its_name(rule: AlertRuleSettings, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Alerts(AlertSettings(rules=[rule]))


def test_two_rules_may_not_share_a_name() -> None:
    rule = AlertRuleSettings(name="dup", kind="queue_depth", threshold=1)
    with pytest.raises(ConfigError, match="repeated: \\['dup'\\]"):
        Alerts(AlertSettings(rules=[rule, rule]))


async def test_latency_goes_pending_fires_after_for_and_resolves(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rule = AlertRuleSettings(
        name="Slow", kind="latency", threshold=1.0, window="10s", for_="5s", min_requests=5
    )
    monitor, alerts = watch(rule)
    traffic = Traffic()
    caplog.set_level(logging.INFO, logger="surgeflow.alerts")
    fast = [traffic.second(10, latency_s=0.05) for _ in range(15)]
    slow = [traffic.second(10, latency_s=3.0) for _ in range(12)]
    fast_again = [traffic.second(10, latency_s=0.05) for _ in range(15)]
    states = feed(monitor, alerts, fast + slow + fast_again)
    assert set(states[:15]) == {"-"}
    # The p99 over 10 s crosses 1 s after the first slow second; it must hold 5 s to fire.
    assert states[15:20] == ["pending"] * 5
    assert states[20] == "firing"
    assert states[-1] == "-"
    assert [(n.status, n.alert) for n in alerts.notified] == [
        ("firing", "Slow"),
        ("resolved", "Slow"),
    ]
    firing, resolved = alerts.notified
    assert firing.value is not None
    assert firing.value > 1.0
    assert resolved.ends_at is not None
    assert resolved.ends_at > resolved.starts_at
    messages = [r.getMessage() for r in caplog.records if r.name == "surgeflow.alerts"]
    assert messages[0].startswith("alert Slow firing: p99 latency over 10s is above 1 s")
    assert messages[1].startswith("alert Slow resolved")


def test_a_blip_shorter_than_for_never_fires() -> None:
    rule = AlertRuleSettings(
        name="Errors", kind="error_ratio", threshold=0.1, window="5s", for_="10s", min_requests=1
    )
    monitor, alerts = watch(rule)
    traffic = Traffic()
    samples = [traffic.second(20) for _ in range(5)]
    samples += [traffic.second(20, errors=10) for _ in range(3)]
    samples += [traffic.second(20) for _ in range(10)]
    states = feed(monitor, alerts, samples)
    assert "pending" in states
    assert "firing" not in states
    assert alerts.notified == []


def test_error_ratio_needs_min_requests_before_it_judges() -> None:
    rule = AlertRuleSettings(
        name="Errors", kind="error_ratio", threshold=0.1, window="5s", min_requests=50
    )
    monitor, alerts = watch(rule)
    traffic = Traffic()
    few = [traffic.second(2, errors=2) for _ in range(10)]  # 100 % errors, 10 requests / 5 s
    many = [traffic.second(20, errors=5) for _ in range(10)]  # 25 %, 100 requests / 5 s
    states = feed(monitor, alerts, few + many)
    assert set(states[:10]) == {"-"}
    assert states[-1] == "firing"


def test_queue_rules_watch_depth_and_age() -> None:
    depth = AlertRuleSettings(name="Deep", kind="queue_depth", threshold=100)
    age = AlertRuleSettings(name="Old", kind="queue_age", threshold=60, for_="2s")
    monitor, alerts = watch(depth, age)
    traffic = Traffic()
    traffic.queue_ready, traffic.queue_age_s = 500, 10
    feed(monitor, alerts, [traffic.second()])
    assert [a.rule.name for a in alerts.firing()] == ["Deep"]
    traffic.queue_ready, traffic.queue_age_s = 5, 90
    feed(monitor, alerts, [traffic.second() for _ in range(3)])
    assert [a.rule.name for a in alerts.firing()] == ["Old"]
    assert [(n.alert, n.status) for n in alerts.notified] == [
        ("Deep", "firing"),
        ("Deep", "resolved"),
        ("Old", "firing"),
    ]


def test_each_ejected_endpoint_is_its_own_alert() -> None:
    rule = AlertRuleSettings(name="Ejected", kind="endpoint_ejected")
    monitor, alerts = watch(rule)
    traffic = Traffic()
    traffic.endpoints = [
        EndpointFigures("m", "a", False, 0, 0, 10, 5, 0),
        EndpointFigures("m", "b", True, 0, 0, 10, 5, 9),
    ]
    feed(monitor, alerts, [traffic.second()])
    [alert] = alerts.firing()
    assert alert.labels == {"model": "m", "endpoint": "b"}
    traffic.endpoints[0].ejected = True
    feed(monitor, alerts, [traffic.second()])
    assert sorted(a.labels["endpoint"] for a in alerts.firing()) == ["a", "b"]
    traffic.endpoints[1].ejected = False
    feed(monitor, alerts, [traffic.second()])
    assert [a.labels["endpoint"] for a in alerts.firing()] == ["a"]
    assert alerts.notified[-1].status == "resolved"
    assert alerts.notified[-1].labels == {"model": "m", "endpoint": "b"}


def test_a_cache_hit_ratio_collapse_fires_but_a_low_steady_ratio_does_not() -> None:
    rule = AlertRuleSettings(
        name="Collapse",
        kind="cache_hit_ratio",
        threshold=0.5,
        window="10s",
        baseline="30s",
        min_requests=20,
    )
    monitor, alerts = watch(rule)
    traffic = Traffic()
    steady_low = [traffic.second(10, hits=1, misses=9) for _ in range(60)]  # 10 %, always
    assert "firing" not in feed(monitor, alerts, steady_low)
    monitor, alerts = watch(rule)
    traffic = Traffic()
    high = [traffic.second(10, hits=8, misses=2) for _ in range(40)]
    collapse = [traffic.second(10, hits=1, misses=9) for _ in range(10)]
    states = feed(monitor, alerts, high + collapse)
    assert set(states[:40]) == {"-"}
    assert states[-1] == "firing"
    # It fired as the ratio over the window crossed half the baseline's (0.8), and went on
    # falling to the new rate.
    assert alerts.notified[0].value is not None
    assert alerts.notified[0].value < 0.4
    assert alerts.firing()[0].value == pytest.approx(0.1)


def test_a_key_whose_traffic_jumps_is_anomalous_and_steady_keys_are_not() -> None:
    rule = AlertRuleSettings(
        name="Anomaly", kind="key_anomaly", threshold=5.0, window="10s", z=4.0, alpha=0.1
    )
    monitor, alerts = watch(rule)
    traffic = Traffic()
    rng = random.Random(7)

    def second(burst: bool) -> Sample:
        # Two keys with noisy steady traffic; key_b jumps tenfold when ``burst``.
        a = sum(rng.random() < 0.5 for _ in range(40))  # ~20 req/s
        b = sum(rng.random() < 0.5 for _ in range(20 if not burst else 200))  # ~10 → ~100
        return traffic.second(a + b, keys={"key_a": a, "key_b": b})

    steady = [second(False) for _ in range(600)]  # 60 windows of 10 s
    states = feed(monitor, alerts, steady)
    assert "firing" not in states  # no false alarm in ten minutes of ordinary noise
    feed(monitor, alerts, [second(True) for _ in range(12)])
    firing = alerts.firing()
    assert [a.labels for a in firing] == [{"key_id": "key_b"}]
    assert firing[0].value is not None
    assert firing[0].value > 50


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[dict[str, Any]], list[int]]]:
    """A webhook receiver on loopback that answers 500 to the first requests, per plan."""
    received: list[dict[str, Any]] = []
    failures = [2]  # how many of the next requests fail

    async def hook(request: web.Request) -> web.Response:
        if failures[0] > 0:
            failures[0] -= 1
            return web.Response(status=500)
        received.append(await request.json())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/hook", received, failures
    await runner.cleanup()


async def test_webhooks_get_firing_and_resolved_retried_through_failures(
    receiver: tuple[str, list[dict[str, Any]], list[int]],
) -> None:
    url, received, _ = receiver
    rule = AlertRuleSettings(name="Deep", kind="queue_depth", threshold=10, severity="page")
    webhook = WebhookSettings(url=url, headers={"X-Team": "ops"}, attempts=4)
    monitor, alerts = watch(rule, webhooks=[webhook])
    traffic = Traffic()
    traffic.queue_ready = 50
    feed(monitor, alerts, [traffic.second()])
    traffic.queue_ready = 0
    feed(monitor, alerts, [traffic.second()])
    await alerts.aclose(timeout_s=10)
    # The first POST failed twice with a 500 and went through on its third attempt; the
    # resolved one may overtake it, so compare without order.
    assert sorted(body["status"] for body in received) == ["firing", "resolved"]
    firing = next(body for body in received if body["status"] == "firing")
    assert firing["alert"] == "Deep"
    assert firing["severity"] == "page"
    assert firing["value"] == 50
    assert firing["threshold"] == 10
    assert firing["summary"] == "more than 10 runs wait in the queue"
    assert alerts.webhook_failures == 0


async def test_a_webhook_that_never_answers_is_given_up_on_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rule = AlertRuleSettings(name="Deep", kind="queue_depth", threshold=10)
    dead_end = WebhookSettings(url="http://127.0.0.1:1/hook", attempts=2, timeout_s=1)
    monitor, alerts = watch(rule, webhooks=[dead_end])
    traffic = Traffic()
    traffic.queue_ready = 50
    feed(monitor, alerts, [traffic.second()])
    await alerts.aclose(timeout_s=10)
    assert alerts.webhook_failures == 1
    assert any("failed after 2 attempts" in r.getMessage() for r in caplog.records)


async def test_only_the_process_holding_the_lock_notifies(
    tmp_path: Path, receiver: tuple[str, list[dict[str, Any]], list[int]]
) -> None:
    url, received, failures = receiver
    failures[0] = 0
    settings = AlertSettings(
        rules=[AlertRuleSettings(name="Deep", kind="queue_depth", threshold=10)],
        webhooks=[WebhookSettings(url=url)],
    )
    one, two = Alerts(settings, lock_dir=tmp_path), Alerts(settings, lock_dir=tmp_path)
    for alerts in (one, two):  # both see the same merged figures and reach the same verdict
        monitor = Monitor(metrics=None)  # type: ignore[arg-type]
        traffic = Traffic()
        traffic.queue_ready = 50
        feed(monitor, alerts, [traffic.second()])
        assert [a.rule.name for a in alerts.firing()] == ["Deep"]
    await one.aclose()
    await two.aclose()
    assert len(received) == 1


def test_the_export_is_a_prometheus_rules_file_with_the_same_rules(tmp_path: Path) -> None:
    settings = AlertSettings()  # the defaults
    text = prometheus_rules(settings)
    document = yaml.safe_load(text)
    [group] = document["groups"]
    rules = {rule["alert"]: rule for rule in group["rules"]}
    assert list(rules) == [rule.name for rule in settings.rules]
    assert rules["HighLatency"]["for"] == "5m"
    assert "histogram_quantile(0.99" in rules["HighLatency"]["expr"]
    assert rules["EndpointEjected"]["expr"].startswith("max by (model, endpoint)")
    assert "description" in rules["KeyTrafficAnomaly"]["annotations"]
    path = tmp_path / "rules.yml"
    path.write_text(text)
    promtool = require_program("promtool", "apt-get install prometheus")
    checked = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 6 rules found" in checked.stdout


async def test_a_firing_rule_shows_in_metrics_and_on_the_dashboard(tmp_path: Path) -> None:
    rule = AlertRuleSettings(
        name="AnyLatency", kind="latency", threshold=0.0, window="10s", min_requests=1
    )
    alerts = AlertSettings(interval_s=0.05, rules=[rule])
    body = {"model": "sim-small", "messages": [{"role": "user", "content": "hello"}]}
    async with (
        make_service(tmp_path, alerts=alerts) as service,
        running_gateway(service) as url,
    ):
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with aiohttp.ClientSession(url, headers=headers) as http:
            for _ in range(3):
                async with http.post("/v1/chat/completions", json=body) as response:
                    assert response.status == 200
            for _ in range(100):
                await asyncio.sleep(0.05)
                async with http.get("/dashboard/data") as response:
                    data = await response.json()
                if data["alerts"] and data["alerts"][0]["state"] == "firing":
                    break
            async with http.get("/metrics") as response:
                text = await response.text()
    assert [(a["name"], a["state"]) for a in data["alerts"]] == [("AnyLatency", "firing")]
    assert 'surgeflow_alerts_firing{alert="AnyLatency",severity="warning"} 1.0' in text
    assert json.dumps(data["alerts"][0]["summary"]).startswith('"p99 latency over 10s')
