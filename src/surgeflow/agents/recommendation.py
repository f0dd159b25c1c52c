"""The recommendation agent: load a profile, search, score candidates in parallel, rank, explain."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Annotated

import msgspec

from surgeflow.agents import datasets
from surgeflow.agents.datasets import Product, Profile
from surgeflow.agents.retrieval import BM25Index, tokenize
from surgeflow.errors import NotFound
from surgeflow.workflow import Context, Map, Workflow, step

CANDIDATES = 20
# What the shopper asks for in this request counts twice what their standing interests do.
QUERY_WEIGHT = 2.0
WEIGHTS = {"relevance": 0.45, "affinity": 0.25, "price": 0.20, "rating": 0.10}


class RecommendationRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Whom to recommend to, an optional request in their words, and how many picks."""

    user_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
    query: Annotated[str, msgspec.Meta(min_length=1, max_length=500)] | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=10)] = 3


class Candidate(msgspec.Struct):
    """A product found for the shopper; ``relevance`` is its search score over the best one's."""

    product: Product
    relevance: float


class Pick(msgspec.Struct):
    """A scored product and the reasons behind its score."""

    id: str
    name: str
    score: float
    reasons: list[str]


class Recommendations(msgspec.Struct):
    """The best picks for a user, best first, with a model-written explanation."""

    user_id: str
    picks: list[Pick]
    explanation: str


class Catalogue:
    """The products with their search index and the shopper profiles, built once per process."""

    __slots__ = ("_profiles", "index", "products")

    def __init__(self, products: Sequence[Product], profiles: Sequence[Profile]) -> None:
        self.products = tuple(products)
        self.index = BM25Index([_text(p) for p in self.products])
        self._profiles = {profile.id: profile for profile in profiles}

    def profile(self, user_id: str) -> Profile:
        """The profile of ``user_id``, or `NotFound`."""
        try:
            return self._profiles[user_id]
        except KeyError:
            raise NotFound(f"unknown user {user_id!r}: there is no profile with that id") from None

    def candidates(self, profile: Profile, query: str | None = None) -> list[Candidate]:
        """Up to `CANDIDATES` products for ``profile``, never one already bought.

        Products matching the interests (and, weighted by `QUERY_WEIGHT`, the query) come
        first; when too few match, favourite-category products fill up, best rated first.
        """
        everything = len(self.products)
        raw = dict(self.index.search(" ".join(profile.interests), everything))
        if query:
            for doc, score in self.index.search(query, everything):
                raw[doc] = raw.get(doc, 0.0) + QUERY_WEIGHT * score
        bought = set(profile.purchased)
        ranked = sorted(raw, key=lambda doc: (-raw[doc], doc))
        chosen = [doc for doc in ranked if self.products[doc].id not in bought][:CANDIDATES]
        if len(chosen) < CANDIDATES:
            favourites = set(profile.favourite_categories)
            fill = [
                doc
                for doc, p in enumerate(self.products)
                if p.category in favourites and p.id not in bought and doc not in raw
            ]
            fill.sort(key=lambda doc: (-self.products[doc].rating, doc))
            chosen += fill[: CANDIDATES - len(chosen)]
        best = max((raw.get(doc, 0.0) for doc in chosen), default=0.0) or 1.0
        return [Candidate(self.products[doc], round(raw.get(doc, 0.0) / best, 4)) for doc in chosen]

    def __repr__(self) -> str:
        return f"<Catalogue products={len(self.products)} profiles={len(self._profiles)}>"


def _text(product: Product) -> str:
    return f"{product.name} {' '.join(product.tags)} {product.description}"


@functools.cache
def catalogue() -> Catalogue:
    """The process-wide catalogue, built on first use."""
    return Catalogue(datasets.products(), datasets.profiles())


