"""Consistent hashing: the same client, key, user or prompt prefix goes to the same endpoint."""

from __future__ import annotations

import bisect
import hashlib
import operator
from collections.abc import Sequence

from surgeflow.errors import ConfigError
from surgeflow.routing.base import RouteKey
from surgeflow.routing.endpoint import Endpoint

_FIELDS = {"ip": "client_ip", "key": "key_id", "user": "user", "prompt": "prompt_prefix"}
_MAX_RINGS = 8  # candidate sets seen lately; a retry or a full endpoint flips between a few

Signature = tuple[tuple[str, int], ...]


def _hash(text: str) -> int:
    # Stable across processes and restarts, unlike the salted built-in hash().
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class _Ring:
    """Points on a 64-bit circle, sorted, each owned by a candidate (by its index)."""

    __slots__ = ("owners", "points")

    def __init__(self, signature: Signature, vnodes: int) -> None:
        # An endpoint's points depend on its name alone, so a ring over fewer endpoints is the
        # same ring with their points missing: only the keys on a removed endpoint move.
        placed = sorted(
            (_hash(f"{name}#{index}"), name, position)
            for position, (name, weight) in enumerate(signature)
            for index in range(vnodes * weight)
        )
        self.points = [point for point, _, _ in placed]
        self.owners = [position for _, _, position in placed]


class ConsistentHash:
    """A hash ring over the candidates, ``vnodes`` points per unit of weight, looked up by bisect.

    The routing key is ``RouteKey.client_ip``, ``key_id``, ``user`` or ``prompt_prefix`` as
    ``hash_on`` says; a request without one is sent to the candidates in turn. Rings are cached
    by candidate set, (name, weight) in order: a change costs a rebuild, a pick O(n) to check
    the set plus O(log n) to look up.
    """

    name = "consistent_hash"

    def __init__(self, *, hash_on: str = "key", vnodes: int = 160) -> None:
        if hash_on not in _FIELDS:
            raise ConfigError(f"hash_on must be one of {', '.join(_FIELDS)}, not {hash_on!r}")
        if vnodes < 1:
            raise ConfigError(f"vnodes must be >= 1, not {vnodes}")
        self.hash_on = hash_on
        self.vnodes = vnodes
        self._field = operator.attrgetter(_FIELDS[hash_on])
        self._rings: dict[Signature, _Ring] = {}
        self._turn = 0
        self.builds = 0

    def pick(self, candidates: Sequence[Endpoint], key: RouteKey) -> Endpoint:
        value: str | None = self._field(key)
        if value is None:
            self._turn += 1
            return candidates[self._turn % len(candidates)]
        signature = tuple((endpoint.name, endpoint.weight) for endpoint in candidates)
        ring = self._rings.get(signature)
        if ring is None:
            ring = self._build(signature)
        index = bisect.bisect(ring.points, _hash(value))
        return candidates[ring.owners[index if index < len(ring.owners) else 0]]

    def _build(self, signature: Signature) -> _Ring:
        if len(self._rings) >= _MAX_RINGS:
            del self._rings[next(iter(self._rings))]  # the oldest
        ring = self._rings[signature] = _Ring(signature, self.vnodes)
        self.builds += 1
        return ring

    def __repr__(self) -> str:
        return (
            f"<ConsistentHash hash_on={self.hash_on} vnodes={self.vnodes} "
            f"rings={len(self._rings)} builds={self.builds}>"
        )
