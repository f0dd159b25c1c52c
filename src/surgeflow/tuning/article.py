"""The source article's two worked cases (its section 4), three ways.

1. The formula's value as the article printed it.
2. The same formula with the same numbers, computed correctly.
3. The queueing model for the same parameters, read as a system: λ = N requests/s arrive; M
   load balancers (gateways) each spend t seconds of CPU per request; a share h is answered from
   the cache after t_h, the rest pay t_c on the miss path and then call one of S services, each
   serving p calls at once for t_m seconds (the article's "asynchronous concurrency p"). The
   article's third term (N/p·t) has no station of its own: p is the services' concurrency, and
   a call holds it for t_m.
"""

from __future__ import annotations

import math

import msgspec

from surgeflow.config import RetrySettings
from surgeflow.tuning.network import Analysis, analyze
from surgeflow.tuning.planner import DEFAULT_REQUESTS, Prediction, predict
from surgeflow.tuning.queueing import servers_for
from surgeflow.tuning.scenario import (
    CacheStage,
    EndpointGroup,
    GatewayTier,
    ModelTier,
    Scenario,
    ServiceTime,
)

TARGET_UTILISATION = 0.8


class ArticleCase(msgspec.Struct, frozen=True, kw_only=True):
    """One worked case: its parameters and the figures the article printed (seconds)."""

    key: str
    name: str  # as the article names it
    english: str
    n: float  # requests per second
    t: float  # per request, at a load balancer (and, in the third term, "async processing")
    m: int  # load balancers
    h: float  # cache hit ratio
    t_h: float  # hit time
    t_c: float  # miss time
    p: int  # asynchronous concurrency
    s: int  # microservices
    t_m: float  # per call, at a microservice
    printed_terms: tuple[float, float, float, float]
    printed_total: float
    remark: str = ""


CASES: tuple[ArticleCase, ...] = (
    ArticleCase(
        key="case1",
        name="案例1：智能推荐系统",
        english="case 1: a recommendation system",
        n=1e6,
        t=0.01,
        m=8,
        h=0.9,
        t_h=0.01,
        t_c=0.1,
        p=2,
        s=10,
        t_m=0.05,
        printed_terms=(12.5, 111.0, 5.0, 50.0),
        printed_total=178.5,
    ),
    ArticleCase(
        key="case2",
        name="案例2：在线客服系统",
        english="case 2: an online customer-service system",
        n=5e3,
        t=0.5,
        m=4,
        h=0.8,
        t_h=0.5,
        t_c=0.1,
        p=3,
        s=5,
        t_m=0.1,
        printed_terms=(627.5, 11750.0, 833.3, 500.0),
        printed_total=13009.8,
        remark="as printed, a cache hit (0.5 s) takes longer than a miss (0.1 s)",
    ),
)

EXPLANATION = (
    "Why T = N/M·t + N/h·r + N/p·t + N/S·t is not a response time. Each term is total work, "
    "not time one request spends: N/M·t is how many seconds of load-balancer time N requests "
    "need, shared by M balancers, so T grows with how many requests you count (a million "
    "requests 'take' 178.5 s, or 32,361 s done right) while one request's latency does not. "
    "Parallel servers raise capacity, not speed: a request still takes t on the one balancer "
    "it reaches, so dividing by M, p or S cannot shorten it. The cache term divides by h where "
    "it should weight by it: a request costs h·t_h + (1 − h)·t_c on average, whereas N/h·(…) "
    "grows without bound as h falls to 0, as if no cache meant infinite time. The four terms "
    "are stages one request passes in turn, so they add per request: "
    "R = (t + W_lb) + (h·t_h + (1 − h)·t_c) + (1 − h)·(t_m + W_svc), where each wait W comes "
    "from its station's utilisation ρ = λ·s / c (Erlang C, Allen–Cunneen) and explodes as ρ "
    "nears 1. What N really sets is the arrival rate λ, and the cases' rates overload their "
    "load balancers hundreds of times over (ρ = 1,250 and 625): their queues grow without "
    "bound, and no response time is finite until M grows to match."
)


def formula_terms(case: ArticleCase) -> tuple[float, float, float, float]:
    """The article's formula with its own numbers, computed correctly (seconds)."""
    cache = case.h * case.t_h + (1 - case.h) * case.t_c
    return (
        case.n / case.m * case.t,
        case.n / case.h * cache,
        case.n / case.p * case.t,
        case.n / case.s * case.t_m,
    )


def unloaded_s(case: ArticleCase) -> float:
    """One request through the stages with no waiting: t + h·t_h + (1 − h)·(t_c + t_m)."""
    return case.t + case.h * case.t_h + (1 - case.h) * (case.t_c + case.t_m)


def scenario_for(
    case: ArticleCase,
    *,
    gateways: int | None = None,
    services: int | None = None,
    concurrency: int | None = None,
) -> Scenario:
    """The case as a surgeflow scenario (optionally with more balancers, services or
    concurrency): constant times, Poisson arrivals, a random split at both tiers."""
    return Scenario(
        name=case.key,
        rate=case.n,
        gateway=GatewayTier(
            replicas=gateways or case.m,
            cpu_hit_ms=case.t * 1000,
            cpu_miss_ms=case.t * 1000,
            miss_cpu_after=0.0,
        ),
        cache=CacheStage(hit_ratio=case.h, hit_ms=case.t_h * 1000, miss_ms=case.t_c * 1000),
        model=ModelTier(
            policy="random",
            endpoints=(
                EndpointGroup(
                    name="service",
                    count=services or case.s,
                    max_concurrency=None,
                    capacity=concurrency or case.p,
                    service=ServiceTime.distribution(case.t_m * 1000, "constant"),
                ),
            ),
            retry=RetrySettings(attempts=1),
            deadline_s=1e9,  # the article has no deadline
        ),
    )


class CaseReport(msgspec.Struct, kw_only=True):
    case: ArticleCase
    printed_terms_sum: float  # what the printed terms really add up to
    correct_terms: tuple[float, float, float, float]
    correct_total: float
    unloaded_ms: float
    as_given: Analysis  # the parameters as printed
    gateways_needed: int  # for ρ ≤ 0.8 at the balancers
    services_needed: int  # for ρ ≤ 0.8 at the services, keeping p
    concurrency_needed: int  # for ρ ≤ 0.8 at the services, keeping S
    sized: Prediction  # M and S as needed (closed forms and simulation)
    sized_by_concurrency: Analysis  # M and p as needed (closed forms)


def report(
    case: ArticleCase, *, requests: int = DEFAULT_REQUESTS, seed: int = 1, simulated: bool = True
) -> CaseReport:
    correct = formula_terms(case)
    service_load = case.n * (1 - case.h) * case.t_m
    gateways = servers_for(case.n, case.t, TARGET_UTILISATION)
    services = math.ceil(servers_for(case.n * (1 - case.h), case.t_m, TARGET_UTILISATION) / case.p)
    concurrency = math.ceil(service_load / TARGET_UTILISATION / case.s - 1e-9)
    return CaseReport(
        case=case,
        printed_terms_sum=round(sum(case.printed_terms), 6),
        correct_terms=correct,
        correct_total=sum(correct),
        unloaded_ms=unloaded_s(case) * 1000,
        as_given=analyze(scenario_for(case)),
        gateways_needed=gateways,
        services_needed=services,
        concurrency_needed=concurrency,
        sized=predict(
            scenario_for(case, gateways=gateways, services=services),
            requests=requests,
            seed=seed,
            simulated=simulated,
        ),
        sized_by_concurrency=analyze(
            scenario_for(case, gateways=gateways, concurrency=concurrency)
        ),
    )
