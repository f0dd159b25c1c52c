"""Nearest neighbours by cosine similarity, in partitions.

A partition holds the prompts that may answer each other (one tenant, one model, one
conversation so far): a search never crosses partitions. A small partition is a flat matrix
searched exactly (a 2,048 × 384 product takes tens of µs); one that outgrows ``flat_limit`` moves
to an HNSW graph (usearch, half-precision vectors) whose search stays well under a millisecond at
hundreds of thousands of entries. Not thread-safe: one thread owns an index.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]


class _Flat:
    """Exact search over a growing matrix; removal swaps the last row in."""

    __slots__ = ("_ids", "_matrix", "_rows", "_size")

    def __init__(self, dimension: int) -> None:
        self._matrix = np.empty((16, dimension), dtype=np.float32)
        self._ids: list[int] = []
        self._rows: dict[int, int] = {}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, entry_id: int, vector: Vector) -> None:
        if entry_id in self._rows:
            self._matrix[self._rows[entry_id]] = vector
            return
        if self._size == len(self._matrix):
            grown = np.empty((2 * len(self._matrix), self._matrix.shape[1]), dtype=np.float32)
            grown[: self._size] = self._matrix[: self._size]
            self._matrix = grown
        self._matrix[self._size] = vector
        self._rows[entry_id] = self._size
        self._ids.append(entry_id)
        self._size += 1

    def remove(self, entry_id: int) -> None:
        row = self._rows.pop(entry_id, None)
        if row is None:
            return
        last = self._size - 1
        if row != last:
            moved = self._ids[last]
            self._matrix[row] = self._matrix[last]
            self._ids[row] = moved
            self._rows[moved] = row
        self._ids.pop()
        self._size -= 1

    def search(self, vector: Vector, k: int) -> list[tuple[int, float]]:
        if self._size == 0:
            return []
        scores = self._matrix[: self._size] @ vector
        if self._size > k:
            top = np.argpartition(-scores, k)[:k]
            top = top[np.argsort(-scores[top])]
        else:
            top = np.argsort(-scores)
        return [(self._ids[i], float(scores[i])) for i in top]

    def items(self) -> tuple[list[int], Vector]:
        return list(self._ids), self._matrix[: self._size]

    def vector(self, entry_id: int) -> Vector:
        row: Vector = self._matrix[self._rows[entry_id]].copy()
        return row


class _Graph:
    """Approximate search in an HNSW graph (usearch), cosine metric, f16 vectors."""

    __slots__ = ("_index",)

    def __init__(self, dimension: int, ids: list[int], vectors: Vector) -> None:
        # onnxruntime must initialise before usearch is loaded: the other order crashes the
        # process in std::codecvt (onnxruntime 1.32, usearch 2.26).
        with contextlib.suppress(ImportError):
            import onnxruntime  # noqa: F401
        from usearch.index import Index

        self._index: Any = Index(
            ndim=dimension,
            metric="cos",
            dtype="f16",
            connectivity=16,
            expansion_add=96,
            expansion_search=128,
        )
        if ids:
            self._index.add(np.asarray(ids, dtype=np.uint64), vectors)

    def __len__(self) -> int:
        return len(self._index)

    def add(self, entry_id: int, vector: Vector) -> None:
        if self._index.contains(entry_id):
            self._index.remove(entry_id)
        self._index.add(entry_id, vector)

    def remove(self, entry_id: int) -> None:
        if self._index.contains(entry_id):
            self._index.remove(entry_id)

    def vector(self, entry_id: int) -> Vector:
        vector: Vector = self._index.get(entry_id, dtype=np.float32)
        return vector

    def search(self, vector: Vector, k: int) -> list[tuple[int, float]]:
        matches = self._index.search(vector, k)
        # usearch's cosine distance is 1 - similarity.
        return [
            (int(key), 1.0 - float(distance))
            for key, distance in zip(matches.keys, matches.distances, strict=True)
        ]


class VectorIndex:
    """Entries (int ids with unit vectors) in partitions; search returns (id, similarity), best
    first."""

    def __init__(self, dimension: int, *, flat_limit: int = 2048) -> None:
        if flat_limit < 1:
            raise ValueError("flat_limit must be >= 1")
        self.dimension = dimension
        self.flat_limit = flat_limit
        self._partitions: dict[str, _Flat | _Graph] = {}
        self._where: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self._where)

    def __repr__(self) -> str:
        graphs = sum(isinstance(p, _Graph) for p in self._partitions.values())
        return (
            f"<VectorIndex entries={len(self._where)} partitions={len(self._partitions)} "
            f"hnsw={graphs}>"
        )

    @property
    def partitions(self) -> int:
        return len(self._partitions)

    def add(self, partition: str, entry_id: int, vector: Vector) -> None:
        if vector.shape != (self.dimension,):
            raise ValueError(f"expected a vector of {self.dimension}, got shape {vector.shape}")
        previous = self._where.get(entry_id)
        if previous is not None and previous != partition:
            self.remove(entry_id)
        store = self._partitions.get(partition)
        if store is None:
            store = self._partitions[partition] = _Flat(self.dimension)
        store.add(entry_id, vector)
        self._where[entry_id] = partition
        if isinstance(store, _Flat) and len(store) > self.flat_limit:
            ids, vectors = store.items()
            self._partitions[partition] = _Graph(self.dimension, ids, vectors)

    def remove(self, entry_id: int) -> None:
        partition = self._where.pop(entry_id, None)
        if partition is None:
            return
        store = self._partitions[partition]
        store.remove(entry_id)
        if len(store) == 0:
            del self._partitions[partition]

    def search(self, partition: str, vector: Vector, k: int) -> list[tuple[int, float]]:
        store = self._partitions.get(partition)
        if store is None:
            return []
        return store.search(vector, min(k, len(store)))

    def vector(self, entry_id: int) -> Vector:
        """The vector stored for ``entry_id`` (half precision once its partition is a graph)."""
        return self._partitions[self._where[entry_id]].vector(entry_id)

    def clear(self) -> None:
        self._partitions.clear()
        self._where.clear()
