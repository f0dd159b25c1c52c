"""Alerts: rules from the settings, evaluated in-process over the monitor's sliding windows.

Each rule yields findings (one, or one per endpoint or API key) that are true or not at each
evaluation. A finding that stays true for the rule's ``for`` duration fires; one that fires and
stops being true resolves. Both are notified to the log and to every webhook (a JSON POST,
retried with backoff). When several processes share ``server.metrics_dir``, they all evaluate
the same merged figures, and only the one holding the directory's lock notifies.

`prometheus_rules` writes the same rules as a Prometheus rules file (``surgeflow alerts
export``), for teams that run Alertmanager.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import logging
import math
import os
import random
import re
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import aiohttp
import msgspec
import yaml
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from surgeflow.config import AlertRuleSettings, AlertSettings, Duration, WebhookSettings
from surgeflow.errors import ConfigError
from surgeflow.monitor import UNWATCHED_ROUTES, Monitor

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

log = logging.getLogger("surgeflow.alerts")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
# How many windows of a key's traffic its EWMA must have seen before it can be anomalous.
_ANOMALY_WARMUP = 5


def parse_duration(value: Duration, what: str) -> float:
    """Seconds from a number or ``"500ms"``, ``"30s"``, ``"5m"``, ``"1h"``, ``"1d"``."""
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(value)
        if match is None:
            raise ConfigError(f"{what}: {value!r} is not a duration (say 30s, 5m or 1h)")
        seconds = float(match[1]) * _UNITS[match[2]]
    if seconds < 0 or math.isnan(seconds):
        raise ConfigError(f"{what}: a duration cannot be negative")
    return seconds


def format_duration(seconds: float) -> str:
    """A Prometheus duration: ``300`` → ``5m``."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{round(seconds * 1000)}ms"


@dataclasses.dataclass(slots=True)
class Finding:
    """A rule's verdict on one thing (``labels``) at one evaluation."""

    labels: dict[str, str]
    value: float | None
    active: bool


