import surgeflow.agents
from surgeflow.agents import builtin_workflows
from surgeflow.config import Settings
from surgeflow.service import load_workflows
from surgeflow.workflow import Workflow

from .conftest import RecordingModels


def test_public_names_are_pinned() -> None:
    assert sorted(surgeflow.agents.__all__) == [
        "BM25Index",
        "CustomerQuestion",
        "IntentClassifier",
        "RecommendationRequest",
        "Recommendations",
        "Reply",
        "Tokenizer",
        "builtin_workflows",
        "customer_service",
        "recommendation",
        "tokenize",
    ]


def test_builtin_workflows_by_name() -> None:
    workflows = builtin_workflows()
    assert sorted(workflows) == ["customer_service", "recommendation"]
    for name, workflow in workflows.items():
        assert isinstance(workflow, Workflow)
        assert workflow.name == name
        assert workflow.description


async def test_builtin_workflows_call_the_given_model() -> None:
    models = RecordingModels()
    workflows = builtin_workflows("my-model")
    await workflows["customer_service"].run({"message": "reset my password"}, models=models)
    await workflows["recommendation"].run({"user_id": "u03"}, models=models)
    assert [model for model, _, _ in models.calls] == ["my-model", "my-model"]


def test_the_default_settings_serve_both_agents() -> None:
    assert {"customer_service", "recommendation"} <= set(load_workflows(Settings()))
