import importlib
from typing import Any

import pytest

from surgeflow.agents import datasets
from surgeflow.agents.datasets import Product, Profile
from surgeflow.agents.recommendation import (
    CANDIDATES,
    Candidate,
    Catalogue,
    Recommendations,
    catalogue,
    recommendation,
    score_product,
)
from surgeflow.errors import NotFound, StepError, ValidationError
from surgeflow.workflow import StepEvent

from .conftest import ForbiddenModels, RecordingModels

# The package exports the factory function under the module's name, so fetch the module itself.
recommendation_module = importlib.import_module("surgeflow.agents.recommendation")


async def test_recommends_limit_picks_best_first(models: RecordingModels) -> None:
    out = await recommendation("m-test").run({"user_id": "u01", "limit": 4}, models=models)
    assert isinstance(out, Recommendations)
    assert out.user_id == "u01"
    assert len(out.picks) == 4
    scores = [pick.score for pick in out.picks]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert all(pick.reasons for pick in out.picks)
    assert out.explanation == models.reply
    [(model, _, _)] = models.calls
    assert model == "m-test"
    for pick in out.picks:
        assert pick.name in models.prompt_text()


@pytest.mark.parametrize("user_id", ["u01", "u02"])
async def test_map_scores_every_candidate(models: RecordingModels, user_id: str) -> None:
    events: list[StepEvent] = []
    await recommendation().run({"user_id": user_id}, models=models, on_event=events.append)
    scored = {e.step for e in events if e.type == "step.finished" and e.step[:6] == "score["}
    count = len(catalogue().candidates(catalogue().profile(user_id)))
    assert 3 < count <= CANDIDATES
    assert scored == {f"score[{i}]" for i in range(count)}


@pytest.mark.parametrize("profile", datasets.profiles(), ids=lambda p: p.id)
async def test_purchased_products_are_never_recommended(profile: Profile) -> None:
    out = await recommendation().run({"user_id": profile.id, "limit": 10}, models=RecordingModels())
    assert out.picks
    assert not {pick.id for pick in out.picks} & set(profile.purchased)
    candidates = catalogue().candidates(profile, "anything at all")
    assert not {c.product.id for c in candidates} & set(profile.purchased)


async def test_query_steers_the_picks(models: RecordingModels) -> None:
    plain = await recommendation().run({"user_id": "u08", "limit": 1}, models=models)
    asked = await recommendation().run(
        {"user_id": "u08", "query": "vinyl turntable", "limit": 1}, models=models
    )
    assert plain.picks[0].id != "p007"
    assert asked.picks[0].id == "p007"
    assert any("vinyl turntable" in reason for reason in asked.picks[0].reasons)


async def test_unknown_user_is_a_clear_error() -> None:
    with pytest.raises(StepError, match="unknown user 'nobody'") as caught:
        await recommendation().run({"user_id": "nobody"}, models=ForbiddenModels())
    assert caught.value.step == "load_profile"
    assert isinstance(caught.value.__cause__, NotFound)


@pytest.mark.parametrize(
    "payload",
    [
        {"user_id": "u01", "limit": 0},
        {"user_id": "u01", "limit": 11},
        {"user_id": ""},
        {"user_id": "u01; DROP TABLE"},
        {"user_id": "u01", "query": ""},
        {"limit": 3},
    ],
)
async def test_invalid_input_is_a_validation_error(payload: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="recommendation"):
        await recommendation().run(payload, models=ForbiddenModels())


async def test_resume_from_checkpoints_calls_no_model(models: RecordingModels) -> None:
    checkpoints: dict[str, bytes] = {}

    async def save(key: str, value: bytes) -> None:
        checkpoints[key] = value

    payload = {"user_id": "u05", "query": "sunscreen", "limit": 2}
    first = await recommendation().run(payload, models=models, on_checkpoint=save)
    expected = {"load_profile", "retrieve_candidates", "score[0]", "rank", "explain"}
    assert expected <= set(checkpoints)
    again = await recommendation().run(payload, models=ForbiddenModels(), checkpoints=checkpoints)
    assert again == first
    assert len(models.calls) == 1


def _product(**changes: Any) -> Product:
    fields: dict[str, Any] = {
        "id": "x1",
        "name": "Thing",
        "category": "kitchen",
        "tags": ["coffee"],
        "price": 50.0,
        "rating": 5.0,
        "description": "A thing.",
    }
    return Product(**(fields | changes))


PROFILE = Profile("u", "U", ["coffee"], ["kitchen"], 100.0, [])


def test_score_formula() -> None:
    best = score_product(Candidate(_product(), 1.0), PROFILE)
    assert best.score == pytest.approx(1.0)
    assert "matches your interest in coffee" in best.reasons
    off_category = score_product(Candidate(_product(category="books"), 1.0), PROFILE)
    assert off_category.score == pytest.approx(0.75)
    double_budget = score_product(Candidate(_product(price=200.0), 1.0), PROFILE)
    assert double_budget.score == pytest.approx(0.80)
    assert "$100 over your usual budget" in " ".join(double_budget.reasons)
    three_stars = score_product(Candidate(_product(rating=3.0), 0.5), PROFILE)
    assert three_stars.score == pytest.approx(0.45 * 0.5 + 0.25 + 0.20)


def test_candidates_fill_up_from_favourite_categories() -> None:
    products = [
        _product(id="a", tags=["coffee"]),
        _product(id="b", tags=["tea"], rating=4.0),
        _product(id="c", tags=["tea"], rating=4.9),
        _product(id="d", tags=["tea"], category="books"),
    ]
    profile = Profile("u", "U", ["coffee"], ["kitchen"], 100.0, ["b"])
    candidates = Catalogue(products, [profile]).candidates(profile)
    assert [(c.product.id, c.relevance) for c in candidates] == [("a", 1.0), ("c", 0.0)]


async def test_no_candidates_means_no_model_call(monkeypatch: pytest.MonkeyPatch) -> None:
    profile = Profile("u", "U", ["coffee"], ["kitchen"], 100.0, [])
    monkeypatch.setattr(recommendation_module, "catalogue", lambda: Catalogue([], [profile]))
    out = await recommendation().run({"user_id": "u"}, models=ForbiddenModels())
    assert out.picks == []
    assert "could not find" in out.explanation