class Rule:
    """One validated rule, with its durations in seconds."""

    def __init__(self, settings: AlertRuleSettings) -> None:
        self.settings = settings
        name = f"alert rule {settings.name!r}"
        self.name = settings.name
        self.kind = settings.kind
        self.window_s = parse_duration(settings.window, f"{name} window")
        self.baseline_s = parse_duration(settings.baseline, f"{name} baseline")
        self.for_s = parse_duration(settings.for_, f"{name} for")
        if self.window_s <= 0:
            raise ConfigError(f"{name}: window must be longer than zero")
        needs_threshold = self.kind not in ("endpoint_ejected",)
        if needs_threshold and settings.threshold is None:
            raise ConfigError(f"{name}: a {self.kind} rule needs a threshold")
        if settings.route is not None and self.kind not in ("latency", "error_ratio"):
            raise ConfigError(f"{name}: only latency and error_ratio rules take a route")
        self.threshold = settings.threshold if settings.threshold is not None else 0.0
        # key_anomaly: each key's EWMA of its rate per window, and how many windows it has seen.
        self._ewma: dict[str, tuple[float, float, int]] = {}
        self._last_window_end: float | None = None
        self._anomalous: dict[str, Finding] = {}

    def __repr__(self) -> str:
        return f"<Rule {self.name} kind={self.kind} threshold={self.threshold}>"

    @property
    def summary(self) -> str:
        if self.settings.summary:
            return self.settings.summary
        threshold = self.threshold
        where = f" on {self.settings.route}" if self.settings.route else ""
        window = format_duration(self.window_s)
        match self.kind:
            case "latency":
                q = f"p{self.settings.quantile * 100:g}"
                return f"{q} latency{where} over {window} is above {threshold:g} s"
            case "error_ratio":
                return f"more than {threshold:.1%} of requests{where} failed over {window}"
            case "queue_depth":
                return f"more than {threshold:g} runs wait in the queue"
            case "queue_age":
                return f"the oldest queued run has waited more than {threshold:g} s"
            case "endpoint_ejected":
                return "a model endpoint is ejected by its circuit breaker"
            case "cache_hit_ratio":
                return (
                    f"the cache hit ratio over {window} fell below {threshold:g}× its ratio"
                    f" over the {format_duration(self.baseline_s)} before"
                )
            case _:
                return (
                    f"an API key's request rate is more than {self.settings.z:g} standard"
                    " deviations above its usual rate"
                )

    def evaluate(self, monitor: Monitor) -> list[Finding]:
        latest = monitor.latest
        if latest is None:
            return []
        settings = self.settings
        match self.kind:
            case "latency" | "error_ratio":
                change = monitor.window(self.window_s, settings.route)
                if change is None or change.requests < max(settings.min_requests, 1):
                    return [Finding({}, None, False)]
                if self.kind == "latency":
                    value = change.quantile(settings.quantile)
                else:
                    value = change.error_ratio
                return [Finding({}, value, value is not None and value > self.threshold)]
            case "queue_depth":
                return [Finding({}, latest.queue_ready, latest.queue_ready > self.threshold)]
            case "queue_age":
                return [Finding({}, latest.queue_age_s, latest.queue_age_s > self.threshold)]
            case "endpoint_ejected":
                return [
                    Finding(
                        {"model": e.model, "endpoint": e.endpoint},
                        1.0 if e.ejected else 0.0,
                        e.ejected,
                    )
                    for e in latest.endpoints
                ]
            case "cache_hit_ratio":
                return [self._hit_ratio(monitor)]
            case _:
                return self._key_anomalies(monitor)

    def _hit_ratio(self, monitor: Monitor) -> Finding:
        latest = monitor.latest
        assert latest is not None
        now = monitor.between(latest.t - self.window_s, latest.t)
        before = monitor.between(
            latest.t - self.window_s - self.baseline_s, latest.t - self.window_s
        )
        minimum = max(self.settings.min_requests, 1)
        if now is None or before is None:
            return Finding({}, None, False)
        if now.cache_lookups < minimum or before.cache_lookups < minimum:
            return Finding({}, now.hit_ratio, False)
        ratio, baseline = now.hit_ratio or 0.0, before.hit_ratio or 0.0
        return Finding({}, ratio, baseline > 0 and ratio < self.threshold * baseline)

    def _key_anomalies(self, monitor: Monitor) -> list[Finding]:
        """Per API key: its rate over each window against the EWMA (and EW variance) of its
        rate over the windows before; a key is anomalous at ``z`` deviations above its mean
        and at least ``threshold`` req/s. The verdict holds until the next window closes."""
        latest = monitor.latest
        assert latest is not None
        if self._last_window_end is None:
            self._last_window_end = latest.t
            return []
        if latest.t - self._last_window_end < self.window_s:
            return list(self._anomalous.values())
        earlier = monitor.at(self._last_window_end)
        self._last_window_end = latest.t
        if earlier is None or latest.t <= earlier.t:
            return []
        seconds = latest.t - earlier.t
        alpha, z = self.settings.alpha, self.settings.z
        findings: dict[str, Finding] = {}
        for key in set(latest.keys) | set(self._ewma):
            rate = max(latest.keys.get(key, 0) - earlier.keys.get(key, 0), 0) / seconds
            mean, variance, seen = self._ewma.get(key, (rate, 0.0, 0))
            # A floor under the deviation: a count over the window varies like a Poisson one
            # at least, so a key with a steady trickle is not anomalous at its first burst of 2.
            floor = math.sqrt(max(mean, 1.0 / seconds) / seconds)
            score = (rate - mean) / max(math.sqrt(variance), floor)
            anomalous = seen >= _ANOMALY_WARMUP and score > z and rate >= self.threshold
            findings[key] = Finding({"key_id": key}, round(rate, 3), anomalous)
            difference = rate - mean
            increment = alpha * difference
            self._ewma[key] = (
                mean + increment,
                (1 - alpha) * (variance + difference * increment),
                seen + 1,
            )
        self._anomalous = {key: f for key, f in findings.items() if f.active}
        return list(findings.values())


