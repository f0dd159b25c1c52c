"""Settings: one YAML file, every key overridable by ``SURGEFLOW_SECTION__KEY`` variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import yaml

from surgeflow.errors import ConfigError

Positive = Annotated[float, msgspec.Meta(gt=0)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]


class ServerSettings(msgspec.Struct, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8000
    max_body_bytes: PositiveInt = 1024 * 1024
    invoke_timeout_s: Positive = 30.0
    upstream_timeout_s: Positive = 60.0
    metrics: bool = True  # count requests for GET /metrics (false: the route stays, without them)
    # Several processes (gateways, workers) that name one directory here share their figures:
    # each writes its own there every second, and GET /metrics on any of them sums them all.
    metrics_dir: str | None = None
    dashboard: bool = True  # serve GET /dashboard (the live page) and GET /dashboard/data
    # Admission control: requests beyond this many in flight are refused at once with 503 and
    # Retry-After, before they cost anything (None: no limit).
    max_in_flight: PositiveInt | None = None


class AuthSettings(msgspec.Struct, forbid_unknown_fields=True):
    enabled: bool = True
    key_refresh_s: Positive = 5.0


class LimitSettings(msgspec.Struct, forbid_unknown_fields=True):
    """Rate limits, as token buckets: ``key_rps`` per API key and ``global_rps`` for all
    requests together, each with a burst (default: one second's worth). A request beyond them
    is refused with 429 and Retry-After. ``url``: a ``redis://`` URL every gateway shares, so
    N gateways enforce one limit (None: each process enforces its own); every Redis call is
    bounded by ``timeout_s``, and on failure a gateway falls back to its own buckets."""

    key_rps: Positive | None = None
    key_burst: PositiveInt | None = None
    global_rps: Positive | None = None
    global_burst: PositiveInt | None = None
    url: str | None = None
    timeout_s: Positive = 0.05


class EventSettings(msgspec.Struct, forbid_unknown_fields=True):
    """``url``: a ``redis://`` URL over which every process that writes a run's events tells
    every gateway at once, so a client following a run on any gateway sees its events as they
    are written, whichever worker runs it (None: followers of runs in other processes re-read
    the store every second)."""

    url: str | None = None


class SimulatedSettings(msgspec.Struct, forbid_unknown_fields=True):
    ttft_ms: Annotated[float, msgspec.Meta(ge=0)] = 60.0
    tokens_per_s: Annotated[float, msgspec.Meta(ge=0)] = 300.0
    latency: Literal["constant", "exponential", "lognormal"] = "lognormal"
    jitter: Annotated[float, msgspec.Meta(ge=0)] = 0.3
    error_rate: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    rate_limit_rps: Positive | None = None
    seed: int | None = None


class EndpointSettings(msgspec.Struct, forbid_unknown_fields=True):
    """One endpoint of a model: an OpenAI-compatible ``url`` or a ``simulated`` one, and its limits.

    ``max_concurrency`` requests run at once; up to ``max_queue`` more wait for a slot, each at
    most ``queue_timeout_s``, and any beyond fail at once. ``requests_per_min`` and
    ``tokens_per_min`` are the endpoint's own budgets (an API key's quota, say).
    """

    url: str | None = None
    simulated: SimulatedSettings | None = None
    name: str | None = None
    api_key_env: str | None = None
    weight: PositiveInt = 1
    max_concurrency: PositiveInt = 256
    max_queue: Annotated[int, msgspec.Meta(ge=0)] = 256
    queue_timeout_s: Positive = 5.0
    requests_per_min: Positive | None = None
    tokens_per_min: Positive | None = None

    def __post_init__(self) -> None:
        if (self.url is None) == (self.simulated is None):
            raise ValueError("an endpoint needs exactly one of 'url' or 'simulated'")


class RetrySettings(msgspec.Struct, forbid_unknown_fields=True):
    """Retries on another endpoint, bounded by a budget so an outage cannot become a storm.

    Retries may add at most ``budget_ratio`` of the live request rate, plus ``min_per_s`` retries
    a second so that a quiet model can still retry.
    """

    attempts: PositiveInt = 3  # in all, the first included
    backoff_s: Annotated[float, msgspec.Meta(ge=0)] = 0.025
    max_backoff_s: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    budget_ratio: Annotated[float, msgspec.Meta(ge=0)] = 0.2
    min_per_s: Annotated[float, msgspec.Meta(ge=0)] = 10.0
    attempt_timeout_s: Positive | None = None  # None: the request's whole deadline


class HedgeSettings(msgspec.Struct, forbid_unknown_fields=True):
    """A second request after ``after_s`` (None: the model's recent p95); the first answer wins."""

    enabled: bool = False
    after_s: Positive | None = None
    min_after_s: Positive = 0.01


class BreakerSettings(msgspec.Struct, forbid_unknown_fields=True):
    """Passive health: eject an endpoint that fails, probe it before trusting it again."""

    consecutive_failures: PositiveInt = 5
    failure_ratio: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.5
    min_requests: PositiveInt = 20  # in the window, before the ratio counts
    window_s: Positive = 10.0
    base_ejection_s: Positive = 5.0  # doubled on each repeat ejection
    max_ejection_s: Positive = 120.0
    max_ejected_percent: Annotated[float, msgspec.Meta(ge=0, le=100)] = 50.0
    half_open_requests: PositiveInt = 1  # trial requests let through after an ejection
    panic_threshold_percent: Annotated[float, msgspec.Meta(ge=0, le=100)] = 50.0


class ActiveCheckSettings(msgspec.Struct, forbid_unknown_fields=True):
    """Active health checks: ask each endpoint on an interval whether it is up."""

    enabled: bool = False
    interval_s: Positive = 10.0
    timeout_s: Positive = 2.0


class SemanticSettings(msgspec.Struct, forbid_unknown_fields=True):
    """The semantic cache for one model (off by default; needs the ``semantic`` extra).

    A prompt whose last user message means the same as an earlier one's, in the same
    conversation, is answered with that one's cached answer when their similarity reaches
    ``threshold`` and every guard agrees (docs/decisions/0007).
    """

    enabled: bool = False
    threshold: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.60


class ModelCacheSettings(msgspec.Struct, forbid_unknown_fields=True):
    """How a model's answers are cached (for the requests that may be cached at all).

    An answer is fresh for ``ttl_s`` (None: the global ``cache.ttl_s``). For ``stale_s`` more it
    is still served, marked stale, while one background call replaces it.
    """

    ttl_s: Positive | None = None
    stale_s: NonNegative = 0.0
    enabled: bool = True
    # Also cache requests that sample (temperature above 0), as X-Surgeflow-Cache: on does for
    # one request: identical requests then get the same answer.
    sampled: bool = False
    # "key": each API key has its own answers; "shared": every key reads and writes the same
    # ones (a public FAQ model, say). Never share a model whose prompts carry private data.
    scope: Literal["key", "shared"] = "key"
    semantic: SemanticSettings = msgspec.field(default_factory=SemanticSettings)


class ModelSettings(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    endpoints: list[EndpointSettings]
    policy: Literal[
        "round_robin",
        "weighted_round_robin",
        "least_connections",
        "consistent_hash",
        "random",
        "p2c_ewma",
    ] = "p2c_ewma"
    hash_on: Literal["ip", "key", "user", "prompt"] = "key"  # for consistent_hash
    retry: RetrySettings = msgspec.field(default_factory=RetrySettings)
    hedge: HedgeSettings = msgspec.field(default_factory=HedgeSettings)
    health: BreakerSettings = msgspec.field(default_factory=BreakerSettings)
    active_checks: ActiveCheckSettings = msgspec.field(default_factory=ActiveCheckSettings)
    fallbacks: list[str] = msgspec.field(default_factory=list)
    # What 1,000 tokens cost (any currency), for the estimated-cost metric; 0: not reported.
    price_per_1k_input: NonNegative = 0.0
    price_per_1k_output: NonNegative = 0.0
    cache: ModelCacheSettings = msgspec.field(default_factory=ModelCacheSettings)

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise ValueError(f"model {self.name!r} has no endpoints")


def _default_models() -> list[ModelSettings]:
    return [
        ModelSettings(
            name="sim-small",
            endpoints=[
                EndpointSettings(name="sim-a", simulated=SimulatedSettings(seed=1)),
                EndpointSettings(name="sim-b", simulated=SimulatedSettings(seed=2)),
            ],
        )
    ]


class StoreSettings(msgspec.Struct, forbid_unknown_fields=True):
    url: str = "sqlite:///surgeflow.db"


class QueueSettings(msgspec.Struct, forbid_unknown_fields=True):
    """Where runs wait for a worker: ``sqlite:///…`` (None: the store's own SQLite database),
    ``redis://…`` (Redis Streams, for several worker processes or machines) or ``amqp://…``
    (RabbitMQ, with its job index in PostgreSQL: ``index_url``, by default a PostgreSQL
    store's database). A worker holds
    a run's lease for ``lease_s`` (extended while it runs); a run is retried up to
    ``max_attempts`` times. Every worker also reconciles, every ``reconcile_interval_s``: a run
    the store says is waiting or running, untouched for ``reconcile_grace_s``, with no job in
    the queue (Redis lost its data, say) is queued again, so no run is ever lost with the queue."""

    url: str | None = None  # None: the store's database
    index_url: str | None = None  # amqp:// only: postgresql://… (None: the store's, if PostgreSQL)
    lease_s: Positive = 30.0
    max_attempts: PositiveInt = 5
    reconcile_interval_s: Positive = 10.0
    reconcile_grace_s: NonNegative = 30.0


class WorkerSettings(msgspec.Struct, forbid_unknown_fields=True):
    embedded: bool = True  # run a worker inside `surgeflow serve`
    concurrency: PositiveInt = 64
    poll_interval_s: Positive = 0.5
    drain_timeout_s: Positive = 30.0
    retry_backoff_s: Positive = 1.0


class SemanticIndexSettings(msgspec.Struct, forbid_unknown_fields=True):
    """The semantic index every semantic-cached model shares (per process)."""

    max_entries: PositiveInt = 100_000
    threads: PositiveInt | None = None  # onnxruntime's intra-op threads; None: one per core


class CacheSettings(msgspec.Struct, forbid_unknown_fields=True):
    url: str = "memory://"
    ttl_s: Positive = 600.0
    max_bytes: PositiveInt = 64 * 1024 * 1024
    semantic: SemanticIndexSettings = msgspec.field(default_factory=SemanticIndexSettings)


class LogSettings(msgspec.Struct, forbid_unknown_fields=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"  # auto: console in a terminal, else json
    access: bool = True  # one line per gateway request (route, status, duration)
    prompts: bool = False  # write prompt and answer bodies into log lines (off: redacted)


class TracingSettings(msgspec.Struct, forbid_unknown_fields=True):
    """OpenTelemetry tracing (the ``tracing`` extra; spans and attributes: docs/observability.md).

    ``exporter``: ``otlp`` sends spans over OTLP/HTTP to ``endpoint``, ``console`` prints them,
    ``none`` makes spans (and propagates ``traceparent``) but exports nothing.
    """

    enabled: bool = False
    exporter: Literal["otlp", "console", "none"] = "otlp"
    # The full traces URL, path included (http://collector:4318/v1/traces). None: the
    # exporter's own default, from OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT or localhost:4318.
    endpoint: str | None = None
    service_name: str = "surgeflow"  # the spans' service.name
    # The share of traces started here that are recorded; a caller's traceparent decides for
    # the requests that carry one.
    sample_ratio: Annotated[float, msgspec.Meta(ge=0, le=1)] = 1.0


Duration = float | str  # seconds, or "30s", "5m", "1h"


class AlertRuleSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One alert rule; ``kind`` says what it watches (see docs/observability.md):

    - ``latency``: the ``quantile`` of request durations over ``window`` exceeds ``threshold``
      seconds (``route``: one route template; default all API routes);
    - ``error_ratio``: 5xx answers / requests over ``window`` exceeds ``threshold``;
    - ``queue_depth``: ready runs exceed ``threshold``; ``queue_age``: the oldest ready run has
      waited more than ``threshold`` seconds;
    - ``endpoint_ejected``: a model endpoint is ejected by its breaker;
    - ``cache_hit_ratio``: the hit ratio over ``window`` falls below ``threshold`` times the
      ratio over the ``baseline`` before it (a collapse, not a low steady state);
    - ``key_anomaly``: an API key's request rate is more than ``z`` standard deviations above
      its own EWMA (and at least ``threshold`` req/s).

    A condition must hold for ``for`` before the alert fires; it resolves when it stops.
    """

    name: str
    kind: Literal[
        "latency",
        "error_ratio",
        "queue_depth",
        "queue_age",
        "endpoint_ejected",
        "cache_hit_ratio",
        "key_anomaly",
    ]
    threshold: float | None = None
    quantile: Annotated[float, msgspec.Meta(gt=0, lt=1)] = 0.99
    route: str | None = None
    window: Duration = "5m"
    baseline: Duration = "30m"
    for_: Duration = msgspec.field(default=0.0, name="for")
    min_requests: Annotated[int, msgspec.Meta(ge=0)] = 20
    z: Positive = 4.0
    alpha: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.05
    severity: str = "warning"
    summary: str | None = None


def _default_alert_rules() -> list[AlertRuleSettings]:
    return [
        AlertRuleSettings(
            name="HighLatency", kind="latency", threshold=5.0, window="5m", for_="5m"
        ),
        AlertRuleSettings(
            name="HighErrorRatio", kind="error_ratio", threshold=0.05, window="5m", for_="2m"
        ),
        AlertRuleSettings(name="QueueBacklog", kind="queue_age", threshold=60.0, for_="1m"),
        AlertRuleSettings(name="EndpointEjected", kind="endpoint_ejected", for_="30s"),
        AlertRuleSettings(
            name="CacheHitCollapse",
            kind="cache_hit_ratio",
            threshold=0.5,
            window="5m",
            baseline="30m",
            for_="5m",
            min_requests=100,
        ),
        AlertRuleSettings(
            name="KeyTrafficAnomaly", kind="key_anomaly", threshold=5.0, window="10s", for_="30s"
        ),
    ]


class WebhookSettings(msgspec.Struct, forbid_unknown_fields=True):
    """A URL that receives each firing and resolved notification as a JSON POST, retried with
    backoff up to ``attempts`` times."""

    url: str
    timeout_s: Positive = 5.0
    attempts: PositiveInt = 5
    headers: dict[str, str] = msgspec.field(default_factory=dict)


class AlertSettings(msgspec.Struct, forbid_unknown_fields=True):
    enabled: bool = True
    interval_s: Positive = 1.0  # how often the figures are sampled and the rules evaluated
    rules: list[AlertRuleSettings] = msgspec.field(default_factory=_default_alert_rules)
    webhooks: list[WebhookSettings] = msgspec.field(default_factory=list)


class Settings(msgspec.Struct, forbid_unknown_fields=True):
    """Everything surgeflow can be told. The defaults give the embedded, zero-setup shape."""

    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    auth: AuthSettings = msgspec.field(default_factory=AuthSettings)
    limits: LimitSettings = msgspec.field(default_factory=LimitSettings)
    events: EventSettings = msgspec.field(default_factory=EventSettings)
    models: list[ModelSettings] = msgspec.field(default_factory=_default_models)
    store: StoreSettings = msgspec.field(default_factory=StoreSettings)
    queue: QueueSettings = msgspec.field(default_factory=QueueSettings)
    worker: WorkerSettings = msgspec.field(default_factory=WorkerSettings)
    cache: CacheSettings = msgspec.field(default_factory=CacheSettings)
    log: LogSettings = msgspec.field(default_factory=LogSettings)
    tracing: TracingSettings = msgspec.field(default_factory=TracingSettings)
    alerts: AlertSettings = msgspec.field(default_factory=AlertSettings)
    workflows: list[str] = msgspec.field(
        default_factory=lambda: ["surgeflow.agents:builtin_workflows"]
    )

    @property
    def queue_url(self) -> str:
        return self.queue.url or self.store.url


ENV_PREFIX = "SURGEFLOW_"
_SECTIONS = frozenset(Settings.__struct_fields__)


def load_settings(
    path: str | Path | None = None, *, env: Mapping[str, str] | None = None
) -> Settings:
    """Read ``path`` (YAML; optional), apply environment overrides, validate.

    ``SURGEFLOW_SERVER__PORT=9000`` sets ``server.port``; values are read as YAML scalars, so
    numbers, booleans and ``[lists]`` work. Variables naming no section are ignored.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
        raw = loaded or {}
    for name, value in (os.environ if env is None else env).items():
        if not name.startswith(ENV_PREFIX):
            continue
        keys = name[len(ENV_PREFIX) :].lower().split("__")
        if keys[0] not in _SECTIONS:
            continue
        _set_path(raw, keys, _parse_scalar(value), name)
    try:
        return msgspec.convert(raw, Settings)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from None


def _set_path(raw: dict[str, Any], keys: list[str], value: Any, origin: str) -> None:
    node = raw
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{origin} sets a key inside {key!r}, which is not a section")
        node = child
    node[keys[-1]] = value


def _parse_scalar(value: str) -> Any:
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value
