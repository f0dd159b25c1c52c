"""Caches for model answers and step outputs."""

from surgeflow.cache.base import Cache
from surgeflow.cache.memory import MemoryCache

__all__ = ["Cache", "MemoryCache"]
