"""The semantic cache: answers for prompts that mean the same, behind guards against look-alikes.

Needs the ``semantic`` extra (onnxruntime, tokenizers, the packaged MiniLM model, usearch).
"""

from surgeflow.cache.semantic.cache import (
    DEFAULT_THRESHOLD,
    Probe,
    SemanticCache,
    SemanticMatch,
)
from surgeflow.cache.semantic.embedder import Embedder, OnnxEmbedder, WordSimilarity
from surgeflow.cache.semantic.guards import GUARDS, Features, Guards, features
from surgeflow.cache.semantic.index import VectorIndex

__all__ = [
    "DEFAULT_THRESHOLD",
    "GUARDS",
    "Embedder",
    "Features",
    "Guards",
    "OnnxEmbedder",
    "Probe",
    "SemanticCache",
    "SemanticMatch",
    "VectorIndex",
    "WordSimilarity",
    "features",
]
