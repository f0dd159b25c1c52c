"""ModelClient: call a model by name; its router picks the endpoint, then fallback models."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, Self

import msgspec

from surgeflow.cache.base import Cache
from surgeflow.cache.coalesce import Coalescer
from surgeflow.cache.keys import chat_cache_key
from surgeflow.config import EndpointSettings, ModelSettings
from surgeflow.errors import ConfigError, Conflict, ModelError, NotFound, ValidationError
from surgeflow.models.base import ModelBackend
from surgeflow.models.types import ChatChunk, ChatRequest, ChatResponse, Message
from surgeflow.routing.base import NO_KEY, RouteKey
from surgeflow.routing.endpoint import Endpoint
from surgeflow.routing.health import ActiveChecker
from surgeflow.routing.policies import make_policy
from surgeflow.routing.router import ModelRouter, retryable


class ModelClient:
    """Calls models by name.

    Each model has a `ModelRouter` that balances its endpoints, enforces their limits, ejects
    failing ones and retries within a budget; when a model cannot answer, its ``fallbacks`` are
    tried in order. ``timeout_s`` is the deadline of the whole call, retries and fallbacks included.
    """

    def __init__(
        self,
        routes: Mapping[str, Sequence[ModelBackend]],
        *,
        settings: Mapping[str, ModelSettings] | None = None,
        policy_seed: int | None = None,
        cache: Cache | None = None,
        cache_ttl_s: float | None = None,
    ) -> None:
        self._cache = cache
        self._cache_ttl_s = cache_ttl_s
        self._coalescer: Coalescer[ChatResponse] = Coalescer()
        self._routers: dict[str, ModelRouter] = {}
        self._checkers: list[ActiveChecker] = []
        for model, backends in routes.items():
            if not backends:
                raise ConfigError(f"model {model!r} has no endpoints")
            model_settings = (settings or {}).get(model) or _default_settings(model, backends)
            endpoints = [
                Endpoint(backend, weight=ep.weight)
                for backend, ep in zip(backends, model_settings.endpoints, strict=True)
            ]
            policy = make_policy(
                model_settings.policy, hash_on=model_settings.hash_on, seed=policy_seed
            )
            self._routers[model] = ModelRouter(model_settings, endpoints, policy)
            if model_settings.active_checks.enabled:
                self._checkers.append(ActiveChecker(endpoints, model_settings.active_checks))
        for router in self._routers.values():
            for fallback in router.settings.fallbacks:
                if fallback not in self._routers:
                    raise ConfigError(f"model {router.name!r} falls back to unknown {fallback!r}")
        self._chains: dict[str, list[ModelRouter]] = {}
        self._closed = False

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        endpoints = sum(len(r.endpoints) for r in self._routers.values())
        return f"<ModelClient models={len(self._routers)} endpoints={endpoints}{state}>"

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def start(self) -> None:
        """Start the active health checks (a no-op for models without them)."""
        for checker in self._checkers:
            checker.start()

    @property
    def routers(self) -> Mapping[str, ModelRouter]:
        return self._routers

    def models(self) -> list[str]:
        """The model names this client serves."""
        return list(self._routers)

    def router(self, model: str) -> ModelRouter:
        if self._closed:
            raise Conflict("ModelClient is closed")
        router = self._routers.get(model)
        if router is None:
            known = ", ".join(sorted(self._routers)) or "none"
            raise NotFound(f"unknown model {model!r}; known models: {known}")
        return router

    async def chat(
        self,
        request: ChatRequest,
        *,
        key: RouteKey = NO_KEY,
        timeout_s: float | None = None,
        cache: CacheMode = "auto",
    ) -> ChatResponse:
        """Answer ``request`` with its model, or with its fallbacks when it cannot.

        With a cache, a deterministic request (temperature 0, or any with ``cache="opt_in"``) is
        answered from it when it can be, per API key; identical concurrent misses make one
        upstream call between them. ``cache="bypass"`` neither reads nor writes it.
        """
        if self._cache is not None and cache != "bypass":
            cache_key = chat_cache_key(request, scope=key.key_id, opt_in=cache == "opt_in")
            if cache_key is not None:
                return await self._cached(cache_key, request, key, timeout_s)
        return await self._route(request, key, timeout_s)

    async def _cached(
        self, cache_key: str, request: ChatRequest, key: RouteKey, timeout_s: float | None
    ) -> ChatResponse:
        assert self._cache is not None
        cached = await self._cache.get(cache_key)
        if cached is not None:
            try:
                return _decode_response(cached)
            except msgspec.DecodeError:
                await self._cache.delete(cache_key)  # a corrupt entry is dropped, never served

        async def fill() -> ChatResponse:
            response = await self._route(request, key, timeout_s)
            assert self._cache is not None
            await self._cache.set(cache_key, msgspec.json.encode(response), ttl_s=self._cache_ttl_s)
            return response

        return await self._coalescer.run(cache_key, fill)

    async def _route(
        self, request: ChatRequest, key: RouteKey, timeout_s: float | None
    ) -> ChatResponse:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        chain = self._chain(request.model)
        for position, router in enumerate(chain):
            routed = (
                request if position == 0 else msgspec.structs.replace(request, model=router.name)
            )
            try:
                return await router.chat(routed, key, deadline)
            except ModelError as exc:
                if not _falls_back(exc, position, chain, deadline):
                    raise
        raise AssertionError("unreachable: the last model's error is raised")

    async def stream(
        self, request: ChatRequest, *, key: RouteKey = NO_KEY, timeout_s: float | None = None
    ) -> AsyncIterator[ChatChunk]:
        """Answer as chunks; fallbacks are tried only before the first chunk."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        chain = self._chain(request.model)
        for position, router in enumerate(chain):
            routed = (
                request if position == 0 else msgspec.structs.replace(request, model=router.name)
            )
            chunks = router.stream(routed, key, deadline)
            try:
                first = await anext(chunks)
            except StopAsyncIteration:
                return
            except ModelError as exc:
                await chunks.aclose()  # type: ignore[attr-defined]
                if not _falls_back(exc, position, chain, deadline):
                    raise
                continue
            try:
                yield first
                async for chunk in chunks:
                    yield chunk
            finally:
                await chunks.aclose()  # type: ignore[attr-defined]
            return

    async def complete(
        self,
        model: str,
        prompt: str | Sequence[Message | Mapping[str, Any]],
        *,
        timeout_s: float | None = None,
        **params: Any,
    ) -> str:
        """The reply text to ``prompt`` (a user message, or a list of messages).

        ``params`` are `ChatRequest` fields (``temperature=0.2``, ``max_tokens=64`` …).
        """
        if isinstance(prompt, str):
            messages = [Message(role="user", content=prompt)]
        else:
            try:
                messages = [
                    m if isinstance(m, Message) else msgspec.convert(m, Message) for m in prompt
                ]
            except msgspec.ValidationError as exc:
                raise ValidationError(f"invalid message for model {model!r}: {exc}") from exc
        request = ChatRequest(model=model, messages=messages, **params)
        response = await self.chat(request, timeout_s=timeout_s)
        return response.text

    def snapshot(self) -> list[dict[str, Any]]:
        """Every model's router state, for the admin API."""
        return [router.snapshot() for router in self._routers.values()]

    async def aclose(self) -> None:
        """Stop health checks and close every backend once, even when one fails to close."""
        if self._closed:
            return
        self._closed = True
        for checker in self._checkers:
            await checker.aclose()
        unique = {id(e.backend): e.backend for r in self._routers.values() for e in r.endpoints}
        results = await asyncio.gather(
            *(backend.aclose() for backend in unique.values()), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    def _chain(self, model: str) -> list[ModelRouter]:
        chain = self._chains.get(model)
        if chain is None:
            first = self.router(model)
            chain = [first]
            for name in first.settings.fallbacks:
                router = self._routers[name]
                if router not in chain:
                    chain.append(router)
            self._chains[model] = chain
        elif self._closed:
            raise Conflict("ModelClient is closed")
        return chain


_decode_response = msgspec.json.Decoder(ChatResponse).decode
CacheMode = Literal["auto", "bypass", "opt_in"]


def _falls_back(
    exc: ModelError, position: int, chain: Sequence[ModelRouter], deadline: float | None
) -> bool:
    if position + 1 >= len(chain) or not retryable(exc):
        return False
    return deadline is None or time.monotonic() < deadline


def _default_settings(model: str, backends: Sequence[ModelBackend]) -> ModelSettings:
    """Settings for a model given only its backends: round robin, default limits and health."""
    endpoints = [EndpointSettings(name=b.name, url=f"backend:{b.name}") for b in backends]
    return ModelSettings(name=model, endpoints=endpoints, policy="round_robin")
