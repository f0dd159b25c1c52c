"""Closed forms for single queueing stations: Erlang B and C, M/M/c, M/G/1, Allen–Cunneen.

Notation: arrival rate ``rate`` (λ, per second), mean service time ``service_s`` (s = 1/μ),
``servers`` (c), offered load a = λ·s (erlangs), utilisation ρ = a / c. ``ca2`` and ``cs2`` are
the squared coefficients of variation of the inter-arrival and service times (1 for Poisson
arrivals and exponential service, 0 for constant ones). Every waiting time is the mean time in
the queue, before service starts; it is ``inf`` when the station is unstable (ρ ≥ 1).
"""

from __future__ import annotations

import math


def utilisation(rate: float, service_s: float, servers: int) -> float:
    """ρ = λ·s / c: the share of the servers' time that is busy (≥ 1: the queue grows)."""
    return rate * service_s / servers


def erlang_b(servers: int, load: float) -> float:
    """Erlang B: the probability that a call finds all ``servers`` busy and no queue (M/M/c/c).

    By the recursion B(k) = a·B(k−1) / (k + a·B(k−1)), which is stable for any c.
    """
    if servers < 0 or load < 0:
        raise ValueError("servers and load must be >= 0")
    blocking = 1.0
    for k in range(1, servers + 1):
        blocking = load * blocking / (k + load * blocking)
    return blocking


def erlang_c(servers: int, load: float) -> float:
    """Erlang C: the probability that an arrival has to wait (M/M/c); 1 when ρ ≥ 1."""
    if servers < 1:
        raise ValueError("servers must be >= 1")
    rho = load / servers
    if rho >= 1:
        return 1.0
    blocking = erlang_b(servers, load)
    return blocking / (1 - rho * (1 - blocking))


def mmc_wait_s(rate: float, service_s: float, servers: int) -> float:
    """M/M/c mean wait in queue: C(c, a) / (cμ − λ)."""
    if rate <= 0:
        return 0.0
    mu = 1.0 / service_s
    spare = servers * mu - rate
    if spare <= 0:
        return math.inf
    return erlang_c(servers, rate * service_s) / spare


def mm1_wait_s(rate: float, service_s: float) -> float:
    """M/M/1 mean wait in queue: ρ / (μ − λ)."""
    if rate <= 0:
        return 0.0
    mu = 1.0 / service_s
    if rate >= mu:
        return math.inf
    return (rate / mu) / (mu - rate)


def mg1_wait_s(rate: float, service_s: float, cs2: float) -> float:
    """M/G/1 mean wait by Pollaczek–Khinchine: λ·E[S²] / (2(1 − ρ)) = ρ·s·(1 + c_s²) / 2(1 − ρ)."""
    if rate <= 0:
        return 0.0
    rho = rate * service_s
    if rho >= 1:
        return math.inf
    return rho * service_s * (1 + cs2) / (2 * (1 - rho))


def allen_cunneen_wait_s(
    rate: float, service_s: float, servers: int, *, ca2: float = 1.0, cs2: float = 1.0
) -> float:
    """G/G/c mean wait by Allen–Cunneen: C(c, a) / (cμ − λ) · (c_a² + c_s²) / 2.

    Exact for M/M/c (c_a² = c_s² = 1) and for M/G/1 (it is then Pollaczek–Khinchine); within a
    few per cent for M/G/c at moderate to high load, less good at light load with many servers.
    """
    return mmc_wait_s(rate, service_s, servers) * (ca2 + cs2) / 2


def mmc_wait_tail(rate: float, service_s: float, servers: int, wait_s: float) -> float:
    """M/M/c: P(W > t) = C(c, a) · exp(−(cμ − λ)·t); 1 when unstable."""
    mu = 1.0 / service_s
    spare = servers * mu - rate
    if spare <= 0:
        return 1.0
    return erlang_c(servers, rate * service_s) * math.exp(-spare * wait_s)


def mmc_wait_quantile_s(rate: float, service_s: float, servers: int, q: float) -> float:
    """M/M/c: the ``q``-quantile of the wait in queue: ln(C / (1 − q)) / (cμ − λ), or 0."""
    mu = 1.0 / service_s
    spare = servers * mu - rate
    if spare <= 0:
        return math.inf
    waiting = erlang_c(servers, rate * service_s)
    if waiting <= 1 - q:
        return 0.0
    return math.log(waiting / (1 - q)) / spare


def mmck_blocking(servers: int, load: float, capacity: int) -> float:
    """M/M/c/K: the probability that an arrival finds the station full (K = servers + queue).

    The stationary probabilities p_n ∝ a^n / n! for n ≤ c and a^c/c! · ρ^(n−c) beyond, computed
    in logs so that large c and K do not overflow.
    """
    if capacity < servers:
        raise ValueError("capacity must be >= servers")
    if load <= 0:
        return 0.0
    log_terms: list[float] = []
    log_load = math.log(load)
    for n in range(servers + 1):
        log_terms.append(n * log_load - math.lgamma(n + 1))
    log_rho = log_load - math.log(servers)
    base = log_terms[-1]
    log_terms.extend(base + (n - servers) * log_rho for n in range(servers + 1, capacity + 1))
    peak = max(log_terms)
    total = sum(math.exp(term - peak) for term in log_terms)
    return math.exp(log_terms[-1] - peak) / total


def servers_for(rate: float, service_s: float, target_utilisation: float) -> int:
    """The fewest servers that keep ρ at or below ``target_utilisation``."""
    if not 0 < target_utilisation <= 1:
        raise ValueError("target_utilisation must be in (0, 1]")
    return max(1, math.ceil(rate * service_s / target_utilisation - 1e-9))


def mixture_moments(parts: list[tuple[float, float, float]]) -> tuple[float, float]:
    """Mean and squared coefficient of variation of a mixture of (probability, mean, scv)."""
    total = sum(p for p, _, _ in parts)
    if total <= 0:
        return 0.0, 0.0
    mean = sum(p * m for p, m, _ in parts) / total
    second = sum(p * m * m * (1 + scv) for p, m, scv in parts) / total
    if mean <= 0:
        return 0.0, 0.0
    return mean, max(0.0, second / (mean * mean) - 1)
