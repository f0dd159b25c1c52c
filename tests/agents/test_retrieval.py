import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from surgeflow.agents.retrieval import (
    BM25Index,
    IntentClassifier,
    Tokenizer,
    most_probable,
    stem,
    tokenize,
)


@pytest.mark.parametrize(
    ("words", "shared"),
    [
        (["refund", "refunds", "refunded", "refunding"], "refund"),
        (["ship", "ships", "shipped", "shipping", "shipment"], "ship"),
        (["cancel", "canceled", "cancelled", "cancellation"], "cancel"),
        (["charge", "charges", "charged", "charging"], "charg"),
        (["delivery", "deliveries", "delivered"], "deliver"),
        (["box", "boxes"], "box"),
    ],
)
def test_stem_conflates_inflections(words: list[str], shared: str) -> None:
    assert {stem(word) for word in words} == {shared}


def test_stem_leaves_short_words_and_numbers_alone() -> None:
    assert [stem(w) for w in ["bus", "use", "2024", "ss"]] == ["bus", "use", "2024", "ss"]


def test_tokenize_lowercases_strips_punctuation_and_stopwords() -> None:
    assert tokenize("Where's MY order?! It hasn't arrived.") == ["wher", "order", "hasnt", "arriv"]
    assert tokenize("") == []
    assert tokenize("the and of, to!") == []


def test_tokenizer_applies_phrases_and_synonyms() -> None:
    tokenizer = Tokenizer(synonyms={"refund": ["reimburse"]}, phrases={r"money back": "refund"})
    assert tokenizer("I want my money back") == tokenizer("please reimburse me") == ["refund"]
    assert tokenizer("Reimbursed") == ["refund"]  # synonyms are matched after stemming


DOCS = [
    "How long does a refund take to reach my bank?",
    "Which payment methods do you accept?",
    "Shipping is free on orders over fifty dollars.",
    "Returns are accepted within thirty days.",
]


def test_bm25_ranks_the_document_with_the_query_term_first() -> None:
    hits = BM25Index(DOCS).search("payment methods", 4)
    assert hits[0][0] == 1
    assert all(doc != 1 for doc, _ in hits[1:])  # unrelated documents are not returned at all


def test_bm25_matches_across_inflections() -> None:
    assert BM25Index(DOCS).search("refunded", 1)[0][0] == 0
    assert BM25Index(DOCS).search("returning", 1)[0][0] == 3


def test_bm25_empty_or_unknown_query_returns_nothing() -> None:
    index = BM25Index(DOCS)
    assert index.search("", 5) == []
    assert index.search("the of and", 5) == []
    assert index.search("xylophone", 5) == []
    assert index.search("refund", 0) == []


def test_bm25_results_are_sorted_and_limited_to_k() -> None:
    hits = BM25Index(DOCS).search("refund shipping returns payment", 2)
    assert len(hits) == 2
    assert hits[0][1] >= hits[1][1] > 0


def test_bm25_rarer_terms_weigh_more() -> None:
    index = BM25Index(["apple banana", "apple cherry", "apple durian"])
    (best, _), *_ = index.search("apple cherry", 3)
    assert best == 1


def test_bm25_over_no_documents() -> None:
    index = BM25Index([])
    assert index.search("anything", 3) == []
    assert repr(index) == "<BM25Index docs=0 terms=0>"


@given(st.lists(st.text(max_size=40), max_size=8), st.text(max_size=40))
def test_bm25_scores_are_positive_and_descending(docs: list[str], query: str) -> None:
    hits = BM25Index(docs).search(query, 10)
    scores = [score for _, score in hits]
    assert all(score > 0 for score in scores)
    assert scores == sorted(scores, reverse=True)
    assert len({doc for doc, _ in hits}) == len(hits)


EXAMPLES = [
    ("where is my parcel", "track"),
    ("my package has not arrived", "track"),
    ("tracking number not working", "track"),
    ("I want my money back", "refund"),
    ("refund my order please", "refund"),
    ("when do I get my refund", "refund"),
]


def test_classifier_predicts_the_label_with_shared_words() -> None:
    classifier = IntentClassifier(EXAMPLES)
    assert classifier.predict("has my parcel arrived")[0] == "track"
    assert classifier.predict("refund status")[0] == "refund"


def test_classifier_unknown_words_give_the_prior() -> None:
    classifier = IntentClassifier([*EXAMPLES, ("one more tracking question", "track")])
    posterior = classifier.posterior("qwzx plok")
    assert posterior["track"] == pytest.approx(4 / 7)
    assert posterior["refund"] == pytest.approx(3 / 7)


def test_classifier_temperature_sharpens_the_posterior() -> None:
    flat = IntentClassifier(EXAMPLES, temperature=2.0).predict("where is my parcel")[1]
    sharp = IntentClassifier(EXAMPLES, temperature=0.5).predict("where is my parcel")[1]
    assert 0.5 < flat < sharp <= 1.0


@given(st.text(max_size=200))
def test_classifier_posterior_is_a_distribution(text: str) -> None:
    posterior = IntentClassifier(EXAMPLES).posterior(text)
    assert set(posterior) == {"track", "refund"}
    assert math.fsum(posterior.values()) == pytest.approx(1.0)
    assert all(0.0 <= p <= 1.0 for p in posterior.values())


def test_classifier_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="at least one"):
        IntentClassifier([])
    with pytest.raises(ValueError, match="must be > 0"):
        IntentClassifier(EXAMPLES, alpha=0)


def test_most_probable_breaks_ties_alphabetically() -> None:
    assert most_probable({"b": 0.5, "a": 0.5}) == ("a", 0.5)
    assert most_probable({"b": 0.7, "a": 0.3}) == ("b", 0.7)
