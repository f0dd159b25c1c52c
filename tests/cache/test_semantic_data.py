"""The labelled prompt pairs: every file well formed, each set balanced, the sets kept apart."""

import json
import re
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any

import pytest

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).parents[2]
FIELDS = {"id", "a", "b", "label", "kind", "split"}
KIND_LABEL = dict.fromkeys(("paraphrase", "paraphrase_hard"), "hit") | dict.fromkeys(
    ("numbers", "negation", "entity", "direction", "scope", "antonym"), "miss"
)
# file → (the splits it holds, the id pattern, fewest pairs of each label, fewest of a miss kind)
SETS = {
    "semantic_pairs.jsonl": ({"dev", "test"}, r"p\d{4}", 250, 40),
    "semantic_pairs_holdout.jsonl": ({"holdout"}, r"h\d{4}", 140, 20),
    "semantic_pairs_holdout2.jsonl": ({"holdout2"}, r"g\d{4}", 180, 30),
    "semantic_pairs_holdout3.jsonl": ({"holdout3"}, r"k\d{4}", 200, 33),
    **{f"train/{p.name}": ({"train"}, r"t[a-z]\d{4}", 250, 30) for p in DATA.glob("train/*")},
}


@cache
def rows(name: str) -> tuple[dict[str, Any], ...]:
    text = (DATA / name).read_text(encoding="utf-8")
    return tuple(json.loads(line) for line in text.splitlines())


def normalised(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", "", text.lower()).split())


def prompts(name: str) -> set[str]:
    return {normalised(row[side]) for row in rows(name) for side in "ab"}


@pytest.mark.parametrize("name", sorted(SETS))
def test_every_row_has_the_schema_and_a_label_matching_its_kind(name: str) -> None:
    splits, id_pattern, _, _ = SETS[name]
    assert rows(name), f"{name} is empty"
    for row in rows(name):
        assert set(row) == FIELDS, row
        assert all(isinstance(row[field], str) for field in FIELDS), row
        assert row["label"] == KIND_LABEL[row["kind"]], row
        assert row["split"] in splits, row
        assert re.fullmatch(id_pattern, row["id"]), row
        for side in "ab":
            assert 3 <= len(row[side].split()) <= 40, (row["id"], side)
            assert row[side] == row[side].strip(), (row["id"], side)


@pytest.mark.parametrize("name", sorted(SETS))
def test_ids_pairs_and_sides_are_distinct(name: str) -> None:
    assert not [i for i, n in Counter(r["id"] for r in rows(name)).items() if n > 1]
    assert not [p for p, n in Counter((r["a"], r["b"]) for r in rows(name)).items() if n > 1]
    assert not [r["id"] for r in rows(name) if r["a"] == r["b"]]


@pytest.mark.parametrize("name", sorted(SETS))
def test_each_set_is_balanced(name: str) -> None:
    splits, _, fewest_per_label, fewest_per_miss_kind = SETS[name]
    labels = Counter(row["label"] for row in rows(name))
    assert labels["hit"] >= fewest_per_label, labels
    assert labels["miss"] >= fewest_per_label, labels
    kinds = Counter(row["kind"] for row in rows(name))
    for kind, label in KIND_LABEL.items():
        if label == "miss":
            assert kinds[kind] >= fewest_per_miss_kind, (kind, kinds)
    for kind in KIND_LABEL:
        assert {r["split"] for r in rows(name) if r["kind"] == kind} == splits, kind


@pytest.mark.parametrize(
    ("later", "earlier"),
    [
        ("semantic_pairs_holdout.jsonl", ["semantic_pairs.jsonl"]),
        ("semantic_pairs_holdout2.jsonl", ["semantic_pairs.jsonl", "semantic_pairs_holdout.jsonl"]),
    ],
)
def test_a_hold_out_shares_no_prompt_with_the_sets_before_it(
    later: str, earlier: list[str]
) -> None:
    assert not prompts(later) & set().union(*(prompts(name) for name in earlier))


def test_the_shipped_judge_never_trained_on_the_sealed_hold_out() -> None:
    judge = json.loads((ROOT / "src/surgeflow/cache/semantic/data/judge.json").read_text())
    trained = judge["trained_on"]
    assert not any("holdout3" in name for name in trained["files"])
    sealed = prompts("semantic_pairs_holdout3.jsonl")
    pairs = [row for name in trained["files"] for row in rows(str(ROOT / name))]
    kept = [r for r in pairs if not {normalised(r["a"]), normalised(r["b"])} & sealed]
    assert len(kept) == trained["pairs"]
    assert (
        len(pairs) - len(kept) == trained["left_out_for_sharing_a_prompt_with_the_sealed_hold_out"]
    )
