"""Example agents shipped with surgeflow: customer service and product recommendation."""

from __future__ import annotations

from surgeflow.agents.customer_service import CustomerQuestion, Reply, customer_service
from surgeflow.agents.recommendation import (
    RecommendationRequest,
    Recommendations,
    recommendation,
)
from surgeflow.agents.retrieval import BM25Index, IntentClassifier, Tokenizer, tokenize
from surgeflow.workflow import Workflow


def builtin_workflows(model: str = "sim-small") -> dict[str, Workflow]:
    """Both example agents by name, calling ``model`` for their drafted text."""
    return {"customer_service": customer_service(model), "recommendation": recommendation(model)}


__all__ = [
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
