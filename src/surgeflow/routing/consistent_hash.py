"""Consistent hashing: the same client, key, user or prompt prefix goes to the same endpoint."""

from __future__ import annotations

import bisect
import hashlib
import operator
import struct
from collections.abc import Sequence

from surgeflow.errors import ConfigError
from surgeflow.routing.base import RouteKey
from surgeflow.routing.endpoint import Endpoint

_FIELDS = {"ip": "client_ip", "key": "key_id", "user": "user", "prompt": "prompt_prefix"}
_MAX_RINGS = 8  # candidate sets seen lately: a retry or a full endpoint flips between a few
_MAX_ENDPOINTS = 1024  # endpoints whose points are kept, against names that never come back

Signature = tuple[tuple[str, int], ...]


def _hash(text: str) -> int:
    # Stable across processes and restarts, unlike the salted built-in hash().
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def _points(name: str, count: int) -> list[int]:
    """``count`` ring points for ``name``, sorted; a larger count only adds points."""
    points: list[int] = []
    for block in range(-(-count // 8)):  # eight 64-bit points per digest: an eighth of the hashing
        digest = hashlib.blake2b(f"{name}#{block}".encode(), digest_size=64).digest()
        points.extend(struct.unpack("<8Q", digest))
    del points[count:]
    points.sort()
    return points


class _Ring:
    """Points on a 64-bit circle, sorted, each owned by a candidate (its index in the set)."""

    __slots__ = ("owners", "points")

    def __init__(self, points: list[int], owners: list[int]) -> None:
        self.points = points
        self.owners = owners


class ConsistentHash:
    """A hash ring over the candidates, ``vnodes`` points per unit of weight, looked up by bisect.

    The routing key is ``RouteKey.client_ip``, ``key_id``, ``user`` or ``prompt_prefix`` as
    ``hash_on`` says; a request without one is sent to the candidates in turn. An endpoint's
    points depend on its name and weight alone, so removing one moves only the keys it had and
    adding one moves only the keys it takes. Rings are cached by candidate set, (name, weight)
    in order: a pick costs O(n) to recognise the set plus O(log n) to look up.
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
        self._points: dict[tuple[str, int], list[int]] = {}
        self._turn = 0
        self.builds = 0

    def pick(self, candidates: Sequence[Endpoint], key: RouteKey) -> Endpoint:
        value: str | None = self._field(key)
        if value is None:
            self._turn += 1
            return candidates[self._turn % len(candidates)]
        signature = tuple((endpoint.name, endpoint.weight) for endpoint in candidates)
        ring = self._rings.get(signature) or self._build(signature)
        index = bisect.bisect(ring.points, _hash(value))
        return candidates[ring.owners[index if index < len(ring.owners) else 0]]

    def _build(self, signature: Signature) -> _Ring:
        # Points are hashed once per endpoint and kept sorted, so a new set is a merge of sorted
        # runs. Each point carries its owner's position in its low bits: sorting plain ints is
        # several times faster than sorting pairs.
        shift = len(signature).bit_length()
        merged = sorted(
            point << shift | position
            for position, (name, weight) in enumerate(signature)
            for point in self._points_of(name, weight)
        )
        mask = (1 << shift) - 1
        ring = _Ring([key >> shift for key in merged], [key & mask for key in merged])
        if len(self._rings) >= _MAX_RINGS:
            del self._rings[next(iter(self._rings))]  # the oldest
        self._rings[signature] = ring
        self.builds += 1
        return ring

    def _points_of(self, name: str, weight: int) -> list[int]:
        points = self._points.get((name, weight))
        if points is None:
            if len(self._points) >= _MAX_ENDPOINTS:
                self._points.clear()
            points = self._points[name, weight] = _points(name, self.vnodes * weight)
        return points

    def __repr__(self) -> str:
        return (
            f"<ConsistentHash hash_on={self.hash_on} vnodes={self.vnodes} "
            f"rings={len(self._rings)} builds={self.builds}>"
        )
