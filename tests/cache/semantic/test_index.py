"""VectorIndex: cosine search best first within one partition, removal, promotion to HNSW."""

import numpy as np
import numpy.typing as npt
import pytest

from surgeflow.cache.semantic import VectorIndex

DIM = 64
Vectors = npt.NDArray[np.float32]


def unit(vectors: npt.ArrayLike) -> Vectors:
    array = np.asarray(vectors, dtype=np.float32)
    normalised: Vectors = (array / np.linalg.norm(array, axis=-1, keepdims=True)).astype(np.float32)
    return normalised


def random_units(n: int, dim: int = DIM, seed: int = 0) -> Vectors:
    return unit(np.random.default_rng(seed).standard_normal((n, dim)))


def toward(target: Vectors, other: Vectors, weight: float) -> Vectors:
    """A unit vector between ``target`` and ``other``: the larger ``weight``, the closer to
    ``target``."""
    return unit(weight * target + (1 - weight) * other)


def test_search_returns_best_first_by_cosine() -> None:
    index = VectorIndex(DIM)
    base, noise = random_units(2, seed=1)
    weights = {10: 0.9, 11: 0.5, 12: 0.99, 13: 0.1, 14: 0.7}
    for entry_id, weight in weights.items():
        index.add("p", entry_id, toward(base, noise, weight))
    found = index.search("p", base, 10)
    assert [entry_id for entry_id, _ in found] == [12, 10, 14, 11, 13]
    similarities = [similarity for _, similarity in found]
    assert similarities == sorted(similarities, reverse=True)
    for entry_id, similarity in found:
        expected = float(toward(base, noise, weights[entry_id]) @ base)
        assert similarity == pytest.approx(expected, abs=1e-5)
    assert [entry_id for entry_id, _ in index.search("p", base, 2)] == [12, 10]


def test_search_never_crosses_partitions() -> None:
    index = VectorIndex(DIM)
    vectors = random_units(6)
    for entry_id in range(3):
        index.add("tenant-a", entry_id, vectors[entry_id])
    for entry_id in range(3, 6):
        index.add("tenant-b", entry_id, vectors[entry_id])
    assert index.partitions == 2
    assert len(index) == 6
    # The exact vector of a tenant-b entry, searched in tenant-a: only tenant-a's entries.
    found = index.search("tenant-a", vectors[4], 10)
    assert {entry_id for entry_id, _ in found} == {0, 1, 2}
    assert index.search("tenant-b", vectors[4], 1)[0][0] == 4
    assert index.search("nobody", vectors[4], 10) == []


def test_remove_swaps_the_last_row_into_the_hole() -> None:
    index = VectorIndex(DIM)
    vectors = random_units(5)
    for entry_id in range(5):
        index.add("p", entry_id, vectors[entry_id])
    index.remove(1)  # row 1 now holds entry 4, the last row
    assert len(index) == 4
    for entry_id in (0, 2, 3, 4):
        best, similarity = index.search("p", vectors[entry_id], 1)[0]
        assert best == entry_id
        assert similarity == pytest.approx(1.0, abs=1e-5)
    assert 1 not in {entry_id for entry_id, _ in index.search("p", vectors[1], 10)}
    index.remove(4)  # the entry that moved
    index.remove(3)  # now the last row
    index.remove(3)  # again: nothing to do
    index.remove(99)  # never added
    assert sorted(entry_id for entry_id, _ in index.search("p", vectors[0], 10)) == [0, 2]
    assert index.search("p", vectors[2], 1)[0][0] == 2


def test_removing_the_last_entry_drops_the_partition() -> None:
    index = VectorIndex(DIM)
    vector = random_units(1)[0]
    index.add("p", 1, vector)
    index.remove(1)
    assert len(index) == 0
    assert index.partitions == 0
    assert index.search("p", vector, 1) == []
    index.add("p", 1, vector)
    assert index.search("p", vector, 1)[0][0] == 1


def test_a_flat_partition_grows_past_its_first_allocation() -> None:
    index = VectorIndex(DIM, flat_limit=1000)
    vectors = random_units(100)
    for entry_id, vector in enumerate(vectors):
        index.add("p", entry_id, vector)
    for entry_id in (0, 15, 16, 17, 63, 99):
        assert index.search("p", vectors[entry_id], 1)[0][0] == entry_id


