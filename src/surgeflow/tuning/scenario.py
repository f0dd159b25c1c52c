"""What `surgeflow plan` models: a load, a gateway tier, a cache, one model's endpoints, runs.

A `Scenario` is plain data (msgspec structs), read from a YAML file (schema: docs/tuning.md),
derived from a surgeflow config (`Scenario.from_settings`), or from live figures
(`surgeflow.tuning.sources`). Times are in the unit their name says (``_ms`` or ``_s``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import yaml

from surgeflow.config import ModelSettings, RetrySettings, Settings
from surgeflow.errors import ConfigError

NonNegative = Annotated[float, msgspec.Meta(ge=0)]
Positive = Annotated[float, msgspec.Meta(gt=0)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
Ratio = Annotated[float, msgspec.Meta(ge=0, le=1)]

LatencyModel = Literal["constant", "exponential", "lognormal"]
Distribution = Literal["constant", "exponential", "lognormal", "gamma"]
PolicyName = Literal[
    "round_robin",
    "weighted_round_robin",
    "least_connections",
    "consistent_hash",
    "random",
    "p2c_ewma",
]

Sampler = Callable[[], float]


class ServiceTime(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How long one call holds its server: the simulated backend's model, or a distribution.

    Simulated (``ttft_ms`` set): ttft drawn from ``latency`` (constant, exponential with that
    mean, or lognormal with that mean and sigma ``jitter``) plus ``reply_tokens`` (uniform
    between the two bounds, as the simulated backend's replies are) at ``tokens_per_s``
    (0: instant). Distribution (``mean_ms`` set): ``dist`` with that mean and squared
    coefficient of variation ``scv`` (constant: 0, exponential: 1; gamma and lognormal: any).
    """

    ttft_ms: NonNegative | None = None
    tokens_per_s: NonNegative | None = None
    latency: LatencyModel | None = None
    jitter: NonNegative | None = None
    reply_tokens: tuple[PositiveInt, PositiveInt] | None = None
    mean_ms: NonNegative | None = None
    dist: Distribution | None = None
    scv: NonNegative | None = None

    def __post_init__(self) -> None:
        if (self.ttft_ms is None) == (self.mean_ms is None):
            raise ValueError("a service time needs exactly one of 'ttft_ms' or 'mean_ms'")
        simulated = (self.tokens_per_s, self.latency, self.jitter, self.reply_tokens)
        if self.mean_ms is not None and any(v is not None for v in simulated):
            raise ValueError("'mean_ms' goes with 'dist' and 'scv', not with the ttft fields")
        if self.ttft_ms is not None and (self.dist is not None or self.scv is not None):
            raise ValueError(
                "'ttft_ms' goes with 'tokens_per_s', 'latency', 'jitter', 'reply_tokens'"
            )
        if self.reply_tokens is not None and self.reply_tokens[0] > self.reply_tokens[1]:
            raise ValueError("reply_tokens must be [min, max] with min <= max")

    @classmethod
    def simulated(
        cls,
        ttft_ms: float,
        tokens_per_s: float,
        *,
        latency: LatencyModel = "lognormal",
        jitter: float = 0.3,
        reply_tokens: tuple[int, int] = (16, 64),
    ) -> ServiceTime:
        return cls(
            ttft_ms=ttft_ms,
            tokens_per_s=tokens_per_s,
            latency=latency,
            jitter=jitter,
            reply_tokens=reply_tokens,
        )

    @classmethod
    def distribution(
        cls, mean_ms: float, dist: Distribution = "gamma", scv: float = 1.0
    ) -> ServiceTime:
        return cls(mean_ms=mean_ms, dist=dist, scv=scv)

    # -- the simulated model's parts, with the simulated backend's defaults ---------------------

    @property
    def _latency(self) -> LatencyModel:
        return self.latency or "lognormal"

    @property
    def _jitter(self) -> float:
        return 0.3 if self.jitter is None else self.jitter

    @property
    def _tokens(self) -> tuple[int, int]:
        return self.reply_tokens or (16, 64)

    @property
    def _token_s(self) -> float:
        tokens_per_s = 300.0 if self.tokens_per_s is None else self.tokens_per_s
        return 1.0 / tokens_per_s if tokens_per_s else 0.0

    @property
    def _dist(self) -> Distribution:
        if self.dist is not None:
            return self.dist
        return "gamma" if self.scv is not None else "exponential"

    @property
    def _scv(self) -> float:
        match self._dist:
            case "constant":
                return 0.0
            case "exponential":
                return 1.0
            case _:
                return 1.0 if self.scv is None else self.scv

    # -- moments and sampling ---------------------------------------------------------------------

    @property
    def mean_s(self) -> float:
        if self.mean_ms is not None:
            return self.mean_ms / 1000
        low, high = self._tokens
        return (self.ttft_ms or 0.0) / 1000 + (low + high) / 2 * self._token_s

    @property
    def scv_value(self) -> float:
        """The squared coefficient of variation, Var / mean²."""
        mean = self.mean_s
        if mean <= 0:
            return 0.0
        if self.mean_ms is not None:
            return self._scv
        ttft = (self.ttft_ms or 0.0) / 1000
        match self._latency:
            case "constant":
                ttft_var = 0.0
            case "exponential":
                ttft_var = ttft * ttft
            case _:
                ttft_var = ttft * ttft * math.expm1(self._jitter**2)
        low, high = self._tokens
        tokens_var = ((high - low + 1) ** 2 - 1) / 12 * self._token_s**2
        return (ttft_var + tokens_var) / (mean * mean)

    def scaled(self, factor: float) -> ServiceTime:
        """The same shape, every time multiplied by ``factor``."""
        if self.mean_ms is not None:
            return msgspec.structs.replace(self, mean_ms=self.mean_ms * factor)
        token_s = self._token_s * factor
        return msgspec.structs.replace(
            self,
            ttft_ms=(self.ttft_ms or 0.0) * factor,
            tokens_per_s=1 / token_s if token_s else 0.0,
        )

    def sampler(self, rng: random.Random) -> Sampler:
        """A function drawing one service time in seconds from ``rng``."""
        if self.mean_ms is not None:
            return _distribution_sampler(rng, self.mean_ms / 1000, self._dist, self._scv)
        ttft = _distribution_sampler(
            rng, (self.ttft_ms or 0.0) / 1000, self._latency, math.expm1(self._jitter**2)
        )
        low, high = self._tokens
        token_s = self._token_s
        if token_s == 0:
            return ttft
        if low == high:
            fixed = low * token_s
            return lambda: ttft() + fixed
        randint = rng.randint
        return lambda: ttft() + randint(low, high) * token_s

    def describe(self) -> str:
        if self.mean_ms is not None:
            return f"{self._dist} mean {self.mean_ms:g} ms, scv {self._scv:g}"
        low, high = self._tokens
        tokens_per_s = 300.0 if self.tokens_per_s is None else self.tokens_per_s
        spread = f" σ={self._jitter:g}" if self._latency == "lognormal" else ""
        return (
            f"ttft {self.ttft_ms:g} ms {self._latency}{spread} + {low}–{high} tokens "
            f"at {tokens_per_s:g}/s"
        )


