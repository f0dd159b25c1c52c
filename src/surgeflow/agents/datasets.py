"""The JSON data shipped with the example agents, typed and loaded once per process."""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

import msgspec


class FaqEntry(msgspec.Struct, frozen=True):
    """One knowledge-base article: the question it answers, other ways customers ask it, and the
    store's answer."""

    id: str
    intent: str
    question: str
    answer: str
    phrasings: tuple[str, ...] = ()


class Utterance(msgspec.Struct, frozen=True):
    """A customer message labelled with its intent."""

    text: str
    intent: str


class FaqQuery(msgspec.Struct, frozen=True):
    """A customer message labelled with the FAQ entry that answers it."""

    query: str
    faq_id: str


class Product(msgspec.Struct, frozen=True):
    """A catalogue item; ``price`` in dollars, ``rating`` out of 5."""

    id: str
    name: str
    category: str
    tags: list[str]
    price: float
    rating: float
    description: str


class Profile(msgspec.Struct, frozen=True):
    """A shopper; ``budget`` is the most they usually spend on one item, in dollars."""

    id: str
    name: str
    interests: list[str]
    favourite_categories: list[str]
    budget: float
    purchased: list[str]


class RelevantProducts(msgspec.Struct, frozen=True):
    """The products a sensible recommender should surface for a user (judged by hand)."""

    user_id: str
    relevant: list[str]


def _load(name: str, kind: Any) -> tuple[Any, ...]:
    raw = resources.files("surgeflow.agents").joinpath("data", name).read_bytes()
    return tuple(msgspec.json.decode(raw, type=list[kind]))


# functools.cache makes each file a lazily built, process-wide singleton: the first caller pays
# a few milliseconds of file I/O and decoding, every later one gets the same tuple.


@functools.cache
def faq() -> tuple[FaqEntry, ...]:
    """The Surge Store knowledge base."""
    return _load("faq.json", FaqEntry)


@functools.cache
def intents_train() -> tuple[Utterance, ...]:
    """Labelled utterances the intent classifier learns from."""
    return _load("intents_train.json", Utterance)


@functools.cache
def intents_test() -> tuple[Utterance, ...]:
    """Held-out labelled utterances, for measuring the classifier only."""
    return _load("intents_test.json", Utterance)


@functools.cache
def faq_test() -> tuple[FaqQuery, ...]:
    """Held-out queries with the FAQ entry that answers each, for measuring retrieval only."""
    return _load("faq_test.json", FaqQuery)


@functools.cache
def faq_dev() -> tuple[FaqQuery, ...]:
    """Queries with the FAQ entry that answers each, for choosing retrieval settings and
    phrasings; `faq_test` stays for measuring the result."""
    return _load("faq_dev.json", FaqQuery)


@functools.cache
def products() -> tuple[Product, ...]:
    """The product catalogue."""
    return _load("products.json", Product)


@functools.cache
def profiles() -> tuple[Profile, ...]:
    """The shopper profiles."""
    return _load("profiles.json", Profile)


@functools.cache
def recommend_test() -> tuple[RelevantProducts, ...]:
    """Hand-judged relevant products per user, for measuring recommendations only."""
    return _load("recommend_test.json", RelevantProducts)