@dataclasses.dataclass(slots=True)
class Alert:
    """A finding that is pending (true, not yet for long enough) or firing."""

    rule: Rule
    labels: dict[str, str]
    since: float  # when its condition became true
    value: float | None
    fired_at: float | None = None

    @property
    def state(self) -> str:
        return "pending" if self.fired_at is None else "firing"

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.rule.name,
            "kind": self.rule.kind,
            "severity": self.rule.settings.severity,
            "state": self.state,
            "labels": self.labels,
            "value": self.value,
            "threshold": self.rule.settings.threshold,
            "summary": self.rule.summary,
            "since": self.since,
            "fired_at": self.fired_at,
        }


class Notification(msgspec.Struct, kw_only=True):
    """What the log and the webhooks receive when an alert fires or resolves."""

    status: str  # "firing" or "resolved"
    alert: str
    kind: str
    severity: str
    summary: str
    labels: dict[str, str]
    value: float | None
    threshold: float | None
    starts_at: float
    ends_at: float | None = None
    source: str


class Alerts:
    """The rules of `AlertSettings`, evaluated after each monitor sample (add
    `Alerts.evaluate` to `Monitor.listeners`), with their pending and firing alerts."""

    def __init__(
        self,
        settings: AlertSettings,
        *,
        lock_dir: str | os.PathLike[str] | None = None,
        session_factory: Any = None,
    ) -> None:
        self.settings = settings
        self.rules = [Rule(rule) for rule in settings.rules]
        names = [rule.name for rule in self.rules]
        if len(set(names)) != len(names):
            duplicated = sorted({name for name in names if names.count(name) > 1})
            raise ConfigError(f"alert rules need distinct names; repeated: {duplicated}")
        self.active: dict[tuple[str, tuple[tuple[str, str], ...]], Alert] = {}
        self.notified: list[Notification] = []  # the latest, newest last (kept for the page)
        self.webhook_failures = 0
        self.source = f"{socket.gethostname()}:{os.getpid()}"
        self._lock_path = None if lock_dir is None else Path(lock_dir) / "alerts.lock"
        self._lock_file: IO[bytes] | None = None
        self._deliveries: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._session_factory = session_factory or aiohttp.ClientSession

    def __repr__(self) -> str:
        return f"<Alerts rules={len(self.rules)} firing={len(self.firing())}>"

    def firing(self) -> list[Alert]:
        return [alert for alert in self.active.values() if alert.fired_at is not None]

    def evaluate(self, monitor: Monitor) -> None:
        latest = monitor.latest
        if latest is None:
            return
        now = latest.t
        for rule in self.rules:
            seen: set[tuple[tuple[str, str], ...]] = set()
            for finding in rule.evaluate(monitor):
                labels = tuple(sorted(finding.labels.items()))
                key = (rule.name, labels)
                alert = self.active.get(key)
                if finding.active:
                    seen.add(labels)
                    if alert is None:
                        alert = self.active[key] = Alert(rule, finding.labels, now, finding.value)
                    alert.value = finding.value
                    if alert.fired_at is None and now - alert.since >= rule.for_s:
                        alert.fired_at = now
                        self._notify("firing", alert, now)
            for key in [k for k in self.active if k[0] == rule.name and k[1] not in seen]:
                alert = self.active.pop(key)
                if alert.fired_at is not None:
                    self._notify("resolved", alert, now)

    def _notify(self, status: str, alert: Alert, now: float) -> None:
        rule = alert.rule
        notification = Notification(
            status=status,
            alert=rule.name,
            kind=rule.kind,
            severity=rule.settings.severity,
            summary=rule.summary,
            labels=alert.labels,
            value=alert.value,
            threshold=rule.settings.threshold,
            starts_at=alert.fired_at or alert.since,
            ends_at=now if status == "resolved" else None,
            source=self.source,
        )
        self.notified = [*self.notified[-99:], notification]
        if not self._leader():
            return  # another process of this deployment notifies
        labels = "".join(f" {name}={value}" for name, value in alert.labels.items())
        level = logging.WARNING if status == "firing" else logging.INFO
        log.log(
            level,
            "alert %s %s%s: %s (value %s)",
            rule.name,
            status,
            labels,
            rule.summary,
            alert.value,
            extra={"alert": msgspec.to_builtins(notification)},
        )
        for webhook in self.settings.webhooks:
            task = asyncio.get_running_loop().create_task(self._deliver(webhook, notification))
            self._deliveries.add(task)
            task.add_done_callback(self._deliveries.discard)

    def _leader(self) -> bool:
        """Whether this process notifies: always alone; with a shared directory, only the
        process that holds its lock (taken by the first to try, kept until it exits)."""
        if self._lock_path is None:
            return True
        if self._lock_file is not None:
            return True
        self._lock_path.parent.mkdir(parents=True, exist_ok=True)
        handle = self._lock_path.open("ab")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._lock_file = handle
        return True

    async def _deliver(self, webhook: WebhookSettings, notification: Notification) -> None:
        """POST the notification, retrying with exponential backoff and jitter."""
        if self._session is None or self._session.closed:
            self._session = self._session_factory()
        assert self._session is not None
        body = msgspec.json.encode(notification)
        headers = {"content-type": "application/json", **webhook.headers}
        timeout = aiohttp.ClientTimeout(total=webhook.timeout_s)
        error = ""
        for attempt in range(1, webhook.attempts + 1):
            try:
                async with self._session.post(
                    webhook.url, data=body, headers=headers, timeout=timeout
                ) as response:
                    if response.status < 300:
                        return
                    error = f"HTTP {response.status}"
                    if 400 <= response.status < 500 and response.status not in (408, 429):
                        break  # the receiver refuses this body: another try will not help
            except (aiohttp.ClientError, TimeoutError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            if attempt < webhook.attempts:
                await asyncio.sleep(min(0.5 * 2 ** (attempt - 1), 30.0) * random.uniform(0.5, 1))
        self.webhook_failures += 1
        log.error(
            "alert %s %s: webhook %s failed after %d attempts (%s)",
            notification.alert,
            notification.status,
            webhook.url,
            attempt,
            error,
        )

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Give notifications in flight ``timeout_s`` to go out, then stop."""
        if self._deliveries:
            await asyncio.wait(set(self._deliveries), timeout=timeout_s)
            for task in list(self._deliveries):
                task.cancel()
            await asyncio.gather(*self._deliveries, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        if self._lock_file is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def collect(self) -> Iterator[Metric]:
        """``surgeflow_alerts_firing`` for GET /metrics: 1 per firing alert, by rule."""
        firing = GaugeMetricFamily(
            "surgeflow_alerts_firing",
            "1 while an in-process alert rule fires (per rule and severity).",
            labels=["alert", "severity"],
        )
        counts: dict[tuple[str, str], int] = {}
        for alert in self.firing():
            key = (alert.rule.name, alert.rule.settings.severity)
            counts[key] = counts.get(key, 0) + 1
        for rule in self.rules:
            key = (rule.name, rule.settings.severity)
            firing.add_metric(list(key), 1.0 if counts.get(key) else 0.0)
        yield firing
        yield CounterMetricFamily(
            "surgeflow_alert_webhook_failures",
            "Alert notifications a webhook never accepted, after all their retries.",
            value=self.webhook_failures,
        )


# --- export -------------------------------------------------------------------------------------

# Route templates hold no regex metacharacters but dots, which match themselves too.
_UNWATCHED = "|".join(sorted(UNWATCHED_ROUTES))


def _traffic(route: str | None) -> str:
    if route is not None:
        return f'route="{route}"'
    return f'route!~"{_UNWATCHED}"'


def promql(rule: Rule) -> str:
    """The rule as a PromQL expression over the metrics surgeflow exports."""
    s, window = rule.settings, format_duration(rule.window_s)
    threshold = f"{rule.threshold:g}"
    match rule.kind:
        case "latency":
            buckets = f"surgeflow_http_request_duration_seconds_bucket{{{_traffic(s.route)}}}"
            return (
                f"histogram_quantile({s.quantile:g}, sum by (le) (rate({buckets}[{window}])))"
                f" > {threshold}"
            )
        case "error_ratio":
            selector = _traffic(s.route)
            errors = f'surgeflow_http_requests_total{{{selector},status=~"5.."}}'
            total = f"surgeflow_http_requests_total{{{selector}}}"
            return (
                f"sum(rate({errors}[{window}])) / sum(rate({total}[{window}])) > {threshold}"
                f" and sum(increase({total}[{window}])) >= {s.min_requests}"
            )
        case "queue_depth":
            return f"max(surgeflow_queue_ready) > {threshold}"
        case "queue_age":
            return f"max(surgeflow_queue_oldest_ready_age_seconds) > {threshold}"
        case "endpoint_ejected":
            return "max by (model, endpoint) (surgeflow_endpoint_ejected) > 0"
        case "cache_hit_ratio":
            hits = 'surgeflow_cache_requests_total{status=~"hit|stale|semantic"}'
            lookups = 'surgeflow_cache_requests_total{status=~"hit|stale|semantic|miss"}'

            def ratio(span: str, offset: str = "") -> str:
                return f"(sum(rate({hits}[{span}]{offset})) / sum(rate({lookups}[{span}]{offset})))"

            baseline = ratio(format_duration(rule.baseline_s), f" offset {window}")
            return (
                f"{ratio(window)} < {threshold} * {baseline}"
                f" and sum(increase({lookups}[{window}])) >= {s.min_requests}"
            )
        case _:
            # Prometheus scrapes every few seconds: a rate needs a minute to be worth reading.
            window = format_duration(max(rule.window_s, 60.0))
            total = f"sum(rate(surgeflow_http_requests_total{{{_traffic(None)}}}[{window}]))"
            history = f"[{format_duration(max(rule.baseline_s, 600.0))}:{window}]"
            return (
                f"({total} - avg_over_time({total}{history}))"
                f" / clamp_min(stddev_over_time({total}{history}), 0.1) > {s.z:g}"
                f" and {total} >= {threshold}"
            )


def prometheus_rules(settings: AlertSettings, group: str = "surgeflow") -> str:
    """The rules as a Prometheus rules file (YAML)."""
    rules: list[dict[str, Any]] = []
    for rule in (Rule(r) for r in settings.rules):
        annotations = {"summary": rule.summary}
        if rule.kind == "key_anomaly":
            annotations["description"] = (
                "In-process, surgeflow watches each API key's rate. API keys are not metric"
                " labels (unbounded cardinality), so this exported rule watches total traffic."
            )
        exported: dict[str, Any] = {"alert": rule.name, "expr": promql(rule)}
        if rule.for_s > 0:
            exported["for"] = format_duration(rule.for_s)
        exported["labels"] = {"severity": rule.settings.severity}
        exported["annotations"] = annotations
        rules.append(exported)
    document = {"groups": [{"name": group, "rules": rules}]}
    header = "# Written by `surgeflow alerts export`: the same rules surgeflow evaluates itself.\n"
    dumped = yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=1_000_000)
    return header + dumped


def validate(settings: AlertSettings) -> Sequence[Rule]:
    """The rules, or a ConfigError naming the first bad one."""
    return [Rule(rule) for rule in settings.rules]