def score_product(candidate: Candidate, profile: Profile, query: str | None = None) -> Pick:
    """Score one candidate in [0, 1] and say why.

    ``score = 0.45 relevance + 0.25 affinity + 0.20 price_fit + 0.10 quality`` where relevance
    is the candidate's search score relative to the best candidate's, affinity 1 for a favourite
    category (else 0), price_fit 1 within budget and falling linearly to 0 at twice the budget,
    and quality the rating mapped from 3-5 stars onto 0-1. Relevance weighs most because it is the
    only term that knows what the shopper likes; rating least because nearly everything is 4+.
    """
    product = candidate.product
    affinity = 1.0 if product.category in profile.favourite_categories else 0.0
    over_budget = max(0.0, product.price - profile.budget)
    price_fit = max(0.0, 1.0 - over_budget / profile.budget) if profile.budget > 0 else 0.0
    quality = min(1.0, max(0.0, (product.rating - 3.0) / 2.0))
    score = (
        WEIGHTS["relevance"] * candidate.relevance
        + WEIGHTS["affinity"] * affinity
        + WEIGHTS["price"] * price_fit
        + WEIGHTS["rating"] * quality
    )
    words = set(tokenize(_text(product)))
    reasons = [
        f"matches your interest in {interest}"
        for interest in profile.interests
        if words.intersection(tokenize(interest))
    ]
    if query and words.intersection(tokenize(query)):
        reasons.append(f"fits what you asked for: {query!r}")
    if affinity:
        reasons.append(f"from {product.category}, one of your favourite categories")
    if over_budget:
        reasons.append(f"${product.price:.0f}, ${over_budget:.0f} over your usual budget")
    else:
        reasons.append(f"${product.price:.0f}, within your ${profile.budget:.0f} budget")
    if product.rating >= 4.5:
        reasons.append(f"highly rated ({product.rating}/5)")
    return Pick(product.id, product.name, round(score, 4), reasons)


def explain_messages(profile: Profile, picks: Sequence[Pick]) -> list[dict[str, str]]:
    """The chat messages asking the model to explain ``picks`` to the shopper."""
    lines = "\n".join(f"{n}. {p.name}: {'; '.join(p.reasons)}" for n, p in enumerate(picks, 1))
    system = (
        "You are the shopping assistant of Surge Store. In two or three friendly sentences, tell "
        "the customer why these products were picked for them. Use only the facts given."
    )
    interests = ", ".join(profile.interests)
    user = f"Customer: {profile.name}, interested in {interests}.\nPicks:\n{lines}"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def recommendation(model: str = "sim-small") -> Workflow:
    """The recommendation workflow, explaining its picks with ``model``."""
    shop = catalogue()  # built here, at definition time, not inside a run

    @step
    async def load_profile(ctx: Context) -> Profile:
        return shop.profile(ctx.input.user_id)

    @step
    async def retrieve_candidates(ctx: Context) -> list[Candidate]:
        return shop.candidates(ctx["load_profile"], ctx.input.query)

    @step
    async def score(ctx: Context) -> Pick:
        return score_product(ctx.item, ctx["load_profile"], ctx.input.query)

    @step
    async def rank(ctx: Context) -> list[Pick]:
        picks: list[Pick] = ctx["score"]
        return sorted(picks, key=lambda pick: (-pick.score, pick.id))[: ctx.input.limit]

    def prompt(ctx: Context) -> list[dict[str, str]]:
        return explain_messages(ctx["load_profile"], ctx["rank"])

    @step(timeout_s=30, retries=2, cache=True, cache_key=lambda ctx: [model, prompt(ctx)])
    async def explain(ctx: Context) -> str:
        if not ctx["rank"]:
            return "We could not find products for you yet; tell us what you are looking for."
        return await ctx.model_client.complete(model, prompt(ctx), temperature=0.3, max_tokens=200)

    return Workflow(
        "recommendation",
        [
            load_profile,
            retrieve_candidates,
            Map(score, over=lambda ctx: ctx["retrieve_candidates"], concurrency=8),
            rank,
            explain,
        ],
        input=RecommendationRequest,
        output=lambda ctx: Recommendations(ctx.input.user_id, ctx["rank"], ctx["explain"]),
        description="Recommends Surge Store products to a shopper and explains why.",
    )
