"""The judge: a small learned model that decides whether a cached prompt answers a new one.

The guards' word lists catch what they list and miss the rest; tuned on one labelled set they
reached precision 0.92 on pairs written later (decision 0007). The judge learns the decision from
labelled pairs instead: logistic regression over two dozen numbers that describe the pair — the
prompts' cosine similarity, their content-word overlap, which guard would refuse, how many
content words each side has that the other does not stand for, whether those are scope words,
opposites, names, words a preposition attaches or words the model does not know, and how close
(by word embedding) the unmatched words of one side are to the other's. The hard guards
(numbers, negation, direction) still refuse on their own: a different number is never a
paraphrase. (The embeddings themselves, |u − v| and u ⊙ v, were tried as features too: with a
few thousand pairs they overfit, and cross-validated recall at precision 0.97 fell from 0.77 to
0.42.)

Weights, the feature scaling and the decision threshold ship in ``data/judge.json``, written by
``scripts/train_semantic_judge.py`` from the pairs under ``tests/cache/data``; a change to the
features bumps `FEATURES_VERSION`, and the judge refuses to load weights of another version.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import numpy.typing as npt

from surgeflow.cache.semantic import lexicon
from surgeflow.cache.semantic.guards import GUARDS, Features, Guards, stem
from surgeflow.errors import ConfigError

FEATURES_VERSION = 1
HARD_GUARDS = frozenset({"numbers", "negation", "direction", "opposite"})
_UNMATCHED = 5  # where pair_features puts the number of unmatched content words

Array = npt.NDArray[np.float64]


def pair_features(
    cached_vector: npt.NDArray[np.float32],
    query_vector: npt.NDArray[np.float32],
    cached: Features,
    query: Features,
    guards: Guards,
) -> Array:
    """The judge's input for one pair (`FEATURES_VERSION` names this layout)."""
    similarity = float(cached_vector.astype(np.float64) @ query_vector.astype(np.float64))
    refusal = guards.check(cached, query)
    unmatched_a, unmatched_b = guards.unmatched(cached, query)
    unmatched = unmatched_a + unmatched_b
    content_a, content_b = set(cached.content), set(query.content)
    overlap = len(content_a & content_b) / max(1, len(content_a | content_b))
    insertion = bool(unmatched_a) != bool(unmatched_b)
    substitution = bool(unmatched_a) and bool(unmatched_b)
    scope = any(word in lexicon.SCOPE for word in unmatched)
    opposite = any(guards.has_opposite(word) for word in unmatched)
    named = sum(stem(w) in cached.entities for w in unmatched_a) + sum(
        stem(w) in query.entities for w in unmatched_b
    )
    qualified = any(stem(w) in query.qualifiers for w in unmatched_b) or any(
        stem(w) in cached.qualifiers for w in unmatched_a
    )
    scalars = [
        similarity,
        overlap,
        len(unmatched_a),
        len(unmatched_b),
        min(len(unmatched_a), len(unmatched_b)),
        len(unmatched),  # _UNMATCHED
        float(cached.numbers != query.numbers),
        float(cached.negations != query.negations),
        *(float(refusal == name) for name in GUARDS),
        float(refusal is None),
        float(cached.entities != query.entities),
        float(scope),
        float(opposite),
        float(qualified),
        _closest(unmatched_a, unmatched_b, guards),
        float(sum(word not in guards.vocabulary for word in unmatched)),
        float(named),
        # What changed matters more when little else did: the same flags on small edits.
        float(insertion),
        float(substitution),
        float(insertion and (scope or opposite or qualified or named > 0)),
        float(substitution and len(unmatched) <= 4),
        float(substitution) * similarity,
        float(insertion) * overlap,
        float(len(unmatched) <= 2 and (scope or qualified)),
    ]
    return np.array(scalars, dtype=np.float64)


@dataclass(frozen=True, slots=True)
class Judge:
    """Logistic regression over `pair_features`; ``threshold`` is the probability to serve at."""

    mean: Array
    scale: Array
    weights: Array
    bias: float
    threshold: float

    @classmethod
    def load(cls, path: str | Path | None = None) -> Judge:
        """The judge shipped with surgeflow, or one trained elsewhere (``path``)."""
        if path is None:
            text = resources.files("surgeflow.cache.semantic").joinpath("data/judge.json")
            raw = json.loads(text.read_text(encoding="utf-8"))
        else:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        if raw.get("features_version") != FEATURES_VERSION:
            raise ConfigError(
                f"the semantic judge was trained on features version "
                f"{raw.get('features_version')!r}, this surgeflow computes {FEATURES_VERSION}: "
                "retrain it with scripts/train_semantic_judge.py"
            )
        return cls(
            mean=np.array(raw["mean"], dtype=np.float64),
            scale=np.array(raw["scale"], dtype=np.float64),
            weights=np.array(raw["weights"], dtype=np.float64),
            bias=float(raw["bias"]),
            threshold=float(raw["threshold"]),
        )

    def probability(self, features: Array) -> float:
        """How likely the cached answer answers the query, in [0, 1]."""
        z = float(((features - self.mean) / self.scale) @ self.weights + self.bias)
        return float(1.0 / (1.0 + np.exp(-z)))

    def accepts(self, features: Array, refusal: str | None) -> bool:
        """Serve a pure rewording (no guard refuses, no content word unmatched: the two prompts
        differ only in framing, spelling or order); refuse what a hard guard refuses; serve the
        rest when the probability reaches the threshold."""
        if refusal is None and rewording(features):
            return True
        if refusal in HARD_GUARDS:
            return False
        return self.probability(features) >= self.threshold


def rewording(features: Array) -> bool:
    """No content word on either side lacks a counterpart on the other (from `pair_features`)."""
    return bool(features[_UNMATCHED] == 0)


def _closest(words_a: list[str], words_b: list[str], guards: Guards) -> float:
    """How close, on average, each word only one side has is to its nearest counterpart on the
    other side (word embeddings): near 1 for a synonym swap, lower for a different thing; 0
    when there is nothing to compare."""
    similarity = guards.word_similarity
    if similarity is None or not words_a or not words_b:
        return 0.0
    return sum(max(similarity(a, b) for b in words_b) for a in words_a) / len(words_a)