def test_re_adding_an_id_moves_it() -> None:
    index = VectorIndex(DIM)
    a, b, c = random_units(3)
    index.add("p", 1, a)
    index.add("p", 2, c)
    index.add("p", 1, b)  # same partition, new vector: replaced in place
    assert len(index) == 2
    assert index.search("p", b, 1)[0][0] == 1
    assert index.search("p", b, 1)[0][1] == pytest.approx(1.0, abs=1e-5)
    assert index.search("p", a, 2)[0][1] < 0.99
    index.add("q", 1, b)  # another partition: it leaves the first
    assert len(index) == 2
    assert [entry_id for entry_id, _ in index.search("p", b, 10)] == [2]
    assert index.search("q", b, 10)[0][0] == 1


@pytest.mark.parametrize("shape", [(DIM - 1,), (DIM + 1,), (1, DIM), ()])
def test_a_vector_of_the_wrong_dimension_is_refused(shape: tuple[int, ...]) -> None:
    index = VectorIndex(DIM)
    with pytest.raises(ValueError, match="expected a vector of 64"):
        index.add("p", 1, np.ones(shape, dtype=np.float32))
    assert len(index) == 0


def test_flat_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="flat_limit"):
        VectorIndex(DIM, flat_limit=0)


def test_promotion_to_hnsw_keeps_finding_the_exact_neighbours() -> None:
    limit, n = 64, 300
    index = VectorIndex(DIM, flat_limit=limit)
    vectors = random_units(n, seed=7)  # random in 64 dimensions: far apart from each other
    queries = unit(vectors + 0.05 * random_units(n, seed=8))  # each near its own vector
    scores = queries @ vectors.T
    assert (np.argmax(scores, axis=1) == np.arange(n)).all()

    def check(size: int) -> None:
        """The search over the first ``size`` vectors finds what an exact search does."""
        for i in range(size):
            found = index.search("p", queries[i], 3)
            assert found[0][0] == i
            best = np.sort(scores[i, :size])[::-1][:3]
            assert [s for _, s in found] == pytest.approx(best.tolist(), abs=2e-3)  # f16 graph

    for entry_id in range(limit):
        index.add("p", entry_id, vectors[entry_id])
        index.add("other", 1000 + entry_id, vectors[entry_id])
    assert "hnsw=0" in repr(index)
    check(limit)
    index.add("p", limit, vectors[limit])  # one past the limit
    assert "hnsw=1" in repr(index)  # only "p": "other" stays flat
    check(limit + 1)
    for entry_id in range(limit + 1, n):
        index.add("p", entry_id, vectors[entry_id])
    assert len(index) == n + limit
    check(n)
    assert {entry_id for entry_id, _ in index.search("p", queries[5], 50)} < set(range(n))


def test_remove_and_re_add_in_an_hnsw_partition() -> None:
    index = VectorIndex(DIM, flat_limit=8)
    vectors = random_units(40, seed=3)
    for entry_id in range(40):
        index.add("p", entry_id, vectors[entry_id])
    assert "hnsw=1" in repr(index)
    index.remove(7)
    assert len(index) == 39
    assert 7 not in {entry_id for entry_id, _ in index.search("p", vectors[7], 5)}
    index.add("p", 8, vectors[7])  # re-added with another vector: moved
    best, similarity = index.search("p", vectors[7], 1)[0]
    assert best == 8
    assert similarity == pytest.approx(1.0, abs=2e-3)
    assert index.search("p", vectors[8], 1)[0][1] < 0.9  # nothing is at its old place
    index.add("q", 9, vectors[9])  # to another partition: gone from the graph
    assert 9 not in {entry_id for entry_id, _ in index.search("p", vectors[9], 5)}
    [(found, similarity)] = index.search("q", vectors[9], 5)
    assert found == 9
    assert similarity == pytest.approx(1.0, abs=1e-5)
    index.clear()
    assert len(index) == 0
    assert index.partitions == 0