def _distribution_sampler(rng: random.Random, mean: float, dist: str, scv: float) -> Sampler:
    if mean <= 0 or dist == "constant" or scv == 0:
        return lambda: mean
    if dist == "exponential":
        rate = 1.0 / mean
        expovariate = rng.expovariate
        return lambda: expovariate(rate)
    if dist == "lognormal":
        sigma = math.sqrt(math.log1p(scv))
        mu = math.log(mean) - sigma * sigma / 2
        lognormvariate = rng.lognormvariate
        return lambda: lognormvariate(mu, sigma)
    shape, scale = 1.0 / scv, mean * scv
    gammavariate = rng.gammavariate
    return lambda: gammavariate(shape, scale)


class EndpointGroup(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``count`` identical endpoints of the model, as the router of each gateway sees them.

    ``max_concurrency`` slots (None: no limit), ``max_queue`` waiters of at most
    ``queue_timeout_s`` each: these are `EndpointLimits`, kept by every gateway replica for
    itself. ``capacity`` is what the backend itself serves at once, shared by all gateways (a
    model server's batch slots; None: every call at once, as the simulated backend does).
    """

    service: ServiceTime
    name: str = "endpoint"
    count: PositiveInt = 1
    weight: PositiveInt = 1
    max_concurrency: PositiveInt | None = 256
    max_queue: Annotated[int, msgspec.Meta(ge=0)] = 256
    queue_timeout_s: Positive = 5.0
    capacity: PositiveInt | None = None
    error_rate: Ratio = 0.0


class GatewayTier(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``replicas`` gateway processes, each one event loop: a single server of CPU work.

    A hit costs ``cpu_hit_ms``, a miss ``cpu_miss_ms`` of which ``miss_cpu_after`` is spent
    after the model answers (decoding, encoding, sending). ``split``: how the load balancer in
    front spreads requests. ``max_in_flight``: `server.max_in_flight` (503 at once beyond).
    """

    replicas: PositiveInt = 1
    cpu_hit_ms: NonNegative = 0.08
    cpu_miss_ms: NonNegative = 0.3
    miss_cpu_after: Ratio = 0.5
    split: Literal["random", "round_robin"] = "random"
    max_in_flight: PositiveInt | None = None


class CacheStage(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The share ``hit_ratio`` of requests answered from the cache; a hit waits ``hit_ms`` more
    (a Redis round trip; 0 for memory://), a miss ``miss_ms`` before its model call."""

    hit_ratio: Ratio = 0.0
    hit_ms: NonNegative = 0.0
    miss_ms: NonNegative = 0.0


class ModelTier(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One model: its endpoints, routing policy, retries, and the request deadline."""

    endpoints: tuple[EndpointGroup, ...]
    policy: PolicyName = "p2c_ewma"
    hash_keys: PositiveInt = 1000  # distinct routing keys, for consistent_hash
    retry: RetrySettings = msgspec.field(default_factory=RetrySettings)
    deadline_s: Positive = 60.0  # server.upstream_timeout_s

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise ValueError("a model needs at least one endpoint group")


class RunQueue(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Durable runs: ``rate`` runs/s to ``workers`` × ``concurrency`` slots, each run holding
    one for its ``service`` time; an idle worker finds a new run within ``poll_interval_s``
    (0: woken at once, as an embedded worker is). A client following a run's events learns of
    its end within ``events_poll_s`` of it (a gateway re-reading the store for a run another
    process executes; 0: notified at once).

    ``overhead_ms``: what a run takes outside its slot with nothing else running (submitting it,
    handing it to a worker, reading its events). ``cpu_ms``: the CPU time one run costs in all,
    shared by ``cpu_servers`` event loops (processes, one core each). The share of the run's time
    that is CPU stretches by 1/(1 − ρ) when the CPU is busy a share ρ of the time (processor
    sharing); the rest (waiting for a model, say) does not.
    """

    rate: NonNegative
    service: ServiceTime
    workers: PositiveInt = 1
    concurrency: PositiveInt = 64
    poll_interval_s: NonNegative = 0.0
    events_poll_s: NonNegative = 0.0
    overhead_ms: NonNegative = 0.0
    cpu_ms: NonNegative = 0.0
    cpu_servers: PositiveInt = 1

    @property
    def cpu_utilisation(self) -> float:
        return self.rate * self.cpu_ms / 1000 / self.cpu_servers

    @property
    def stretch(self) -> float:
        """How much longer a run's time is under load than alone (∞: the CPU is saturated)."""
        rho = self.cpu_utilisation
        if rho >= 1:
            return math.inf
        alone = self.overhead_ms + self.service.mean_s * 1000
        cpu_share = min(1.0, self.cpu_ms / alone) if alone > 0 else 0.0
        return 1 - cpu_share + cpu_share / (1 - rho)


class Costs(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What one unit of each change costs (any unit), for `cheapest_change`."""

    gateway: NonNegative = 1.0  # one more gateway replica
    endpoint: NonNegative = 10.0  # one more model endpoint (a GPU server, say)
    slot: NonNegative = 0.02  # one more max_concurrency slot on every endpoint, per endpoint
    hit_ratio_point: NonNegative = 2.0  # one point (0.01) more cache hit ratio
    worker: NonNegative = 0.5  # one more worker process


class SLO(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What must hold: latency bounds (any may be None) and the largest share of errors."""

    p50_ms: Positive | None = None
    p90_ms: Positive | None = None
    p99_ms: Positive | None = None
    mean_ms: Positive | None = None
    max_error_ratio: Ratio = 0.01
    run_p99_s: Positive | None = None  # durable runs: submission to finish

    def describe(self) -> str:
        parts = [
            f"{name} ≤ {value:g} ms"
            for name, value in (
                ("p50", self.p50_ms),
                ("p90", self.p90_ms),
                ("p99", self.p99_ms),
                ("mean", self.mean_ms),
            )
            if value is not None
        ]
        parts.append(f"errors ≤ {self.max_error_ratio:.2%}")
        if self.run_p99_s is not None:
            parts.append(f"run p99 ≤ {self.run_p99_s:g} s")
        return ", ".join(parts)


class Scenario(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A load on a system: ``rate`` chat requests/s (Poisson or constant) through the tiers."""

    model: ModelTier
    name: str = "scenario"
    rate: Positive = 100.0
    arrivals: Literal["poisson", "constant"] = "poisson"
    gateway: GatewayTier = msgspec.field(default_factory=GatewayTier)
    cache: CacheStage = msgspec.field(default_factory=CacheStage)
    runs: RunQueue | None = None
    costs: Costs = msgspec.field(default_factory=Costs)
    slo: SLO | None = None

    @property
    def endpoint_count(self) -> int:
        return sum(group.count for group in self.model.endpoints)

    def with_rate(self, rate: float) -> Scenario:
        return msgspec.structs.replace(self, rate=rate)

    # -- reading ----------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], *, origin: str = "scenario") -> Scenario:
        try:
            return msgspec.convert(raw, cls)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"{origin}: {exc}") from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> Scenario:
        """Read a scenario file (schema: docs/tuning.md, "Capacity planning")."""
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read scenario {str(path)!r}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"scenario {str(path)!r} is not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"scenario {str(path)!r} must hold a mapping at the top level")
        raw.setdefault("name", Path(path).stem)
        return cls.from_dict(raw, origin=f"scenario {str(path)!r}")

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        model: str | None = None,
        rate: float = 100.0,
        hit_ratio: float = 0.0,
        gateways: int = 1,
        reply_tokens: tuple[int, int] = (16, 64),
        service: ServiceTime | Mapping[str, ServiceTime] | None = None,
        runs: RunQueue | None = None,
    ) -> Scenario:
        """The system a surgeflow config describes, under ``rate`` requests/s for ``model``.

        Simulated endpoints bring their latency model (``reply_tokens`` is the spread of reply
        lengths, which depends on the prompts: max_tokens caps it). HTTP endpoints need
        ``service``: one `ServiceTime` for all, or one per endpoint name (measure it with
        ``surgeflow bench`` or read it from /metrics).
        """
        chosen = _model_settings(settings, model)
        groups: list[EndpointGroup] = []
        for index, endpoint in enumerate(chosen.endpoints):
            name = endpoint.name or f"{chosen.name}-{index}"  # as the router names it
            error_rate = 0.0
            if endpoint.simulated is not None:
                sim = endpoint.simulated
                spec: ServiceTime | None = ServiceTime.simulated(
                    sim.ttft_ms,
                    sim.tokens_per_s,
                    latency=sim.latency,
                    jitter=sim.jitter,
                    reply_tokens=reply_tokens,
                )
                error_rate = sim.error_rate
            elif isinstance(service, ServiceTime):
                spec = service
            else:
                spec = None if service is None else service.get(name)
            if spec is None:
                raise ConfigError(
                    f"endpoint {name!r} of model {chosen.name!r} is an HTTP endpoint: give its "
                    "service time (a scenario file, --service-ms) or measure it "
                    "(--metrics, --bench)"
                )
            groups.append(
                EndpointGroup(
                    name=name,
                    service=spec,
                    weight=endpoint.weight,
                    max_concurrency=endpoint.max_concurrency,
                    max_queue=endpoint.max_queue,
                    queue_timeout_s=endpoint.queue_timeout_s,
                    error_rate=error_rate,
                )
            )
        return cls(
            name=f"{chosen.name} (config)",
            rate=rate,
            gateway=GatewayTier(replicas=gateways, max_in_flight=settings.server.max_in_flight),
            cache=CacheStage(hit_ratio=hit_ratio),
            model=ModelTier(
                endpoints=tuple(groups),
                policy=chosen.policy,
                retry=chosen.retry,
                deadline_s=settings.server.upstream_timeout_s,
            ),
            runs=runs,
        )


def _model_settings(settings: Settings, model: str | None) -> ModelSettings:
    if not settings.models:
        raise ConfigError("the config has no models")
    if model is None:
        return settings.models[0]
    for candidate in settings.models:
        if candidate.name == model:
            return candidate
    names = ", ".join(m.name for m in settings.models)
    raise ConfigError(f"the config has no model {model!r}; it has {names}")
