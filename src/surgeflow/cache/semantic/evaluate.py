"""Precision and recall of the semantic cache on labelled prompt pairs.

A pair is a cached prompt ``a``, a new prompt ``b`` and whether ``a``'s answer answers ``b``
(``hit``) or not (``miss``). For each threshold the cache serves ``a`` to ``b`` when their
similarity reaches it and every guard agrees; precision is the share of served pairs labelled
``hit``, recall the share of ``hit`` pairs served. The same is reported for cosine similarity
alone, which is what a semantic cache without guards does. Operators can run this on their own
pairs (`surgeflow cache eval-semantic`) to pick a threshold for their traffic.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from surgeflow.cache.semantic.embedder import Embedder, WordSimilarity
from surgeflow.cache.semantic.guards import Guards, features
from surgeflow.cache.semantic.index import Vector
from surgeflow.cache.semantic.judge import Judge, pair_features
from surgeflow.errors import ValidationError


@dataclass(frozen=True, slots=True)
class Pair:
    a: str
    b: str
    hit: bool
    kind: str = ""
    split: str = ""


@dataclass(frozen=True, slots=True)
class Scored:
    pair: Pair
    similarity: float
    refusal: str | None  # the guard that refused, or None
    accepted: bool  # what the cache decides above the similarity threshold


@dataclass(frozen=True, slots=True)
class Point:
    threshold: float
    precision: float
    recall: float
    served: int
    false_hits: int


@dataclass(slots=True)
class Evaluation:
    scored: list[Scored]
    guarded: list[Point] = field(default_factory=list)
    cosine_only: list[Point] = field(default_factory=list)

    def at(self, threshold: float, *, guards: bool = True) -> Point:
        return _point(self.scored, threshold, guards=guards)

    def false_hits(self, threshold: float) -> list[Scored]:
        """Look-alikes the guarded cache would serve at ``threshold``."""
        return [
            s for s in self.scored if not s.pair.hit and s.similarity >= threshold and s.accepted
        ]

    def missed(self, threshold: float) -> list[Scored]:
        """Paraphrases the guarded cache would not serve at ``threshold``."""
        return [
            s for s in self.scored if s.pair.hit and (s.similarity < threshold or not s.accepted)
        ]

    def refusals(self, threshold: float) -> Counter[tuple[str, str]]:
        """(kind, guard) counts of the pairs refused by a guard above ``threshold``."""
        return Counter(
            (s.pair.kind, s.refusal)
            for s in self.scored
            if s.refusal is not None and s.similarity >= threshold
        )


def load_pairs(path: str | Path, *, split: str | None = None) -> list[Pair]:
    """Pairs from a JSON-lines file: ``{"a", "b", "label": "hit"|"miss"}``, optional ``kind``
    and ``split``; only ``split``'s when given."""
    pairs = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            label = row["label"]
            if label not in ("hit", "miss"):
                raise ValueError(f"label must be 'hit' or 'miss', not {label!r}")
            pair = Pair(
                str(row["a"]),
                str(row["b"]),
                label == "hit",
                str(row.get("kind", "")),
                str(row.get("split", "")),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ValidationError(f"{path}:{number}: not a labelled pair: {exc}") from exc
        if split is None or pair.split == split:
            pairs.append(pair)
    return pairs


def evaluate(
    pairs: Sequence[Pair],
    embedder: Embedder,
    *,
    thresholds: Iterable[float] = (0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95),
    guards: Guards | None = None,
    judge: Judge | None = None,
) -> Evaluation:
    """Score every pair (synchronous: embeds on the calling thread). With a ``judge`` the cache
    serves what it accepts (`Judge.accepts`); without, what every guard accepts."""
    if guards is None:
        guards = Guards(word_similarity=WordSimilarity(embedder), vocabulary=embedder.vocabulary())
    texts = sorted({p.a for p in pairs} | {p.b for p in pairs})
    vectors: dict[str, Vector] = {}
    for start in range(0, len(texts), 64):
        chunk = texts[start : start + 64]
        vectors.update(zip(chunk, embedder.embed(chunk), strict=True))
    scored = []
    for pair in pairs:
        cached, query = features(pair.a), features(pair.b)
        refusal = guards.check(cached, query)
        if judge is None:
            accepted = refusal is None
        else:
            row = pair_features(vectors[pair.a], vectors[pair.b], cached, query, guards)
            accepted = judge.accepts(row, refusal)
        similarity = float(np.dot(vectors[pair.a], vectors[pair.b]))
        scored.append(Scored(pair, similarity, refusal, accepted))
    evaluation = Evaluation(scored)
    for threshold in thresholds:
        evaluation.guarded.append(_point(scored, threshold, guards=True))
        evaluation.cosine_only.append(_point(scored, threshold, guards=False))
    return evaluation


def _point(scored: Sequence[Scored], threshold: float, *, guards: bool) -> Point:
    served = [s for s in scored if s.similarity >= threshold and (not guards or s.accepted)]
    true_hits = sum(s.pair.hit for s in served)
    positives = sum(s.pair.hit for s in scored)
    return Point(
        threshold=threshold,
        precision=true_hits / len(served) if served else 1.0,
        recall=true_hits / positives if positives else 0.0,
        served=len(served),
        false_hits=len(served) - true_hits,
    )
