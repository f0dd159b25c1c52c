"""Precision and recall of the guarded semantic cache on the labelled pairs."""

import json
from pathlib import Path

import pytest

from surgeflow.cache.semantic import DEFAULT_THRESHOLD, OnnxEmbedder
from surgeflow.cache.semantic.evaluate import Evaluation, evaluate, load_pairs
from surgeflow.cache.semantic.judge import Judge
from surgeflow.errors import ValidationError

PAIRS = Path(__file__).parent.parent / "data" / "semantic_pairs.jsonl"


@pytest.fixture(scope="module")
def evaluation() -> Evaluation:
    pairs = load_pairs(PAIRS, split="test")
    assert len(pairs) == 315
    return evaluate(pairs, OnnxEmbedder(), thresholds=[DEFAULT_THRESHOLD])


def test_guarded_precision_at_the_default_threshold(evaluation: Evaluation) -> None:
    guarded = evaluation.at(DEFAULT_THRESHOLD)
    false_hits = [(s.pair.a, s.pair.b) for s in evaluation.false_hits(DEFAULT_THRESHOLD)]
    assert guarded.precision >= 0.97, false_hits


def test_the_guards_beat_cosine_similarity_alone(evaluation: Evaluation) -> None:
    guarded = evaluation.at(DEFAULT_THRESHOLD)
    cosine_only = evaluation.at(DEFAULT_THRESHOLD, guards=False)
    assert guarded.precision - cosine_only.precision >= 0.3
    assert guarded.false_hits < cosine_only.false_hits


def test_guarded_recall_at_the_default_threshold(evaluation: Evaluation) -> None:
    # A floor against regressions, not the goal: the target is recall >= 0.6 at
    # precision >= 0.97, which the guarded cache does not reach yet on this split (0.587 at the
    # default threshold, 0.594 at best, when this test was written; benchmarks/RESULTS.md).
    assert evaluation.at(DEFAULT_THRESHOLD).recall >= 0.4


def test_every_refusal_is_by_a_known_guard(evaluation: Evaluation) -> None:
    refusals = evaluation.refusals(DEFAULT_THRESHOLD)
    assert refusals
    assert {guard for _, guard in refusals} <= {
        "numbers",
        "negation",
        "direction",
        "opposite",
        "scope",
        "content",
        "entity",
    }


GOOD = {"a": "How do I boil an egg?", "b": "Egg boiling: how?", "label": "hit"}


@pytest.mark.parametrize(
    "bad_line",
    [
        "{not json",
        json.dumps({"a": "only one prompt", "label": "hit"}),
        json.dumps({**GOOD, "label": "maybe"}),
        json.dumps({"b": "no a", "a_prompt": "x", "label": "miss"}),
        json.dumps(["a", "b", "hit"]),
    ],
)
def test_load_pairs_names_the_malformed_line(tmp_path: Path, bad_line: str) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text(f"{json.dumps(GOOD)}\n\n{bad_line}\n{json.dumps(GOOD)}\n", encoding="utf-8")
    with pytest.raises(ValidationError, match=r"pairs\.jsonl:3: not a labelled pair"):
        load_pairs(path)


def test_load_pairs_reads_kind_and_split(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    rows = [
        {**GOOD, "kind": "paraphrase", "split": "dev"},
        {"a": "Is 5 > 3?", "b": "Is 3 > 5?", "label": "miss", "kind": "direction", "split": "test"},
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    everything = load_pairs(path)
    assert [(p.hit, p.kind, p.split) for p in everything] == [
        (True, "paraphrase", "dev"),
        (False, "direction", "test"),
    ]
    assert [p.a for p in load_pairs(path, split="test")] == ["Is 5 > 3?"]


HOLDOUT = Path(__file__).parent.parent / "data" / "semantic_pairs_holdout.jsonl"


def test_on_the_hold_out_set_the_guards_keep_most_look_alikes_out() -> None:
    # The hold-out pairs were written after the guards and never used to tune them: these are
    # the honest figures (precision 0.917, recall 0.344 when written; benchmarks/RESULTS.md §9),
    # short of the target. The bounds are floors against regressions.
    holdout = evaluate(load_pairs(HOLDOUT), OnnxEmbedder(), thresholds=[DEFAULT_THRESHOLD])
    guarded = holdout.at(DEFAULT_THRESHOLD)
    cosine_only = holdout.at(DEFAULT_THRESHOLD, guards=False)
    assert guarded.precision >= 0.9
    assert guarded.precision - cosine_only.precision >= 0.3
    assert guarded.recall >= 0.3


HOLDOUT3 = Path(__file__).parent.parent / "data" / "semantic_pairs_holdout3.jsonl"


def test_the_judge_meets_the_target_on_the_sealed_hold_out() -> None:
    # The target: precision >= 0.97 at recall >= 0.6 on hard look-alikes. Measured once
    # on this set, sealed until the judge was trained: precision 0.984 at recall 0.615
    # (benchmarks/RESULTS.md §9). Embeddings are the same on every CPU (int8 weights, fp32
    # arithmetic), so the figures are reproducible.
    pairs = load_pairs(HOLDOUT3)
    embedder = OnnxEmbedder()
    judged = evaluate(pairs, embedder, thresholds=[DEFAULT_THRESHOLD], judge=Judge.load())
    rules = evaluate(pairs, embedder, thresholds=[DEFAULT_THRESHOLD])
    served = judged.at(DEFAULT_THRESHOLD)
    assert served.precision >= 0.97
    assert served.recall >= 0.6
    assert served.recall > rules.at(DEFAULT_THRESHOLD).recall + 0.2
    assert judged.at(DEFAULT_THRESHOLD, guards=False).precision < 0.55  # cosine alone
