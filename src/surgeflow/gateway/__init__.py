"""The HTTP gateway: OpenAI-compatible chat routes and workflow routes on raw ASGI."""

from surgeflow.gateway.app import Gateway

__all__ = ["Gateway"]
