"""Model endpoints (simulated or OpenAI-compatible HTTP) and the client that calls them by name."""

from surgeflow.models.base import ModelBackend
from surgeflow.models.client import ModelClient
from surgeflow.models.openai_http import OpenAIHTTPBackend
from surgeflow.models.simulated import SimulatedBackend
from surgeflow.models.types import (
    ChatChunk,
    ChatRequest,
    ChatResponse,
    Choice,
    ChunkChoice,
    Delta,
    Message,
    ModelInfo,
    ModelList,
    Usage,
)

__all__ = [
    "ChatChunk",
    "ChatRequest",
    "ChatResponse",
    "Choice",
    "ChunkChoice",
    "Delta",
    "Message",
    "ModelBackend",
    "ModelClient",
    "ModelInfo",
    "ModelList",
    "OpenAIHTTPBackend",
    "SimulatedBackend",
    "Usage",
]
