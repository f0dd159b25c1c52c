"""ModelClient: call a model by name; its router picks the endpoint, then fallback models."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Self

import msgspec

from surgeflow import tracing
from surgeflow.cache.base import Cache, default_ttl_s, fresh_value, pack_entry, unpack_entry
from surgeflow.cache.coalesce import Coalescer
from surgeflow.cache.keys import chat_cache_key, validate_tags
from surgeflow.config import EndpointSettings, ModelSettings
from surgeflow.errors import ConfigError, Conflict, ModelError, NotFound, ValidationError
from surgeflow.models.base import ModelBackend
from surgeflow.models.chunks import ChunkAssembler, replay_chunks
from surgeflow.models.types import ChatChunk, ChatRequest, ChatResponse, Message
from surgeflow.routing.base import NO_KEY, RouteKey
from surgeflow.routing.endpoint import Endpoint
from surgeflow.routing.health import ActiveChecker
from surgeflow.routing.policies import make_policy
from surgeflow.routing.router import ModelRouter, retryable

if TYPE_CHECKING:
    from surgeflow.cache.semantic import Probe, SemanticCache
    from surgeflow.tracing import Tracer

log = logging.getLogger("surgeflow.models")


class ModelClient:
    """Calls models by name.

    Each model has a `ModelRouter` that balances its endpoints, enforces their limits, ejects
    failing ones and retries within a budget; when a model cannot answer, its ``fallbacks`` are
    tried in order. ``timeout_s`` is the deadline of the whole call, retries and fallbacks included.

    With a ``cache``, answers to deterministic requests are kept for their model's ``cache.ttl_s``
    (``cache_ttl_s`` when the model sets none) and, for ``cache.stale_s`` more, served stale while
    one background call refreshes them. ``clock`` is the wall clock entries are dated with.

    With a ``semantic`` cache, the models that enable ``cache.semantic`` also answer a miss with
    the cached answer of an earlier prompt that means the same (`surgeflow.cache.semantic`). The
    client uses that cache but does not own it: whoever made it closes it.

    With a ``tracer``, each cache lookup and each attempt against an endpoint is a span.
    """

    def __init__(
        self,
        routes: Mapping[str, Sequence[ModelBackend]],
        *,
        settings: Mapping[str, ModelSettings] | None = None,
        policy_seed: int | None = None,
        cache: Cache | None = None,
        cache_ttl_s: float | None = None,
        semantic: SemanticCache | None = None,
        clock: Callable[[], float] = time.time,
        tracer: Tracer | None = None,
    ) -> None:
        self._cache = cache
        self._tracer = tracer
        self._semantic = semantic
        self._clock = clock
        self._coalescer: Coalescer[ChatResponse] = Coalescer()
        self._routers: dict[str, ModelRouter] = {}
        self._checkers: list[ActiveChecker] = []
        # Only the models whose answers may be cached have a policy.
        self._cache_policies: dict[str, _CachePolicy] = {}
        global_ttl_s = cache_ttl_s if cache_ttl_s is not None else default_ttl_s(cache)
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
            self._routers[model] = ModelRouter(model_settings, endpoints, policy, tracer=tracer)
            if model_settings.active_checks.enabled:
                self._checkers.append(ActiveChecker(endpoints, model_settings.active_checks))
            caching = model_settings.cache
            if cache is not None and caching.enabled:
                ttl_s = caching.ttl_s if caching.ttl_s is not None else global_ttl_s
                # Settings built in Python skip the checks load_settings makes.
                if not ttl_s > 0 or not caching.stale_s >= 0:
                    raise ConfigError(
                        f"model {model!r}: cache.ttl_s must be > 0 and cache.stale_s >= 0 "
                        f"(got ttl_s={ttl_s!r}, stale_s={caching.stale_s!r})"
                    )
                threshold = None
                if caching.semantic.enabled:
                    if semantic is None:
                        raise ConfigError(
                            f"model {model!r} enables cache.semantic but the client has no "
                            "semantic cache (pass semantic=SemanticCache(...))"
                        )
                    threshold = caching.semantic.threshold
                self._cache_policies[model] = _CachePolicy(
                    ttl_s,
                    caching.stale_s,
                    threshold,
                    sampled=caching.sampled,
                    shared=caching.scope == "shared",
                )
        for router in self._routers.values():
            for fallback in router.settings.fallbacks:
                if fallback not in self._routers:
                    raise ConfigError(f"model {router.name!r} falls back to unknown {fallback!r}")
        self._chains: dict[str, list[ModelRouter]] = {}
        self._refreshes: dict[str, asyncio.Task[None]] = {}
        self._closed = False
        # Counters, bumped without locks on the hot path; read them with `stats`.
        self.hits = 0
        self.stale_served = 0
        self.misses = 0
        self.bypasses = 0
        self.refreshes = 0
        self.refresh_failures = 0
        self.semantic_hits = 0
        self.semantic_errors = 0

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        endpoints = sum(len(r.endpoints) for r in self._routers.values())
        caching = "" if self._cache is None else f" refreshing={len(self._refreshes)}"
        return f"<ModelClient models={len(self._routers)} endpoints={endpoints}{caching}{state}>"

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

    def stats(self) -> dict[str, int | float]:
        """How chat requests met the cache (``hits`` … ``bypasses``), refreshes and coalescing."""
        coalescer = self._coalescer
        return {
            "hits": self.hits,
            "stale_served": self.stale_served,
            "misses": self.misses,
            "bypasses": self.bypasses,
            "refreshes": self.refreshes,
            "refresh_failures": self.refresh_failures,
            "semantic_hits": self.semantic_hits,
            "semantic_errors": self.semantic_errors,
            "coalesce_leaders": coalescer.calls,
            "coalesced": coalescer.coalesced,
        }

    async def chat(
        self,
        request: ChatRequest,
        *,
        key: RouteKey = NO_KEY,
        timeout_s: float | None = None,
        cache: CacheMode = "auto",
        tags: Sequence[str] = (),
    ) -> ChatResponse:
        """Answer ``request`` with its model, or with its fallbacks when it cannot.

        With a cache, a deterministic request (temperature 0, or any with ``cache="opt_in"``) is
        answered from it when it can be, per API key; identical concurrent misses make one
        upstream call between them. ``cache="bypass"`` neither reads nor writes it. An answer
        stored by this call is found again by any of its ``tags`` (`Cache.invalidate_tag`).
        """
        policy = None if cache == "bypass" else self._cache_policies.get(request.model)
        if policy is None:
            self.bypasses += 1
            return await self._route(request, key, timeout_s)
        return (await self._answer(request, key, timeout_s, cache, tags, policy))[0]

    async def chat_with_status(
        self,
        request: ChatRequest,
        *,
        key: RouteKey = NO_KEY,
        timeout_s: float | None = None,
        cache: CacheMode = "auto",
        tags: Sequence[str] = (),
    ) -> tuple[ChatResponse, CacheStatus]:
        """`chat`, and how the cache answered: ``hit``, ``stale``, ``semantic`` (an earlier
        prompt's answer that means the same), ``miss`` or ``bypass``."""
        policy = None if cache == "bypass" else self._cache_policies.get(request.model)
        if policy is None:
            self.bypasses += 1
            return await self._route(request, key, timeout_s), "bypass"
        return await self._answer(request, key, timeout_s, cache, tags, policy)

    async def _answer(
        self,
        request: ChatRequest,
        key: RouteKey,
        timeout_s: float | None,
        mode: CacheMode,
        tags: Sequence[str],
        policy: _CachePolicy,
    ) -> tuple[ChatResponse, CacheStatus]:
        cache_key = chat_cache_key(
            request, scope=policy.scope(key), opt_in=mode == "opt_in" or policy.sampled
        )
        if cache_key is None:
            self.bypasses += 1
            return await self._route(request, key, timeout_s), "bypass"
        if tags:
            tags = _checked_tags(tags)
        cache = self._cache
        assert cache is not None
        if self._tracer is None:
            raw = await cache.get(cache_key)
            if raw is not None:
                value = fresh_value(raw, self._clock())
                if value is not None:  # the hot path, inlined, before any other object is made
                    try:
                        response = _decode_response(value)
                    except msgspec.DecodeError:
                        pass
                    else:
                        self.hits += 1
                        return response, "hit"
            lookup = _Lookup(cache_key, request, key, timeout_s, mode, tags, policy)
            found, probe = await self._look_further(raw, lookup)
        else:
            lookup = _Lookup(cache_key, request, key, timeout_s, mode, tags, policy)
            found, probe = await self._traced_lookup(lookup)
        if found is not None:
            return found
        self.misses += 1
        # A partial, not a closure: closure cells would cost every hit above.
        fill = functools.partial(self._fill, lookup, probe)
        return await self._coalescer.run(cache_key, fill), "miss"

    async def _look_further(
        self, raw: bytes | None, lookup: _Lookup, *, semantic: bool = True
    ) -> tuple[tuple[ChatResponse, CacheStatus] | None, Probe | None]:
        """The answer in entry ``raw`` (fresh, or stale: then a refresh starts), else one from
        the semantic cache; and the probe to index this prompt with on a miss."""
        if raw is not None:
            found = self._read(raw, lookup)
            if found is not None:
                return found, None
            assert self._cache is not None
            await self._cache.delete(lookup.cache_key)  # corrupt, foreign or too old: not served
        if semantic and lookup.policy.semantic_threshold is not None:
            answer, probe = await self._semantic_answer(lookup)
            return (None if answer is None else (answer, "semantic")), probe
        return None, None

    async def _traced_lookup(
        self, lookup: _Lookup, *, semantic: bool = True
    ) -> tuple[tuple[ChatResponse, CacheStatus] | None, Probe | None]:
        """The whole lookup (`_look_further` after a plain read) in a ``cache lookup`` span."""
        assert self._tracer is not None
        assert self._cache is not None
        attributes = {tracing.GEN_AI_MODEL: lookup.request.model}
        with self._tracer.span("cache lookup", attributes) as span:
            raw = await self._cache.get(lookup.cache_key)
            found, probe = await self._look_further(raw, lookup, semantic=semantic)
            span.set_attribute(tracing.CACHE_STATUS, "miss" if found is None else found[1])
        return found, probe

    async def _semantic_answer(self, lookup: _Lookup) -> tuple[ChatResponse | None, Probe | None]:
        """A fresh cached answer to an earlier prompt that means the same as the request's last
        user message, in the same conversation; and the probe to index this prompt with."""
        request, policy = lookup.request, lookup.policy
        semantic, cache = self._semantic, self._cache
        assert semantic is not None
        assert cache is not None
        text = _last_user_text(request)
        if text is None:
            return None, None
        # Everything but the last user message must match exactly: it is the partition.
        blank = Message(role="user", content="")
        partition = chat_cache_key(
            msgspec.structs.replace(request, messages=[*request.messages[:-1], blank]),
            scope=policy.scope(lookup.key),
            opt_in=lookup.mode == "opt_in" or policy.sampled,
        )
        if partition is None:
            return None, None
        try:
            match, probe = await semantic.lookup(
                partition, text, threshold=policy.semantic_threshold
            )
        except Exception as exc:  # the semantic cache is an optimisation; never fail a request
            self.semantic_errors += 1
            log.warning("semantic cache lookup failed (%s: %s)", type(exc).__name__, exc)
            return None, None
        if match is None:
            return None, probe
        raw = await cache.get(match.cache_key)
        value = None if raw is None else fresh_value(raw, self._clock())
        if value is not None:
            try:
                response = _decode_response(value)
            except msgspec.DecodeError:
                pass
            else:
                self.semantic_hits += 1
                return response, probe
        await semantic.forget(match.cache_key)  # its answer has gone (or is stale)
        return None, probe

    async def _fill(self, lookup: _Lookup, probe: Probe | None = None) -> ChatResponse:
        """Ask upstream, store the answer, and index the prompt for the semantic cache."""
        response = await self._route(lookup.request, lookup.key, lookup.timeout_s)
        await self._store(lookup.cache_key, response, lookup.policy, lookup.tags)
        if probe is not None and self._semantic is not None:
            await self._semantic.add(probe, lookup.cache_key, ttl_s=lookup.policy.ttl_s)
        return response

    def _read(self, raw: bytes, lookup: _Lookup) -> tuple[ChatResponse, CacheStatus] | None:
        """The answer in a cached entry and whether it is stale (then a refresh starts), or None
        when it may not be served."""
        entry = unpack_entry(raw)
        if entry is None:
            return None
        age_s = self._clock() - entry.stored_at
        if age_s >= entry.ttl_s + entry.stale_s:
            return None
        try:
            response = _decode_response(entry.value)
        except msgspec.DecodeError:
            return None
        if age_s < entry.ttl_s:
            self.hits += 1
            return response, "hit"
        self.stale_served += 1
        # The refreshed entry keeps the tags it had, and gains this request's.
        self._refresh(lookup, (*entry.tags, *lookup.tags))
        return response, "stale"

    async def _store(
        self, cache_key: str, response: ChatResponse, policy: _CachePolicy, tags: Sequence[str]
    ) -> None:
        assert self._cache is not None
        entry = pack_entry(
            _encode(response),
            stored_at=self._clock(),
            ttl_s=policy.ttl_s,
            stale_s=policy.stale_s,
            tags=tags,
        )
        await self._cache.set(cache_key, entry, ttl_s=policy.ttl_s + policy.stale_s, tags=tags)

    def _refresh(self, lookup: _Lookup, tags: Sequence[str]) -> None:
        """Start one background call that replaces a stale entry, stored with ``tags`` (none if
        one is running)."""
        cache_key, request, policy = lookup.cache_key, lookup.request, lookup.policy
        if cache_key in self._refreshes or self._closed:
            return
        timeout_s = REFRESH_TIMEOUT_S if lookup.timeout_s is None else lookup.timeout_s
        refill = lookup._replace(timeout_s=timeout_s, tags=tuple(dict.fromkeys(tags)))
        fill = functools.partial(self._fill, refill)

        async def refresh() -> None:
            self.refreshes += 1
            try:
                # Keyed like a miss: misses and refreshes of one entry share one upstream call.
                await self._coalescer.run(cache_key, fill)
            except Exception as exc:
                self.refresh_failures += 1
                log.warning(
                    "refreshing a stale cached answer of model %r failed (%s: %s); the stale "
                    "answer is served until it is %g s old",
                    request.model,
                    type(exc).__name__,
                    exc,
                    policy.ttl_s + policy.stale_s,
                )

        task = asyncio.create_task(refresh(), name=f"cache-refresh {request.model}")
        self._refreshes[cache_key] = task
        task.add_done_callback(lambda _: self._refreshes.pop(cache_key, None))

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
        self,
        request: ChatRequest,
        *,
        key: RouteKey = NO_KEY,
        timeout_s: float | None = None,
        cache: CacheMode = "auto",
        tags: Sequence[str] = (),
    ) -> AsyncIterator[ChatChunk]:
        """Answer as chunks; fallbacks are tried only before the first chunk.

        Streams share cache entries with `chat` (see `stream_with_status`).
        """
        batches, _ = await self.stream_with_status(
            request, key=key, timeout_s=timeout_s, cache=cache, tags=tags
        )
        try:
            async for batch in batches:
                for chunk in batch:
                    yield chunk
        finally:
            await batches.aclose()

    async def stream_with_status(
        self,
        request: ChatRequest,
        *,
        key: RouteKey = NO_KEY,
        timeout_s: float | None = None,
        cache: CacheMode = "auto",
        tags: Sequence[str] = (),
    ) -> tuple[AsyncGenerator[list[ChatChunk], None], CacheStatus]:
        """The answer's chunks in batches, and how the cache answered (looked up before returning).

        Each batch holds the chunks that arrived together (`models.base.stream_batches`), so a
        proxy can forward them in one write. A cached answer (fresh, or stale while it is
        refreshed) is replayed as one batch of chunks. A miss
        streams from upstream as usual while the chunks are assembled; the answer is stored only
        when the stream finishes (every choice has a finish reason) and the caller read it to the
        end. Streamed misses are not coalesced: each makes its own upstream call. Close the
        generator (``aclose``) if you stop reading early.
        """
        policy = None if cache == "bypass" else self._cache_policies.get(request.model)
        cache_key = (
            None
            if policy is None
            else chat_cache_key(
                request, scope=policy.scope(key), opt_in=cache == "opt_in" or policy.sampled
            )
        )
        if policy is None or cache_key is None:
            self.bypasses += 1
            return self._stream_route(request, key, timeout_s), "bypass"
        if tags:
            tags = _checked_tags(tags)
        assert self._cache is not None
        lookup = _Lookup(cache_key, request, key, timeout_s, cache, tags, policy)
        if self._tracer is None:
            raw = await self._cache.get(cache_key)
            found, _ = await self._look_further(raw, lookup, semantic=False)
        else:
            found, _ = await self._traced_lookup(lookup, semantic=False)
        if found is not None:
            response, status = found
            include_usage = bool((request.stream_options or {}).get("include_usage"))
            return _replay(replay_chunks(response, include_usage=include_usage)), status
        self.misses += 1
        chunks = self._stream_route(request, key, timeout_s)
        return self._stream_and_store(chunks, cache_key, policy, tags), "miss"

    async def _stream_and_store(
        self,
        batches: AsyncGenerator[list[ChatChunk], None],
        cache_key: str,
        policy: _CachePolicy,
        tags: Sequence[str],
    ) -> AsyncGenerator[list[ChatChunk], None]:
        assembler = ChunkAssembler()
        try:
            async for batch in batches:
                for chunk in batch:
                    assembler.add(chunk)
                yield batch
        finally:
            await batches.aclose()
        # Only here when the upstream stream ended and the reader asked for what follows it:
        # an error, a cancellation or a reader that left early never stores a partial answer.
        response = assembler.response()
        if response is not None:
            await self._store(cache_key, response, policy, tags)

    async def _stream_route(
        self, request: ChatRequest, key: RouteKey, timeout_s: float | None
    ) -> AsyncGenerator[list[ChatChunk], None]:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        chain = self._chain(request.model)
        for position, router in enumerate(chain):
            routed = (
                request if position == 0 else msgspec.structs.replace(request, model=router.name)
            )
            batches = router.stream_batches(routed, key, deadline)
            try:
                first = await anext(batches)
            except StopAsyncIteration:
                return
            except ModelError as exc:
                await batches.aclose()  # type: ignore[attr-defined]
                if not _falls_back(exc, position, chain, deadline):
                    raise
                continue
            try:
                yield first
                async for batch in batches:
                    yield batch
            finally:
                await batches.aclose()  # type: ignore[attr-defined]
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
        """Stop refreshes and health checks; close every backend once, even when one fails to."""
        if self._closed:
            return
        self._closed = True
        refreshes = list(self._refreshes.values())
        for task in refreshes:
            task.cancel()
        await asyncio.gather(*refreshes, return_exceptions=True)
        await self._coalescer.aclose()
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


