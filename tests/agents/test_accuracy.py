"""Accuracy of the example agents' methods on the held-out sets shipped in agents/data."""

from collections.abc import Sequence

from surgeflow.agents import datasets
from surgeflow.agents.customer_service import ESCALATION_CONFIDENCE, support_knowledge
from surgeflow.agents.datasets import FaqQuery
from surgeflow.agents.recommendation import catalogue, score_product

# Each floor is the figure measured when the methods were fixed, less a small margin, so a change
# that makes a method worse fails here while a change of one borderline example does not.
# Measured: intents 0.900 (54/60); FAQ top-1 0.932 (41/44), top-3 0.977 (43/44); answered at
# the escalation threshold 0.929 (52/56); recommendations precision@3 0.917, hit rate 1.0.
# The FAQ figures rose from top-1 0.818, top-3 0.932 when the entries got their phrasings,
# which were chosen on the development queries (top-1 0.716 -> 0.830). Their writer had read
# the held-out queries before, so the held-out gain may flatter them; the development one is
# the figure to trust.


def test_held_out_sets_are_disjoint_from_training() -> None:
    train = {u.text.lower() for u in datasets.intents_train()}
    entries = datasets.faq()
    questions = {text.lower() for e in entries for text in (e.question, *e.phrasings)}
    assert not (train | questions) & {u.text.lower() for u in datasets.intents_test()}
    for queries in (datasets.faq_test(), datasets.faq_dev()):
        assert not (train | questions) & {q.query.lower() for q in queries}
    assert not {q.query.lower() for q in datasets.faq_test()} & {
        q.query.lower() for q in datasets.faq_dev()
    }


def test_held_out_sets_cover_every_intent_and_entry() -> None:
    intents = {e.intent for e in datasets.faq()}
    assert {u.intent for u in datasets.intents_test()} == intents
    assert {u.intent for u in datasets.intents_train()} == intents
    assert {q.faq_id for q in datasets.faq_test()} <= {e.id for e in datasets.faq()}
    assert {q.faq_id for q in datasets.faq_dev()} == {e.id for e in datasets.faq()}


def test_intent_accuracy() -> None:
    knowledge = support_knowledge()
    test = datasets.intents_test()
    correct = sum(knowledge.classify(u.text).intent == u.intent for u in test)
    assert correct / len(test) >= 0.85


def test_confident_intents_are_more_accurate() -> None:
    knowledge = support_knowledge()
    outcomes = [(knowledge.classify(u.text), u.intent) for u in datasets.intents_test()]
    answered = [c.intent == gold for c, gold in outcomes if c.confidence >= ESCALATION_CONFIDENCE]
    assert len(answered) >= 0.85 * len(outcomes)
    assert sum(answered) / len(answered) >= 0.9


def _faq_ranks(queries: Sequence[FaqQuery] = ()) -> list[list[str]]:
    knowledge = support_knowledge()
    ranks = []
    for query in queries or datasets.faq_test():
        posterior = knowledge.classify(query.query).posterior
        ranks.append([m.id for m in knowledge.retrieve(query.query, posterior, k=3)])
    return ranks


def test_faq_retrieval_top_1() -> None:
    expected = [q.faq_id for q in datasets.faq_test()]
    hits = sum(ids[:1] == [want] for ids, want in zip(_faq_ranks(), expected, strict=True))
    assert hits / len(expected) >= 0.88


def test_faq_retrieval_top_3() -> None:
    expected = [q.faq_id for q in datasets.faq_test()]
    hits = sum(want in ids for ids, want in zip(_faq_ranks(), expected, strict=True))
    assert hits / len(expected) >= 0.93


def test_faq_retrieval_on_the_development_queries() -> None:
    queries = datasets.faq_dev()
    ranks = _faq_ranks(queries)
    assert sum(ids[:1] == [q.faq_id] for ids, q in zip(ranks, queries, strict=True)) >= 0.78 * len(
        queries
    )
    assert sum(q.faq_id in ids for ids, q in zip(ranks, queries, strict=True)) >= 0.9 * len(queries)


def test_intent_boost_helps_retrieval() -> None:
    knowledge = support_knowledge()
    queries = datasets.faq_test() + datasets.faq_dev()
    plain = sum(knowledge.retrieve(q.query, {}, k=1)[0].id == q.faq_id for q in queries)
    ranks = _faq_ranks(queries)
    boosted = sum(ids[:1] == [q.faq_id] for ids, q in zip(ranks, queries, strict=True))
    assert boosted > plain


def _top_picks(user_id: str, limit: int = 3) -> list[str]:
    shop = catalogue()
    profile = shop.profile(user_id)
    picks = [score_product(c, profile) for c in shop.candidates(profile)]
    picks.sort(key=lambda pick: (-pick.score, pick.id))
    return [pick.id for pick in picks[:limit]]


def test_recommendation_precision_and_hit_rate_at_3() -> None:
    labels = datasets.recommend_test()
    found = [len(set(label.relevant) & set(_top_picks(label.user_id))) for label in labels]
    assert sum(n / 3 for n in found) / len(labels) >= 0.85
    assert sum(n > 0 for n in found) / len(labels) >= 0.9


def test_relevance_labels_respect_the_profiles() -> None:
    shop = catalogue()
    prices = {p.id: p.price for p in shop.products}
    for label in datasets.recommend_test():
        profile = shop.profile(label.user_id)
        assert not set(label.relevant) & set(profile.purchased)
        assert all(prices[pid] <= profile.budget for pid in label.relevant)
