"""The judge: its shipped weights fit the features this code computes, and it decides sensibly."""

import json
from pathlib import Path

import numpy as np
import pytest

from surgeflow.cache.semantic import Guards, OnnxEmbedder, WordSimilarity, features
from surgeflow.cache.semantic.judge import FEATURES_VERSION, Judge, pair_features
from surgeflow.errors import ConfigError


@pytest.fixture(scope="module")
def embedder() -> OnnxEmbedder:
    return OnnxEmbedder()


@pytest.fixture(scope="module")
def guards(embedder: OnnxEmbedder) -> Guards:
    return Guards(word_similarity=WordSimilarity(embedder), vocabulary=embedder.vocabulary())


def judge_pair(embedder: OnnxEmbedder, guards: Guards, a: str, b: str) -> bool:
    u, v = embedder.embed([a, b])
    cached, query = features(a), features(b)
    row = pair_features(u, v, cached, query, guards)
    return Judge.load().accepts(row, guards.check(cached, query))


def test_the_shipped_weights_fit_the_features(embedder: OnnxEmbedder, guards: Guards) -> None:
    judge = Judge.load()
    u, v = embedder.embed(["How do I reset my password?", "how can I reset my password?"])
    row = pair_features(u, v, features("a b"), features("a c"), guards)
    assert judge.weights.shape == judge.mean.shape == judge.scale.shape == row.shape
    assert 0 < judge.threshold < 1
    assert 0.0 <= judge.probability(row) <= 1.0


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("How do I cancel my gym membership?", "how can I cancel my gym membership please"),
        ("How long does shipping take?", "How long does shipping usually take?"),
        ("Convert 100 USD to EUR", "Convert 100 USD into euros"),
    ],
)
def test_rewordings_are_served(embedder: OnnxEmbedder, guards: Guards, a: str, b: str) -> None:
    assert judge_pair(embedder, guards, a, b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Convert 100 USD to EUR", "Convert 150 USD to EUR"),
        ("Convert 100 USD to EUR", "Convert 100 EUR to USD"),
        ("What is the capital of Austria?", "What is the capital of Australia?"),
        ("How do I speed up a video?", "How do I slow down a video?"),
        ("Which expenses are reimbursable?", "Which expenses are non-reimbursable?"),
    ],
)
def test_look_alikes_are_refused(embedder: OnnxEmbedder, guards: Guards, a: str, b: str) -> None:
    assert not judge_pair(embedder, guards, a, b)


def test_weights_of_another_feature_version_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "judge.json"
    path.write_text(json.dumps({"features_version": FEATURES_VERSION + 1}))
    with pytest.raises(ConfigError, match="retrain"):
        Judge.load(path)


def test_a_judge_can_be_loaded_from_a_file(tmp_path: Path) -> None:
    shipped = Judge.load()
    path = tmp_path / "judge.json"
    path.write_text(
        json.dumps(
            {
                "features_version": FEATURES_VERSION,
                "mean": shipped.mean.tolist(),
                "scale": shipped.scale.tolist(),
                "weights": np.zeros_like(shipped.weights).tolist(),
                "bias": 0.0,
                "threshold": 0.4,
            }
        )
    )
    judge = Judge.load(path)
    assert judge.probability(shipped.mean) == pytest.approx(0.5)