_encode = msgspec.json.encode
_decode_response = msgspec.json.Decoder(ChatResponse).decode
CacheMode = Literal["auto", "bypass", "opt_in"]
CacheStatus = Literal["hit", "stale", "semantic", "miss", "bypass"]
SHARED_SCOPE = "shared"  # the cache scope of models with cache.scope: shared
REFRESH_TIMEOUT_S = 60.0  # for a stale entry's refresh when its request had no deadline


class _CachePolicy(NamedTuple):
    ttl_s: float
    stale_s: float
    semantic_threshold: float | None = None  # None: no semantic cache for this model
    sampled: bool = False  # cache sampling requests too
    shared: bool = False  # one scope for every API key

    def scope(self, key: RouteKey) -> str | None:
        return SHARED_SCOPE if self.shared else key.key_id


class _Lookup(NamedTuple):
    """One request's way through the cache: its entry's key, the request and where it may be
    routed, how it may use the cache and the tags an answer stored for it carries."""

    cache_key: str
    request: ChatRequest
    key: RouteKey
    timeout_s: float | None
    mode: CacheMode
    tags: Sequence[str]
    policy: _CachePolicy


def _last_user_text(request: ChatRequest) -> str | None:
    """The text of the last message when it is the user's and holds only text."""
    if not request.messages:
        return None
    last = request.messages[-1]
    if last.role != "user":
        return None
    content = last.content
    if isinstance(content, str):
        return content if content.strip() else None
    return None


def _checked_tags(tags: Sequence[str]) -> tuple[str, ...]:
    try:
        return validate_tags(tags)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None


async def _replay(chunks: list[ChatChunk]) -> AsyncGenerator[list[ChatChunk], None]:
    yield chunks  # all there at once


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
