from typing import Any

import pytest

from surgeflow.agents.customer_service import (
    MIN_MATCH_SCORE,
    Classification,
    CustomerQuestion,
    FaqMatch,
    Reply,
    customer_service,
    escalation_reason,
    support_knowledge,
    ticket_id,
)
from surgeflow.cache.memory import MemoryCache
from surgeflow.errors import ValidationError
from surgeflow.models import ModelClient, SimulatedBackend
from surgeflow.workflow import StepEvent

from .conftest import ForbiddenModels, RecordingModels


def _steps_run(events: list[StepEvent]) -> list[str]:
    return [e.step for e in events if e.type == "step.finished"]


async def test_clear_question_is_answered_from_the_faq(models: RecordingModels) -> None:
    events: list[StepEvent] = []
    reply = await customer_service("m-test").run(
        {"message": "Do you ship internationally?"}, models=models, on_event=events.append
    )
    assert isinstance(reply, Reply)
    assert reply.intent == "shipping"
    assert reply.confidence >= 0.5
    assert not reply.escalated
    assert reply.ticket is None
    assert reply.answer == models.reply
    assert reply.sources[0] == "sh-03"
    assert _steps_run(events) == ["classify", "retrieve", "draft"]


async def test_draft_prompt_contains_the_message_and_the_retrieved_answer(
    models: RecordingModels,
) -> None:
    message = "I was charged twice for my order, what now?"
    reply = await customer_service("m-test").run({"message": message}, models=models)
    [(model, prompt, params)] = models.calls
    assert model == "m-test"
    assert params["max_tokens"] > 0
    assert prompt[-1] == {"role": "user", "content": message}
    entries = {e.id: e for e in support_knowledge().entries}
    assert reply.sources[0] == "pm-03"
    for source in reply.sources:
        assert entries[source].answer in models.prompt_text()


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("This is the third late parcel, I am furious and want a manager.", "complaint"),
        ("asdf qwerty zxcv", "low_confidence"),
        ("hello", "low_confidence"),
    ],
)
async def test_complaints_and_gibberish_go_to_a_person(message: str, reason: str) -> None:
    events: list[StepEvent] = []
    reply = await customer_service().run(
        {"message": message, "customer_id": "c-42"},
        models=ForbiddenModels(),
        run_id="run-1",
        on_event=events.append,
    )
    assert reply.escalated
    assert reply.ticket is not None
    assert reply.ticket.reason == reason
    assert reply.ticket.customer_id == "c-42"
    assert reply.ticket.id == ticket_id("run-1", message)
    assert reply.ticket.id in reply.answer
    assert message.split()[0] in reply.ticket.summary
    assert reply.sources == []
    assert _steps_run(events) == ["classify", "retrieve", "escalate"]


def test_ticket_ids_are_deterministic_per_run_and_message() -> None:
    assert ticket_id("r1", "help") == ticket_id("r1", "help")
    assert len({ticket_id("r1", "help"), ticket_id("r2", "help"), ticket_id("r1", "hi")}) == 3
    assert ticket_id("r1", "help").startswith("T-")


def _classification(intent: str, confidence: float) -> Classification:
    return Classification(intent, confidence, {intent: confidence})


def test_escalation_rules() -> None:
    match = FaqMatch("sh-01", "shipping", "q", "a", MIN_MATCH_SCORE + 1)
    weak = FaqMatch("sh-01", "shipping", "q", "a", MIN_MATCH_SCORE - 0.1)
    assert escalation_reason(_classification("shipping", 0.9), [match]) is None
    assert escalation_reason(_classification("complaint", 0.99), [match]) == "complaint"
    assert escalation_reason(_classification("shipping", 0.3), [match]) == "low_confidence"
    assert escalation_reason(_classification("shipping", 0.9), []) == "no_match"
    assert escalation_reason(_classification("shipping", 0.9), [weak]) == "no_match"


@pytest.mark.parametrize(
    "payload",
    [
        {"message": ""},
        {"message": "   \n"},
        {"message": "x" * 4001},
        {},
        {"message": "hi", "unexpected": 1},
        {"message": "hi", "customer_id": ""},
    ],
)
async def test_invalid_input_is_a_validation_error(payload: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="customer_service"):
        await customer_service().run(payload, models=ForbiddenModels())


async def test_resume_from_checkpoints_calls_no_model(models: RecordingModels) -> None:
    checkpoints: dict[str, bytes] = {}

    async def save(key: str, value: bytes) -> None:
        checkpoints[key] = value

    workflow = customer_service()
    payload = {"message": "How long does a refund take?"}
    first = await workflow.run(payload, models=models, on_checkpoint=save)
    assert set(checkpoints) == {"classify", "retrieve", "draft"}
    again = await workflow.run(payload, models=ForbiddenModels(), checkpoints=checkpoints)
    assert again == first
    assert len(models.calls) == 1


async def test_resume_of_an_escalation_keeps_its_ticket() -> None:
    checkpoints: dict[str, bytes] = {}

    async def save(key: str, value: bytes) -> None:
        checkpoints[key] = value

    payload = {"message": "I want to file a complaint"}
    first = await customer_service().run(payload, run_id="a", on_checkpoint=save)
    again = await customer_service().run(payload, run_id="b", checkpoints=checkpoints)
    assert again == first
    assert first.ticket is not None
    assert first.ticket.id == ticket_id("a", payload["message"])


async def test_same_question_from_two_customers_shares_the_cached_draft(
    models: RecordingModels,
) -> None:
    cache = MemoryCache()
    workflow = customer_service()
    question = "what payment methods do you accept"
    one = await workflow.run({"message": question, "customer_id": "a"}, models=models, cache=cache)
    two = await workflow.run({"message": question, "customer_id": "b"}, models=models, cache=cache)
    await workflow.run({"message": "how do I reset my password"}, models=models, cache=cache)
    assert one.answer == two.answer
    assert len(models.calls) == 2


async def test_knowledge_is_built_once_per_process() -> None:
    assert support_knowledge() is support_knowledge()
    customer_service()
    customer_service("other")
    assert support_knowledge.cache_info().misses <= 1


async def test_runs_with_the_simulated_model_client() -> None:
    backend = SimulatedBackend("sim", ttft_ms=0, tokens_per_s=0)
    async with ModelClient({"sim-small": [backend]}) as client:
        reply = await customer_service().run({"message": "How do I return an item?"}, models=client)
    assert not reply.escalated
    assert reply.intent == "returns"
    assert reply.answer
    assert backend.calls == 1


def test_input_schema_documents_the_limits() -> None:
    schema = customer_service().input_schema()
    properties = schema["$defs"]["CustomerQuestion"]["properties"]
    assert properties["message"]["maxLength"] == 4000
    assert CustomerQuestion("hi").customer_id is None
